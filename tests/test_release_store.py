"""A store written by the release before the house-plan redesign (tests/fixtures/release-store-v3.duckdb.gz) opens,
reads and takes new rows with today's code: a schema change must come with a migration that keeps it so."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

from core.sql_safety import run_readonly_sql
from core.store import ExploreFilters, InstructionRow, Store

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "release-store-v3.duckdb.gz"


def test_a_release_store_opens_reads_and_takes_new_rows(tmp_path):
    path = tmp_path / "forgetless.duckdb"
    with gzip.open(FIXTURE, "rb") as source, path.open("wb") as target:
        shutil.copyfileobj(source, target)
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
