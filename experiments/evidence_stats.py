"""The evidence experiment's figures (issue 16 item 6), pure: changes vs the base over seeds and items, and the
two ratios the method is judged by, with bootstrap intervals.

Per-item scores come as ``{item_id: score}`` (1/0 for accuracy-like tasks). A model evaluated with several seeds
(several trained runs) is compared item by item with the base: each item's change is averaged over the seeds
first, so the standard error is over items (the same items for every seed) and the seeds' spread is reported
beside it.

* ``forgetting(arm) = base − arm`` on the primary metric (positive: it forgot);
* ``forgetting_reduction = 1 − forgetting(c) / forgetting(a)`` (1: none of (a)'s forgetting is left; 0: as much);
* ``domain_gain_retention = gain(c) / gain(a)`` on the domain test (1: all of (a)'s gain kept).

Their 95% intervals resample items with replacement (the same resample for both arms, so their pairing is kept).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

Scores = Mapping[str, float]  # item id -> score
BOOTSTRAP_SAMPLES = 2000


def item_changes(base: Scores, seeds: Sequence[Scores]) -> dict[str, float]:
    """Per item scored by the base and every seed: the seeds' mean score minus the base's."""
    common = set(base).intersection(*seeds) if seeds else set()
    return {item: sum(s[item] for s in seeds) / len(seeds) - base[item] for item in sorted(common)}


def change(base: Scores, seeds: Sequence[Scores]) -> dict[str, Any]:
    """Mean change vs the base, its stderr over items, the per-seed means and the item count."""
    changes = item_changes(base, seeds)
    if not changes:
        return {"delta": None, "stderr": None, "n": 0, "seeds": len(seeds), "per_seed": []}
    per_seed = [float(np.mean([s[i] - base[i] for i in changes])) for s in seeds]
    return {**_mean_stderr(list(changes.values())), "seeds": len(seeds), "per_seed": per_seed}


def _mean_stderr(values: Sequence[float]) -> dict[str, Any]:
    """The mean of per-item values, its standard error over items (None for one item) and the item count."""
    array = np.array(values, dtype=np.float64)
    if not len(array):
        return {"delta": None, "stderr": None, "n": 0}
    stderr = float(array.std(ddof=1) / math.sqrt(len(array))) if len(array) > 1 else None
    return {"delta": float(array.mean()), "stderr": stderr, "n": len(array)}


def seed_mean_stderr(values: Sequence[float]) -> tuple[float, float]:
    """The mean of per-seed changes and its standard error between seeds (sample sd / sqrt(n); 0 for one)."""
    mean = float(np.mean(values))
    return mean, (float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0)


def ratio_with_interval(numerator: Mapping[str, float], denominator: Mapping[str, float], *, one_minus: bool,
                        seed: int = 0, samples: int = BOOTSTRAP_SAMPLES) -> dict[str, Any]:
    """``mean(numerator) / mean(denominator)`` over their common items (``1 −`` it when ``one_minus``), with a
    95% percentile bootstrap interval over items. None where the denominator's mean is not positive (nothing to
    reduce or retain); resamples with a non-positive denominator are dropped and counted."""
    items = sorted(set(numerator) & set(denominator))
    top = np.array([numerator[i] for i in items], dtype=np.float64)
    bottom = np.array([denominator[i] for i in items], dtype=np.float64)
    if not len(items) or bottom.mean() <= 0:
        return {"value": None, "ci": None, "n": len(items), "dropped_resamples": None,
                "note": "undefined: the reference arm shows no positive effect to compare with"}

    def value(t: np.ndarray, b: np.ndarray) -> np.ndarray:
        ratio = t.mean(axis=-1) / b.mean(axis=-1)
        return 1.0 - ratio if one_minus else ratio

    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(items), size=(samples, len(items)))
    kept = bottom[picks].mean(axis=1) > 0
    boot = value(top[picks][kept], bottom[picks][kept])
    low, high = (float(q) for q in np.percentile(boot, [2.5, 97.5])) if len(boot) else (None, None)
    return {"value": float(value(top, bottom)), "ci": [low, high], "n": len(items),
            "dropped_resamples": int((~kept).sum()), "note": None}


def forgetting_items(base: Scores, seeds: Sequence[Scores]) -> dict[str, float]:
    """Per item, how much the arm lost against the base (base − arm, averaged over seeds)."""
    return {item: -value for item, value in item_changes(base, seeds).items()}


def summary(base: Mapping[str, Scores], arms: Mapping[str, Mapping[str, Sequence[Scores]]], *, primary: str,
            domain: str, arm_seeds: Mapping[str, Sequence[int]] | None = None, reference: str = "a",
            seed: int = 0) -> dict[str, Any]:
    """``forgetting_reduction`` and ``domain_gain_retention`` (with intervals) of every arm against ``reference``.

    ``base``: task -> scores; ``arms``: arm -> task -> per-seed scores. ``arm_seeds``: arm -> the training seed of
    each of its runs (same order); given, each arm is compared with the reference's runs of the seeds both have (a
    seed picks the domain rows, a seeded sample, and seeds the training, so the pair shares them), ``seeds`` names
    those seeds and, when there are several, ``per_seed`` holds each seed's pair's two values (no interval)."""
    result = {}
    for arm, tasks in arms.items():
        if arm == reference:
            continue
        if arm_seeds is None:
            result[arm] = {**_ratios(base, tasks, arms[reference], primary, domain, seed), "seeds": None}
            continue
        shared = sorted(set(arm_seeds[arm]) & set(arm_seeds[reference]))
        pair = _paired(arms, arm_seeds, arm, reference, shared)
        result[arm] = {**_ratios(base, *pair, primary, domain, seed), "seeds": shared}
        if len(shared) > 1:  # the items' intervals leave out how much seeds differ: each pair's values
            result[arm]["per_seed"] = {}
            for one in shared:
                pair = _paired(arms, arm_seeds, arm, reference, [one])
                values = _ratios(base, *pair, primary, domain, seed, samples=0)
                result[arm]["per_seed"][str(one)] = {name: v["value"] for name, v in values.items()}
    return result


def head_to_head(base: Mapping[str, Scores], arms: Mapping[str, Mapping[str, Sequence[Scores]]], *, ours: str,
                 tasks: Sequence[str], arm_seeds: Mapping[str, Sequence[int]] | None = None,
                 skip: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """``ours`` against every other arm (but ``skip``), item by item: per task, ours − theirs (each item averaged
    over the runs first), its stderr over items and, with ``arm_seeds``, on the seeds both arms have only, with
    each shared seed's own difference in ``per_seed`` (the items' stderr leaves the seeds' spread out)."""
    result: dict[str, dict[str, Any]] = {}
    for other in arms:
        if other == ours or other in skip:
            continue
        if arm_seeds is None:
            result[other] = {"seeds": None, **{task: {**_difference(base[task], arms[ours][task], arms[other][task]),
                                                      "per_seed": None} for task in tasks}}
            continue
        shared = sorted(set(arm_seeds[ours]) & set(arm_seeds[other]))
        mine, theirs = _paired(arms, arm_seeds, ours, other, shared)
        each = [_paired(arms, arm_seeds, ours, other, [one]) for one in shared]
        entry: dict[str, Any] = {"seeds": shared}
        for task in tasks:
            entry[task] = {**_difference(base[task], mine[task], theirs[task]),
                           "per_seed": [_difference(base[task], m[task], t[task])["delta"] for m, t in each]}
        result[other] = entry
    return result


