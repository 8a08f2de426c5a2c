"""One table across forgetting-experiment runs (domains, learning rates): the numbers docs/results.md cites.

    python -m experiments.forgetting_summary docs/results_medmcqa.json docs/results_arithmetic.json ...

Each row is one arm of one run: its change vs the base on the general mean, the domain task and IFEval
(when that run measured it), in accuracy points ± the paired standard error, marked ▲/▼ beyond 2 of them,
and the held-out domain answers' perplexity (base → arm; user domain files only); then the contrasts
(c)−(a) and (c)−(b), where a positive general change means ours kept more.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from experiments.forgetting_report import delta_cell
from experiments.forgetting_stats import DOMAIN, IFEVAL


def cell(entry: Mapping[str, Any] | None) -> str:
    return delta_cell(entry, missing="–")


def run_label(results: Mapping[str, Any]) -> str:
    s = results["settings"]
    return f"{results.get('domain_label', 'medmcqa')}, lr {s['lr']:g}, {s['steps']} steps"


def summary_table(runs: Sequence[Mapping[str, Any]]) -> str:
    head = ("| run | arm or contrast | general mean | domain accuracy | domain answer perplexity | "
            "IFEval prompt-strict |\n|---|---|---|---|---|---|")
    rows = []
    for results in runs:
        domain = results.get("domain_task", DOMAIN)
        names = results["arm_names"]
        base_ppl = results["models"]["base"]["tasks"].get("domain_ppl") or {}
        entries = [(f"({arm}) {names[arm]}", results["deltas"][arm], results["models"][arm]["tasks"])
                   for arm in results["arms"]]
        entries += [(key.replace("_vs_", " − "), results["contrasts"][key], {}) for key in ("c_vs_a", "c_vs_b")
                    if key in results["contrasts"]]
        for label, entry, tasks in entries:
            ppl = (tasks.get("domain_ppl") or {}).get("ppl")
            ppl_cell = f"{base_ppl['ppl']:.3f} → {ppl:.3f}" if ppl is not None and base_ppl.get("ppl") else "–"
            rows.append(f"| {run_label(results)} | {label} | {cell(entry.get('general_mean'))} | "
                        f"{cell(entry.get(domain))} | {ppl_cell} | {cell(entry.get(IFEVAL))} |")
    return "\n".join([head, *rows])


def main(paths: Sequence[str]) -> int:
    runs = [json.loads(Path(path).read_text(encoding="utf-8")) for path in paths]
    print(summary_table(runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
