"""User-typed SQL, run safely: `forgetless sql "SELECT ..."` and the app's "SQL WHERE" filter box.

Two independent layers, so that a gap in one is covered by the other:

1. **Static checks** before anything touches the store: DuckDB's own parser must see exactly one
   statement of type SELECT (no INSERT/UPDATE/DELETE/CREATE/DROP, ATTACH, INSTALL/LOAD, COPY, PRAGMA,
   SET, EXPORT, CALL ...), and its syntax tree (``json_serialize_sql``) must not name a function that
   reads files or runs SQL from a string (``read_csv``, ``glob``, ``query`` ...) nor a file as a table
   (``FROM 'file.csv'``).
2. **A sandboxed connection**: the store is attached READ_ONLY to an in-memory DuckDB whose external
   (file and network) access is disabled except for the store file itself, and whose configuration
   is locked, so no statement can write, read another file, attach a database, load an extension or
   switch those settings back on; a timer interrupts a query that runs too long.

A WHERE clause (:func:`validate_where`) is additionally checked on its own tokens (no comments, no
semicolons, balanced parentheses that never close the surrounding ``WHERE (...)``) and then embedded in
``SELECT * FROM explore_rows WHERE (<clause>)``, which must pass the checks above and still be that
one plain SELECT (no UNION, no ORDER BY/LIMIT, no CTE).
"""

from __future__ import annotations

import json
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from core.errors import ForgetlessError

# The parser's in-memory database: no file access, settings frozen.
SANDBOX_CONFIG = {"enable_external_access": False, "lock_configuration": True}
WHERE_TABLE = "explore_rows"
MAX_SQL_CHARS = 20_000
MAX_WHERE_CHARS = 2_000
_LOCK_WAIT_S = 30.0

# Functions that read files / URLs or execute SQL given as a string. External access is disabled
# anyway; refusing them up front gives a clear message and a second line of defence.
_DENIED_FUNCTIONS = frozenset({
    "glob", "query", "query_table", "sniff_csv", "getenv", "load_extension", "install_extension",
    "checkpoint", "force_checkpoint", "ducklake_snapshots",
})
_DENIED_PREFIXES = ("read_", "parquet_", "iceberg_", "delta_", "sqlite_", "postgres_", "mysql_", "httpfs_",
                    "s3_", "azure_", "lance_", "excel_", "ducklake_")
_DENIED_SUFFIXES = ("_scan",)
_FILE_LIKE = ("/", "\\", ".", ":", "*", "?", "~")


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


# -- static checks --------------------------------------------------------------------------------
_parser_lock = threading.Lock()
_parser: duckdb.DuckDBPyConnection | None = None


def _parse_tree(sql: str) -> dict[str, Any]:
    """DuckDB's syntax tree of one SELECT (``json_serialize_sql`` only parses; nothing runs).

    Uses one private in-memory sandboxed database, kept for the process: starting a DuckDB instance
    costs ~15 ms (it builds its function catalog), too much for every keystroke of a filter."""
    global _parser
    with _parser_lock:
        try:
            if _parser is None:
                _parser = duckdb.connect(":memory:", config=SANDBOX_CONFIG)
            text = _parser.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()[0]
        except duckdb.Error as error:
            raise ForgetlessError(f"SQL refused: {_one_line(error)}") from error
    tree = json.loads(text)
    if tree.get("error"):
        raise ForgetlessError(f"SQL refused: {tree.get('error_message') or 'cannot be parsed as a SELECT'}")
    return tree


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _denied_function(name: str) -> bool:
    name = name.lower()
    return name in _DENIED_FUNCTIONS or name.startswith(_DENIED_PREFIXES) or name.endswith(_DENIED_SUFFIXES)


def _check_tree(tree: dict[str, Any]) -> None:
    for node in _walk(tree):
        if node.get("class") == "FUNCTION" or node.get("type") == "FUNCTION":
            name = str(node.get("function_name", ""))
            if _denied_function(name):
                raise ForgetlessError(f"SQL refused: function {name}() reads files or runs SQL; not allowed here")
        if node.get("type") == "BASE_TABLE":
            name = str(node.get("table_name", ""))
            if any(mark in name for mark in _FILE_LIKE):
                raise ForgetlessError(f"SQL refused: reading files is not allowed ({name!r} is not a table)")


