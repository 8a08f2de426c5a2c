"""The workspace's DuckDB store: schema, migrations and typed queries.

DuckDB lets one process write a file or many read it, never both at once, and a background job
writes while the app reads. So no connection is held open: each read or write opens the file, does
its work inside one transaction, and closes it; a lock held by another process is waited out.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from core.errors import ForgetlessError

SCHEMA_VERSION = 1
STORE_FILE = "forgetless.duckdb"
_LOCK_WAIT_S = 30.0

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS jobs (
        job_id VARCHAR PRIMARY KEY, kind VARCHAR NOT NULL, config_yaml VARCHAR NOT NULL,
        created_at TIMESTAMPTZ NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS instructions (
        id VARCHAR PRIMARY KEY,              -- hash of the normalised text: the exact-dedup key
        text VARCHAR NOT NULL,
        n_chars INTEGER NOT NULL,
        n_tokens INTEGER NOT NULL,
        model VARCHAR NOT NULL,
        prefix VARCHAR NOT NULL,
        temperature DOUBLE NOT NULL,
        top_p DOUBLE NOT NULL,
        max_new_tokens INTEGER NOT NULL,
        seed BIGINT NOT NULL,                -- the seed of the batch that sampled it
        job_id VARCHAR NOT NULL,
        batch INTEGER NOT NULL,
        created_at TIMESTAMPTZ NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS reconstruct_batches (
        job_id VARCHAR NOT NULL, batch INTEGER NOT NULL, sampled INTEGER NOT NULL, stored INTEGER NOT NULL,
        dropped_json VARCHAR NOT NULL, new_tokens INTEGER NOT NULL, seconds DOUBLE NOT NULL,
        created_at TIMESTAMPTZ NOT NULL, PRIMARY KEY (job_id, batch))""",
]


def text_key(text: str) -> str:
    """The exact-dedup key: case and whitespace differences do not make a new instruction."""
    normalised = re.sub(r"\s+", " ", text.strip().lower())
    return hashlib.sha1(normalised.encode("utf-8")).hexdigest()[:20]


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class InstructionRow:
    text: str
    n_tokens: int
    model: str
    prefix: str
    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int
    job_id: str
    batch: int


@dataclass(frozen=True)
class BatchResult:
    stored: int
    duplicates: int


