"""What each arm of the evidence experiment cost (issue 16 item 3): the seconds and tokens of data synthesis,
screening and training, and the machine(s) that timed them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from experiments.evidence_arms import resumed_scale
from experiments.stage_runner import machine_label

SYNTHESIS_STAGES = {"c": ("reconstruct", "respond"), "d": ("reconstruct", "respond")}
SCREENING_STAGES = {"c": ("judge",)}


def run_seconds(info: Mapping[str, Any]) -> float:
    """One training run's wall time for all its steps: a resumed run's summary times only the steps after its
    checkpoint, so its rate is carried over to the whole run."""
    total = info.get("total_steps") or info.get("steps") or 0
    return (info.get("seconds") or 0.0) * resumed_scale(total, total - (info.get("resumed_from_step") or 0))


def arm_costs(stages: Mapping[str, Mapping[str, Any]], trained: Mapping[str, Sequence[Mapping[str, Any]]]
              ) -> dict[str, dict[str, Any]]:
    """Per arm, what it needed and the machine(s) that timed it: synthesis (reconstruct + respond: (c) and (d))
    and screening (judge: (c)) once, and training per run (mean over its seeds); (e) is (a)'s training plus the
    interpolation.

    ``stages``: stage -> {seconds, tokens}; ``trained``: arm -> its runs' summaries (train or WiSE-FT)."""
    def stage_sum(names: Sequence[str], key: str) -> float | None:
        """None when every stage left it unrecorded (the judge scores responses and counts no tokens)."""
        values = [stages[name][key] for name in names]
        return None if values and all(v is None for v in values) else sum(v or 0 for v in values)

    def per_run(runs: Sequence[Mapping[str, Any]]) -> tuple[float, float]:
        seconds = [run_seconds(info) for info in runs]
        tokens = [sec * (info.get("tokens_per_s") or 0) for sec, info in zip(seconds, runs, strict=True)]
        return sum(seconds) / len(runs), sum(tokens) / len(runs)

    def per_run_by_machine(runs: Sequence[Mapping[str, Any]], extra: float = 0.0) -> dict[str, float]:
        """Mean training seconds per run on each machine that timed one (seconds compare within a machine)."""
        groups: dict[str, list[float]] = {}
        for info in runs:
            groups.setdefault(machine_label(info.get("machine")), []).append(run_seconds(info))
        return {label: round(sum(values) / len(values) + extra, 1) for label, values in sorted(groups.items())}

    costs = {}
    for arm, runs in trained.items():
        kind = arm.split("@")[0]
        train_seconds, train_tokens = per_run(runs)
        by_machine = per_run_by_machine(runs)
        if kind == "e":
            a_seconds, a_tokens = per_run(trained["a"])
            by_machine = per_run_by_machine(trained["a"], extra=train_seconds)  # (a)'s training + interpolation
            train_seconds, train_tokens = train_seconds + a_seconds, a_tokens
        synthesis, screening = SYNTHESIS_STAGES.get(kind, ()), SCREENING_STAGES.get(kind, ())
        cost = {"synthesis_seconds": stage_sum(synthesis, "seconds"),
                "synthesis_tokens": stage_sum(synthesis, "tokens"),
                "screening_seconds": stage_sum(screening, "seconds"),
                "screening_tokens": stage_sum(screening, "tokens"),
                "train_seconds": round(train_seconds, 1), "train_tokens": round(train_tokens), "runs": len(runs),
                "train_seconds_by_machine": by_machine}
        cost["total_seconds"] = round(cost["synthesis_seconds"] + cost["screening_seconds"] + train_seconds, 1)
        timed = [stages[name].get("machine") for name in (*synthesis, *screening)]
        timed += [info.get("machine") for info in (*runs, *(trained["a"] if kind == "e" else ()))]
        cost["machines"] = sorted({machine_label(m) for m in timed})  # seconds compare within one machine only
        costs[arm] = cost
    return costs