def check_select(sql: str) -> str:
    """Return ``sql`` stripped if it is exactly one SELECT that names no file-reading function; else raise
    a one-line :class:`ForgetlessError`. Nothing is executed."""
    return _checked(sql)[0]


def _checked(sql: str) -> tuple[str, dict[str, Any]]:
    if not isinstance(sql, str) or not sql.strip():
        raise ForgetlessError("SQL refused: empty query")
    sql = sql.strip()
    if len(sql) > MAX_SQL_CHARS:
        raise ForgetlessError(f"SQL refused: longer than {MAX_SQL_CHARS} characters")
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as error:
        raise ForgetlessError(f"SQL syntax error: {_one_line(error)}") from error
    if len(statements) != 1:
        raise ForgetlessError(f"SQL refused: exactly one statement allowed, got {len(statements)}")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise ForgetlessError(f"SQL refused: only SELECT queries are allowed (this is {kind.name})")
    tree = _parse_tree(sql)
    _check_tree(tree)
    return sql, tree


def _check_where_tokens(clause: str) -> None:
    """No comments, no semicolons, and parentheses that stay inside the surrounding ``WHERE (...)``."""
    try:
        tokens = duckdb.tokenize(clause)
    except duckdb.Error as error:  # pragma: no cover - the tokenizer is lenient
        raise ForgetlessError(f"SQL WHERE refused: {_one_line(error)}") from error
    depth = 0
    for index, (start, kind) in enumerate(tokens):
        end = tokens[index + 1][0] if index + 1 < len(tokens) else len(clause)
        text = clause[start:end]
        if kind == duckdb.token_type.comment:
            raise ForgetlessError("SQL WHERE refused: comments are not allowed")
        if kind == duckdb.token_type.operator:
            if ";" in text:
                raise ForgetlessError("SQL WHERE refused: semicolons are not allowed")
            for char in text:
                depth += {"(": 1, ")": -1}.get(char, 0)
                if depth < 0:
                    raise ForgetlessError("SQL WHERE refused: unbalanced ')'")
    if depth:
        raise ForgetlessError("SQL WHERE refused: unbalanced '('")


def where_query(clause: str) -> str:
    return f"SELECT * FROM {WHERE_TABLE} WHERE ({clause})"


def validate_where(clause: str) -> str:
    """Check a user's WHERE clause for ``SELECT ... FROM explore_rows WHERE (<clause>)``; return it stripped.

    Raises a one-line :class:`ForgetlessError` for anything but a boolean condition: comments, semicolons,
    a ``)`` that escapes the parentheses (``1=1) UNION SELECT ...``), file-reading functions, or a clause
    that turns the query into something other than one plain SELECT over explore_rows. Column names are
    checked when the query runs (in the sandboxed connection)."""
    if not isinstance(clause, str) or not clause.strip():
        raise ForgetlessError("SQL WHERE refused: empty clause")
    clause = clause.strip()
    if len(clause) > MAX_WHERE_CHARS:
        raise ForgetlessError(f"SQL WHERE refused: longer than {MAX_WHERE_CHARS} characters")
    _check_where_tokens(clause)
    sql = where_query(clause)
    node = _checked(sql)[1]["statements"][0]["node"]
    source = node.get("from_table") or {}
    plain = (
        node.get("type") == "SELECT_NODE"
        and not node.get("modifiers")
        and not (node.get("cte_map") or {}).get("map")
        and not node.get("group_expressions")
        and node.get("having") is None
        and node.get("qualify") is None
        and node.get("sample") is None
        and source.get("type") == "BASE_TABLE"
        and source.get("sample") is None
        and not source.get("schema_name") and not source.get("catalog_name")
        and source.get("table_name") == WHERE_TABLE
        and len(node.get("select_list") or []) == 1
    )
    if not plain:
        raise ForgetlessError("SQL WHERE refused: only a condition is allowed (no UNION, ORDER BY, LIMIT ...)")
    return clause


# -- the sandboxed connection -----------------------------------------------------------------------
STORE_ALIAS = "store"
_MAX_SANDBOXES = 4
_sandboxes: OrderedDict[str, duckdb.DuckDBPyConnection] = OrderedDict()


