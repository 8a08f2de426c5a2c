"""Imported conversations kept on disk, not in memory: a spool file of canonical JSON lines and its index.

A user's domain file can be gigabytes, and a conversation held as Python dicts costs ~10x its JSON text,
so importing keeps only the byte offsets and sha1 digests of the validated rows in memory (28 bytes a row)
and writes each row once, as its canonical JSON (``json.dumps(messages, sort_keys=True, ensure_ascii=False)``,
one per line), to a spool file. :class:`SpooledRows` reads rows back on demand and is what
``DomainData.train``/``test`` hold for user data; views made by :meth:`SpooledRows.take` share the file,
which is deleted when the last view is garbage collected.

The canonical line is also what everything downstream hashes: ``content_digest`` is its sha1, and a
snapshot's ``rows_sha256`` is the sha256 of the lines joined as a JSON list, so both are computed
without parsing a row again.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import weakref
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np

Messages = list[dict[str, str]]
DIGEST_BYTES = 20  # sha1


def canonical_json(messages: Messages) -> str:
    """The one text form a conversation is hashed and spooled in."""
    return json.dumps(messages, sort_keys=True, ensure_ascii=False)


def content_digest(messages: Messages) -> str:
    """The sha1 of a conversation's canonical JSON: what split_by_content ranks rows by, and item ids."""
    return hashlib.sha1(canonical_json(messages).encode()).hexdigest()


class _SpoolFile:
    """The file behind every view of one import; removed when the last view is gone."""

    def __init__(self, folder: str | Path | None) -> None:
        handle, path = tempfile.mkstemp(prefix="forgetless-rows-", suffix=".jsonl", dir=folder)
        os.close(handle)
        self.path = Path(path)
        self._finalizer = weakref.finalize(self, self.path.unlink, missing_ok=True)


class SpoolWriter:
    """Appends canonical rows to a new spool file; :meth:`finish` returns them as :class:`SpooledRows`."""

    def __init__(self, folder: str | Path | None = None) -> None:
        self._file = _SpoolFile(folder)
        self._handle = self._file.path.open("wb")
        self._starts: list[int] = []  # a Python list grows cheaply; turned into an array at the end
        self._digests = bytearray()
        self._position = 0

    def append(self, messages: Messages) -> None:
        data = canonical_json(messages).encode("utf-8")
        self._starts.append(self._position)
        self._digests += hashlib.sha1(data).digest()
        self._handle.write(data + b"\n")
        self._position += len(data) + 1

    def finish(self) -> SpooledRows:
        self._handle.close()
        starts = np.array(self._starts, dtype=np.int64)
        ends = np.append(starts[1:], self._position) - 1  # without the newline
        digests = np.frombuffer(bytes(self._digests), dtype=f"S{DIGEST_BYTES}")
        self._starts = []
        return SpooledRows(self._file, starts, ends, digests)

    def abort(self) -> None:
        self._handle.close()
        self._file.path.unlink(missing_ok=True)


class SpooledRows(Sequence[Messages]):
    """A read-only sequence of conversations stored in a spool file (see the module docstring)."""

    def __init__(self, file: _SpoolFile, starts: np.ndarray, ends: np.ndarray, digests: np.ndarray) -> None:
        self._file, self._starts, self._ends, self._digests = file, starts, ends, digests

    def __len__(self) -> int:
        return len(self._starts)

    @overload
    def __getitem__(self, index: int) -> Messages: ...

    @overload
    def __getitem__(self, index: slice) -> list[Messages]: ...

    def __getitem__(self, index: int | slice) -> Messages | list[Messages]:
        if isinstance(index, slice):
            return list(self.take(np.arange(len(self))[index]))
        position = range(len(self))[index]  # IndexError and negative indices as a list does
        with self._file.path.open("rb") as handle:
            return json.loads(self._read(handle, position))

    def _read(self, handle: Any, position: int) -> bytes:
        handle.seek(int(self._starts[position]))
        return handle.read(int(self._ends[position] - self._starts[position]))

    def canonical_lines(self) -> Iterator[bytes]:
        """Each row's canonical JSON, in order, without parsing it."""
        with self._file.path.open("rb") as handle:
            for position in range(len(self)):
                yield self._read(handle, position)

    def __iter__(self) -> Iterator[Messages]:
        return (json.loads(line) for line in self.canonical_lines())

    @property
    def digests(self) -> list[str]:
        """The hex sha1 of each row's canonical JSON (``content_digest``)."""
        return [digest.hex() for digest in self._digests.tolist()]

    def take(self, indices: Iterable[int]) -> SpooledRows:
        """The rows at ``indices`` (in that order), sharing this file."""
        chosen = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices, dtype=np.int64)
        return SpooledRows(self._file, self._starts[chosen], self._ends[chosen], self._digests[chosen])

    def concat(self, other: SpooledRows) -> SpooledRows:
        if other._file is not self._file:
            raise ValueError("only views of one import can be joined")
        return SpooledRows(self._file, *(np.concatenate(pair) for pair in (
            (self._starts, other._starts), (self._ends, other._ends), (self._digests, other._digests))))

    def __eq__(self, other: object) -> bool:  # equal to a list (or a view) of the same conversations, as a list is
        if isinstance(other, SpooledRows | list):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]


def row_digests(rows: Sequence[Messages]) -> list[str]:
    """``content_digest`` of every row: read from the index of spooled rows, computed for a plain list."""
    if isinstance(rows, SpooledRows):
        return rows.digests
    return [content_digest(row) for row in rows]


def take_rows(rows: Sequence[Messages], indices: Sequence[int]) -> Sequence[Messages]:
    """The rows at ``indices`` without reading them (spooled) or as a new list."""
    if isinstance(rows, SpooledRows):
        return rows.take(indices)
    return [rows[i] for i in indices]


def join_rows(first: Sequence[Messages], second: Sequence[Messages]) -> Sequence[Messages]:
    if isinstance(first, SpooledRows) and isinstance(second, SpooledRows):
        return first.concat(second)
    if not len(second):
        return first
    return [*first, *second]


def canonical_lines(rows: Sequence[Messages]) -> Iterator[bytes]:
    if isinstance(rows, SpooledRows):
        return rows.canonical_lines()
    return (canonical_json(row).encode("utf-8") for row in rows)


def rows_sha256(rows: Sequence[Messages]) -> str:
    """sha256 of the conversations as one canonical JSON list (``json.dumps(rows, sort_keys=True,
    ensure_ascii=False)``), computed a row at a time."""
    digest = hashlib.sha256(b"[")
    for index, line in enumerate(canonical_lines(rows)):
        digest.update(b", " + line if index else line)
    digest.update(b"]")
    return digest.hexdigest()
