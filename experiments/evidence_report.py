"""The evidence experiment's outputs (issue 16 item 6): ``evidence.json`` (changes vs the base per arm and metric,
the forgetting reduction and domain gain retention with intervals, the ratio sweep, costs) and its Markdown
section. Pure but for ``write_report``: it works on per-item scores already read from the store."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from experiments.evidence_arms import ARM_NAMES, DOMAIN_TASK
from experiments.evidence_costs import cost_reading, cost_sections
from experiments.evidence_grid import (
    DOMAIN_FIT,
    DOMAIN_FIT_DESCRIPTION,
    IFEVAL,
    PRIMARY_DESCRIPTION,
    PRIMARY_METRIC,
)
from experiments.evidence_stats import change, head_to_head, runs_on, seed_mean_stderr, summary
from experiments.forgetting_stats import GENERAL

Scores = Mapping[str, Mapping[str, float]]  # task -> item -> score
TASKS = (PRIMARY_METRIC, *GENERAL, IFEVAL, DOMAIN_TASK, DOMAIN_FIT)


def arm_changes(base: Scores, seeds: Sequence[Scores]) -> dict[str, dict[str, Any]]:
    """Per task (the primary metric pools the general benchmarks' items): the change vs the base over the seeds'
    runs."""
    return {task: change(base[task], [s[task] for s in seeds]) for task in TASKS}


def evidence(base: Scores, arms: Mapping[str, Sequence[Scores]], *, ratio: float, seeds: Sequence[int],
             drift: Mapping[str, Any], costs: Mapping[str, Any], settings: Mapping[str, Any],
             machine: Mapping[str, Any], arm_seeds: Mapping[str, Sequence[int]] | None = None) -> dict[str, Any]:
    """The evidence record. ``arms`` maps an arm key (a, b, d, e, and c@<ratio> for every ratio of the sweep) to
    its per-seed scores; (c) at ``ratio`` is arm c. ``arm_seeds`` (same keys): the seed of each of those runs, so
    the ratios compare each arm with (a) on the seeds both have."""
    final = f"c@{ratio:g}"
    order = sorted(arms, key=lambda key: ("c" if key == final else key.split("@")[0],
                                          "@" in key and key != final, float(key.split("@")[1]) if "@" in key else 0))
    named = {("c" if key == final else key): arms[key] for key in order}
    changes = {arm: arm_changes(base, scores) for arm, scores in named.items()}
    main_arms = {arm: {task: [s[task] for s in scores] for task in (PRIMARY_METRIC, DOMAIN_FIT)}
                 for arm, scores in named.items() if "@" not in arm}
    seeds_of = {("c" if key == final else key): list(runs) for key, runs in (arm_seeds or {}).items()}
    main_base = {t: base[t] for t in (PRIMARY_METRIC, DOMAIN_FIT)}
    main_seeds = {arm: seeds_of[arm] for arm in main_arms} if arm_seeds else None
    ratios = summary(main_base, main_arms, primary=PRIMARY_METRIC, domain=DOMAIN_FIT, arm_seeds=main_seeds)
    ours = ratios.get("c", {})
    against = ({} if "c" not in main_arms else
               head_to_head(main_base, main_arms, ours="c", tasks=(PRIMARY_METRIC, DOMAIN_FIT), skip=("a",),
                            arm_seeds=main_seeds))
    return {
        "primary_metric": PRIMARY_METRIC, "primary_description": PRIMARY_DESCRIPTION, "seeds": list(seeds),
        "domain_gain_metric": DOMAIN_FIT, "domain_gain_description": DOMAIN_FIT_DESCRIPTION,
        "n_items": {task: changes["a"][task]["n"] for task in TASKS},
        "arm_names": {arm: ARM_NAMES[arm.split("@")[0]] + (f" at ratio {arm.split('@')[1]}" if "@" in arm else "")
                      for arm in changes},
        "arms": {arm: {task: {"delta": v["delta"], "stderr": v["stderr"], "n": v["n"],
                              "per_seed": v.get("per_seed")} for task, v in tasks.items()}
                 for arm, tasks in changes.items()},
        "arm_seeds": seeds_of or None,
        "drift": dict(drift),
        "summary": {
            "forgetting_reduction": ours.get("forgetting_reduction", {}).get("value"),
            "forgetting_reduction_ci": ours.get("forgetting_reduction", {}).get("ci"),
            "domain_gain_retention": ours.get("domain_gain_retention", {}).get("value"),
            "domain_gain_retention_ci": ours.get("domain_gain_retention", {}).get("ci"),
            "by_arm": ratios,
        },
        "head_to_head": against,
        "sweep": sweep_rows(main_base, main_arms["a"], arms, final=final, arm_seeds=arm_seeds),
        "costs": dict(costs), "settings": dict(settings), "machine": dict(machine),
    }


def sweep_rows(base: Mapping[str, Mapping[str, float]], domain_only: Mapping[str, Sequence[Mapping[str, float]]],
               arms: Mapping[str, Sequence[Scores]], *, final: str,
               arm_seeds: Mapping[str, Sequence[int]] | None) -> list[dict[str, Any]]:
    """(c)'s ratio sweep as a curve, each ratio on the seeds every ratio has (the final ratio's other seeds left
    out: seeds differ more than neighbouring ratios may): forgetting and domain gain vs the base, and the
    forgetting reduction and domain gain retention against (a) on those seeds. Without ``arm_seeds``, or with no
    seed every ratio has, each ratio uses all its runs.

    ``base``/``domain_only``: the primary metric's and the domain gain's scores, of the base and of (a)'s runs."""
    keys = sorted((key for key in arms if key.startswith("c@")), key=lambda key: float(key.split("@")[1]))
    common = sorted(set.intersection(*(set(arm_seeds[key]) for key in keys))) if arm_seeds and keys else []
    rows = []
    for key in keys:
        seeds = common or (list(arm_seeds[key]) if arm_seeds else None)
        every = {task: [run[task] for run in arms[key]] for task in (PRIMARY_METRIC, DOMAIN_FIT)}
        tasks = every if seeds is None else runs_on(every, arm_seeds[key], seeds)
        against_a = summary(base, {"a": domain_only, key: tasks}, primary=PRIMARY_METRIC, domain=DOMAIN_FIT,
                            arm_seeds=None if seeds is None else {"a": arm_seeds["a"], key: seeds})[key]
        rows.append({"ratio": float(key.split("@")[1]), "arm": "c" if key == final else key, "seeds": seeds,
                     "forgetting": _neg(change(base[PRIMARY_METRIC], tasks[PRIMARY_METRIC])),
                     "domain_gain": change(base[DOMAIN_FIT], tasks[DOMAIN_FIT]),
                     "forgetting_reduction": against_a["forgetting_reduction"],
                     "domain_gain_retention": against_a["domain_gain_retention"]})
    return rows


