"""The hostile-input campaign as one table: every input a campaign tried, through the CLI, the Explore WHERE box
or a path typed into the app, with the exit code and the one line it must get, and the store left unchanged.

A row is (id, channel, input, expected exit, message fragment):
- ``cli``: ``forgetless`` arguments (``{W}`` = the workspace, ``{D}`` = a folder of prepared bad files), run in
  this process; the error must be one stderr line starting with ``error:`` and holding the fragment.
- ``where``: a clause in the Explore tab's SQL WHERE box (``ExploreFilters.where``, then the query).
- ``path``: a path typed into the app's Mix tab (``MixCache``: the workspace and --data-dir folders only).
- ``model``: a model folder or ``.gguf`` typed into any tab (``ReadableRoots.check_model``).
The next campaign adds its rows here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pytest

from core.cli.main import main
from core.data_paths import ReadableRoots
from core.errors import ForgetlessError
from core.store import ExploreFilters, Store
from tests.helpers import build_explore_store
from ui.views.mix import MixCache

SECRET = "SECRET-7f3a"
READ_SECRET = "read_text('.tmp/secret.txt')"


def _sql(query: str) -> list[str]:
    return ["sql", "--workspace", "{W}", query]


def _mix(domain: str, ratio: str = "0", out: str = "{D}/m", *extra: str) -> list[str]:
    return ["mix", "--workspace", "{W}", "--domain", domain, "--ratio", ratio, "--out", out, *extra]


CASES = [
    # -- user SQL: files, other databases, settings, extensions, statements other than one SELECT
    ("sql-read_text", "cli", _sql(f"SELECT content FROM {READ_SECRET}"), 2, "SQL refused"),
    ("sql-read_csv", "cli", _sql("SELECT * FROM read_csv('.tmp/secret.txt')"), 2, "SQL refused"),
    ("sql-read_csv_auto", "cli", _sql("SELECT * FROM read_csv_auto('/etc/passwd')"), 2, "SQL refused"),
    ("sql-glob", "cli", _sql("SELECT * FROM glob('.tmp/*')"), 2, "SQL refused"),
    ("sql-json_execute_serialized_sql", "cli",
     _sql("SELECT * FROM json_execute_serialized_sql(json_serialize_sql("
          "'SELECT content FROM read_text(''.tmp/secret.txt'')'))"), 2, "SQL refused"),
    ("sql-query", "cli", _sql("SELECT * FROM query('SELECT content FROM read_text(''.tmp/secret.txt'')')"),
     2, "SQL refused"),
    ("sql-query_table", "cli", _sql("SELECT * FROM query_table('instructions')"), 2, "SQL refused"),
    ("sql-from-path", "cli", _sql("SELECT * FROM '.tmp/secret.txt'"), 2, "SQL refused"),
    ("sql-from-csv-path", "cli", _sql("SELECT * FROM '/etc/passwd.csv'"), 2, "SQL refused"),
    ("sql-copy", "cli", _sql("COPY instructions TO '.tmp/out.csv'"), 2, "SQL refused"),
    ("sql-copy-select", "cli", _sql("COPY (SELECT 1) TO '.tmp/out.csv'"), 2, "SQL refused"),
    ("sql-attach", "cli", _sql("ATTACH '.tmp/other.duckdb' AS other"), 2, "SQL refused"),
    ("sql-install", "cli", _sql("INSTALL httpfs"), 2, "SQL refused"),
    ("sql-load", "cli", _sql("LOAD httpfs"), 2, "SQL refused"),
    ("sql-pragma", "cli", _sql("PRAGMA database_list"), 2, "SQL refused"),
    ("sql-set", "cli", _sql("SET enable_external_access = true"), 2, "SQL refused"),
    ("sql-getenv", "cli", _sql("SELECT getenv('HOME')"), 2, "SQL refused"),
    ("sql-current_setting", "cli", _sql("SELECT current_setting('allowed_directories')"), 2, "SQL refused"),
    ("sql-duckdb_settings", "cli", _sql("SELECT * FROM duckdb_settings()"), 2, "SQL refused"),
    ("sql-two-statements", "cli", _sql("SELECT 1; SELECT 2"), 2, "SQL refused"),
    ("sql-write", "cli", _sql("DELETE FROM instructions"), 2, "SQL refused"),
    ("sql-drop", "cli", _sql("DROP TABLE instructions"), 2, "SQL refused"),
    ("sql-comment-smuggling", "cli", _sql(f"SELECT 1 /* ; */ UNION ALL SELECT length(content) FROM {READ_SECRET}"),
     2, "SQL refused"),
    ("sql-cast-echo", "cli", _sql(f"SELECT CAST((SELECT content FROM {READ_SECRET}) AS INTEGER)"), 2, "SQL refused"),
    ("sql-no-store", "cli", ["sql", "--workspace", "{D}/no-such-workspace", "SELECT 1"], 2, "no store"),
    # -- the Explore WHERE box (and `mix --where`, which takes the same clause)
    ("where-read_text", "where", f"instruction = (SELECT content FROM {READ_SECRET})", None, "refused"),
    ("where-cast-echo", "where", f"CAST((SELECT content FROM {READ_SECRET}) AS INTEGER) = 1", None, "refused"),
    ("where-json-sql", "where", "EXISTS (SELECT * FROM json_execute_serialized_sql(json_serialize_sql("
     "'SELECT content FROM read_text(''.tmp/secret.txt'')')))", None, "refused"),
    ("where-escape-parens", "where", "1=1) UNION SELECT * FROM explore_rows WHERE (1=1", None, "refused"),
    ("where-comment", "where", "1=1 -- and the rest", None, "comments are not allowed"),
    ("where-semicolon", "where", "1=1; DROP TABLE instructions", None, "refused"),
    ("mix-where-file", "cli",
     _mix("builtin:medmcqa", "0.5", "{D}/m", "--where", f"instruction IN (SELECT content FROM {READ_SECRET})"),
     2, "refused"),
    # -- domain data files
    ("domain-sparse-zeros", "cli", _mix("{D}/zeros.jsonl"), 2, "not valid JSON lines: line 1 holds NUL bytes"),
    ("domain-all-invalid", "cli", _mix("{D}/junk.jsonl"), 2, "not valid JSON lines: line 1: invalid JSON"),
    ("domain-not-utf8", "cli", _mix("{D}/latin1.jsonl"), 2, "not UTF-8 text: byte 0xe9 at line 1"),
    ("domain-missing", "cli", _mix("{D}/nowhere.jsonl"), 2, "domain data not found"),
    ("domain-empty", "cli", _mix("{D}/empty.jsonl"), 2, "is empty"),
    ("domain-binary-suffix", "cli", _mix("{D}/zeros.bin"), 2, "unsupported file type"),
    ("mix-ratio-one", "cli", _mix("builtin:medmcqa", "1"), 2, "ratio must be in [0, 1)"),
    ("mix-out-taken", "cli", _mix("builtin:medmcqa", "0", "{D}/taken"), 2, "already exists and is not empty"),
    # -- paths typed into the app
    ("path-etc-passwd", "path", "/etc/passwd", None, "outside the folders this app reads"),
    ("path-link-out", "path", "{W}/passwd.csv", None, "outside the folders this app reads"),
    ("path-dotdot", "path", "{W}/../outside.jsonl", None, "outside the folders this app reads"),
    ("path-html-name", "path", "{D}/<img src=x onerror=alert(1)>.csv", None, "outside the folders this app reads"),
    ("model-folder-out", "model", "{D}", None, "outside the folders this app reads"),
    ("model-gguf-out", "model", "/etc/passwd.gguf", None, "outside the folders this app reads"),
    # -- models and jobs
    ("respond-unknown-model", "cli", ["respond", "--workspace", "{W}", "--models", "no-such-alias", "--k", "1"],
     2, "no-such-alias"),
    ("prequery-garbage-gguf", "cli", ["prequery", "{D}/garbage.gguf", "--workspace", "{W}"], 2, "garbage.gguf"),
    ("reconstruct-n-zero", "cli", ["reconstruct", "--workspace", "{W}", "--n", "0"], 2, "n must be at least 1"),
    ("unknown-stage", "cli", ["launch-rockets"], 2, "invalid choice"),
]


@pytest.fixture(scope="module")
def campaign(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("campaign")
    workspace, bad = root / "ws", root / "bad"
    workspace.mkdir()
    bad.mkdir()
    build_explore_store(workspace / "forgetless.duckdb")
    (workspace / "passwd.csv").symlink_to("/etc/passwd")
    (root / ".tmp").mkdir()
    (root / ".tmp" / "secret.txt").write_text(SECRET + "\n")
    with (bad / "zeros.jsonl").open("wb") as handle:
        handle.truncate(16 * 1024**2)
    shutil.copyfile(bad / "zeros.jsonl", bad / "zeros.bin")
    (bad / "junk.jsonl").write_text("not json\n{still not\n")
    (bad / "latin1.jsonl").write_bytes('{"prompt": "caf\u00e9", "completion": "x"}\n'.encode("latin-1"))
    (bad / "empty.jsonl").write_bytes(b"")
    (bad / "taken").mkdir()
    (bad / "taken" / "keep.txt").write_text("not ours")
    header = b"GGUF" + (3).to_bytes(4, "little") + (0).to_bytes(8, "little") + (2).to_bytes(8, "little")
    (bad / "garbage.gguf").write_bytes(header + bytes(range(256)) * 64)
    return {"root": root, "W": workspace, "D": bad}


def store_fingerprint(workspace: Path) -> dict[str, list]:
    """Every table's rows, sorted: what 'the store is unchanged' compares."""
    con = duckdb.connect(str(workspace / "forgetless.duckdb"), read_only=True)
    try:
        tables = [row[0] for row in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE NOT internal ORDER BY table_name").fetchall()]
        return {table: sorted(map(repr, con.execute(f'SELECT * FROM "{table}"').fetchall())) for table in tables}
    finally:
        con.close()


def files_under(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


def _fill(value: str, places: dict[str, Path]) -> str:
    return value.replace("{W}", str(places["W"])).replace("{D}", str(places["D"]))


@pytest.mark.parametrize(("channel", "given", "exit_code", "fragment"), [case[1:] for case in CASES],
                         ids=[case[0] for case in CASES])
def test_hostile_input(channel, given, exit_code, fragment, campaign, monkeypatch, capsys):
    monkeypatch.chdir(campaign["root"])  # DuckDB's default temp folder would be ./.tmp, where the secret is
    monkeypatch.setenv("FORGETLESS_NO_PROGRESS", "1")
    before, workspace_files = store_fingerprint(campaign["W"]), files_under(campaign["W"])
    bad_files = files_under(campaign["D"])
    if channel == "cli":
        code = main([_fill(part, campaign) for part in given])
        out, err = capsys.readouterr()
        lines = err.strip().splitlines()
        assert code == exit_code, err
        assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], err
        message = lines[0] + out
    else:
        with pytest.raises(ForgetlessError) as error:
            if channel == "where":
                Store.for_workspace(campaign["W"]).explore(ExploreFilters(where=given))
            elif channel == "model":
                ReadableRoots.for_app(campaign["W"]).check_model(_fill(given, campaign))
            else:
                MixCache(campaign["W"]).domain(_fill(given, campaign))
        message = str(error.value)
        assert "\n" not in message and fragment in message, message
    assert SECRET not in message and "root:x:" not in message
    assert store_fingerprint(campaign["W"]) == before
    assert files_under(campaign["W"]) == workspace_files and files_under(campaign["D"]) == bad_files
