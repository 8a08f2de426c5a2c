"""A store written by the release before the house-plan redesign (tests/fixtures/release-store-v3.duckdb.gz) opens,
reads and takes new rows with today's code: a schema change must come with a migration that keeps it so."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import duckdb

from core.store import ExploreFilters, InstructionRow, Store, schema
from core.store.sql_safety import run_readonly_sql

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "release-store-v3.duckdb.gz"


def release_store(tmp_path: Path) -> Path:
    path = tmp_path / "forgetless.duckdb"
    with gzip.open(FIXTURE, "rb") as source, path.open("wb") as target:
        shutil.copyfileobj(source, target)
    return path


def columns(path: Path) -> list[tuple]:
    with duckdb.connect(str(path), read_only=True) as con:
        return con.execute("SELECT table_name, column_name, data_type FROM information_schema.columns "
                           "ORDER BY table_name, ordinal_position").fetchall()


def test_a_release_store_opens_reads_and_takes_new_rows(tmp_path):
    path = release_store(tmp_path)
    store = Store(path)
    assert store.count_instructions() == 6
    assert store.explore_count(ExploreFilters()) == 6
    assert store.explore_count(ExploreFilters(consensus_min=3.0)) == store.explore_count(store.load_selection("good"))
    assert list(store.list_selections()["name"]) == ["good"]
    results = store.eval_results()
    assert len(results) == 1 and results.iloc[0]["task"] == "arc_easy" and results.iloc[0]["acc"] == 0.5
    row = InstructionRow("a new instruction written after the redesign", 7, "tiny", "<p>", 1.0, 1.0, 32, 1,
                         "job-new", 0)
    store.add_instruction_batch("job-new", 0, [row], limit=10, sampled=1, dropped={}, new_tokens=0, seconds=0)
    assert store.count_instructions() == 7
    assert int(run_readonly_sql(path, "SELECT count(*) AS n FROM instructions").iloc[0]["n"]) == 7


def test_a_fresh_store_has_the_migrated_release_stores_tables_and_columns(tmp_path):
    fresh = Store(tmp_path / "fresh" / "forgetless.duckdb")
    fresh.refresh_explore_rows()  # the Explore tables are built on refresh, as in the release store
    release = release_store(tmp_path)
    before = columns(release)
    Store(release)  # migrates it
    assert columns(fresh.path) == columns(release)
    added = set(columns(release)) - set(before)
    judge_check_tables = {"judge_check_pairs", "judge_check_scores", "judge_checks"}  # new tables (store v5)
    new_tables = judge_check_tables | {"comparisons"}  # store v7
    altered = {"reconstruct_batches", "responses", "scores", "instructions"}
    assert {table for table, _, _ in added} - altered == new_tables
    steering = {("instructions", "steer_mode", "VARCHAR"), ("instructions", "steer_source", "VARCHAR"),
                ("instructions", "steer_seed_ids", "VARCHAR[]"), ("instructions", "steer_prompt", "VARCHAR")}  # v6
    assert {column for column in added if column[0] not in new_tables} == steering | {
        (table, column, "VARCHAR") for table in ("reconstruct_batches", "responses", "scores")
        for column in ("engine", "engine_url")}
    with duckdb.connect(str(release), read_only=True) as con:  # what made the release's rows: in-process only
        for table in ("reconstruct_batches", "responses", "scores"):
            found = con.execute(f"SELECT DISTINCT engine, engine_url FROM {table}").fetchall()
            assert found == [("transformers", None)]
        found = con.execute("SELECT DISTINCT steer_mode, steer_source, steer_seed_ids, steer_prompt FROM instructions")
        assert found.fetchall() == [("plain", None, None, None)]  # sampled freely, as every row before v6


def test_a_column_change_is_one_appended_migration(tmp_path, monkeypatch):
    path = release_store(tmp_path)
    monkeypatch.setattr(schema, "MIGRATIONS", [
        *schema.MIGRATIONS, lambda con: con.execute("ALTER TABLE selections ADD COLUMN note VARCHAR DEFAULT ''")])
    store = Store(path)
    assert ("selections", "note", "VARCHAR") in columns(path)
    assert list(store.list_selections()["name"]) == ["good"] and store.count_instructions() == 6
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT version FROM schema_version").fetchall() == [(schema.SCHEMA_VERSION + 1,)]