def _interval_says(name: str, value: float | None, ci: Sequence[float | None] | None, what: str) -> str:
    """One plain sentence on a ratio and its interval (``what``: what 1.0 would mean)."""
    if value is None:
        return f"{name}: undefined — arm (a) shows no positive effect to compare with."
    low, high = (ci or (None, None))[:2]
    shown = f"{value:.2f}" + (f" (95% interval {low:.2f} to {high:.2f})" if low is not None else "")
    if low is not None and low > 0:
        return f"{name} {shown}: clearly above 0 ({what} would be 1)."
    if high is not None and high < 0:
        return f"{name} {shown}: clearly below 0 — the opposite of the intended effect."
    return f"{name} {shown}: the interval includes 0, so no effect is shown."


def reading(record: Mapping[str, Any], sigmas: float = 3.0) -> list[str]:
    """What the numbers show, in plain sentences, including an absent or reversed effect."""
    a = record["arms"]["a"][PRIMARY_METRIC]
    lines = []
    if a["delta"] is None or not a["stderr"]:
        lines.append("Arm (a) has no primary-metric change to read.")
    elif a["delta"] < -sigmas * a["stderr"]:
        lines.append(f"Domain-only training forgets: general accuracy {100 * a['delta']:+.1f} ± "
                     f"{100 * a['stderr']:.1f} points vs the base (more than {sigmas:g} standard errors).")
    else:
        lines.append(f"Domain-only training does not clearly forget here (general accuracy {100 * a['delta']:+.1f} ± "
                     f"{100 * a['stderr']:.1f} points), so no arm can show what it prevents.")
    spread = a.get("per_seed") or []
    if len(spread) > 1:
        mean, se = seed_mean_stderr(spread)
        over_seeds = f"{abs(mean) / se:.1f} of these standard errors" if se else "no spread"
        lines.append(f"Between seeds, (a)'s general accuracy changed by {100 * min(spread):+.1f} to "
                     f"{100 * max(spread):+.1f} points (over seeds {100 * mean:+.1f} ± {100 * se:.1f}, "
                     f"{over_seeds}): the ± here are over items and leave that spread out.")
    for arm, values in record["summary"]["by_arm"].items():
        name = record["arm_names"].get(arm, arm)
        lines.append(f"({arm}) {name}: " + _interval_says(
            "forgetting reduction", values["forgetting_reduction"]["value"], values["forgetting_reduction"]["ci"],
            "preventing all of (a)'s forgetting") + " " + _interval_says(
            "Domain gain retention", values["domain_gain_retention"]["value"], values["domain_gain_retention"]["ci"],
            "keeping all of (a)'s domain gain"))
    return (lines + _head_to_head_reading(record, sigmas) + _sweep_reading(record) + _ifeval_reading(record, sigmas)
            + cost_reading(record))


