"""Consensus of several judges: per-response statistics, the best-response pick, judge agreement.

Pure math over numbers already read from the judges (numpy, scipy, pandas), so the same code serves the
judge job, the UI's tables and heatmaps, and the tests. Disagreement is kept visible (std, min, max,
margin, pairwise rank correlations) instead of being averaged away.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

AGREEMENT_COLUMNS = ("judge_a", "judge_b", "n", "spearman", "kendall")
AGREEMENT_METHODS = ("spearman", "kendall")


@dataclass(frozen=True)
class ResponseConsensus:
    """The judges' scores of one response, summarised. All NaN (n_judges 0) when no judge scored it."""

    mean: float
    median: float
    std: float  # population (ddof=0): the spread of these judges, not an estimate for unseen ones; 0 for one judge
    min: float
    max: float
    n_judges: int


def _finite(scores: Sequence[float | None], weights: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    values, kept = [], []
    for index, score in enumerate(scores):
        try:
            value = float(score)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
        if math.isfinite(value):
            values.append(value)
            kept.append(1.0 if weights is None else float(weights[index]))
    return np.asarray(values, dtype=float), np.asarray(kept, dtype=float)


def response_consensus(scores: Sequence[float | None], weights: Sequence[float] | None = None) -> ResponseConsensus:
    """Mean, median, spread and range of one response's judge scores.

    Missing scores (None, NaN, inf: a judge whose output could not be parsed) are left out rather than
    counted as any rating, so n_judges says how many judges actually spoke. With none left every
    statistic is NaN and n_judges is 0: the response has no consensus, and NaN keeps it from ranking.
    ``weights`` (one per score, e.g. each judge's checked accuracy above chance) weight the mean only
    (NaN when the judges that spoke all weigh 0); median, spread and range stay the judges' own.
    """
    values, kept = _finite(scores, weights)
    if values.size == 0:
        nan = float("nan")
        return ResponseConsensus(nan, nan, nan, nan, nan, 0)
    mean = float(values.mean()) if weights is None else (
        float(np.average(values, weights=kept)) if kept.sum() > 0 else float("nan"))
    return ResponseConsensus(
        mean=mean,
        median=float(np.median(values)),
        std=float(values.std(ddof=0)),
        min=float(values.min()),
        max=float(values.max()),
        n_judges=int(values.size),
    )


@dataclass(frozen=True)
class Candidate:
    """One response to an instruction, as the pick sees it."""

    response_id: str  # ids of one pick must be mutually comparable (all str, or all int)
    mean: float  # consensus mean; NaN when no judge scored it
    std: float  # consensus std; lower means the judges agree more
    length: int  # characters; shorter wins a tie (less padding for the same score)


@dataclass(frozen=True)
class BestPick:
    """The kept response and how clearly it won."""

    best_id: str
    margin: float | None  # best mean - runner-up mean (>= 0); None when there was no scored runner-up


def _rank_key(candidate: Candidate) -> tuple[float, float, int, str]:
    std = candidate.std if math.isfinite(candidate.std) else math.inf  # an unknown spread ranks last
    return (-candidate.mean, std, candidate.length, candidate.response_id)


def pick_best(candidates: Sequence[Candidate]) -> BestPick | None:
    """The response to keep for one instruction: highest mean, ties to lower std, then shorter, then id.

    The order is total, so reruns pick the same response. Candidates with a NaN (or infinite) mean were not
    scored and are never picked; None when no candidate was scored. The margin is measured to the next
    candidate in the same order, so 0.0 means the win came from a tie-break.
    """
    scored = sorted((c for c in candidates if math.isfinite(c.mean)), key=_rank_key)
    if not scored:
        return None
    margin = scored[0].mean - scored[1].mean if len(scored) > 1 else None
    return BestPick(best_id=scored[0].response_id, margin=margin)


def _correlations(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Spearman and Kendall tau-b; NaN when fewer than 2 pairs or either side is constant (no ranking)."""
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan"), float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        spearman = stats.spearmanr(a, b).statistic
        kendall = stats.kendalltau(a, b).statistic
    return float(spearman), float(kendall)


def judge_agreement(scores: pd.DataFrame) -> pd.DataFrame:
    """Rank agreement of every judge pair over the responses both scored.

    Takes a long table (response_id, judge, score) and returns one row per pair (judge_a < judge_b) with
    n (shared responses), Spearman rho and Kendall tau-b. Rank correlation because judges differ in
    leniency: one that scores everything a point higher still agrees fully. Rows with a missing score are
    dropped; a judge scoring a response twice counts with its mean. Correlation is NaN when the pair
    shares fewer than 2 responses or either judge gave all of them the same score (no ranking to compare);
    it stays NaN rather than 0, and scipy's warnings about it are silenced.
    """
    missing = {"response_id", "judge", "score"} - set(scores.columns)
    if missing:
        raise ValueError(f"scores table lacks column(s): {', '.join(sorted(missing))}")
    table = scores.loc[:, ["response_id", "judge", "score"]].copy()
    judges = sorted(table["judge"].dropna().unique().tolist())  # before dropping: a silent judge keeps n=0
    table["score"] = pd.to_numeric(table["score"], errors="coerce").astype(float)
    table = table[np.isfinite(table["score"].to_numpy())]
    wide = table.groupby(["response_id", "judge"])["score"].mean().unstack("judge").reindex(columns=judges)
    rows = []
    for judge_a, judge_b in itertools.combinations(judges, 2):
        both = wide[[judge_a, judge_b]].dropna()
        spearman, kendall = _correlations(both[judge_a].to_numpy(float), both[judge_b].to_numpy(float))
        rows.append((judge_a, judge_b, len(both), spearman, kendall))
    result = pd.DataFrame(rows, columns=list(AGREEMENT_COLUMNS))
    return result.astype({"n": "int64", "spearman": "float64", "kendall": "float64"})


def agreement_matrix(pairs: pd.DataFrame, method: str = "spearman", judges: Sequence[str] | None = None
                     ) -> pd.DataFrame:
    """Square, symmetric judge x judge table of one correlation from `judge_agreement`, for a heatmap.

    The diagonal is 1.0 (a judge agrees with itself); pairs without a value stay NaN. `judges` fixes the
    order and adds judges that have no pair (a single judge); by default the judges in `pairs`, sorted.
    """
    if method not in AGREEMENT_METHODS:
        raise ValueError(f"method must be one of {', '.join(AGREEMENT_METHODS)}, not {method!r}")
    names = list(judges) if judges is not None else sorted(set(pairs["judge_a"]) | set(pairs["judge_b"]))
    matrix = pd.DataFrame(np.nan, index=pd.Index(names, name="judge"), columns=pd.Index(names), dtype=float)
    for judge_a, judge_b, value in pairs[["judge_a", "judge_b", method]].itertuples(index=False):
        if judge_a in matrix.index and judge_b in matrix.index:
            matrix.loc[judge_a, judge_b] = matrix.loc[judge_b, judge_a] = float(value)
    for name in names:
        matrix.loc[name, name] = 1.0
    return matrix
