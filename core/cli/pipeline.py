"""`forgetless pipeline --config FILE.yaml`: every stage in order from one YAML (core/pipeline); a rerun skips
the stages that finished."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path
from typing import Any

from core.cli.common import Stages, add_stage, check_models, emit
from core.engines.embedder import resolve_embedder
from core.jobs import job_folder, request_cancel
from core.pipeline.config import PRESETS_DIR, load_pipeline
from core.pipeline.runner import run_pipeline
from core.screen.signals import check_embedders


def _metric(values: dict[str, Any]) -> str:
    for key in ("acc", "acc_norm", "kl", "ppl"):
        if isinstance(values.get(key), int | float):
            return f"{key} {values[key]:.3f}"
    return "-"


def human_report(summary: dict[str, Any]) -> str:
    """One line per stage (status, seconds, job), one per evaluated model and task, then how it ended."""
    lines = [f"{'stage':<14} {'status':<10} {'seconds':>8}  job"]
    for name, stage in summary["stages"].items():
        seconds = "-" if stage["seconds"] is None else f"{stage['seconds']:.1f}"
        lines.append(f"{name:<14} {stage['status']:<10} {seconds:>8}  {stage['job_id'] or '-'}")
    for label, target in summary["eval"].items():
        results = " · ".join(f"{task} {_metric(values)}" for task, values in target["results"].items())
        lines.append(f"eval {label}: {results or 'no results'}")
    state = "cancelled" if summary["cancelled"] else "done"
    lines.append(f"{state}: pipeline {summary['pipeline']} in {summary['seconds']} s; run {summary['run'] or '-'}")
    return "\n".join(lines)


def cmd_pipeline(args: argparse.Namespace) -> None:
    config = load_pipeline(args.config)
    # Every model and embedder is found before the pipeline's job folder exists: a typo is one line, no job.
    check_models(config.model_specs(), args.workspace)
    check_embedders(config.judge_config().judges)
    profile = config.profile_config()
    if profile is not None:
        resolve_embedder(profile.embedder)
    folder = job_folder(Path(args.workspace).resolve(), config.resolved_job_id())
    signal.signal(signal.SIGTERM, lambda *_: request_cancel(folder) if folder.exists() else None)
    summary = run_pipeline(config, args.workspace)
    emit(summary, args.json, human_report(summary))


def add_pipeline_stage(stages: Stages) -> None:
    sub = add_stage(stages, "pipeline", "run every stage in order from one YAML (reconstruct, respond, judge, profile, "
                                        "mix, train, eval); a rerun skips the stages that finished")
    sub.add_argument("--config", type=Path, required=True,
                     help=f"the pipeline YAML: a section per stage (presets in {PRESETS_DIR})")
    sub.set_defaults(handler=cmd_pipeline)
