"""User-typed SQL, run safely: `forgetless sql "SELECT ..."` and the app's "SQL WHERE" filter box.

Two independent layers, so that a gap in one is covered by the other:

1. **An allow-list over DuckDB's own syntax tree**, before anything touches the store. The parser must see
   exactly one statement of type SELECT (no INSERT/UPDATE/DELETE/CREATE/DROP, ATTACH, INSTALL/LOAD, COPY,
   PRAGMA, SET, EXPORT, CALL ...). Its tree (``json_serialize_sql``, which only parses) is then walked
   node by node, and every node must be of a kind listed in :mod:`core.store.sql_allowed`:

   * every function, operator, aggregate and window function is a named pure computation (string,
     regexp, math, date/time, list/struct/map, JSON extraction ...); nothing that reads or lists files,
     runs SQL given as data (``json_execute_serialized_sql``, ``query``), reveals settings or the
     environment (``current_setting``, ``getenv``, ``duckdb_settings``) or changes state;
   * FROM names only the store's own tables and views (asked of the attached store itself; for a WHERE
     clause, the tables the store's schema defines) or a CTE visible at that point of the query, with
     no catalog or schema other than the store's ``main``; so no ``FROM 'file.csv'``, no ``system.``,
     ``temp.``, ``information_schema``, ``pg_catalog`` views. The only table functions are the row
     generators ``range``, ``generate_series`` and ``unnest``; ``SHOW TABLES``, ``DESCRIBE``/``SUMMARIZE``
     of an allowed query, PIVOT/UNPIVOT, VALUES and subqueries are fine, their parts checked the same way;
   * a node of a kind not listed (a new expression class, a new FROM item, a qualified function name,
     a parameter, an ``AT (...)`` clause) is refused too.

   A refusal is one line: ``SQL refused: function read_text() is not allowed (user SQL may call only
   built-in computations over the store's tables)``.
2. **A sandboxed connection**: the store is attached READ_ONLY to an in-memory DuckDB whose external
   (file and network) access is disabled except for the store file itself (no temp directory either,
   which DuckDB would otherwise leave readable), that loads no extension and no Python object, and whose
   configuration is locked, so no statement can write, read another file, attach a database or switch
   those settings back on; a timer interrupts a query that runs too long.

A WHERE clause (:func:`validate_where`) is additionally checked on its own tokens (no comments, no
semicolons, balanced parentheses that never close the surrounding ``WHERE (...)``) and then embedded in
``SELECT * FROM explore_rows WHERE (<clause>)``, which must pass the checks above and still be that
one plain SELECT (no UNION, no ORDER BY/LIMIT, no CTE).
"""

from __future__ import annotations

import functools
import json
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from core.errors import ForgetlessError
from core.store.base import StoreBase, first_line, waiting_out_locks
from core.store.sql_allowed import TableName, check_tree, refuse

# The parser's in-memory database: no file access (not even a temp directory), no extension, settings frozen.
SANDBOX_CONFIG = {"enable_external_access": False, "temp_directory": "", "autoinstall_known_extensions": False,
                  "autoload_known_extensions": False, "python_enable_replacements": False,
                  "lock_configuration": True}
WHERE_TABLE = "explore_rows"
STORE_ALIAS = "store"
MAX_SQL_CHARS = 20_000
MAX_WHERE_CHARS = 2_000
# How a FROM may qualify a store table: not at all, main.t, store.t, store.main.t.
_STORE_QUALIFIERS = frozenset({("", ""), ("", "main"), ("", STORE_ALIAS), (STORE_ALIAS, "main")})


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
            raise ForgetlessError(f"SQL refused: {first_line(error)}") from error
    try:
        tree = json.loads(text)
    except RecursionError:
        raise ForgetlessError("SQL refused: nested too deeply") from None
    if tree.get("error"):
        raise ForgetlessError(f"SQL refused: {tree.get('error_message') or 'cannot be parsed as a SELECT'}")
    return tree


def check_select(sql: str, tables: frozenset[str]) -> str:
    """Return ``sql`` stripped if it is exactly one SELECT made only of allowed parts that reads only
    ``tables`` (the store's); else raise a one-line :class:`ForgetlessError`. Nothing is executed."""
    sql, _, names = _checked(sql)
    _check_tables(names, tables)
    return sql


