"""The balanced-reconstruction experiment's report: its summary over seeds and its markdown
(experiments/balanced_reconstruction.py writes both)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np


def _g(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _f(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


SUMMARY = (("stored", ("stored",)), ("samples drawn", ("cost", "sampled")),
           ("generated tokens", ("cost", "generated_tokens")), ("job s", ("cost", "job_seconds")),
           ("KL base+new", ("base_plus_new", "kl_uniform")),
           ("top 10% base+new", ("base_plus_new", "largest_10pct_share")),
           ("near-dup share", ("near_duplicates", "share_any")), ("mean score", ("judges", "mean_score")),
           ("exactly balanced max", ("balanced_selection", "exactly_balanced_max")))


def summarise(arms: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per arm name (in first-seen order): the seeds, and per SUMMARY figure its mean, min and max over them."""
    names = list(dict.fromkeys(a["arm"] for a in arms))
    out = []
    for name in names:
        group = [a for a in arms if a["arm"] == name]
        row: dict[str, Any] = {"arm": name, "seeds": [a["seed"] for a in group]}
        for label, path in SUMMARY:
            values = []
            for a in group:
                value: Any = a
                for key in path:
                    value = value[key]
                if value is not None:
                    values.append(float(value))
            row[label] = (float(np.mean(values)), min(values), max(values)) if values else None
        out.append(row)
    return out


def markdown(result: dict[str, Any]) -> str:
    s, base = result["settings"], result["base"]
    lines = [
        "# Balanced reconstruction, measured", "",
        f"SmolLM2-135M-Instruct on {result['machine']['name']}; written by `{result['command']}` "
        f"({result['finished']}). "
        f"Base: {s['n_base']} free rows (seed {s['base_seed']}) profiled into {s['clusters']} clusters; every arm "
        f"adds {s['n_new']} stored rows to a copy of it. Figures against the base profile's clusters (new rows "
        "placed at the nearest base centroid). KL: to uniform, nats, add-half smoothed; top 10%: the share of rows "
        f"in the largest 10% of clusters (here {base['spread']['largest_10pct_clusters']} of {s['clusters']}); "
        f"near-dup: share of new rows at cosine >= {s['dedup_threshold']} to an earlier new or a base row; score: "
        "the default judges' mean consensus of the new rows' responses (1 each); balanced draw: rows per cluster "
        f"in the first {s['selection_size']} of a cluster-balanced order over base + new, in brackets how many "
        "of them are new rows; exactly balanced max: clusters x the smallest cluster of base + new. Nearest "
        "cosine: mean over new rows of the cosine to the nearest other new row / base row. An arm marked "
        "\"(first K)\" is that job's first K stored rows, with the samples and tokens of the batches that stored "
        "them: the other arms read at the steered arm's row count.", "",
        f"Base alone: KL {_f(base['spread']['kl_uniform'])}, top 10% {_f(base['spread']['largest_10pct_share'])}, "
        f"per cluster {base['spread']['per_cluster']}, mean score {_f(base['mean_score'])}, exactly balanced max "
        f"{base['exactly_balanced_max']}.", "",
        "| arm | seed | samples drawn | generated tokens | job s | stages s | KL new | top 10% new | KL base+new "
        "| top 10% base+new | near-dup (new / vs base) | nearest cosine (new / base) | mean score "
        "| balanced draw per cluster (new) | exactly balanced max |",
        "|" + "---|" * 15,
    ]
    for a in result["arms"]:
        c, d, b = a["cost"], a["near_duplicates"], a["balanced_selection"]
        lines.append(
            f"| {a['arm']} | {a['seed']} | {c['sampled']} | {c['generated_tokens']} | {_f(c['job_seconds'], 0)} "
            f"| {_f(c['stage_seconds_total'], 0)} | {_f(a['new']['kl_uniform'])} "
            f"| {_f(a['new']['largest_10pct_share'])} | {_f(a['base_plus_new']['kl_uniform'])} "
            f"| {_f(a['base_plus_new']['largest_10pct_share'])} "
            f"| {_f(d['share_any'], 2)} ({_f(d['share_within_new'], 2)} / {_f(d['share_against_base'], 2)}) "
            f"| {_f(d.get('mean_nearest_new_cosine'), 2)} / {_f(d.get('mean_nearest_base_cosine'), 2)} "
            f"| {_f(a['judges']['mean_score'], 2)} | {b['per_cluster']} ({b['from_new']}) "
            f"| {b['exactly_balanced_max']} |")
    header = " | ".join(label for label, _ in SUMMARY)
    lines += ["", "Over the seeds (mean, min–max):", "", f"| arm | seeds | {header} |",
              "|" + "---|" * (len(SUMMARY) + 2)]
    for row in summarise(result["arms"]):
        cells = ["–" if row[label] is None else "{} ({}–{})".format(*map(_g, row[label])) for label, _ in SUMMARY]
        lines.append(f"| {row['arm']} | {', '.join(map(str, row['seeds']))} | " + " | ".join(cells) + " |")
    lines += ["", "New rows per base cluster: " + "; ".join(
        f"{a['arm']} seed {a['seed']} {a['new']['per_cluster']}" for a in result["arms"]), ""]
    if result.get("reading"):
        lines += ["## Reading", "", result["reading"], ""]
    lines += ["## Examples (first new rows of each arm)", ""]
    for a in (a for a in result["arms"] if not a.get("first_rows_of_job")):
        lines += [f"- **{a['arm']}** seed {a['seed']}: " + " · ".join(
            json.dumps(t, ensure_ascii=False) for t in a["examples"][:3])]
    lines += ["", "## Commands", "", "```bash", *result["commands"], "```", ""]
    return "\n".join(lines)
