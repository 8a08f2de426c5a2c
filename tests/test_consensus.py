"""Consensus math on hand-computed examples: per-response statistics, best pick, judge agreement."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest

from core.screen.consensus import (
    AGREEMENT_COLUMNS,
    BestPick,
    Candidate,
    agreement_matrix,
    judge_agreement,
    pick_best,
    response_consensus,
)


def test_response_consensus_hand_computed() -> None:
    # mean 15/4 = 3.75; deviations -1.75, .25, .25, 1.25 -> squares sum 4.75 -> variance 4.75/4 = 1.1875
    c = response_consensus([2, 4, 4, 5])
    assert c.mean == pytest.approx(3.75)
    assert c.median == pytest.approx(4.0)
    assert c.std == pytest.approx(math.sqrt(1.1875))
    assert (c.min, c.max, c.n_judges) == (2.0, 5.0, 4)


def test_response_consensus_even_median_and_fractional_scores() -> None:
    c = response_consensus([1.5, 4.5, 2.0, 3.0])
    assert c.median == pytest.approx(2.5)
    assert c.mean == pytest.approx(2.75)


def test_response_consensus_one_judge_has_zero_spread() -> None:
    c = response_consensus([3.2])
    assert (c.mean, c.median, c.std, c.min, c.max, c.n_judges) == (3.2, 3.2, 0.0, 3.2, 3.2, 1)


def test_response_consensus_ignores_missing_scores() -> None:
    c = response_consensus([None, 2, float("nan"), 4, float("inf")])
    assert (c.mean, c.std, c.n_judges) == (3.0, 1.0, 2)


@pytest.mark.parametrize("scores", [[], [None], [float("nan"), None]])
def test_response_consensus_without_scores_is_all_nan(scores: list) -> None:
    c = response_consensus(scores)
    assert c.n_judges == 0
    assert all(math.isnan(v) for v in (c.mean, c.median, c.std, c.min, c.max))


def test_pick_best_highest_mean_and_margin() -> None:
    pick = pick_best([Candidate("a", 3.5, 0.5, 100), Candidate("b", 4.25, 1.0, 900), Candidate("c", 4.0, 0.0, 10)])
    assert pick == BestPick("b", pytest.approx(0.25))


def test_pick_best_tie_goes_to_lower_std() -> None:
    pick = pick_best([Candidate("a", 4.0, 0.8, 10), Candidate("b", 4.0, 0.2, 500)])
    assert pick == BestPick("b", 0.0)


def test_pick_best_tie_on_std_goes_to_shorter() -> None:
    pick = pick_best([Candidate("a", 4.0, 0.5, 300), Candidate("b", 4.0, 0.5, 120), Candidate("c", 3.0, 0.0, 1)])
    assert pick == BestPick("b", 0.0)


def test_pick_best_full_tie_goes_to_smallest_id_in_any_input_order() -> None:
    candidates = [Candidate(rid, 4.0, 0.5, 100) for rid in ("r3", "r1", "r2")]
    for order in (candidates, candidates[::-1], candidates[1:] + candidates[:1]):
        assert pick_best(order) == BestPick("r1", 0.0)


def test_pick_best_single_candidate_has_no_margin() -> None:
    assert pick_best([Candidate("only", 2.0, 0.0, 5)]) == BestPick("only", None)


def test_pick_best_skips_unscored_candidates() -> None:
    pick = pick_best([Candidate("nan", float("nan"), float("nan"), 1), Candidate("x", 1.0, 0.0, 50)])
    assert pick == BestPick("x", None)
    assert pick_best([Candidate("nan", float("nan"), 0.0, 1)]) is None
    assert pick_best([]) is None


def test_pick_best_unknown_std_ranks_after_known() -> None:
    pick = pick_best([Candidate("a", 4.0, float("nan"), 1), Candidate("b", 4.0, 1.5, 999)])
    assert pick == BestPick("b", 0.0)


def _long(table: dict[str, list[float | None]], ids: str = "abcdef") -> pd.DataFrame:
    rows = [(ids[i], judge, s) for judge, scores in table.items() for i, s in enumerate(scores)]
    return pd.DataFrame(rows, columns=["response_id", "judge", "score"])


def _pair(result: pd.DataFrame, a: str, b: str) -> pd.Series:
    return result[(result.judge_a == a) & (result.judge_b == b)].iloc[0]


@pytest.fixture(autouse=True)
def _warnings_are_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def test_judge_agreement_hand_computed() -> None:
    # B swaps the middle two: d^2 = 0+1+1+0 = 2 -> rho = 1 - 6*2/(4*15) = 0.8;
    # 6 pairs, 5 concordant, 1 discordant -> tau = 4/6.
    result = judge_agreement(_long({"A": [1, 2, 3, 4], "B": [1, 3, 2, 4], "C": [2, 3, 4, 5], "D": [4, 3, 2, 1]}))
    assert list(result.columns) == list(AGREEMENT_COLUMNS)
    assert len(result) == 6
    ab = _pair(result, "A", "B")
    assert (ab.n, ab.spearman, ab.kendall) == (4, pytest.approx(0.8), pytest.approx(4 / 6))
    ac = _pair(result, "A", "C")  # a point more lenient, same ranking
    assert (ac.spearman, ac.kendall) == (pytest.approx(1.0), pytest.approx(1.0))
    ad = _pair(result, "A", "D")
    assert (ad.spearman, ad.kendall) == (pytest.approx(-1.0), pytest.approx(-1.0))


def test_judge_agreement_uses_only_shared_responses() -> None:
    result = judge_agreement(_long({"A": [1, 2, 3, None, 5], "B": [2, 3, 4, 1, None]}))
    row = _pair(result, "A", "B")
    assert (row.n, row.spearman) == (3, pytest.approx(1.0))


def test_judge_agreement_constant_judge_is_nan() -> None:
    result = judge_agreement(_long({"A": [1, 2, 3], "B": [3, 3, 3]}))
    row = _pair(result, "A", "B")
    assert row.n == 3 and math.isnan(row.spearman) and math.isnan(row.kendall)


def test_judge_agreement_fewer_than_two_shared_is_nan() -> None:
    result = judge_agreement(_long({"A": [1, None, 3], "B": [2, 5, None]}))
    row = _pair(result, "A", "B")
    assert row.n == 1 and math.isnan(row.spearman) and math.isnan(row.kendall)


def test_judge_agreement_averages_repeated_scores_and_keeps_silent_judges() -> None:
    table = pd.concat([_long({"A": [1, 2, 3], "B": [1, 2, 3], "S": [None, None, None]}),
                       pd.DataFrame([("c", "A", 1.0)], columns=["response_id", "judge", "score"])])
    # A's "c" becomes (3+1)/2 = 2, tying "b": 2 concordant, 0 discordant, 1 tie in A -> tau-b = 2/sqrt(2*3)
    result = judge_agreement(table)
    ab = _pair(result, "A", "B")
    assert ab.kendall == pytest.approx(2 / math.sqrt(6))
    silent = _pair(result, "A", "S")
    assert silent.n == 0 and math.isnan(silent.spearman)


def test_judge_agreement_edge_tables() -> None:
    empty = judge_agreement(pd.DataFrame(columns=["response_id", "judge", "score"]))
    assert empty.empty and list(empty.columns) == list(AGREEMENT_COLUMNS)
    assert judge_agreement(_long({"A": [1, 2]})).empty
    with pytest.raises(ValueError, match="score"):
        judge_agreement(pd.DataFrame({"response_id": [1], "judge": ["A"]}))


def test_agreement_matrix_is_symmetric_with_unit_diagonal() -> None:
    pairs = judge_agreement(_long({"A": [1, 2, 3, 4], "B": [1, 3, 2, 4], "C": [5, 5, 5, 5]}))
    matrix = agreement_matrix(pairs, "kendall")
    assert list(matrix.index) == list(matrix.columns) == ["A", "B", "C"]
    assert np.allclose(np.diag(matrix.to_numpy()), 1.0)
    assert matrix.loc["A", "B"] == matrix.loc["B", "A"] == pytest.approx(4 / 6)
    assert math.isnan(matrix.loc["A", "C"]) and math.isnan(matrix.loc["C", "B"])
    assert agreement_matrix(pairs, "spearman").loc["B", "A"] == pytest.approx(0.8)


def test_agreement_matrix_order_single_judge_and_bad_method() -> None:
    pairs = judge_agreement(_long({"A": [1, 2, 3]}))
    single = agreement_matrix(pairs, judges=["A"])
    assert single.shape == (1, 1) and single.loc["A", "A"] == 1.0
    pairs = judge_agreement(_long({"A": [1, 2, 3], "B": [3, 2, 1]}))
    assert list(agreement_matrix(pairs, judges=["B", "A"]).index) == ["B", "A"]
    with pytest.raises(ValueError):
        agreement_matrix(pairs, "pearson")


def test_weights_move_the_mean_only():
    c = response_consensus([2, 4, None, 5], weights=[3, 1, 9, 0])
    assert c.mean == pytest.approx((3 * 2 + 4) / 4) and c.n_judges == 3
    assert (c.median, c.min, c.max) == (4, 2, 5) and c.std == pytest.approx(np.std([2, 4, 5]))
    assert math.isnan(response_consensus([2, 4], weights=[0, 0]).mean)
