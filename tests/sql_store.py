"""The store that the user-typed SQL tests run against, and how they check that it did not change."""

from __future__ import annotations

import hashlib
from pathlib import Path

import duckdb

from core.store.explore import ExploreFilters
from tests.helpers import build_explore_store

TABLES = ("instructions", "responses", "scores", "consensus", "best_responses", "instruction_profile",
          "selections", "explore_rows", "explore_scores")


def sql_store(folder: Path) -> Path:
    """An explore store with a saved selection, and a CSV beside it that no query may read."""
    (folder / "secret.csv").write_text("a,b\n1,2\n")
    store = build_explore_store(folder / "forgetless.duckdb")
    store.save_selection("picked", ExploreFilters(consensus_min=3, categories=["coding"]))
    return store.path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def row_counts(path: Path) -> dict[str, int]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return {table: con.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in TABLES}
    finally:
        con.close()
