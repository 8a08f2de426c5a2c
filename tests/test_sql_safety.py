"""User-typed SQL: only one SELECT runs, read-only, without file access; everything else is refused in
one line and leaves the store byte-for-byte unchanged."""

from __future__ import annotations

import hashlib
from pathlib import Path

import duckdb
import pytest

from core.errors import ForgetlessError
from core.sql_safety import check_select, readonly_connection, run_readonly_sql, validate_where
from core.store.explore import ExploreFilters
from tests.test_explore import build_store

TABLES = ("instructions", "responses", "scores", "consensus", "best_responses", "instruction_profile",
          "selections", "explore_rows", "explore_scores")


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sql")
    (folder / "secret.csv").write_text("a,b\n1,2\n")
    return build_store(folder / "forgetless.duckdb").path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def row_counts(path: Path) -> dict[str, int]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return {table: con.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in TABLES}
    finally:
        con.close()


REFUSED = [
    "INSERT INTO selections VALUES ('x', '{}', now())",
    "UPDATE instructions SET text = 'x'",
    "DELETE FROM instructions",
    "CREATE TABLE t AS SELECT 1",
    "CREATE TEMP TABLE t AS SELECT 1",
    "CREATE VIEW v AS SELECT 1",
    "CREATE MACRO m() AS 1",
    "DROP TABLE instructions",
    "ALTER TABLE instructions ADD COLUMN c INTEGER",
    "TRUNCATE instructions",
    "MERGE INTO selections USING (SELECT 1 AS name) s ON selections.name = s.name WHEN MATCHED THEN DELETE",
    "ATTACH '/tmp/other.duckdb' AS other",
    "ATTACH ':memory:' AS other",
    "DETACH store",
    "USE memory",
    "INSTALL httpfs",
    "LOAD httpfs",
    "COPY instructions TO '/tmp/leak.csv'",
    "COPY selections FROM '/etc/passwd'",
    "EXPORT DATABASE '/tmp/leak'",
    "PRAGMA database_list",
    "PRAGMA enable_profiling",
    "SET enable_external_access = true",
    "SET lock_configuration = false",
    "RESET threads",
    "SET VARIABLE x = 1",
    "CALL pragma_version()",
    "CHECKPOINT",
    "VACUUM",
    "BEGIN TRANSACTION",
    "PREPARE p AS SELECT 1",
    "EXPLAIN SELECT 1",
    "PIVOT instructions ON model",
    "SELECT 1; SELECT 2",
    "SELECT 1; DROP TABLE instructions",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_csv_auto('secret.csv')",
    "SELECT * FROM read_text('/etc/hostname')",
    "SELECT * FROM read_blob('/etc/hostname')",
    "SELECT * FROM read_parquet('x.parquet')",
    "SELECT * FROM read_json('x.json')",
    "SELECT * FROM parquet_scan('x.parquet')",
    "SELECT * FROM '/etc/passwd'",
    "SELECT * FROM 'secret.csv'",
    "FROM \"secret.csv\"",
    "SELECT * FROM glob('/etc/*')",
    "SELECT * FROM query('SELECT 1')",
    "SELECT * FROM query_table('instructions')",
    "SELECT * FROM sniff_csv('/etc/passwd')",
    "SELECT count(*) FROM instructions WHERE id IN (SELECT column0 FROM read_csv('/etc/passwd'))",
    "WITH x AS (SELECT * FROM read_csv('/etc/passwd')) SELECT * FROM x",
    "",
    "   ",
    "SELEC 1",
    "SELECT * FROM",
]


@pytest.mark.parametrize("sql", REFUSED)
def test_refused_queries_leave_the_store_unchanged(db: Path, sql: str):
    before_hash, before_counts = digest(db), row_counts(db)
    with pytest.raises(ForgetlessError) as caught:
        run_readonly_sql(db, sql)
    message = str(caught.value)
    assert message and "\n" not in message
    assert digest(db) == before_hash
    assert row_counts(db) == before_counts


ALLOWED = [
    ("SELECT count(*) AS n FROM instructions", [6]),
    ("FROM instructions SELECT count(*)", [6]),
    ("SELECT count(*) FROM instructions i JOIN responses r ON r.instruction_id = i.id", [9]),
    ("WITH j AS (SELECT judge, avg(score) AS mean FROM scores WHERE NOT failed AND method = 'probs' GROUP BY judge) "
     "SELECT count(*) FROM j", [2]),
    ("SELECT count(*) FROM (SELECT model, count(*) FROM responses GROUP BY model HAVING count(*) > 4)", [1]),
    ("SELECT max(rank) FROM (SELECT rank() OVER (ORDER BY mean DESC) AS rank FROM consensus)", [9]),
    ("SELECT count(*) FROM explore_rows WHERE consensus >= 3 AND category = 'coding'", [2]),
    ("SELECT 1 UNION ALL SELECT 2", [1, 2]),
    ("SELECT 'DROP TABLE instructions; --' AS s", ["DROP TABLE instructions; --"]),
    ("SELECT count(*) FROM instructions;", [6]),
    ("SELECT count(*) FROM main.instructions", [6]),
]


@pytest.mark.parametrize(("sql", "first_column"), ALLOWED)
def test_selects_run(db: Path, sql: str, first_column: list):
    before = digest(db)
    frame = run_readonly_sql(db, sql)
    assert frame.iloc[:, 0].tolist() == first_column
    assert not frame.attrs["truncated"]
    assert digest(db) == before


