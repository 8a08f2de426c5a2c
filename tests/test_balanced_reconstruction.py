"""The balanced-reconstruction experiment's pure figures and report (experiments/balanced_reconstruction.py,
balanced_report.py), on small constructed data: no model, no store."""

from __future__ import annotations

import math

import numpy as np
import pytest

from experiments.balanced_reconstruction import (
    balanced_draw,
    batch_costs,
    cluster_counts,
    near_duplicate_shares,
    spread_figures,
)
from experiments.balanced_report import markdown, summarise


def test_spread_of_an_even_spread_is_zero_and_of_a_piled_up_one_is_large():
    even = spread_figures([10, 10, 10, 10, 10, 10])
    assert even["kl_uniform"] == pytest.approx(0.0, abs=1e-9)
    assert even["largest_10pct_share"] == pytest.approx(10 / 60, abs=1e-4)  # 10% of 6 clusters rounds up to one
    assert even["largest_10pct_clusters"] == 1

    piled = spread_figures([50, 2, 2, 2, 2, 2])
    assert piled["largest_10pct_share"] == pytest.approx(50 / 60, abs=1e-4)
    # add-half smoothing, as `forgetless coverage`: KL of (50.5, 2.5 x 5) / 63 against 1/6 each
    p = np.array([50.5, 2.5, 2.5, 2.5, 2.5, 2.5]) / 63
    assert piled["kl_uniform"] == pytest.approx(float(np.sum(p * np.log(p * 6))), abs=1e-4)
    assert (piled["smallest"], piled["largest"], piled["rows"]) == (2, 50, 60)


def test_spread_of_no_rows_has_no_kl_and_an_empty_cluster_stays_finite():
    assert spread_figures([0, 0, 0])["kl_uniform"] is None
    one_empty = spread_figures([6, 6, 0])
    assert math.isfinite(one_empty["kl_uniform"]) and one_empty["kl_uniform"] > 0
    assert one_empty["smallest"] == 0


def test_cluster_counts_follow_the_cells_order_and_count_absent_cells_as_zero():
    assert cluster_counts([3, 1, 3, 3, 0], [0, 1, 2, 3]) == [1, 1, 0, 3]


def _unit(rows):
    data = np.asarray(rows, dtype=np.float64)
    return data / np.linalg.norm(data, axis=1, keepdims=True)


def test_near_duplicates_within_the_new_rows_and_against_the_base():
    base = _unit([[1, 0, 0], [0, 1, 0]])
    new = _unit([
        [0, 0, 1],          # new topic
        [0, 0.05, 1],       # cosine 0.9988 with the row before: a duplicate within the new rows
        [1, 0.01, 0],       # a copy of a base row
        [0.6, 0.8, 0],      # between the two base rows: cosine 0.8 at most, not a duplicate
    ])
    found = near_duplicate_shares(new, base, threshold=0.92)
    assert (found["within_new"], found["against_base"], found["any"]) == (1, 1, 2)
    assert found["share_any"] == pytest.approx(0.5)
    # the first of two near-identical new rows is not the duplicate: only the later one counts
    assert near_duplicate_shares(new[:1], base, 0.92)["any"] == 0
    # a lower threshold turns the in-between row into a duplicate of a base row
    assert near_duplicate_shares(new, base, threshold=0.75)["against_base"] == 2


def test_nearest_cosines_grade_closeness_when_nothing_is_a_duplicate():
    base = _unit([[1, 0, 0]])
    new = _unit([[0, 1, 0], [0, 0.6, 0.8]])  # the two new rows have cosine 0.6; both are orthogonal to the base
    found = near_duplicate_shares(new, base, 0.92)
    assert found["any"] == 0
    assert found["mean_nearest_new_cosine"] == pytest.approx(0.6, abs=1e-4)
    assert found["mean_nearest_base_cosine"] == pytest.approx(0.0, abs=1e-4)
    assert near_duplicate_shares(new[:1], base, 0.92)["mean_nearest_new_cosine"] is None  # no other new row


def test_batch_costs_count_the_batches_up_to_the_one_that_stored_the_last_row():
    batches = [{"batch": 0, "sampled": 16, "new_tokens": 900, "seconds": 5.0},
               {"batch": 1, "sampled": 16, "new_tokens": 1100, "seconds": 6.0},
               {"batch": 2, "sampled": 16, "new_tokens": 700, "seconds": 4.0}]
    assert batch_costs(batches, 1) == {"sampled": 32, "new_tokens": 2000, "seconds": 11.0, "batches": 2}
    assert batch_costs(batches, None)["sampled"] == 48