def _sweep_reading(record: Mapping[str, Any]) -> list[str]:
    """The sweep's curve in one sentence: each ratio's forgetting reduction and domain gain retention, and where
    the least forgetting and the most domain gain lie (the choice a user makes)."""
    rows = [row for row in record.get("sweep") or [] if row["forgetting"]["value"] is not None]
    if len(rows) < 2:
        return []
    seeds = {tuple(row.get("seeds") or ()) for row in rows}
    shared = next(iter(seeds)) if len(seeds) == 1 else ()
    on = f" ({_seed_list(shared)}, against (a) on the same)" if shared else ""

    def each(name: str) -> str:
        return ", ".join(f"{_value(row[name]['value'])} at {row['ratio']:g}" for row in rows)

    least = min(rows, key=lambda row: row["forgetting"]["value"])
    most = max(rows, key=lambda row: row["domain_gain"]["delta"])
    return [f"Ratio sweep of (c){on}: forgetting reduction {each('forgetting_reduction')}; domain gain retention "
            f"{each('domain_gain_retention')}. The least forgetting at ratio {least['ratio']:g} "
            f"({-100 * least['forgetting']['value']:+.1f} points), the most domain gain at ratio {most['ratio']:g} "
            f"({most['domain_gain']['delta']:+.3f} nats/token)."]


def _head_to_head_reading(record: Mapping[str, Any], sigmas: float) -> list[str]:
    """(c) against each other arm directly, paired per item on the seeds both have: the question each arm asks
    ((b): does public SFT data do as well? (d): does screening matter? (e): does the conventional baseline?)."""
    lines = []
    for arm, entry in (record.get("head_to_head") or {}).items():
        if entry[PRIMARY_METRIC]["delta"] is None:
            continue
        parts = [_gap(entry[PRIMARY_METRIC], sigmas, "general accuracy", 100.0, 1, "points"),
                 _gap(entry[DOMAIN_FIT], sigmas, "answer fit", 1.0, 3, "nats/token")]
        lines.append(f"(c) against ({arm}) {record['arm_names'].get(arm, arm)}, item by item"
                     f"{_on_seeds(entry.get('seeds'))}: " + "; ".join(parts) + ".")
    return lines


def _gap(entry: Mapping[str, Any], sigmas: float, what: str, scale: float, digits: int, unit: str) -> str:
    """One metric of a head-to-head: (c) − the other arm ± its paired stderr, its verdict, and each seed's gap."""
    delta, stderr = entry["delta"], entry.get("stderr") or 0.0
    verdict = ("clearly higher with (c)" if delta > sigmas * stderr else
               "clearly lower with (c)" if delta < -sigmas * stderr else "not clearly different")
    seeds = entry.get("per_seed") or []
    shown = [f"{scale * gap:+.{digits}f}" for gap in seeds if gap is not None]
    each = f" (per seed {', '.join(shown)})" if len(shown) > 1 else ""
    return f"{what} {_pm(entry, scale, digits)} {unit}, {verdict}{each}"


