"""User-typed SQL: only one SELECT runs, read-only, without file access; everything else is refused in
one line and leaves the store byte-for-byte unchanged."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import duckdb
import pytest

from core.errors import ForgetlessError
from core.store.explore import ExploreFilters
from core.store.schema import table_names
from core.store.sql_safety import check_select, readonly_connection, run_readonly_sql, validate_where
from tests.helpers import ROOT, build_explore_store
from tests.sql_store import digest, row_counts, sql_store


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    return sql_store(tmp_path_factory.mktemp("sql"))


STORE_TABLES = table_names()
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
    store = build_explore_store(tmp_path / "s.duckdb")
    run_readonly_sql(store.path, "SELECT count(*) FROM instructions")
    store.save_selection("after", ExploreFilters(consensus_min=2))  # a write right after a sandboxed read
    assert run_readonly_sql(store.path, "SELECT name FROM selections").iloc[0, 0] == "after"
    con = duckdb.connect(str(store.path))  # the file is not held open between calls
    con.close()


def test_check_select_uses_the_parser_not_keywords():
    assert check_select("  SELECT 'delete from x' AS s  ", STORE_TABLES) == "SELECT 'delete from x' AS s"
    assert check_select("SELECT 1 AS \"drop\"", STORE_TABLES)
    with pytest.raises(ForgetlessError, match="DELETE"):
        check_select("delete from x", STORE_TABLES)
    with pytest.raises(ForgetlessError, match="exactly one"):
        check_select("SELECT 1; SELECT 2", STORE_TABLES)


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
    assert validate_where(f"  {clause} ", STORE_TABLES) == clause
    run_readonly_sql(db, f"SELECT count(*) FROM explore_rows WHERE ({clause})")


@pytest.mark.parametrize("clause", WHERE_REFUSED)
def test_where_clauses_refused(db: Path, clause: str):
    before = digest(db)
    with pytest.raises(ForgetlessError) as caught:
        validate_where(clause, STORE_TABLES)
    assert "\n" not in str(caught.value)
    assert digest(db) == before



# -- ordinary analysis still works ------------------------------------------------------------------------
ORDINARY = [
    ("SELECT model, count(*) AS n FROM responses GROUP BY model ORDER BY model", [("model-a", 5), ("model-b", 4)]),
    ("SELECT r.model, count(DISTINCT i.id) FROM instructions i JOIN responses r ON r.instruction_id = i.id "
     "JOIN scores s ON s.response_id = r.id WHERE s.method = 'probs' AND NOT s.failed GROUP BY ALL ORDER BY 1",
     [("model-a", 5), ("model-b", 4)]),
    ("WITH j AS (SELECT judge, avg(score) AS mean FROM scores WHERE method = 'probs' AND NOT failed GROUP BY judge) "
     "SELECT judge, round(mean, 2) FROM j ORDER BY judge", [("j1", 2.93), ("j2", 3.12)]),
    ("WITH instructions AS (SELECT 1 AS x) SELECT * FROM instructions", [(1,)]),  # a CTE may shadow a table
    ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 4) SELECT sum(n) FROM r", [(10,)]),
    ("SELECT text FROM instructions QUALIFY row_number() OVER (ORDER BY n_tokens DESC, text) <= 2 ORDER BY text",
     [("Write a Python function to sort a list",), ("Write a python function that sorts a list",)]),
    ("SELECT max(r), max(d), sum(l), max(t) FROM (SELECT rank() OVER w AS r, dense_rank() OVER w AS d, "
     "lag(n_tokens, 1, 0) OVER w AS l, ntile(2) OVER w AS t FROM instructions WINDOW w AS (ORDER BY n_tokens))",
     [(5, 5, 24, 2)]),
    ("SELECT count(*) FROM instructions WHERE text LIKE 'Write%' AND text ILIKE '%PYTHON%' AND text NOT LIKE '%poem%'",
     [(2,)]),
    (r"SELECT regexp_extract(text, '(\w+)$', 1), regexp_replace(text, '\s+', '_', 'g') FROM instructions "
     "WHERE regexp_matches(text, '^Plan') AND text SIMILAR TO 'Plan.*'", [("Paris", "Plan_a_trip_to_Paris")]),
    ("SELECT name, filters_json ->> '$.categories[0]', json_extract(filters_json, '$.consensus_min')::DOUBLE "
     "FROM selections", [("picked", "coding", 3.0)]),
    ("SELECT len(list(DISTINCT judge)), list_sort(list(DISTINCT judge))[1], list_contains(list(judge), 'j3') "
     "FROM scores", [(3, "j1", True)]),
    ("SELECT len(string_split(text, ' ')), list_transform(string_split(text, ' '), lambda w: upper(w))[2], "
     "[w FOR w IN string_split(text, ' ') IF len(w) > 4][-1] FROM instructions WHERE text = 'Explain the tides'",
     [(3, "THE", "tides")]),
    ("SELECT CASE WHEN n_tokens >= 6 THEN 'long' WHEN n_tokens >= 3 THEN 'mid' ELSE 'short' END AS size, count(*) "
     "FROM instructions GROUP BY size ORDER BY size", [("long", 3), ("mid", 2), ("short", 1)]),
    ("SELECT count(*) FROM instructions WHERE created_at <= now() AND created_at > now() - INTERVAL 1 DAY "
     "AND date_trunc('day', created_at) <= now() AND strftime(created_at, '%Y') = CAST(year(created_at) AS VARCHAR) "
     "AND EXTRACT(month FROM created_at) BETWEEN 1 AND 12 AND date_diff('day', created_at, now()) <= 1", [(6,)]),
    ("SELECT category, count(*) FROM explore_rows WHERE category IS NOT NULL GROUP BY ALL ORDER BY ALL",
     [("advice", 1), ("coding", 2), ("knowledge", 1)]),
    ("SELECT count(*) FROM explore_rows WHERE coalesce(difficulty, 0) BETWEEN 1 AND 3 "
     "AND category IN ('coding', 'advice') AND nullif(category, 'x') IS NOT NULL", [(3,)]),
    ("SELECT count(*) FROM store.instructions, store.main.responses", [(54,)]),
    ("SELECT 1 /* ; */", [(1,)]),  # a comment is a comment: nothing after it runs
]


@pytest.mark.parametrize(("sql", "rows"), ORDINARY)
def test_ordinary_queries_run(db: Path, sql: str, rows: list[tuple]):
    before = digest(db)
    frame = run_readonly_sql(db, sql)
    assert [tuple(row) for row in frame.itertuples(index=False)] == rows
    assert digest(db) == before


# -- no leaked duckdb objects at exit (nanobind reports them on stderr) ----------------------------------
def test_no_timer_thread_outlives_a_query(db: Path):
    """The timeout timer holds the connection; alive at interpreter exit, it made nanobind print ~40 lines."""
    run_readonly_sql(db, "SELECT count(*) FROM instructions", timeout_s=30)
    with pytest.raises(ForgetlessError):
        run_readonly_sql(db, "SELECT no_such_column FROM instructions", timeout_s=30)
    assert not [thread for thread in threading.enumerate() if isinstance(thread, threading.Timer)]


def test_cli_sql_prints_no_nanobind_leaks(db: Path):
    for index in range(6):
        sql = "SELECT model, count(*) FROM responses GROUP BY model" if index % 2 else "SELECT nope FROM scores"
        done = subprocess.run([sys.executable, "-m", "core.cli", "sql", "--workspace", str(db.parent), sql],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == (0 if index % 2 else 2), done.stderr
        assert "nanobind" not in done.stderr