class Store:
    """One DuckDB file per workspace; every method opens, works in a transaction, and closes."""

    # Within a process DuckDB refuses a read-only and a read-write handle on one file at once.
    _process_lock = threading.RLock()

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.write() as con:
            for statement in _SCHEMA:
                con.execute(statement)
            version = con.execute("SELECT max(version) FROM schema_version").fetchone()[0]
            if version is None:
                con.execute("INSERT INTO schema_version VALUES (?)", [SCHEMA_VERSION])
            elif version > SCHEMA_VERSION:
                raise ForgetlessError(f"{self.path} was written by a newer Forgetless (schema {version})")

    @classmethod
    def for_workspace(cls, workspace: Path) -> Store:
        return cls(Path(workspace) / STORE_FILE)

    @contextmanager
    def _connect(self, read_only: bool) -> Iterator[duckdb.DuckDBPyConnection]:
        if read_only and not self.path.exists():
            raise ForgetlessError(f"no store at {self.path}")
        deadline = time.monotonic() + _LOCK_WAIT_S
        with self._process_lock:
            while True:
                try:
                    con = duckdb.connect(str(self.path), read_only=read_only)
                    break
                except duckdb.IOException as error:
                    if "lock" not in str(error).lower() or time.monotonic() > deadline:
                        raise ForgetlessError(f"cannot open {self.path}: {str(error).splitlines()[0]}") from error
                    time.sleep(0.05)
            try:
                yield con
            finally:
                con.close()

    @contextmanager
    def write(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-write connection inside a transaction: all of it commits, or none of it."""
        with self._connect(read_only=False) as con:
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    @contextmanager
    def read(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self._connect(read_only=True) as con:
            yield con

    # -- jobs ---------------------------------------------------------------------------------
    def register_job(self, job_id: str, kind: str, config_yaml: str) -> None:
        with self.write() as con:
            con.execute(
                "INSERT INTO jobs VALUES (?, ?, ?, ?) ON CONFLICT (job_id) DO NOTHING",
                [job_id, kind, config_yaml, now()],
            )

    # -- instructions -------------------------------------------------------------------------
    def add_instruction_batch(
        self, job_id: str, batch: int, rows: Sequence[InstructionRow], *, limit: int, sampled: int,
        dropped: dict[str, int], new_tokens: int, seconds: float,
    ) -> BatchResult:
        """Store one batch atomically with its bookkeeping row; skip texts already stored; keep at most
        ``limit`` new rows, so a job never overshoots its target."""
        keyed: dict[str, InstructionRow] = {}
        for row in rows:
            keyed.setdefault(text_key(row.text), row)
        within_batch_duplicates = len(rows) - len(keyed)
        with self.write() as con:
            existing = set()
            if keyed:
                found = con.execute("SELECT id FROM instructions WHERE list_contains(?, id)", [list(keyed)])
                existing = {key for (key,) in found.fetchall()}
            fresh = [(key, row) for key, row in keyed.items() if key not in existing][: max(limit, 0)]
            created = now()
            if fresh:
                con.executemany(
                    "INSERT INTO instructions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (key, r.text, len(r.text), r.n_tokens, r.model, r.prefix, r.temperature, r.top_p,
                         r.max_new_tokens, r.seed, r.job_id, r.batch, created)
                        for key, r in fresh
                    ],
                )
            duplicates = within_batch_duplicates + len(existing)
            all_dropped = {**dropped, "duplicate": dropped.get("duplicate", 0) + duplicates}
            con.execute(
                "INSERT INTO reconstruct_batches VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [job_id, batch, sampled, len(fresh), json.dumps(all_dropped, sort_keys=True), new_tokens, seconds,
                 created],
            )
        return BatchResult(stored=len(fresh), duplicates=duplicates)

    def job_progress(self, job_id: str) -> dict[str, Any]:
        """What a reconstruction job has committed so far: the next batch index and running totals."""
        with self.read() as con:
            batches, stored, sampled, tokens, seconds = con.execute(
                "SELECT count(*), coalesce(sum(stored), 0), coalesce(sum(sampled), 0), "
                "coalesce(sum(new_tokens), 0), coalesce(sum(seconds), 0) FROM reconstruct_batches WHERE job_id = ?",
                [job_id],
            ).fetchone()
            next_batch = con.execute(
                "SELECT coalesce(max(batch) + 1, 0) FROM reconstruct_batches WHERE job_id = ?", [job_id]
            ).fetchone()[0]
            dropped_rows = con.execute(
                "SELECT dropped_json FROM reconstruct_batches WHERE job_id = ?", [job_id]
            ).fetchall()
        dropped: dict[str, int] = {}
        for (text,) in dropped_rows:
            for reason, count in json.loads(text).items():
                dropped[reason] = dropped.get(reason, 0) + count
        return {"batches": batches, "next_batch": next_batch, "stored": stored, "sampled": sampled,
                "new_tokens": tokens, "seconds": seconds, "dropped": dropped}

    def count_instructions(self, search: str = "", job_id: str | None = None) -> int:
        where, params = _instruction_filter(search, job_id)
        with self.read() as con:
            return con.execute(f"SELECT count(*) FROM instructions {where}", params).fetchone()[0]

    def page_instructions(self, search: str = "", page: int = 1, page_size: int = 50,
                          job_id: str | None = None) -> list[dict[str, Any]]:
        """One page of instructions, newest first, filtered by a case-insensitive substring."""
        where, params = _instruction_filter(search, job_id)
        offset = max(page - 1, 0) * page_size
        with self.read() as con:
            cursor = con.execute(
                f"SELECT text, n_tokens, model, temperature, seed, job_id, created_at FROM instructions {where} "
                "ORDER BY created_at DESC, id LIMIT ? OFFSET ?",
                [*params, page_size, offset],
            )
            names = [column[0] for column in cursor.description]
            return [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]

    def instruction_lengths(self, job_id: str | None = None) -> list[int]:
        where, params = _instruction_filter("", job_id)
        with self.read() as con:
            return [n for (n,) in con.execute(f"SELECT n_tokens FROM instructions {where}", params).fetchall()]

    def job_instruction_ids(self, job_id: str) -> list[str]:
        with self.read() as con:
            return [i for (i,) in con.execute("SELECT id FROM instructions WHERE job_id = ?", [job_id]).fetchall()]


def _instruction_filter(search: str, job_id: str | None) -> tuple[str, list[Any]]:
    clauses, params = [], []
    if search.strip():
        clauses.append("contains(lower(text), lower(?))")
        params.append(search.strip())
    if job_id:
        clauses.append("job_id = ?")
        params.append(job_id)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), params