def _ifeval_reading(record: Mapping[str, Any], sigmas: float) -> list[str]:
    """IFEval beside the primary metric: each arm's change next to (a)'s, and whether it is clearly above, below,
    or neither (the difference against ``sigmas`` standard errors, unpaired: the arms' replies differ)."""
    a = record["arms"]["a"].get(IFEVAL)
    if not a or a.get("delta") is None:
        return []
    parts = []
    for arm in record["summary"]["by_arm"]:
        other = record["arms"].get(arm, {}).get(IFEVAL)
        if not other or other.get("delta") is None:
            continue
        gap, stderr = other["delta"] - a["delta"], math.hypot(a["stderr"] or 0.0, other["stderr"] or 0.0)
        verdict = ("clearly above (a)'s" if gap > sigmas * stderr else
                   "clearly below (a)'s" if gap < -sigmas * stderr else "not clearly different from (a)'s")
        parts.append(f"({arm}) {_pm(other)}, {verdict} (difference {100 * gap:+.1f} ± {100 * stderr:.1f})")
    if not parts:
        return []
    return [f"IFEval (all prompts, beside the primary metric): (a) {_pm(a)} points; " + "; ".join(parts) + "."]


def _neg(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {"value": None if entry["delta"] is None else -entry["delta"], "stderr": entry["stderr"]}


def _pm(entry: Mapping[str, Any] | None, scale: float = 100.0, digits: int = 1) -> str:
    """A change ± its stderr: in points by default (fractions × 100)."""
    if not entry or entry.get("delta") is None:
        return "-"
    return f"{scale * entry['delta']:+.{digits}f} ± {scale * (entry.get('stderr') or 0):.{digits}f}"


def _nats(entry: Mapping[str, Any] | None) -> str:
    return _pm(entry, scale=1.0, digits=3)


def _interval(value: float | None, ci: Sequence[float] | None) -> str:
    shown = value is not None and ci and ci[0] is not None
    return _value(value) + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if shown else "")


def _entry(value: Mapping[str, Any]) -> str:
    return _interval(value["value"], value["ci"])


def _seed_list(seeds: Sequence[int]) -> str:
    return f"seed{'s' if len(seeds) != 1 else ''} {', '.join(map(str, seeds)) or 'none shared'}"


def _on_seeds(seeds: Sequence[int] | None) -> str:
    return "" if seeds is None else f" ({_seed_list(seeds)})"


def _each_seed(per_seed: Mapping[str, Mapping[str, float | None]] | None) -> str:
    """Each seed's pair: forgetting reduction / domain gain retention."""
    if not per_seed:
        return ""
    shown = "; ".join(f"seed {seed}: {_value(v['forgetting_reduction'])} / {_value(v['domain_gain_retention'])}"
                      for seed, v in per_seed.items())
    return f"; each seed alone (reduction / retention): {shown}"


def _value(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.2f}"


def _per_seed_lines(record: Mapping[str, Any]) -> list[str]:
    """The per-seed changes behind the table's means, for arms with more than one seed."""
    rows = []
    for arm, tasks in record["arms"].items():
        general, fit = tasks[PRIMARY_METRIC].get("per_seed") or [], tasks[DOMAIN_FIT].get("per_seed") or []
        if len(general) < 2:
            continue
        seeds = (record.get("arm_seeds") or {}).get(arm) or list(range(len(general)))
        (g_mean, g_se), (f_mean, f_se) = seed_mean_stderr(general), seed_mean_stderr(fit)
        rows.append(f"({arm}) " + ", ".join(f"seed {seed}: {100 * g:+.1f} / {f:+.3f}"
                                            for seed, g, f in zip(seeds, general, fit, strict=True))
                    + f" (over seeds {100 * g_mean:+.1f} ± {100 * g_se:.1f} / {f_mean:+.3f} ± {f_se:.3f})")
    if not rows:
        return []
    return ["Per seed (general points / answer fit nats/token; over seeds: mean ± standard error of the seeds' "
            "changes): " + "; ".join(rows)
            + ". The table's ± are over items, each averaged over the seeds, and leave this spread out."]


def _progress(progress: Mapping[str, Any] | None) -> list[str]:
    """A paragraph on an unfinished experiment: how many of the planned arm runs are evaluated, which."""
    if not progress or progress.get("finished"):
        return []
    runs = "; ".join(f"({arm}) {_seed_list(seeds)}" for arm, seeds in progress["evaluated"].items())
    return [f"**In progress: {progress['done']} of {progress['of']} arm runs evaluated** ({runs}). Every figure "
            "below covers only these runs; the forgetting reduction and domain gain retention compare each arm with "
            "(a) on the seeds both have."]


