"""The numbers behind the forgetting experiment's reading: paired deltas, drift on a common set, verdicts.

Every model is evaluated on the same seeded items (same ``--limit`` and ``--seed``), so a difference
between two models is measured per item (``d_i = correct_x - correct_y``) and its standard error is that
of the paired differences: much smaller than combining two unpaired standard errors, and the right noise
level for "did this change". An effect counts as real only when ``|difference| > 2 x stderr``.

Drift is compared on the held-out general texts that *every* arm's evaluation scored (texts arm (c)
trained on are left out for all arms), so the arms are measured on one and the same set.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from core.eval.task import accuracy_stats  # mean and its standard error, for any numbers

GENERAL = ("arc_easy", "piqa", "hellaswag", "sciq")
DOMAIN = "medmcqa"
IFEVAL = "ifeval"  # instruction following (prompt-level strict), when the experiment ran it
NOISE_SIGMAS = 2.0


def paired_difference(x: Mapping[str, float], y: Mapping[str, float]) -> dict[str, Any]:
    """mean(x_i - y_i) over the items both scored, its paired standard error, and the count."""
    common = sorted(set(x) & set(y))
    diff, se = accuracy_stats([x[item] - y[item] for item in common])
    return {"diff": diff, "se": se, "n": len(common)}


def combine_tasks(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The mean of per-task differences; tasks are independent samples, so variances add."""
    if not parts or any(p["diff"] is None for p in parts):
        return {"diff": None, "se": None, "n": sum(p["n"] for p in parts)}
    ses = [p["se"] or 0.0 for p in parts]
    return {"diff": sum(p["diff"] for p in parts) / len(parts),
            "se": math.sqrt(sum(se * se for se in ses)) / len(parts), "n": sum(p["n"] for p in parts)}


def verdict(diff: float | None, se: float | None) -> str:
    """'gain' / 'loss' beyond NOISE_SIGMAS standard errors, else 'within noise' (or 'no difference')."""
    if diff is None:
        return "not measured"
    if not se:
        return "no difference" if diff == 0 else ("gain" if diff > 0 else "loss")
    if abs(diff) <= NOISE_SIGMAS * se:
        return "within noise"
    return "gain" if diff > 0 else "loss"


def items_needed(diff: float | None, se: float | None, n: int) -> int | None:
    """Items per task at which ``diff`` would reach NOISE_SIGMAS standard errors (se shrinks as 1/sqrt(n))."""
    if not diff or not se or not n:
        return None
    return math.ceil(n * (NOISE_SIGMAS * se / abs(diff)) ** 2)


