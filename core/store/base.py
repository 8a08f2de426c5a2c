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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Self, TypeVar

import duckdb

from core.errors import ForgetlessError
from core.store.schema import migrate

STORE_FILE = "forgetless.duckdb"
LOCK_WAIT_S = 30.0

T = TypeVar("T")


def text_key(text: str) -> str:
    """The exact-dedup key: case and whitespace differences do not make a new instruction."""
    normalised = re.sub(r"\s+", " ", text.strip().lower())
    return hashlib.sha1(normalised.encode("utf-8")).hexdigest()[:20]


def now() -> datetime:
    return datetime.now(UTC)


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def waiting_out_locks(open_file: Callable[[], T], what: str | Path) -> T:
    """``open_file()``, retried while another process holds the file's lock (a background job writing, for
    at most LOCK_WAIT_S); any other failure to open, or a lock held longer, is one line naming ``what``."""
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            return open_file()
        except duckdb.IOException as error:
            if "lock" not in str(error).lower() or time.monotonic() > deadline:
                raise ForgetlessError(f"cannot open {what}: {first_line(error)}") from error
            time.sleep(0.05)


class StoreBase:
    """One DuckDB file per workspace; every method opens, works in a transaction, and closes."""

    # Within a process DuckDB refuses a read-only and a read-write handle on one file at once.
    _process_lock = threading.RLock()

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.write() as con:
            migrate(con, self.path)

    @classmethod
    def for_workspace(cls, workspace: Path) -> Self:
        return cls(Path(workspace) / STORE_FILE)

    @contextmanager
    def _connect(self, read_only: bool) -> Iterator[duckdb.DuckDBPyConnection]:
        if read_only and not self.path.exists():
            raise ForgetlessError(f"no store at {self.path}")
        with self._process_lock:
            con = waiting_out_locks(lambda: duckdb.connect(str(self.path), read_only=read_only), self.path)
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
