"""`forgetless export RUN --out DIR`: a finished training run as one model folder (LoRA merged) with a model card."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path
from typing import Any, NoReturn

from core.cli.common import Stages, add_stage, emit, progress_bar
from core.cli.flags import add_settings, config_values
from core.folders import check_out_free
from core.jobs import job_folder, job_session
from core.train.export import ExportConfig, export_run, finished_run


def export_config(args: argparse.Namespace) -> ExportConfig:
    """--config (the app's background job writes one), then RUN and the flags the user gave on top."""
    values = config_values(ExportConfig, args)
    if args.run:
        values["run"] = args.run
    return ExportConfig(**values)


def _interrupted(*_: Any) -> NoReturn:
    raise KeyboardInterrupt  # unwinds through export_run, which removes its half-written folder


def cmd_export(args: argparse.Namespace) -> None:
    config = export_config(args)
    finished_run(Path(config.run))  # a bad RUN or --out is one line before a job folder exists
    check_out_free(Path(config.out))
    signal.signal(signal.SIGTERM, _interrupted)
    bar = None

    def on_progress(values: dict[str, Any]) -> None:
        nonlocal bar
        recorder.progress(values)
        if bar is None:
            bar = progress_bar(values["total"], f"export {Path(config.run).name}")
        bar.update(values["done"] - bar.n)
        bar.set_postfix(phase=values["phase"])

    # A merge loads the whole model: it waits its turn for the workspace's compute slot like any model job.
    with job_session(job_folder(args.workspace, config.resolved_job_id()), "export", config,
                     compute_slot=args.workspace) as recorder:
        summary = export_run(config, args.workspace, on_progress=on_progress)
        recorder.summary = summary
    if bar is not None:
        bar.update(bar.total - bar.n)
        bar.close()
    evaluated = (f"eval vs base on {', '.join(summary['eval_tasks'])}" if summary["eval_tasks"]
                 else "no stored eval (see its README.md)")
    human = (f"exported {Path(summary['run']).name} ({summary['method']}, {summary['dtype']}) -> {summary['out']}: "
             f"{len(summary['files'])} files, {summary['bytes'] / 1e6:.1f} MB, {evaluated}, {summary['seconds']} s")
    emit(summary, args.json, human)


def add_export_stage(stages: Stages) -> None:
    exp = add_stage(stages, "export", "write a finished training run as one model folder (a LoRA adapter merged "
                                      "into its base) that transformers loads and vLLM serves, with a model card")
    exp.add_argument("run", nargs="?", metavar="RUN", help="the finished training run folder")
    add_settings(exp, ExportConfig, asked=("out",))
    exp.set_defaults(handler=cmd_export)
