"""Which metrics each evaluation task reports, and how a tuned model's result compares with its base's: one
reading for the Evaluate tab (ui/views/evaluate.py) and the exported model card (core/train/model_card.py).

A change is tuned − base with the combined standard error of two independent measurements,
sqrt(se_base² + se_tuned²); it is a gain or a loss when it lies beyond NOISE_Z of them in the better or the
worse direction, else within noise. Drift is already a difference from the base and is read from the tuned
model's own result: its KL against 0 (the base's own, exactly), its perplexity against the base's on the same
held-out text.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# (task, metric, higher is better) in display order, each task's metrics together.
METRICS: tuple[tuple[str, str, bool], ...] = (
    ("arc_easy", "acc", True), ("arc_easy", "acc_norm", True), ("piqa", "acc", True), ("piqa", "acc_norm", True),
    ("hellaswag", "acc", True), ("hellaswag", "acc_norm", True), ("sciq", "acc", True), ("sciq", "acc_norm", True),
    ("medmcqa", "acc", True), ("medmcqa", "top_letter_share", False),
    ("domain_mcq", "acc", True), ("domain_mcq", "top_letter_share", False),
    ("ifeval", "prompt_strict", True), ("ifeval", "instruction_strict", True), ("ifeval", "prompt_loose", True),
    ("domain_ppl", "nll", False), ("domain_ppl", "ppl", False), ("drift", "kl", False), ("drift", "ppl_tuned", False),
)
# A task not listed (a benchmark added later) reports what every multiple-choice task does.
UNLISTED_METRICS: tuple[tuple[str, bool], ...] = (("acc", True), ("acc_norm", True))
# metric -> the key of its standard error in a stored result
STDERR_OF = {"acc": "stderr", "acc_norm": "acc_norm_stderr", "kl": "kl_stderr", "nll": "nll_stderr",
             "prompt_strict": "prompt_strict_stderr", "prompt_loose": "prompt_loose_stderr"}
# Fractions of items: shown as percentages, their changes as percentage points.
RATE_METRICS = frozenset({"acc", "acc_norm", "top_letter_share", "prompt_strict", "instruction_strict",
                          "prompt_loose"})
NOISE_Z = 2.0  # a change beyond this many combined standard errors is called a gain or a loss
DRIFT_TASK = "drift"
# drift metric -> the tuned result's key holding the base's value (None: the base's is 0, as for KL from itself)
DRIFT_BASELINES: dict[str, str | None] = {"kl": None, "ppl_tuned": "ppl_base"}


@dataclass(frozen=True)
class MetricDelta:
    """One metric of one task: the base's value, the tuned model's, and the change between them."""

    task: str
    metric: str
    base: float | None  # None: the base has no result for this task
    tuned: float
    delta: float | None  # tuned - base; None without a base value
    stderr: float | None  # the change's combined standard error; None when either side's is unknown
    verdict: str | None  # "gain", "loss" or "within noise"; None without a base value
    higher_is_better: bool


def task_metrics(task: str) -> tuple[tuple[str, bool], ...]:
    """(metric, higher is better) of everything ``task`` reports, in display order."""
    listed = tuple((metric, better) for name, metric, better in METRICS if name == task)
    return listed or UNLISTED_METRICS


def number(value: Any) -> float | None:
    """``value`` as a float; None for a missing, NaN or text value (pandas' NA, a top letter)."""
    try:
        found = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(found) else found


def metric_value(result: Mapping[str, Any] | None, metric: str) -> float | None:
    """A metric of one stored result (a dict or a pandas row, extra metrics included); None when absent."""
    if result is None or metric not in result:
        return None
    return number(result[metric])


def verdict(delta: float, stderr: float | None, higher_is_better: bool) -> str:
    """"gain" / "loss" beyond NOISE_Z standard errors in the better / worse direction, else "within noise"
    (without an error estimate any change counts)."""
    noisy = abs(delta) <= NOISE_Z * stderr if stderr else delta == 0
    if noisy:
        return "within noise"
    return "gain" if (delta > 0 if higher_is_better else delta < 0) else "loss"


def _combined_stderr(base: Mapping[str, Any] | None, tuned: Mapping[str, Any], metric: str) -> float | None:
    key = STDERR_OF.get(metric)
    if key is None:
        return None
    errors = [metric_value(base, key), metric_value(tuned, key)]
    return math.hypot(*errors) if None not in errors else None


def task_deltas(task: str, base: Mapping[str, Any] | None, tuned: Mapping[str, Any]) -> list[MetricDelta]:
    """Each metric ``task`` reports that the ``tuned`` result has, against the ``base`` result (None when the
    base was not evaluated; drift ignores it and reads its baseline from the tuned result)."""
    deltas = []
    for metric, higher_is_better in task_metrics(task):
        after = metric_value(tuned, metric)
        if after is None:
            continue
        if task == DRIFT_TASK:
            baseline = DRIFT_BASELINES.get(metric)
            before = 0.0 if baseline is None else metric_value(tuned, baseline)
            key = STDERR_OF.get(metric)
            stderr = metric_value(tuned, key) if key else None  # the base side's error is 0
        else:
            before, stderr = metric_value(base, metric), _combined_stderr(base, tuned, metric)
        delta = None if before is None else after - before
        deltas.append(MetricDelta(task, metric, before, after, delta, stderr,
                                  None if delta is None else verdict(delta, stderr, higher_is_better),
                                  higher_is_better))
    return deltas