def test_near_duplicates_of_nothing_and_without_a_base():
    assert near_duplicate_shares(np.zeros((0, 3)), np.zeros((0, 3)), 0.92)["share_any"] == 0.0
    twins = _unit([[1, 1, 0], [1, 1, 0]])
    found = near_duplicate_shares(twins, np.zeros((0, 3)), 0.92)
    assert (found["within_new"], found["against_base"]) == (1, 0)


def test_balanced_draw_takes_evenly_until_a_cluster_runs_out():
    # base: cluster 0 holds 8, cluster 1 holds 2; new rows: 3 in cluster 2
    keys = [0] * 8 + [1] * 2 + [2] * 3
    is_new = [False] * 10 + [True] * 3
    drawn = balanced_draw(keys, is_new, [0, 1, 2], size=6, seed=0)
    assert drawn["per_cluster"] == [2, 2, 2] and drawn["drawn"] == 6
    assert drawn["from_new"] == 2
    assert drawn["kl_uniform"] == pytest.approx(0.0, abs=1e-9)
    assert drawn["exactly_balanced_max"] == 3 * 2

    # cluster 1 is exhausted after 2 rows, so a larger draw leans on the others
    bigger = balanced_draw(keys, is_new, [0, 1, 2], size=10, seed=0)
    assert bigger["per_cluster"] == [5, 2, 3] and bigger["from_new"] == 3


def test_balanced_draw_reports_an_empty_cluster_and_a_size_beyond_the_rows():
    keys = [0, 0, 1]
    drawn = balanced_draw(keys, [False, True, False], [0, 1, 2], size=10)
    assert drawn["per_cluster"] == [2, 1, 0] and drawn["drawn"] == 3
    assert drawn["exactly_balanced_max"] == 0  # cluster 2 has no rows: no exactly balanced selection at all


def test_balanced_draw_is_seeded():
    keys = [0] * 5 + [1] * 5
    is_new = [i % 2 == 0 for i in range(10)]
    assert balanced_draw(keys, is_new, [0, 1], 4, seed=3) == balanced_draw(keys, is_new, [0, 1], 4, seed=3)


def test_markdown_has_one_table_row_per_arm_and_the_commands():
    spread = spread_figures([4, 1])
    arm = {"arm": "steered", "seed": 1, "stored": 5,
           "cost": {"sampled": 80, "generated_tokens": 5000, "job_seconds": 30.0, "stage_seconds_total": 50.0},
           "new": spread_figures([1, 4]), "base_plus_new": spread_figures([5, 5]),
           "near_duplicates": near_duplicate_shares(_unit([[1, 0]]), _unit([[0, 1]]), 0.92),
           "judges": {"mean_score": 3.21}, "balanced_selection": balanced_draw([0, 1], [False, True], [0, 1], 2),
           "examples": ["Write a poem"]}
    result = {"settings": {"n_base": 5, "n_new": 5, "clusters": 2, "base_seed": 0, "dedup_threshold": 0.92,
                           "selection_size": 2},
              "base": {"spread": spread, "mean_score": 3.0, "exactly_balanced_max": 2},
              "arms": [arm], "commands": ["forgetless reconstruct --n 5"], "command": "python x", "finished": "now",
              "machine": {"name": "machine C (Intel Xeon with AMX bf16)"}, "reading": "Steering helped."}
    text = markdown(result)
    rows = [line for line in text.splitlines() if line.startswith("| steered |")]
    assert len(rows) == 2  # one per seed, one over the seeds
    assert "| 80 | 5000 |" in rows[0] and "3.21" in rows[0]
    assert rows[1].startswith("| steered | 1 | 5 (5–5) | 80 (80–80) |")
    assert "forgetless reconstruct --n 5" in text and "Steering helped." in text
    assert "machine C" in text


def test_summarise_gives_mean_min_max_per_arm_over_its_seeds():
    def arm(name, seed, stored, score):
        return {"arm": name, "seed": seed, "stored": stored,
                "cost": {"sampled": 2 * stored, "generated_tokens": 10, "job_seconds": 1.0},
                "base_plus_new": {"kl_uniform": 0.1, "largest_10pct_share": 0.3},
                "near_duplicates": {"share_any": 0.0}, "judges": {"mean_score": score},
                "balanced_selection": {"exactly_balanced_max": 30}}
    rows = summarise([arm("free", 1, 60, 3.0), arm("steered", 1, 32, None), arm("free", 2, 40, 4.0)])
    assert [r["arm"] for r in rows] == ["free", "steered"]
    assert rows[0]["seeds"] == [1, 2]
    assert rows[0]["stored"] == (50.0, 40.0, 60.0) and rows[0]["samples drawn"] == (100.0, 80.0, 120.0)
    assert rows[0]["mean score"] == (3.5, 3.0, 4.0)
    assert rows[1]["mean score"] is None  # no scored rows: no figure rather than a zero