def _difference(base: Scores, mine: Sequence[Scores], theirs: Sequence[Scores]) -> dict[str, Any]:
    """Per item scored by the base and every run of both: mine − theirs (each averaged over its runs)."""
    ours, other = item_changes(base, mine), item_changes(base, theirs)
    return _mean_stderr([ours[item] - other[item] for item in sorted(set(ours) & set(other))])


def _ratios(base: Mapping[str, Scores], arm: Mapping[str, Sequence[Scores]],
            reference: Mapping[str, Sequence[Scores]], primary: str, domain: str, seed: int,
            samples: int = BOOTSTRAP_SAMPLES) -> dict[str, Any]:
    return {"forgetting_reduction": ratio_with_interval(forgetting_items(base[primary], arm[primary]),
                                                        forgetting_items(base[primary], reference[primary]),
                                                        one_minus=True, seed=seed, samples=samples),
            "domain_gain_retention": ratio_with_interval(item_changes(base[domain], arm[domain]),
                                                         item_changes(base[domain], reference[domain]),
                                                         one_minus=False, seed=seed, samples=samples)}


def _paired(arms: Mapping[str, Mapping[str, Sequence[Scores]]], arm_seeds: Mapping[str, Sequence[int]], arm: str,
            reference: str, keep: Sequence[int]) -> tuple[dict[str, list[Scores]], dict[str, list[Scores]]]:
    """The arm's and the reference's runs of the seeds in ``keep``."""
    return runs_on(arms[arm], arm_seeds[arm], keep), runs_on(arms[reference], arm_seeds[reference], keep)


def runs_on(runs: Mapping[str, Sequence[Scores]], seeds: Sequence[int], keep: Sequence[int]
            ) -> dict[str, list[Scores]]:
    """Per task, the runs (``seeds``: each run's seed) of the seeds in ``keep``."""
    return {task: [s for s, run_seed in zip(scores, seeds, strict=True) if run_seed in keep]
            for task, scores in runs.items()}
