"""The forgetting regime search's files (issue 16, item 1): ``evidence_grid.json`` and ``.md``, written after every
evaluated point, and the points a committed grid already holds, which a fresh workspace takes instead of running
them again. The search itself is in experiments/evidence.py, its pure rules in experiments/evidence_grid.py."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from experiments.evidence_grid import (
    DOMAIN_FIT,
    DOMAIN_FIT_DESCRIPTION,
    FORGET_SIGMAS,
    PRIMARY_DESCRIPTION,
    PRIMARY_METRIC,
    grid_table,
)
from experiments.stage_runner import StageRunner, machine, machine_label, same_machine

NOT_RUN_BECAUSE = {"skip": "a higher learning rate at the same cost did not forget",
                   "stop": "a cheaper setting forgot, so none of these can be the choice"}

# Settings that make two grids' points comparable (the grid's own axes aside)
GRID_IDENTITY = ("quick", "model", "batch_size", "max_length", "seed", "general_limit", "domain_limit")
GRID_SETTINGS = (*GRID_IDENTITY, "grid_rows", "grid_epochs", "grid_lrs", "grid_all")


def recorded_outcomes(path: Path, s: Any) -> dict[str, dict[str, Any]]:
    """The points an earlier grid with the same settings and metric wrote to ``path`` (by name, each with the
    machine it ran on), or none."""
    if not path.exists():
        return {}
    previous = json.loads(path.read_text(encoding="utf-8"))
    kept = previous.get("settings") or {}
    if previous.get("primary_metric") != PRIMARY_METRIC or any(kept.get(k) != getattr(s, k) for k in GRID_IDENTITY):
        return {}
    return {o["name"]: {**o, "machine": o.get("machine") or previous.get("machine")} for o in previous["outcomes"]}


def _same_findings(path: Path, record: dict[str, Any]) -> bool:
    """Whether ``path`` holds ``record``'s findings: all but how and where this run read them (date, invocation,
    commands, timings, machine: each point keeps its own) and the settings that are not the grid's (the arms' own
    may change after the grid). A fresh workspace that took every point from the committed grid rewrites nothing."""
    def findings(grid: dict[str, Any]) -> dict[str, Any]:
        settings = grid.get("settings") or {}
        how = ("created", "invocation", "settings", "commands", "timings", "machine")
        return {**{k: v for k, v in grid.items() if k not in how},
                "settings": {key: settings.get(key) for key in GRID_SETTINGS}}

    try:
        before = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return findings(before) == findings(json.loads(json.dumps(record, default=str)))


def write_grid(found: dict[str, Any], s: Any, out: Path, run: StageRunner, invocation: str) -> dict[str, Any]:
    """evidence_grid.json and .md: their paths, and whether they were written (not when the findings are the same)."""
    out.mkdir(parents=True, exist_ok=True)
    chosen = found["chosen"]
    record = {"experiment": "evidence-grid", "created": datetime.now(UTC).isoformat(timespec="seconds"),
              "primary_metric": PRIMARY_METRIC, "primary_description": PRIMARY_DESCRIPTION,
              "domain_gain_metric": DOMAIN_FIT, "domain_gain_description": DOMAIN_FIT_DESCRIPTION,
              "forget_rule": f"tuned - base < -{FORGET_SIGMAS:g} paired standard errors on the primary metric",
              "gain_rule": f"tuned - base > {FORGET_SIGMAS:g} paired standard errors on the domain answer fit",
              "settings": asdict(s),
              "machine": machine(), "outcomes": found["outcomes"], "skipped": found["skipped"],
              "beyond_choice": found["beyond_choice"], "chosen": chosen, "finished": found["finished"],
              "invocation": invocation,
              "commands": run.commands, "timings": run.timings}
    json_path, md_path = out / "evidence_grid.json", out / "evidence_grid.md"
    if md_path.exists() and _same_findings(json_path, record):
        return {"json": json_path, "markdown": md_path, "written": False}  # a rerun that found nothing new: as they are
    json_path.write_text(json.dumps(record, indent=1, default=str), encoding="utf-8")
    verdict = (f"In progress: {len(found['outcomes'])} point(s) evaluated so far; the choice is made when the grid "
               "ends." if not found["finished"] else
               f"Chosen: **{chosen['name']}** ({chosen['steps']} steps), the cheapest setting that forgets while it "
               "gains." if chosen else
               "No setting of the grid both forgets and gains clearly: widen it (more epochs, rows or another lr).")
    elsewhere = [f"{o['name']} on {machine_label(o['machine'])}" for o in found["outcomes"]
                 if o.get("machine") and not same_machine(o["machine"], record["machine"])]
    markdown = "\n\n".join([
        "# Forgetting regime search (domain-only full fine-tuning)",
        f"Primary metric (declared before the final runs): {PRIMARY_DESCRIPTION}. A setting forgets when it is more "
        f"than {FORGET_SIGMAS:g} paired standard errors below the base; it counts only if it also gains on the "
        f"domain by more than {FORGET_SIGMAS:g} paired standard errors ({DOMAIN_FIT_DESCRIPTION}). Machine: "
        f"{machine_label(record['machine'])}. Written by `{invocation}` on {record['created']}.",
        grid_table(found["outcomes"]),
        *(["Points run on other machines: " + "; ".join(elsewhere) + "."] if elsewhere else []),
        *(f"Not run ({NOT_RUN_BECAUSE[action]}): {', '.join(found[key])}."
          for action, key in (("skip", "skipped"), ("stop", "beyond_choice")) if found[key]),
        verdict,
        "Commands:\n\n```bash\n" + "\n".join(run.commands) + "\n```"])
    md_path.write_text(markdown + "\n", encoding="utf-8")
    return {"json": json_path, "markdown": md_path, "written": True}
