"""`forgetless judge-check`: each judge's pairwise accuracy on answers whose order is known (a reference vs
its degraded copy, and optionally vs a model's own answer), per method and kind, and the consensus's."""

from __future__ import annotations

import argparse
from typing import Any

from core.cli.common import Stages, add_stage, emit, run_job
from core.cli.flags import add_settings, config_from_args
from core.engines.choice import engine_choice
from core.screen.judge_check import JudgeCheckConfig, run_judge_check
from core.screen.signals import check_embedders, loaded_models
from core.store import Store


def _cell(accuracy: float | None, stderr: float | None) -> str:
    return "-" if accuracy is None else f"{accuracy:.2f} ± {stderr or 0:.2f}"


def results_table(summary: dict[str, Any]) -> list[str]:
    """One row per judge/method (the consensus last), one column for all degradations and one per kind."""
    kinds = list(summary["by_kind"])
    columns = (["all"] if summary["accuracy"] else []) + kinds
    rows = [["judge/method", *columns]]
    for name in summary["accuracy"] or next(iter(summary["by_kind"].values()), {}):
        cells = [_cell(summary["accuracy"][name], summary["stderr"][name])] if summary["accuracy"] else []
        cells += [_cell(summary["by_kind"][kind].get(name), summary["by_kind_stderr"][kind].get(name))
                  for kind in kinds]
        rows.append([name, *cells])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]


def human_report(summary: dict[str, Any]) -> str:
    if summary["cancelled"]:
        return (f"cancelled: {summary['scores']} scores and {summary['answers']} own answers stored; "
                f"rerun the same command to resume ({summary['seconds']} s)")
    lines = [f"judge check {summary['job_id']}: {summary['pairs']} pairs"
             + (f" + {summary['own_pairs']} own" if summary["own_pairs"] else "")
             + f" from {summary['source']}, {summary['scores']} new scores ({summary['seconds']} s)",
             *results_table(summary)]
    chance = summary["no_better_than_chance"]
    if chance:
        lines.append("no better than chance (within 2 stderr of 0.5, or below): "
                     + "; ".join(f"{name} on {', '.join(kinds)}" for name, kinds in chance.items()))
    else:
        lines.append("every judge beats chance on every kind (by more than 2 stderr)")
    return "\n".join(lines)


def cmd_judge_check(args: argparse.Namespace) -> None:
    config = config_from_args(JudgeCheckConfig, args)
    check_embedders(config.judges)
    store = Store.for_workspace(args.workspace)
    summary = run_job(args, "judge-check", config, lambda **hooks: run_judge_check(config, store, **hooks),
                      models=(*loaded_models(config.judges), config.own_model), serving=engine_choice(config))
    emit(summary, args.json, human_report(summary))


def add_judge_check_stage(stages: Stages) -> None:
    check = add_stage(stages, "judge-check", "score pairs of a reference answer and a worse one with every judge: "
                                             "pairwise accuracy per judge, method and degradation, and consensus")
    add_settings(check, JudgeCheckConfig)
    check.set_defaults(handler=cmd_judge_check)