def test_show_and_describe_are_selects(db: Path):
    assert "instructions" in run_readonly_sql(db, "SHOW TABLES").iloc[:, 0].tolist()
    assert "text" in run_readonly_sql(db, "DESCRIBE instructions").iloc[:, 0].tolist()


def test_rows_are_capped(db: Path):
    frame = run_readonly_sql(db, "SELECT * FROM range(5000) ORDER BY range DESC", max_rows=10)
    assert len(frame) == 10 and frame.attrs["truncated"] and frame.iloc[0, 0] == 4999
    with pytest.raises(ForgetlessError):
        run_readonly_sql(db, "SELECT 1", max_rows=0)


def test_long_query_is_interrupted(db: Path):
    with pytest.raises(ForgetlessError, match="cancelled"):
        run_readonly_sql(db, "SELECT sum(hash(i)) FROM range(10000000000) t(i)", timeout_s=0.3)
    assert run_readonly_sql(db, "SELECT 42").iloc[0, 0] == 42  # the sandbox still works


def test_errors_are_one_line(db: Path):
    for sql in ("SELECT no_such_column FROM instructions", "SELECT * FROM no_such_table", "SELECT 1/'a'"):
        with pytest.raises(ForgetlessError) as caught:
            run_readonly_sql(db, sql)
        assert "\n" not in str(caught.value)
    with pytest.raises(ForgetlessError, match="no store"):
        run_readonly_sql(db.parent / "missing.duckdb", "SELECT 1")


def test_sandbox_itself_blocks_writes_and_files(db: Path):
    """The second layer, without the static checks: read-only, no file access, settings locked."""
    before = digest(db)
    attempts = [
        "INSERT INTO selections VALUES ('x', '{}', now())",
        "DROP TABLE instructions",
        "SELECT * FROM read_csv('/etc/passwd')",
        f"SELECT * FROM read_csv('{db.parent / 'secret.csv'}')",
        "ATTACH '/tmp/forgetless-other.duckdb' AS other",
        "COPY instructions TO '/tmp/forgetless-leak.csv'",
        "SET enable_external_access = true",
        "SET lock_configuration = false",
        "INSTALL httpfs",
    ]
    for sql in attempts:
        with readonly_connection(db) as con, pytest.raises(duckdb.Error):
            con.execute(sql)
    assert not Path("/tmp/forgetless-leak.csv").exists()
    with readonly_connection(db) as con:
        assert con.execute("SELECT current_setting('enable_external_access')").fetchone()[0] is False
        assert con.execute("SELECT current_setting('lock_configuration')").fetchone()[0] is True
    assert digest(db) == before


def test_store_writes_work_after_sandboxed_reads(tmp_path: Path):
    store = build_store(tmp_path / "s.duckdb")
    run_readonly_sql(store.path, "SELECT count(*) FROM instructions")
    store.save_selection("after", ExploreFilters(consensus_min=2))  # a write right after a sandboxed read
    assert run_readonly_sql(store.path, "SELECT name FROM selections").iloc[0, 0] == "after"
    con = duckdb.connect(str(store.path))  # the file is not held open between calls
    con.close()


def test_check_select_uses_the_parser_not_keywords():
    assert check_select("  SELECT 'delete from x' AS s  ") == "SELECT 'delete from x' AS s"
    assert check_select("SELECT 1 AS \"drop\"")
    with pytest.raises(ForgetlessError, match="DELETE"):
        check_select("delete from x")
    with pytest.raises(ForgetlessError, match="exactly one"):
        check_select("SELECT 1; SELECT 2")


WHERE_OK = [
    "consensus > 4",
    "category = 'a)b' AND cluster IN (1, 2)",
    "instruction ILIKE '%--%'",
    "row_id IN (SELECT row_id FROM explore_scores WHERE judge = 'j1' AND score < 2)",
    "coalesce(difficulty, 0) BETWEEN 1 AND 3 OR n_responses = 0",
]
WHERE_REFUSED = [
    "",
    "1=1) UNION SELECT * FROM instructions WHERE (1=1",
    "1=1) UNION (SELECT * FROM instructions",
    "1=1); DROP TABLE instructions; --",
    "1=1; DROP TABLE instructions",
    "1=1 -- the rest",
    "1=1 /* hidden */",
    "consensus > (SELECT 1",
    "1=1) OR (1=1",
    "1=1) ORDER BY (1",
    "1=1) LIMIT (1",
    "1=1) GROUP BY ALL HAVING (1",
    "read_csv('/etc/passwd') IS NOT NULL",
    "EXISTS (SELECT * FROM '/etc/passwd')",
    "EXISTS (SELECT * FROM glob('/etc/*'))",
    "1=1 ORDER BY 1",
    "x" * 3000,
]


@pytest.mark.parametrize("clause", WHERE_OK)
def test_where_clauses_allowed(db: Path, clause: str):
    assert validate_where(f"  {clause} ") == clause
    run_readonly_sql(db, f"SELECT count(*) FROM explore_rows WHERE ({clause})")


@pytest.mark.parametrize("clause", WHERE_REFUSED)
def test_where_clauses_refused(db: Path, clause: str):
    before = digest(db)
    with pytest.raises(ForgetlessError) as caught:
        validate_where(clause)
    assert "\n" not in str(caught.value)
    assert digest(db) == before