def drift_summary(per_text: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """Drift per arm on the texts every arm scored: token-weighted KL and perplexities, per-text KL stderr.

    ``per_text[arm]`` holds DriftScore-like dicts (item_id, tokens, kl_sum, nll_base, nll_tuned)."""
    arms = {arm: {row["item_id"]: row for row in rows} for arm, rows in per_text.items()}
    common = sorted(set.intersection(*(set(rows) for rows in arms.values()))) if arms else []
    out: dict[str, Any] = {"n_texts": len(common), "arms": {}, "per_text_kl": {}}
    for arm, rows in arms.items():
        chosen = [rows[item] for item in common]
        tokens = sum(r["tokens"] for r in chosen)
        per_kl = {r["item_id"]: r["kl_sum"] / r["tokens"] for r in chosen if r["tokens"]}
        _, kl_se = accuracy_stats(list(per_kl.values()))
        out["tokens"] = tokens
        out["per_text_kl"][arm] = per_kl
        out["arms"][arm] = {
            "kl": sum(r["kl_sum"] for r in chosen) / tokens if tokens else None, "kl_stderr": kl_se,
            "ppl_base": math.exp(sum(r["nll_base"] for r in chosen) / tokens) if tokens else None,
            "ppl_tuned": math.exp(sum(r["nll_tuned"] for r in chosen) / tokens) if tokens else None,
        }
    return out


def compare(correct: Mapping[str, Mapping[str, Mapping[str, float]]], arms: Sequence[str],
            drift: Mapping[str, Any], domain_task: str = DOMAIN) -> dict[str, Any]:
    """Deltas of every arm vs the base and the arm-vs-arm contrasts, from per-item correctness.

    ``correct[model][task][item_id]`` is 1.0 or 0.0 for model in ("base", *arms)."""
    deltas: dict[str, Any] = {}
    tasks = (*GENERAL, domain_task, IFEVAL)
    for arm in arms:
        per_task = {task: paired_difference(correct[arm][task], correct["base"][task])
                    for task in tasks if task in correct[arm] and task in correct["base"]}
        deltas[arm] = {**per_task, "general_mean": combine_tasks([per_task[t] for t in GENERAL if t in per_task])}
    contrasts: dict[str, Any] = {}
    for x, y in (("c", "a"), ("b", "a"), ("c", "b")):
        if x not in arms or y not in arms:
            continue
        per_task = {task: paired_difference(correct[x][task], correct[y][task])
                    for task in tasks if task in correct[x] and task in correct[y]}
        entry = {**per_task, "general_mean": combine_tasks([per_task[t] for t in GENERAL if t in per_task])}
        kl = drift.get("per_text_kl", {})
        if x in kl and y in kl:
            entry["kl"] = paired_difference(kl[x], kl[y])
        contrasts[f"{x}_vs_{y}"] = entry
    return {"deltas": deltas, "contrasts": contrasts}


def _pm(entry: Mapping[str, Any], scale: float = 100.0, unit: str = " pts") -> str:
    if entry.get("diff") is None:
        return "not measured"
    se = entry.get("se")
    if scale == 1:  # KL differences: small numbers, shown with significant digits
        return f"{entry['diff']:+.2e} ± {se or 0.0:.2e}"
    return f"{entry['diff'] * scale:+.1f}{unit} ± {(se or 0.0) * scale:.1f}"


def reading(results: Mapping[str, Any]) -> list[str]:
    """Plain sentences computed from the numbers (nothing here is decided in advance)."""
    deltas, contrasts = results["deltas"], results["contrasts"]
    names = results["arm_names"]
    lines: list[str] = []
    domain = results.get("domain_task", DOMAIN)
    label = {"medmcqa": "MedMCQA"}.get(results.get("domain_label", "medmcqa"), results.get("domain_label"))
    base_domain = results["models"]["base"]["tasks"].get(domain, {})
    if "a" in deltas and domain in deltas["a"]:
        d = deltas["a"][domain]
        v = verdict(d["diff"], d["se"])
        acc_a = results["models"]["a"]["tasks"][domain]["acc"]
        line = (f"Domain: arm (a) moves {label} accuracy from {base_domain.get('acc', 0):.3f} to {acc_a:.3f} "
                f"({_pm(d)} paired stderr, n={d['n']}): {v}.")
        if v == "within noise":
            need = items_needed(d["diff"], d["se"], d["n"])
            line += (" The domain gain is not measurable at this scale" +
                     (f" (this difference would need about {need} test items to reach 2 stderr)." if need else "."))
        baseline = base_domain.get("majority_letter_baseline")
        if baseline is not None:
            line += (f" For reference, always answering the most common gold letter scores {baseline:.3f}; the base "
                     f"model answers '{base_domain.get('top_letter')}' on {base_domain.get('top_letter_share', 0):.0%}"
                     " of questions.")
        lines.append(line)
    ppl = {model: results["models"][model]["tasks"].get("domain_ppl") for model in ("base", *deltas)}
    if all(ppl.values()) and ppl["base"].get("nll") is not None:
        arms_ppl = ", ".join(f"({arm}) {ppl[arm]['ppl']:.3f}" for arm in deltas)
        lines.append(f"Domain answer perplexity on the held-out {label} rows (n={ppl['base']['n']}, lower is "
                     f"better): base {ppl['base']['ppl']:.3f}, {arms_ppl}; NLL/token stderr "
                     f"≈ {ppl['base'].get('nll_stderr') or 0:.3f}.")
    for arm in deltas:
        g = deltas[arm]["general_mean"]
        lines.append(f"General ability, arm ({arm}) {names[arm]}: mean change over {', '.join(GENERAL)} "
                     f"{_pm(g)} vs the base: {verdict(g['diff'], g['se'])}.")
    for arm in deltas:
        if IFEVAL in deltas[arm]:
            d = deltas[arm][IFEVAL]
            lines.append(f"Instruction following, arm ({arm}) {names[arm]}: IFEval prompt-level strict accuracy "
                         f"{_pm(d)} vs the base (n={d['n']}): {verdict(d['diff'], d['se'])}.")
    for key, label in (("c_vs_a", "(c) ours vs (a) domain only"), ("c_vs_b", "(c) ours vs (b) public SFT"),
                       ("b_vs_a", "(b) public SFT vs (a) domain only")):
        if key not in contrasts:
            continue
        entry = contrasts[key]
        g, v = entry["general_mean"], verdict(entry["general_mean"]["diff"], entry["general_mean"]["se"])
        x, y = key.split("_vs_")
        outcome = {"gain": f"({x}) keeps more general ability than ({y})",
                   "loss": f"({x}) keeps less general ability than ({y})",
                   "within noise": "no difference beyond noise", "no difference": "no difference at all",
                   }.get(v, v)
        line = f"Contrast {label}: general mean {_pm(g)}: {outcome}."
        if v == "within noise":
            need = items_needed(g["diff"], g["se"], g["n"] // max(1, len(GENERAL)))
            if need:
                line += f" Resolving a difference this size would take about {need} items per task."
        if IFEVAL in entry:
            line += f" IFEval {_pm(entry[IFEVAL])}: {verdict(entry[IFEVAL]['diff'], entry[IFEVAL]['se'])}."
        if "kl" in entry and entry["kl"]["diff"] is not None:
            k = entry["kl"]
            kv = verdict(-k["diff"], k["se"])  # lower KL is better: flip the sign for the verdict's wording
            kl_word = {"gain": f"({x}) drifts less", "loss": f"({x}) drifts more"}.get(kv, kv)
            line += f" Drift KL difference {_pm(k, scale=1)} nats/token: {kl_word}."
        lines.append(line)
    drift = results.get("drift_common", {})
    if drift.get("n_texts"):
        lines.append(
            f"Drift is measured on {drift['n_texts']} held-out reconstructed general texts that no arm trained on "
            "(the model's own screened responses). Arm (c) trains on texts from this same distribution, so a lower "
            "drift for (c) on this set is partly by construction; the benchmark deltas are the independent check.")
    if all(verdict(deltas[a]["general_mean"]["diff"], deltas[a]["general_mean"]["se"]) in
           ("within noise", "no difference") for a in deltas):
        lines.append("No arm changed general benchmark accuracy beyond noise, so this run cannot show whether (c) "
                     "forgets less: at this scale (steps, learning rate, items per task) fine-tuning did not cause "
                     "measurable forgetting to prevent. More steps, a higher learning rate or more items per task "
                     "are the levers.")
    return lines


def all_finite(value: Any) -> bool:
    """True when every number in a nested structure is finite (None counts as absent, not as a number)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return True
    if isinstance(value, int | float):
        return math.isfinite(value)
    if isinstance(value, Mapping):
        return all(all_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(all_finite(v) for v in value)
    return True
