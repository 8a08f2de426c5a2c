"""The DuckDB connection discipline shared by every query module of the store.

DuckDB lets one process write a file or many read it, never both at once, and a background job
writes while the app reads. So no connection is held open: each read or write opens the file, does
its work inside one transaction, and closes it; a lock held by another process is waited out.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Self

import duckdb

from core.errors import ForgetlessError
from core.store.schema import SCHEMA, SCHEMA_VERSION

STORE_FILE = "forgetless.duckdb"
_LOCK_WAIT_S = 30.0


def text_key(text: str) -> str:
    """The exact-dedup key: case and whitespace differences do not make a new instruction."""
    normalised = re.sub(r"\s+", " ", text.strip().lower())
    return hashlib.sha1(normalised.encode("utf-8")).hexdigest()[:20]


def now() -> datetime:
    return datetime.now(UTC)


class StoreBase:
    """One DuckDB file per workspace; every method opens, works in a transaction, and closes."""

    # Within a process DuckDB refuses a read-only and a read-write handle on one file at once.
    _process_lock = threading.RLock()

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.write() as con:
            con.execute(SCHEMA[0])
            version = con.execute("SELECT max(version) FROM schema_version").fetchone()[0]
            if version is not None and version > SCHEMA_VERSION:
                raise ForgetlessError(f"{self.path} was written by a newer Forgetless (schema {version})")
            if version != SCHEMA_VERSION:  # migrations so far only add tables
                for statement in SCHEMA[1:]:
                    con.execute(statement)
                con.execute("DELETE FROM schema_version")
                con.execute("INSERT INTO schema_version VALUES (?)", [SCHEMA_VERSION])

    @classmethod
    def for_workspace(cls, workspace: Path) -> Self:
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
