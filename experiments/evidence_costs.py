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


def one_machine_costs(stages: Mapping[str, Mapping[str, Any]], costs: Mapping[str, Mapping[str, Any]],
                      rates: Mapping[str, float | None]) -> dict[str, dict[str, Any]]:
    """Per arm, the seconds its stages would take on the machine that measured ``rates`` (tokens per second of
    each synthesis stage and of each arm's training: ``evidence_retime``): the tokens each needed in the
    experiment (``stages``, ``costs`` from ``arm_costs``) over that rate. (e)'s training is (a)'s, plus its
    interpolation as timed (seconds, and no tokens: it reads weights). An arm with a stage that machine did not time
    (one added after it) is left out."""
    class Untimed(Exception):
        pass

    def seconds(tokens: float | None, rate: float | None) -> float:
        if not tokens:
            return 0.0
        if not rate:
            raise Untimed
        return tokens / rate

    out = {}
    for arm, cost in costs.items():
        kind = arm.split("@")[0]
        try:
            synthesis = sum(seconds(stages[name]["tokens"], rates.get(name)) for name in SYNTHESIS_STAGES.get(kind, ()))
            screening = sum(seconds(stages[name]["tokens"], rates.get(name))
                            for name in SCREENING_STAGES.get(kind, ()))
            if kind == "e":
                interpolation = cost["train_seconds"] - costs["a"]["train_seconds"]
                train = seconds(cost["train_tokens"], rates.get("train-a")) + interpolation
            else:
                train = seconds(cost["train_tokens"], rates.get(f"train-{arm}"))
        except Untimed:
            continue
        out[arm] = {"synthesis_seconds": round(synthesis, 1), "screening_seconds": round(screening, 1),
                    "train_seconds": round(train, 1), "total_seconds": round(synthesis + screening + train, 1)}
    return out


def cost_sections(record: Mapping[str, Any]) -> list[str]:
    """The report's cost tables: as timed where each stage ran, and (once ``evidence_retime`` ran) on one machine."""
    costs = record["costs"]
    rows = ["| arm | synthesis s (tokens) | screening s (tokens) | training s per run (tokens) | total s | timed on |",
            "|---|---|---|---|---|---|"] + [
        f"| ({arm}) | {c['synthesis_seconds']:.0f} ({_count(c['synthesis_tokens'])}) | {c['screening_seconds']:.0f} "
        f"({_count(c['screening_tokens'])}) | {c['train_seconds']:.0f} ({c['train_tokens']:,}){_by_machine(c)} | "
        f"{c['total_seconds']:.0f} | {'; '.join(c.get('machines') or ['machine not recorded'])} |"
        for arm, c in costs.items()]
    machines = {m for c in costs.values() for m in c.get("machines") or ()}
    uncounted = any(c["screening_tokens"] is None for c in costs.values())
    sections = [
        "Cost per arm (synthesis and screening once; training per run, the mean over seeds):\n\n" + "\n".join(rows)
        + ("\n\nThe timed stages ran on more than one machine: seconds compare only between stages timed on the "
           "same one; token counts compare across machines." if len(machines) > 1 else "")
        + "\n\nTokens: synthesis counts those generated, training those trained on, screening those its judges "
          "read (it generates nothing: an embedding model, and one forward pass of the judge LLM per response)"
        + ("; this run's judge stage did not count them." if uncounted else ".")]
    one = record.get("costs_one_machine")
    if one:
        table = ["| arm | synthesis s | screening s | training s per run | total s | total vs (a) |",
                 "|---|---|---|---|---|---|"] + [
            f"| ({arm}) | {c['synthesis_seconds']:.0f} | {c['screening_seconds']:.0f} | {c['train_seconds']:.0f} | "
            f"{c['total_seconds']:.0f} | {c['total_seconds'] / one['arms']['a']['total_seconds']:.1f}x |"
            for arm, c in one["arms"].items()]
        untimed = [f"({arm})" for arm in costs if arm not in one["arms"]]
        rates = ", ".join(f"{name} {rate:,.0f}" for name, rate in one["tokens_per_s"].items() if rate)
        sections.append(
            f"The same costs on one machine, {machine_label(one['machine'])}: each stage's tokens above over the "
            f"tokens per second it ran at there, timed again over a slice with the experiment's settings "
            f"({one['instructions']} instructions reconstructed, answered and judged; {one['train_steps']} "
            f"training steps of each arm's first-seed mix; `--stage retime`, experiments/evidence_retime.py). "
            f"Tokens per second: {rates}.\n\n" + "\n".join(table)
            + (f"\n\nNot timed on that machine (added after it was): {', '.join(untimed)}." if untimed else ""))
    return sections


def cost_reading(record: Mapping[str, Any]) -> list[str]:
    """One line: what (c) costs against (a), (b) and (e), on one machine when it was timed there."""
    one = record.get("costs_one_machine")
    if not one or not {"a", "c"} <= set(one["arms"]):
        return []
    arms, c = one["arms"], one["arms"]["c"]
    others = "; ".join(f"({arm}) {arms[arm]['total_seconds']:,.0f} s" for arm in ("a", "b", "e") if arm in arms)
    return [f"Cost on one machine ({machine_label(one['machine'])}): (c) {c['total_seconds']:,.0f} s for one run "
            f"({c['synthesis_seconds']:,.0f} s synthesis and {c['screening_seconds']:,.0f} s screening, made once "
            f"for every seed and ratio, then {c['train_seconds']:,.0f} s training); {others}."]


def _by_machine(cost: Mapping[str, Any]) -> str:
    """The training mean per machine, when the runs were timed on more than one."""
    seconds = cost.get("train_seconds_by_machine") or {}
    return "" if len(seconds) < 2 else " — " + ", ".join(f"{label}: {s:.0f}" for label, s in seconds.items())


def _count(tokens: float | None) -> str:
    return "not counted" if tokens is None else f"{tokens:,.0f}"