def markdown(record: Mapping[str, Any], commands: Sequence[str]) -> str:
    """The results section: a table per arm, the two ratios with their intervals, the sweep and the costs."""
    arms = record["arms"]
    header = ("| arm | seeds | general (primary) | " + " | ".join(GENERAL) +
              f" | IFEval | {DOMAIN_TASK} | answer fit (nats/token) | drift KL | held-out ppl (base → tuned) |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for arm, tasks in arms.items():
        drift = record["drift"].get(arm) or {}
        kl = "-" if drift.get("kl") is None else f"{drift['kl']:.3f}"
        ppl = ("-" if drift.get("ppl_tuned") is None else
               f"{drift['ppl_base']:.2f} → {drift['ppl_tuned']:.2f}" if drift.get("ppl_base") is not None else
               f"{drift['ppl_tuned']:.2f}")
        lines.append(f"| ({arm}) {record['arm_names'][arm]} | {len(tasks[PRIMARY_METRIC]['per_seed'] or [])} | "
                     f"{_pm(tasks[PRIMARY_METRIC])} | "
                     + " | ".join(_pm(tasks[t]) for t in GENERAL) +
                     f" | {_pm(tasks[IFEVAL])} | {_pm(tasks[DOMAIN_TASK])} | {_nats(tasks[DOMAIN_FIT])} | {kl} "
                     f"| {ppl} |")
    s = record["summary"]
    ratio_lines = [f"- ({arm}): forgetting reduction {_entry(v['forgetting_reduction'])}, domain gain retention "
                   f"{_entry(v['domain_gain_retention'])}" + _on_seeds(v.get("seeds")) + _each_seed(v.get("per_seed"))
                   for arm, v in s["by_arm"].items()]
    sweep = ["| ratio | seeds | forgetting (pts) | domain gain (answer fit, nats/token) | forgetting reduction | "
             "domain gain retention |", "|---|---|---|---|---|---|"] + [
        f"| {row['ratio']:g} | {', '.join(map(str, row.get('seeds') or [])) or 'all'} | "
        f"{_pm({'delta': row['forgetting']['value'], 'stderr': row['forgetting']['stderr']})} | "
        f"{_nats(row['domain_gain'])} | {_entry(row['forgetting_reduction'])} | "
        f"{_entry(row['domain_gain_retention'])} |" for row in record["sweep"]]
    retimed = (record.get("costs_one_machine") or {}).get("commands")
    return "\n\n".join([
        *_progress(record.get("progress")),
        "\n".join(f"- {line}" for line in reading(record)),
        f"Changes vs the base in points (mean ± stderr over items, each item averaged over the arm's seeds — "
        f"planned: {record['seeds']}); primary metric: {record['primary_description']}; domain gain: "
        f"{record['domain_gain_description']}.",
        "\n".join(lines),
        *_per_seed_lines(record),
        f"**Forgetting reduction** (1 − forgetting(c)/forgetting(a)): "
        f"{_interval(s['forgetting_reduction'], s['forgetting_reduction_ci'])}; **domain gain retention** "
        f"(gain(c)/gain(a)): {_interval(s['domain_gain_retention'], s['domain_gain_retention_ci'])} (95% bootstrap "
        "intervals over items).",
        *(["\n".join(ratio_lines)] if ratio_lines else []),  # none before a second arm is evaluated
        "Ratio sweep of (c), each ratio on the seeds every ratio has (against (a) on the same seeds; 95% "
        "bootstrap intervals over items):\n\n" + "\n".join(sweep),
        *cost_sections(record),
        "Commands:\n\n```bash\n" + "\n".join(commands) + "\n```",
        *(["Timed again on one machine (`--stage retime`):\n\n```bash\n" + "\n".join(retimed) + "\n```"]
          if retimed else [])])


def write_report(out: Path, record: Mapping[str, Any], commands: Sequence[str]) -> None:
    """``out``/evidence.json (the record) and evidence.md (its section)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "evidence.json").write_text(json.dumps(record, indent=1, default=str), encoding="utf-8")
    (out / "evidence.md").write_text("# Evidence: forgetting with and without the reconstructed data\n\n"
                                     + markdown(record, commands) + "\n", encoding="utf-8")