def _new_sandbox(path: str) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB whose only reachable files are this store and its WAL, locked that way."""
    con = duckdb.connect(":memory:")
    try:
        con.execute("SET allowed_paths = ?", [[path, path + ".wal"]])
        con.execute("SET autoinstall_known_extensions = false")
        con.execute("SET autoload_known_extensions = false")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    except BaseException:
        con.close()
        raise
    return con


def _sandbox(path: str) -> duckdb.DuckDBPyConnection:
    """The cached sandbox of one store (caller holds the process lock). Starting a DuckDB instance costs
    ~15-20 ms (it builds its function catalog); attaching a file to a running one ~2 ms."""
    con = _sandboxes.pop(path, None)
    if con is None:
        con = _new_sandbox(path)
    _sandboxes[path] = con
    while len(_sandboxes) > _MAX_SANDBOXES:
        _sandboxes.popitem(last=False)[1].close()
    return con


def _discard_sandbox(path: str) -> None:
    con = _sandboxes.pop(path, None)
    if con is not None:
        with suppress(duckdb.Error):
            con.close()


@contextmanager
def readonly_connection(db_path: str | Path, *, timeout_s: float | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """The store, read-only, in a sandbox with external access disabled and the configuration locked.

    The store file is attached READ_ONLY (and made the default database) to a per-store in-memory DuckDB
    that can reach no other file, and detached on exit, so no handle outlives the call and a writer in
    another process is blocked only while the query runs. Takes the store's process lock (DuckDB refuses
    a second handle on an open file within a process) and waits out another process's write lock like
    the store does. With ``timeout_s``, a query still running then is interrupted (duckdb.InterruptException)."""
    from core.store.base import StoreBase  # lazy: core.store imports this module

    path = Path(db_path).resolve()
    if not path.exists():
        raise ForgetlessError(f"no store at {db_path}")
    key = str(path)
    deadline = time.monotonic() + _LOCK_WAIT_S
    with StoreBase._process_lock:
        con = _sandbox(key)
        while True:
            try:
                con.execute(f"ATTACH ? AS {STORE_ALIAS} (READ_ONLY)", [key])
                break
            except duckdb.IOException as error:
                if "lock" not in str(error).lower() or time.monotonic() > deadline:
                    _discard_sandbox(key)
                    raise ForgetlessError(f"cannot open {db_path}: {_one_line(error)}") from error
                time.sleep(0.05)
            except duckdb.Error as error:
                _discard_sandbox(key)
                raise ForgetlessError(f"cannot open {db_path}: {_one_line(error)}") from error
        timer = threading.Timer(timeout_s, con.interrupt) if timeout_s else None
        try:
            con.execute(f"USE {STORE_ALIAS}")
            if timer:
                timer.daemon = True
                timer.start()
            yield con
        finally:
            if timer:
                timer.cancel()
            try:
                con.execute("USE memory")
                con.execute(f"DETACH {STORE_ALIAS}")
            except duckdb.Error:  # e.g. after an interrupt: start afresh next time
                _discard_sandbox(key)


def run_readonly_sql(db_path: str | Path, sql: str, *, max_rows: int = 1000, timeout_s: float = 30.0) -> pd.DataFrame:
    """Run one user-typed SELECT against the store in the sandbox; at most ``max_rows`` rows come back
    (``frame.attrs["truncated"]`` says whether more existed). Anything else raises a one-line
    :class:`ForgetlessError` and leaves the store untouched."""
    if max_rows < 1:
        raise ForgetlessError("max_rows must be at least 1")
    sql = check_select(sql)
    with readonly_connection(db_path, timeout_s=timeout_s) as con:
        try:
            relation = con.sql(sql)
            if relation is None:  # not a query after all (cannot happen after check_select)
                raise ForgetlessError("SQL refused: the statement returns no rows")
            with warnings.catch_warnings():  # duckdb's TIMESTAMPTZ export uses a pandas-deprecated keyword
                warnings.filterwarnings("ignore", message="The inplace keyword")
                frame = relation.limit(max_rows + 1).df()
            del relation
        except duckdb.InterruptException as error:
            raise ForgetlessError(f"SQL cancelled: ran longer than {timeout_s:g} s") from error
        except duckdb.Error as error:
            raise ForgetlessError(f"SQL error: {_one_line(error)}") from error
    truncated = len(frame) > max_rows
    frame = frame.iloc[:max_rows].reset_index(drop=True)
    frame.attrs["truncated"] = truncated
    return frame