def _checked(sql: str) -> tuple[str, dict[str, Any], list[TableName]]:
    """One SELECT whose tree passes the allow-lists: (stripped sql, tree, tables it reads)."""
    if not isinstance(sql, str) or not sql.strip():
        raise ForgetlessError("SQL refused: empty query")
    sql = sql.strip()
    if len(sql) > MAX_SQL_CHARS:
        raise ForgetlessError(f"SQL refused: longer than {MAX_SQL_CHARS} characters")
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as error:
        raise ForgetlessError(f"SQL syntax error: {first_line(error)}") from error
    if len(statements) != 1:
        raise ForgetlessError(f"SQL refused: exactly one statement allowed, got {len(statements)}")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise ForgetlessError(f"SQL refused: only SELECT queries are allowed (this is {kind.name})")
    tree = _parse_tree(sql)
    return sql, tree, check_tree(tree)


def _check_tables(names: list[TableName], tables: frozenset[str]) -> None:
    """Every table read must be one of ``tables`` (lower case), unqualified or in the store's main schema."""
    for catalog, schema, name in names:
        if (catalog.lower(), schema.lower()) not in _STORE_QUALIFIERS or name.lower() not in tables:
            refuse(f"table {'.'.join(filter(None, (catalog, schema, name)))!r}")


@functools.cache
def _store_tables(con: duckdb.DuckDBPyConnection) -> frozenset[str]:
    """The attached store's own tables and views (a trusted query, on the sandbox)."""
    rows = con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = $db AND schema_name = 'main' "
        "AND NOT internal AND NOT temporary UNION ALL "
        "SELECT view_name FROM duckdb_views() WHERE database_name = $db AND schema_name = 'main' "
        "AND NOT internal AND NOT temporary", {"db": STORE_ALIAS}).fetchall()
    return frozenset(str(name).lower() for (name,) in rows)


def _check_where_tokens(clause: str) -> None:
    """No comments, no semicolons, and parentheses that stay inside the surrounding ``WHERE (...)``."""
    try:
        tokens = duckdb.tokenize(clause)
    except duckdb.Error as error:  # pragma: no cover - the tokenizer is lenient
        raise ForgetlessError(f"SQL WHERE refused: {first_line(error)}") from error
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


def validate_where(clause: str, tables: frozenset[str]) -> str:
    """Check a user's WHERE clause for ``SELECT ... FROM explore_rows WHERE (<clause>)``; return it stripped.

    Raises a one-line :class:`ForgetlessError` for anything but a boolean condition: comments, semicolons,
    a ``)`` that escapes the parentheses (``1=1) UNION SELECT ...``), anything the allow-lists do not name
    (a subquery may read only ``tables``, the store's), or a clause that turns the query into something other
    than one plain SELECT over explore_rows. Column names are checked when the query runs (in the
    sandboxed connection)."""
    if not isinstance(clause, str) or not clause.strip():
        raise ForgetlessError("SQL WHERE refused: empty clause")
    clause = clause.strip()
    if len(clause) > MAX_WHERE_CHARS:
        raise ForgetlessError(f"SQL WHERE refused: longer than {MAX_WHERE_CHARS} characters")
    _check_where_tokens(clause)
    _, tree, names = _checked(where_query(clause))
    _check_tables(names, tables)
    node = tree["statements"][0]["node"]
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
_MAX_SANDBOXES = 4
_sandboxes: OrderedDict[str, duckdb.DuckDBPyConnection] = OrderedDict()


def _new_sandbox(path: str) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB whose only reachable files are this store and its WAL, locked that way.

    No temp directory from the start: DuckDB allows its temp directory (``<cwd>/.tmp/`` by default) even
    with external access disabled. Python objects are not scanned as tables either."""
    con = duckdb.connect(":memory:", config={"temp_directory": "", "python_enable_replacements": False})
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
    path = Path(db_path).resolve()
    if not path.exists():
        raise ForgetlessError(f"no store at {db_path}")
    key = str(path)
    with StoreBase._process_lock:
        con = _sandbox(key)
        try:
            waiting_out_locks(lambda: con.execute(f"ATTACH ? AS {STORE_ALIAS} (READ_ONLY)", [key]), db_path)
        except ForgetlessError:
            _discard_sandbox(key)
            raise
        except duckdb.Error as error:
            _discard_sandbox(key)
            raise ForgetlessError(f"cannot open {db_path}: {first_line(error)}") from error
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
                if timer.ident is not None:  # a timer thread still alive at exit would hold the
                    timer.join()  # connection and make nanobind report leaks
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
    sql, _, names = _checked(sql)
    with readonly_connection(db_path, timeout_s=timeout_s) as con:
        _check_tables(names, _store_tables(con))
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
            raise ForgetlessError(f"SQL error: {first_line(error)}") from error
    truncated = len(frame) > max_rows
    frame = frame.iloc[:max_rows].reset_index(drop=True)
    frame.attrs["truncated"] = truncated
    return frame
