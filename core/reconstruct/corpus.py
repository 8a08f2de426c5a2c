"""Seed corpora for corpus-seeded reconstruction: rows of public or user text whose topics steer what the model
writes a request about (the phrasing stays the model's own; see core/reconstruct/seeded.py).

A corpus is ``builtin:sharegpt`` (the first user turn of each packaged ShareGPT conversation),
``builtin:alpacaeval`` (AlpacaEval's 805 instructions) or a FILE:

- ``.jsonl`` / ``.json`` / ``.csv`` / ``.tsv`` / ``.parquet`` (or a datasets folder): the first of the columns
  ``text`` (a passage), ``instruction`` (+ ``input``), ``prompt``, ``messages`` / ``conversations`` (their first
  user turn) that the file has; read by the domain importer's reader (core/mix/formats.py), so the same files
  open the same way and fail with the same one-line reasons;
- ``.txt`` / ``.md``: paragraphs (blocks between blank lines), or lines when the file has no blank line.

Every problem with the whole corpus (missing, empty, binary, not UTF-8, no text column, no usable row) is one
ForgetlessError line, raised by :func:`load_corpus` before any job folder or store row is written.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import ForgetlessError
from core.mix.formats import ACCEPTED_SUFFIXES, RowError, read_table
from core.public_data import alpacaeval_items, sharegpt_records

BUILTIN_CORPORA = ("builtin:sharegpt", "builtin:alpacaeval")
TEXT_COLUMNS = ("text", "instruction", "prompt", "messages", "conversations")  # the first one present is read
PLAIN_TEXT_SUFFIXES = (".txt", ".md")
CORPUS_MAX_BYTES = 4 * 1024**3
REQUEST, PASSAGE = "request", "passage"  # what a row is: someone's request to an assistant, or any text
_USER_ROLES = ("user", "human")


@dataclass(frozen=True)
class CorpusRow:
    row_id: str  # builtin: sharegpt:<conversation id> | alpacaeval:<index>; a file: line:<n> | record:<n>
    text: str  # cut to the corpus's word limit


@dataclass(frozen=True)
class Corpus:
    """The usable rows of one corpus, in file order, each text once."""

    name: str  # builtin:NAME, or the file's resolved path
    kind: str  # request | passage: which prompt asks about its rows
    column: str  # where each row's text came from, in words
    rows: tuple[CorpusRow, ...]
    skipped: int  # rows without usable text (empty, unreadable, a repeat)

    def digest(self) -> str:
        """sha256 of the rows' ids and texts: which text a job's seed ids pointed at, should the file change."""
        digest = hashlib.sha256()
        for row in self.rows:
            digest.update(f"{row.row_id}\0{row.text}\0".encode())
        return digest.hexdigest()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "column": self.column, "rows": len(self.rows),
                "skipped": self.skipped, "sha256": self.digest()}


def check_corpus_spec(spec: str) -> None:
    """A builtin name must be one we ship (files are checked when read)."""
    if spec.startswith("builtin:") and spec not in BUILTIN_CORPORA:
        raise ForgetlessError(f"unknown corpus '{spec}': choose {', '.join(BUILTIN_CORPORA)} or a file")


def cut_words(text: str, max_words: int) -> str:
    """The text up to the end of its first ``max_words`` words, layout kept, then stripped."""
    ends = [match.end() for match in re.finditer(r"\S+", text)]
    return (text[: ends[max_words - 1]] if len(ends) > max_words else text).strip()


def load_corpus(spec: str, max_words: int) -> Corpus:
    """Read a corpus (see the module doc) into rows whose texts are cut to ``max_words`` words.

    Raises:
        ForgetlessError: in one line, for an unknown builtin or a file that is missing, empty, binary, not
            UTF-8, without a text column, or without a single usable row.
    """
    spec = spec.strip()
    check_corpus_spec(spec)
    if spec == "builtin:sharegpt":
        pairs = ((f"sharegpt:{record.get('id')}", first_user_turn(record.get("conversations")))
                 for record in sharegpt_records())
        return _collect(spec, REQUEST, "the first user turn of each ShareGPT conversation", pairs, max_words)
    if spec == "builtin:alpacaeval":
        pairs = ((f"alpacaeval:{index}", item.get("instruction")) for index, item in enumerate(alpacaeval_items()))
        return _collect(spec, REQUEST, "AlpacaEval's instructions", pairs, max_words)
    return _load_file(Path(spec).expanduser(), max_words)


def first_user_turn(turns: Any) -> str | None:
    """The content of the user turn that opens a chat (role/content or ShareGPT's from/value turns; system turns
    before it allowed), else None: a chat that opens with the assistant's turn was split mid-dialogue, and its
    first user turn ("continue", "shorter") means little without what came before."""
    if isinstance(turns, str) and turns.lstrip().startswith("["):  # CSV cells hold turn lists as JSON text
        try:
            turns = json.loads(turns)
        except json.JSONDecodeError:
            return None
    if not isinstance(turns, list):
        return None
    for turn in turns:
        if not isinstance(turn, dict):
            return None
        role = turn.get("role", turn.get("from"))
        role = role.strip().lower() if isinstance(role, str) else ""
        if role == "system":
            continue
        content = turn.get("content", turn.get("value"))
        return content if role in _USER_ROLES and isinstance(content, str) else None
    return None


def _load_file(path: Path, max_words: int) -> Corpus:
    if not path.exists():
        raise ForgetlessError(f"corpus file not found: {path}")
    name = str(path.resolve())
    suffix = path.suffix.lower()
    if path.is_file() and suffix in PLAIN_TEXT_SUFFIXES:
        blocks = _text_blocks(path)
        return _collect(name, PASSAGE, "paragraphs" if blocks.paragraphs else "lines", blocks.items, max_words,
                        path=path)
    if path.is_file() and suffix not in ACCEPTED_SUFFIXES:
        accepted = ", ".join((*ACCEPTED_SUFFIXES, *PLAIN_TEXT_SUFFIXES))
        raise ForgetlessError(f"{path}: unsupported corpus file type '{suffix or path.name}'; accepted: {accepted} "
                              "or a datasets save_to_disk folder")
    table = read_table(path, CORPUS_MAX_BYTES)
    column = next((name for name in TEXT_COLUMNS if name in table.columns), None)
    if column is None:
        found = ", ".join(table.columns[:12]) or "none"
        raise ForgetlessError(f"{path} has no text column: expected one of {', '.join(TEXT_COLUMNS)} (found: {found})")
    kind = PASSAGE if column == "text" else REQUEST
    described = f"the first user turn of '{column}'" if column in ("messages", "conversations") else f"'{column}'"
    pairs = ((f"{table.unit}:{number}", _row_text(row, column)) for number, row in table.records)
    return _collect(name, kind, described, pairs, max_words, path=path)


def _row_text(row: Any, column: str) -> str | None:
    if isinstance(row, RowError) or not isinstance(row, dict):
        return None
    value = row.get(column)
    if column in ("messages", "conversations") or (column == "prompt" and not isinstance(value, str)):
        return first_user_turn(value)
    if not isinstance(value, str):
        return None
    extra = row.get("input") if column == "instruction" else None  # Alpaca: the input belongs to the request
    return f"{value.strip()}\n\n{extra.strip()}" if isinstance(extra, str) and extra.strip() else value


@dataclass
class _Blocks:
    items: list[tuple[str, str]]
    paragraphs: bool


def _text_blocks(path: Path) -> _Blocks:
    """A plain text file's paragraphs (``line:<first line>`` ids), or its lines when no blank line separates any."""
    raw = path.read_bytes()
    if not raw.strip():
        raise ForgetlessError(f"{path} is empty")
    if b"\0" in raw:
        raise ForgetlessError(f"{path} is not text: it holds NUL bytes (binary data)")
    try:
        lines = raw.decode("utf-8").removeprefix("\ufeff").splitlines()
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise ForgetlessError(f"{path} is not UTF-8 text: byte 0x{raw[error.start]:02x} at line {line}; re-save the "
                              "file as UTF-8") from None
    filled = [number for number, line in enumerate(lines) if line.strip()]
    paragraphs = any(not line.strip() for line in lines[filled[0]:filled[-1]])  # a blank line between texts
    items: list[tuple[str, str]] = []
    if not paragraphs:
        return _Blocks([(f"line:{number}", line) for number, line in enumerate(lines, start=1) if line.strip()], False)
    start, block = 0, []
    for number, line in enumerate([*lines, ""], start=1):
        if line.strip():
            start = start or number
            block.append(line)
        elif block:
            items.append((f"line:{start}", "\n".join(block)))
            start, block = 0, []
    return _Blocks(items, True)


def _collect(name: str, kind: str, column: str, pairs: Iterable[tuple[str, str | None]], max_words: int,
             path: Path | None = None) -> Corpus:
    """Keep each usable text once (cut to ``max_words``); a corpus without one is an error."""
    rows: list[CorpusRow] = []
    seen: set[str] = set()
    skipped = 0
    for row_id, text in pairs:  # read_table raises while streaming too (e.g. a NUL byte on a later line)
        cut = cut_words(text, max_words) if isinstance(text, str) else ""
        key = " ".join(cut.lower().split())
        if not cut or key in seen:
            skipped += 1
            continue
        seen.add(key)
        rows.append(CorpusRow(row_id, cut))
    if not rows:
        where = path if path is not None else name
        raise ForgetlessError(f"{where} holds no usable text in {column} ({skipped} rows read, all empty, "
                              "unreadable or repeats)")
    return Corpus(name, kind, column, tuple(rows), skipped)
