"""User-typed SQL against a hostile campaign: every way in that was tried — file readers, settings, nested
queries, serialized plans, comments hiding a second statement — each refused in one line that never carries the
secret, through the function, the CLI and the Explore WHERE box, with the store byte-for-byte unchanged."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

import core.store.sql_safety as sql_safety
from core.cli.main import main
from core.errors import ForgetlessError
from core.store.explore import ExploreFilters
from core.store.schema import table_names
from core.store.sql_safety import check_select, readonly_connection, run_readonly_sql, validate_where
from tests.sql_store import digest, row_counts, sql_store

STORE_TABLES = table_names()


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    return sql_store(tmp_path_factory.mktemp("sql"))


SECRET = "SECRET-d41c7e"  # the content of <cwd>/.tmp/secret.txt; must never come back in any form
SECRET_FILE = ".tmp/secret.txt"


@pytest.fixture
def secret_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory holding DuckDB's default temp folder with a secret in it."""
    (tmp_path / ".tmp").mkdir()
    (tmp_path / SECRET_FILE).write_text(SECRET + "\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


READ_SECRET = f"SELECT content FROM read_text('{SECRET_FILE}')"
CAMPAIGN = [
    f"SELECT * FROM json_execute_serialized_sql(json_serialize_sql('{READ_SECRET.replace(chr(39), chr(39) * 2)}'))",
    "SELECT * FROM json_execute_serialized_sql(json_serialize_sql('SELECT 42'))",
    READ_SECRET,
    f"SELECT * FROM read_text('{SECRET_FILE}')",
    f"SELECT * FROM read_csv('{SECRET_FILE}', header := false)",
    f"SELECT * FROM read_blob('{SECRET_FILE}')",
    f"SELECT * FROM sniff_csv('{SECRET_FILE}')",
    f"SELECT * FROM parquet_metadata('{SECRET_FILE}')",
    "SELECT * FROM glob('.tmp/*')",
    "SELECT * FROM glob('*')",
    "SELECT * FROM query('SELECT 1')",
    f"SELECT * FROM query('{READ_SECRET.replace(chr(39), chr(39) * 2)}')",
    "SELECT * FROM query_table('instructions')",
    f"SELECT * FROM '{SECRET_FILE}'",
    f"FROM '{SECRET_FILE}'",
    f"SELECT * FROM \"{SECRET_FILE}\"",
    f"COPY instructions TO '{SECRET_FILE}'",
    f"COPY selections FROM '{SECRET_FILE}'",
    "ATTACH ':memory:' AS other",
    "INSTALL json",
    "LOAD json",
    "PRAGMA database_list",
    "SET temp_directory = '.tmp'",
    "SELECT getenv('HOME')",
    "SELECT current_setting('allowed_directories')",
    "SELECT current_setting('temp_directory')",
    "SELECT * FROM duckdb_settings()",
    "SELECT * FROM duckdb_settings",
    "SELECT * FROM pg_settings",
    "SELECT * FROM information_schema.tables",
    "SELECT * FROM sqlite_master",
    "SELECT * FROM system.main.duckdb_tables",
    "SELECT * FROM temp.main.explore_match",
    "SELECT * FROM memory.main.instructions",
    "SHOW databases",
    "SHOW ALL TABLES",
    f"SELECT CAST(({READ_SECRET}) AS INTEGER)",
    f"SELECT count(*) FROM instructions WHERE text = ({READ_SECRET})",
    f"SELECT 1; {READ_SECRET}",
    f"SELECT 1 /* ; */; {READ_SECRET}",
    f"SELECT 1 -- ;\n; {READ_SECRET}",
    f"SELECT * FROM read_text/* */('{SECRET_FILE}')",
    f"WITH x AS ({READ_SECRET}) SELECT * FROM x",
    "WITH duckdb_settings AS (SELECT * FROM duckdb_settings) SELECT * FROM duckdb_settings",  # not recursive
    "WITH a AS (SELECT * FROM pg_settings), pg_settings AS (SELECT 1) SELECT * FROM a",  # defined later
    "SELECT (WITH pg_settings AS (SELECT 1) SELECT 1), (SELECT count(*) FROM pg_settings)",  # out of scope
    f"SELECT list_transform([1], lambda x: ({READ_SECRET}))",
    f"SELECT * FROM unnest(({READ_SECRET.replace('content', 'list(content)')}))",
    f"DESCRIBE {READ_SECRET}",
    f"SUMMARIZE {READ_SECRET}",
    "SELECT main.lower('a')",
    f"SELECT system.main.read_text('{SECRET_FILE}')",
    "SELECT json_serialize_sql('SELECT 1')",
    "SELECT * FROM instructions AT (VERSION => 1)",
    "SELECT $1",
    "SELECT nextval('s')",
    "SELECT sleep_ms(10)",
    "SELECT * FROM test_all_types()",
    "SELECT " + "[" * 900 + "]" * 900,  # nested deeper than Python's JSON decoder goes: one line, no crash
    "SELECT 1" + " + 1" * 900,
]


def assert_one_line_without_secret(message: str) -> None:
    assert message and "\n" not in message and SECRET not in message


@pytest.mark.parametrize("sql", CAMPAIGN)
def test_campaign_is_refused_in_one_line(db: Path, secret_cwd: Path, sql: str):
    before_hash, before_counts = digest(db), row_counts(db)
    with pytest.raises(ForgetlessError) as caught:
        run_readonly_sql(db, sql)
    assert_one_line_without_secret(str(caught.value))
    assert str(caught.value).startswith(("SQL refused", "SQL syntax error"))  # by the checks, before running
    assert digest(db) == before_hash and row_counts(db) == before_counts


def test_refusal_names_what_is_not_allowed(db: Path):
    with pytest.raises(ForgetlessError) as caught:
        run_readonly_sql(db, "SELECT * FROM read_text('x')")
    assert str(caught.value) == ("SQL refused: table function read_text() is not allowed (user SQL may call only "
                                 "built-in computations over the store's tables)")
    with pytest.raises(ForgetlessError, match=r"function current_setting\(\) is not allowed"):
        check_select("SELECT current_setting('threads')", STORE_TABLES)
    with pytest.raises(ForgetlessError, match="table 'secret.csv' is not allowed"):
        check_select("SELECT * FROM 'secret.csv'", STORE_TABLES)


@pytest.mark.parametrize("sql", [
    f"SELECT * FROM json_execute_serialized_sql(json_serialize_sql('{READ_SECRET.replace(chr(39), chr(39) * 2)}'))",
    "SELECT * FROM glob('.tmp/*')",
    f"SELECT CAST(({READ_SECRET}) AS INTEGER)",
    f"COPY instructions TO '{SECRET_FILE}'",
    f"SELECT 1; {READ_SECRET}",
])
def test_campaign_through_the_cli(db: Path, secret_cwd: Path, sql: str, capsys: pytest.CaptureFixture[str]):
    before = digest(db)
    assert main(["sql", "--workspace", str(db.parent), sql]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: SQL refused") and err.count("\n") == 1
    assert SECRET not in out + err
    assert digest(db) == before


WHERE_CAMPAIGN = [
    f"CAST(({READ_SECRET}) AS INTEGER) = 1",
    f"instruction = ({READ_SECRET})",
    f"EXISTS (SELECT * FROM json_execute_serialized_sql(json_serialize_sql("
    f"'{READ_SECRET.replace(chr(39), chr(39) * 2)}')))",
    "EXISTS (FROM glob('.tmp/*'))",
    "current_setting('temp_directory') IS NOT NULL",
    "EXISTS (SELECT * FROM duckdb_settings())",
    "EXISTS (SELECT * FROM pg_settings)",
    "row_id IN (SELECT row_id FROM temp.explore_match)",
    f"1=1 -- {READ_SECRET}",
    "1=1 /* ; */",
]


@pytest.mark.parametrize("clause", WHERE_CAMPAIGN)
def test_where_box_campaign_is_refused(db: Path, secret_cwd: Path, clause: str):
    before = digest(db)
    for attempt in (lambda: validate_where(clause, STORE_TABLES), lambda: ExploreFilters(where=clause)):
        with pytest.raises(ForgetlessError) as caught:
            attempt()
        assert_one_line_without_secret(str(caught.value))
    assert digest(db) == before


def test_sandbox_has_no_temp_directory(db: Path, secret_cwd: Path):
    """The second layer on its own, for a sandbox started in a folder that has DuckDB's default temp folder."""
    sql_safety._discard_sandbox(str(db.resolve()))
    with readonly_connection(db) as con:
        assert con.execute("SELECT current_setting('allowed_directories')").fetchone()[0] == []
        assert con.execute("SELECT current_setting('temp_directory')").fetchone()[0] == ""
        for sql in (READ_SECRET, "SELECT * FROM glob('.tmp/*')",
                    f"SELECT * FROM json_execute_serialized_sql(json_serialize_sql("
                    f"'{READ_SECRET.replace(chr(39), chr(39) * 2)}'))"):
            with pytest.raises(duckdb.Error) as caught:
                con.execute(sql).fetchall()
            assert SECRET not in str(caught.value)
    sql_safety._parse_tree("SELECT 1")
    assert sql_safety._parser.execute("SELECT current_setting('allowed_directories')").fetchone()[0] == []
    with pytest.raises(duckdb.Error):
        sql_safety._parser.execute(READ_SECRET).fetchall()
