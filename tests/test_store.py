from pathlib import Path

import duckdb
import pytest

from core.errors import ForgetlessError
from core.store import InstructionRow, Store, schema, text_key


def row(text: str, batch: int = 0, job: str = "job-a") -> InstructionRow:
    return InstructionRow(text, 5, "tiny", "<p>", 1.0, 1.0, 32, 7, job, batch)


def add(store: Store, rows, batch=0, job="job-a", limit=100):
    return store.add_instruction_batch(job, batch, rows, limit=limit, sampled=len(rows), dropped={"empty": 1},
                                       new_tokens=10, seconds=0.5)


def test_text_key_ignores_case_and_whitespace():
    assert text_key("Write  a poem\n") == text_key("write a poem")
    assert text_key("write a poem") != text_key("write a song")


def test_batches_dedup_within_and_across_and_respect_limit(tmp_path: Path):
    store = Store.for_workspace(tmp_path)
    first = add(store, [row("Write a poem"), row("write a  poem"), row("Explain tides")])
    assert (first.stored, first.duplicates) == (2, 1)
    second = add(store, [row("Explain tides", 1), row("Plan a trip", 1), row("Cook rice", 1)], batch=1, limit=1)
    assert (second.stored, second.duplicates) == (1, 1)
    assert store.count_instructions() == 3
    progress = store.job_progress("job-a")
    assert progress["next_batch"] == 2 and progress["stored"] == 3
    assert progress["dropped"] == {"empty": 2, "duplicate": 2}


def test_failed_batch_leaves_store_unchanged(tmp_path: Path):
    store = Store.for_workspace(tmp_path)
    add(store, [row("Write a poem")])
    with pytest.raises(duckdb.ConstraintException):  # the same batch number twice violates the key
        add(store, [row("Something new entirely")], batch=0)
    assert store.count_instructions() == 1
    assert store.job_progress("job-a")["batches"] == 1


def test_paging_and_search(tmp_path: Path):
    store = Store.for_workspace(tmp_path)
    add(store, [row(f"instruction number {i} about cats" if i % 2 else f"instruction {i} on dogs")
                for i in range(25)])
    assert store.count_instructions("CATS") == 12
    page = store.page_instructions("cats", page=2, page_size=5)
    assert len(page) == 5 and all("cats" in r["text"] for r in page)
    assert store.page_instructions("cats", page=3, page_size=5)[-1]["text"]
    assert len(store.instruction_lengths()) == 25


def test_reader_waits_for_writer_lock_in_other_process(tmp_path: Path):
    import subprocess
    import sys

    store = Store.for_workspace(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import duckdb, time, sys; con = duckdb.connect(sys.argv[1]); print('locked', flush=True); "
        "time.sleep(1.5); con.close()"), str(store.path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    assert store.count_instructions() == 0  # waited for the other process instead of failing
    holder.wait()


def recorded_version(path: Path) -> list[int]:
    with duckdb.connect(str(path), read_only=True) as con:
        return [version for (version,) in con.execute("SELECT version FROM schema_version").fetchall()]


def recording(monkeypatch) -> list[int]:
    """Wrap each migration so the test sees which ran, in which order (by the version each one reaches)."""
    ran: list[int] = []

    def step(version: int, migration):
        def run(con):
            ran.append(version)
            migration(con)
        return run

    monkeypatch.setattr(schema, "MIGRATIONS", [step(n, m) for n, m in enumerate(schema.MIGRATIONS, start=1)])
    return ran


def test_a_fresh_store_runs_every_migration_and_records_the_latest_version(tmp_path: Path, monkeypatch):
    ran = recording(monkeypatch)
    store = Store.for_workspace(tmp_path)
    assert ran == list(range(1, schema.SCHEMA_VERSION + 1))
    assert recorded_version(store.path) == [schema.SCHEMA_VERSION] == [len(schema.MIGRATIONS)]


def test_an_old_store_is_migrated_step_by_step_keeping_its_rows(tmp_path: Path, monkeypatch):
    path = tmp_path / "forgetless.duckdb"
    with duckdb.connect(str(path)) as con:  # a store as version 1 left it: reconstruction tables only
        con.execute(schema.VERSION_TABLE)
        schema.MIGRATIONS[0](con)
        con.execute("INSERT INTO schema_version VALUES (1)")
        con.execute("INSERT INTO instructions VALUES (?, ?, 12, 3, 'tiny', '<p>', 1.0, 1.0, 32, 7, 'job-a', 0, now())",
                    [text_key("Write a poem"), "Write a poem"])
    ran = recording(monkeypatch)
    store = Store(path)
    assert ran == list(range(2, schema.SCHEMA_VERSION + 1))
    assert recorded_version(path) == [schema.SCHEMA_VERSION]
    assert store.count_instructions() == 1
    assert store.eval_results().empty and store.list_selections().empty  # later versions' tables exist


def test_migrating_twice_is_a_no_op(tmp_path: Path, monkeypatch):
    store = Store.for_workspace(tmp_path)
    add(store, [row("Write a poem")])
    ran = recording(monkeypatch)
    with store.write() as con:
        assert schema.migrate(con, store.path) == schema.SCHEMA_VERSION
    Store.for_workspace(tmp_path)
    assert ran == []
    assert recorded_version(store.path) == [schema.SCHEMA_VERSION]
    assert store.count_instructions() == 1


def test_newer_schema_is_refused_in_one_line(tmp_path: Path):
    store = Store.for_workspace(tmp_path)
    with store.write() as con:
        con.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(ForgetlessError, match="newer") as raised:
        Store.for_workspace(tmp_path)
    message = str(raised.value)
    assert "\n" not in message and str(store.path) in message
    assert f"store schema 99, this version reads up to {schema.SCHEMA_VERSION}" in message
    assert recorded_version(store.path) == [99]  # left as it was
