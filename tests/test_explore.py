"""Explore filters, charts, pages, saved selections and the screening views on a small hand-built store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import core.store.explore as explore_module
from core.errors import ForgetlessError
from core.store.explore import ExploreFilters
from core.store.instructions import InstructionRow
from core.store.sql_safety import run_readonly_sql
from tests.helpers import EXPLORE_INSTRUCTIONS, ROOT, ExploreStore, build_explore_store, explore_ids


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> ExploreStore:
    """Shared by the tests that only read."""
    return build_explore_store(tmp_path_factory.mktemp("explore") / "forgetless.duckdb")


@pytest.fixture()
def fresh(tmp_path: Path) -> ExploreStore:
    """For the tests that write."""
    return build_explore_store(tmp_path / "forgetless.duckdb")


COUNT_CASES = [
    ({}, 6),
    ({"consensus_min": 3}, 4),
    ({"consensus_max": 3}, 2),
    ({"consensus_min": 3, "consensus_max": 4.5}, 3),
    ({"max_std": 0.3}, 3),
    ({"difficulty_min": 2}, 3),
    ({"difficulty_max": 2}, 2),
    ({"clusters": [1]}, 2),
    ({"clusters": [0, 1]}, 4),
    ({"categories": ["coding"]}, 2),
    ({"categories": ["coding", "advice"]}, 3),
    ({"length_min": 5}, 4),
    ({"length_max": 3}, 2),
    ({"hide_duplicates": True}, 5),
    ({"search": "PYTHON function"}, 2),
    ({"search": "python", "hide_duplicates": True}, 1),
    ({"search": "no such words"}, 0),
    ({"where": "n_responses = 0"}, 1),
    ({"where": "response_model = 'model-b'"}, 2),
    ({"where": "row_id IN (SELECT row_id FROM explore_scores WHERE judge = 'j2' AND score >= 4)"}, 3),
    ({"consensus_min": 3, "categories": ["coding"], "hide_duplicates": True}, 1),
    ({"consensus_min": 3, "search": "write", "where": "margin > 1"}, 1),
]


@pytest.mark.parametrize(("values", "expected"), COUNT_CASES)
def test_filters_change_counts_exactly(store: ExploreStore, values: dict, expected: int):
    filters = ExploreFilters(**values)
    assert store.explore_count(filters) == expected
    result = store.explore(filters, page_size=50)
    assert result.count == expected
    assert len(result.page) == expected
    assert int(result.charts["categories"]["count"].sum()) == expected
    assert len(store.explore_ids(filters)) == expected
    assert len(store.explore_page(filters, page_size=50)) == expected


def test_page_order_and_paging(store: ExploreStore):
    key = explore_ids()
    page = store.explore_page(ExploreFilters(), page=1, page_size=6, order_by="consensus DESC")
    assert page["instruction_id"].tolist()[:5] == [key[3], key[0], key[4], key[1], key[2]]
    assert page["instruction_id"].iloc[5] == key[5] and pd.isna(page["consensus"].iloc[5])  # NULLs last
    second = store.explore_page(ExploreFilters(), page=2, page_size=2, order_by="consensus DESC")
    assert second["instruction_id"].tolist() == [key[4], key[1]]
    assert store.explore_page(ExploreFilters(), page=9, page_size=2).empty
    ascending = store.explore_page(ExploreFilters(), page_size=4, order_by="difficulty")
    assert ascending["instruction_id"].tolist() == [key[2], key[0], key[3], key[1]]
    row = page.iloc[0]
    assert row["response"] == f"model-b answers {EXPLORE_INSTRUCTIONS[3][0]}" and row["response_model"] == "model-b"
    assert (row["consensus"], row["std"], row["margin"], row["n_responses"]) == (5.0, 0.0, 1.0, 2)
    assert row["category"] == "coding" and not row["is_representative"]
    unjudged = page.iloc[5]
    assert unjudged["n_responses"] == 0 and pd.isna(unjudged["response"]) and unjudged["is_representative"]
    assert pd.isna(page.set_index("instruction_id").loc[key[4], "margin"])  # one response: no runner-up


@pytest.mark.parametrize("order", ["n_responses DESC", "n_responses", "difficulty DESC", "category", "margin",
                                   "response_model DESC", "created_at", "-std"])
@pytest.mark.parametrize("page_size", [1, 2, 4])
def test_pages_follow_the_full_ordering(store: ExploreStore, order: str, page_size: int):
    column, direction = order.lstrip("-").split()[0], "DESC" if order.startswith("-") or "DESC" in order else "ASC"
    expected = run_readonly_sql(store.path, f"SELECT instruction_id FROM explore_rows "
                                            f"ORDER BY {column} {direction} NULLS LAST, row_id")["instruction_id"]
    pages = [store.explore_page(ExploreFilters(), page=p, page_size=page_size, order_by=order) for p in range(1, 8)]
    got = pd.concat([p["instruction_id"] for p in pages if len(p)], ignore_index=True)
    assert got.tolist() == expected.tolist()


@pytest.mark.parametrize("order", ["consensus; DROP TABLE instructions", "text", "consensus sideways",
                                   "consensus DESC, row_id"])
def test_bad_order_is_refused(store: ExploreStore, order: str):
    with pytest.raises(ForgetlessError):
        store.explore_page(ExploreFilters(), order_by=order)


def test_charts(store: ExploreStore):
    charts = store.explore_charts(ExploreFilters())
    histogram = charts["judge_histogram"]
    assert set(histogram["judge"]) == {"j1", "j2"}  # j3 only failed; "generate" is not the consensus method
    assert len(histogram) == 16 and histogram["bin_end"].max() == 5.0
    counts = {(row.judge, row.bin_start): row.count for row in histogram.itertuples() if row.count}
    assert counts == {("j1", 1.0): 1, ("j1", 2.0): 1, ("j1", 3.0): 1, ("j1", 4.5): 2,
                      ("j2", 1.5): 1, ("j2", 3.5): 1, ("j2", 4.0): 2, ("j2", 4.5): 1}
    assert dict(zip(charts["categories"]["category"], charts["categories"]["count"], strict=True)) == {
        "coding": 2, "(unprofiled)": 2, "advice": 1, "knowledge": 1}
    assert set(charts["difficulty_consensus"]["instruction_id"]) == set(explore_ids()[:4])
    semantic = charts["semantic_map"]
    assert set(semantic["instruction_id"]) == set(explore_ids()[:4])
    assert set(semantic.columns) >= {"x", "y", "cluster", "cluster_label", "consensus", "instruction"}
    narrowed = store.explore_charts(ExploreFilters(categories=["coding"]))["judge_histogram"]
    assert int(narrowed.loc[narrowed["judge"] == "j1", "count"].sum()) == 2


def test_histogram_without_score_codes_matches(fresh: ExploreStore, monkeypatch):
    coded = fresh.explore_charts(ExploreFilters(consensus_min=2))["judge_histogram"]
    monkeypatch.setattr(explore_module, "MAX_CODE_JUDGES", 1)  # more judges than a code holds
    fresh.refresh_explore_rows()
    fallback = fresh.explore_charts(ExploreFilters(consensus_min=2))["judge_histogram"]
    pd.testing.assert_frame_equal(coded, fallback)


def test_plot_sample_is_capped_and_stable(store: ExploreStore, monkeypatch):
    monkeypatch.setattr(explore_module, "SAMPLE_POINTS", 2)
    first = store.explore(ExploreFilters()).charts["semantic_map"]
    again = store.explore(ExploreFilters()).charts["semantic_map"]
    assert len(first) == 2 and first["instruction_id"].tolist() == again["instruction_id"].tolist()
    expected = run_readonly_sql(store.path, "SELECT instruction_id FROM explore_rows WHERE x IS NOT NULL "
                                            "ORDER BY row_id LIMIT 2")
    assert first["instruction_id"].tolist() == expected["instruction_id"].tolist()
    searched = store.explore(ExploreFilters(search="write")).charts["difficulty_consensus"]  # via the temp table
    expected = run_readonly_sql(store.path, "SELECT instruction_id FROM explore_rows WHERE difficulty IS NOT NULL "
                                            "AND instruction_lc LIKE '%write%' ORDER BY row_id LIMIT 2")
    assert searched["instruction_id"].tolist() == expected["instruction_id"].tolist()


def test_refresh_is_idempotent(fresh: ExploreStore):
    query = "SELECT * EXCLUDE (row_id) FROM explore_rows ORDER BY instruction_id"
    before = run_readonly_sql(fresh.path, query)
    scores_before = run_readonly_sql(fresh.path, "SELECT * FROM explore_scores ORDER BY row_id, judge")
    assert fresh.refresh_explore_rows() == 6
    assert fresh.refresh_explore_rows() == 6
    pd.testing.assert_frame_equal(before, run_readonly_sql(fresh.path, query))
    pd.testing.assert_frame_equal(scores_before,
                                  run_readonly_sql(fresh.path, "SELECT * FROM explore_scores ORDER BY row_id, judge"))


def test_refresh_follows_new_data(fresh: ExploreStore):
    rows = [InstructionRow("Name three rivers", 3, "tiny", "<p>", 1.0, 1.0, 32, 7, "job-r", 1)]
    fresh.add_instruction_batch("job-r", 1, rows, limit=10, sampled=1, dropped={}, new_tokens=0, seconds=0)
    assert fresh.explore_count() == 6  # a snapshot until refreshed
    fresh.refresh_explore_rows()
    assert fresh.explore_count() == 7
    assert fresh.explore_count(ExploreFilters(where="n_responses = 0")) == 2


def test_unscored_best_response_counts_as_no_consensus(fresh: ExploreStore):
    key = explore_ids()
    with fresh.write() as con:  # all judges failed on i2's responses: consensus.py gives NaN, not a number
        con.execute("UPDATE best_responses SET mean = 'NaN'::DOUBLE, std = 'NaN'::DOUBLE WHERE instruction_id = ?",
                    [key[2]])
    fresh.refresh_explore_rows()
    assert fresh.explore_count(ExploreFilters(consensus_min=1)) == 4
    assert fresh.explore_count(ExploreFilters(max_std=5)) == 4
    page = fresh.explore_page(ExploreFilters(), page_size=6, order_by="consensus DESC")
    assert page["instruction_id"].iloc[0] == key[3] and set(page["instruction_id"].iloc[4:]) == {key[2], key[5]}


def test_unrefreshed_store_is_empty_not_an_error(tmp_path: Path):
    store = build_explore_store(tmp_path / "s.duckdb", refresh=False)
    assert store.explore_count() == 0
    result = store.explore(ExploreFilters(consensus_min=1))
    assert result.count == 0 and result.page.empty and result.charts["judge_histogram"].empty
    assert store.explore_ids() == [] and store.explore_page().empty
    assert set(store.explore_charts()) == {"judge_histogram", "difficulty_consensus", "semantic_map", "categories"}


def test_bad_where_column_is_one_line_error(store: ExploreStore):
    with pytest.raises(ForgetlessError) as caught:
        store.explore(ExploreFilters(where="no_such_column > 1"))
    assert "\n" not in str(caught.value)
    assert store.explore_count() == 6  # the sandbox was detached cleanly


def test_filters_validate_and_round_trip():
    filters = ExploreFilters(consensus_min="3.5", clusters=[3, 1, 3], categories=("math", "coding"),
                             hide_duplicates=True, search="  rivers ", where=" consensus > 2 ", length_max=0)
    assert filters.consensus_min == 3.5 and filters.clusters == (1, 3) and filters.categories == ("coding", "math")
    assert filters.search == "rivers" and filters.where == "consensus > 2" and filters.length_max == 0
    text = filters.to_json()
    assert json.loads(text)["clusters"] == [1, 3] and "difficulty_min" not in json.loads(text)
    assert ExploreFilters.from_json(text) == filters
    assert ExploreFilters.from_json("{}") == ExploreFilters() and ExploreFilters().is_empty()
    for bad in ({"consensus_min": 4, "consensus_max": 3}, {"length_min": -1}, {"length_max": 2.5},
                {"max_std": -0.1}, {"consensus_min": "high"}, {"difficulty_max": float("nan")},
                {"where": "1=1; DROP TABLE instructions"}, {"where": "1=1) UNION SELECT * FROM instructions WHERE (1"},
                {"where": "instruction_id IN (SELECT * FROM read_csv('/etc/passwd'))"}):
        with pytest.raises(ForgetlessError):
            ExploreFilters(**bad)
    for bad_json in ('{"colour": 1}', "[1]", "{not json"):
        with pytest.raises(ForgetlessError):
            ExploreFilters.from_json(bad_json)


def test_selections_round_trip(fresh: ExploreStore):
    filters = ExploreFilters(consensus_min=3, categories=["coding"], where="margin > 0.5")
    fresh.save_selection(" good coding ", filters)
    fresh.save_selection("all", ExploreFilters())
    assert fresh.load_selection("good coding") == filters
    assert fresh.explore_count(fresh.load_selection("good coding")) == 2
    listed = fresh.list_selections()
    assert listed["name"].tolist() == ["all", "good coding"]
    assert json.loads(listed.set_index("name").loc["good coding", "filters_json"])["categories"] == ["coding"]
    fresh.save_selection("all", ExploreFilters(hide_duplicates=True))  # overwrite
    assert fresh.load_selection("all").hide_duplicates and len(fresh.list_selections()) == 2
    with pytest.raises(ForgetlessError, match="no saved selection"):
        fresh.load_selection("missing")
    with pytest.raises(ForgetlessError):
        fresh.save_selection("  ", filters)
    assert fresh.delete_selection("all") and not fresh.delete_selection("all")


def test_screening_views(store: ExploreStore):
    key = explore_ids()
    screened = sorted(key[:5])  # one batch: one created_at, so id order
    table = store.consensus_table(page=1, page_size=5)
    assert table["instruction_id"].drop_duplicates().tolist() == screened
    assert len(table) == 18  # 9 responses x 2 judges (j3 failed, "generate" is not the consensus method)
    best = table[table["is_best"]]
    assert len(best) == 10 and set(best["judge"]) == {"j1", "j2"}
    assert set(best.loc[best["instruction_id"] == key[3], "model"]) == {"model-b"}
    second = store.consensus_table(page=2, page_size=2)
    assert second["instruction_id"].drop_duplicates().tolist() == screened[2:4]
    assert store.count_screened_instructions() == 5

    disputed = store.most_disputed(limit=3)
    assert disputed["std"].tolist() == sorted(disputed["std"], reverse=True)
    assert disputed.iloc[0]["std"] == 1.0 and disputed.iloc[0]["instruction_id"] == key[1]

    matrix = store.judge_score_matrix(limit=100)
    assert len(matrix) == 9 and {"j1", "j2"} <= set(matrix.columns) and "j3" not in matrix.columns
    assert matrix["mean"].tolist() == sorted(matrix["mean"], reverse=True)
    assert len(store.judge_score_matrix(limit=3)) == 3

    agreement = store.agreement_frame()
    assert agreement.to_dict("records") == [{"judge_a": "j1", "judge_b": "j2", "method": "probs", "n": 9,
                                             "spearman": 0.5, "kendall": 0.4}]


def test_bench_runs_on_a_tiny_store(tmp_path: Path):
    completed = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "explore.py"), "--instructions", "300", "--k", "2", "--filters", "4",
         "--workspace", str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert completed.returncode == 0, completed.stderr
    summary = json.loads(completed.stdout.strip().splitlines()[-1])
    assert summary["rows"] == 600 and summary["target_p95_ms"] == 100
    assert 0 < summary["p50_ms"] <= summary["p95_ms"] <= summary["max_ms"]


def test_refresh_before_any_judging_gives_unscored_rows(tmp_path):
    from core.store import InstructionRow, Store

    store = Store.for_workspace(tmp_path)
    row = InstructionRow("write a haiku about rain", 6, "m", "", 1.0, 1.0, 32, 0, "job", 0)
    store.add_instruction_batch("job", 0, [row], limit=1, sampled=1, dropped={}, new_tokens=6, seconds=0.1)
    assert store.refresh_explore_rows() == 1
    assert store.explore().count == 1
