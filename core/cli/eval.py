"""`forgetless eval`: general benchmarks, the domain test and drift of a model or a training run."""

from __future__ import annotations

import argparse
from typing import Any

from core.cli.common import Stages, add_stage, emit, run_job
from core.cli.flags import add_settings, config_from_args
from core.engines.choice import engine_choice
from core.engines.in_process import in_process_engines
from core.eval.benchmarks import TASKS
from core.eval.evaluation import EvalConfig, resolve_target, run_evaluation
from core.eval.task import metric_cell
from core.store import Store


def json_results(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The headline numbers per task for ``--json`` (everything else stays in the store)."""
    return {task: TASKS[task].headline(metrics) for task, metrics in results.items()}


def results_table(results: dict[str, dict[str, Any]]) -> str:
    """One line per task (from its headline numbers): acc, acc_norm, stderr, n and the task's own notes."""
    lines = [f"{'task':<10} {'acc':>8} {'acc_norm':>8} {'stderr':>8} {'n':>6}  notes"]
    for task, metrics in results.items():
        acc, acc_norm, stderr, notes = TASKS[task].table_cells(metrics)
        lines.append(f"{task:<10} {metric_cell(acc):>8} {metric_cell(acc_norm):>8} {metric_cell(stderr):>8} "
                     f"{metrics['n']:>6}  {notes}")
    return "\n".join(lines)


def cmd_eval(args: argparse.Namespace) -> None:
    config = config_from_args(EvalConfig, args)
    store = Store.for_workspace(args.workspace)
    target = resolve_target(config)
    summary = run_job(args, "eval", config,
                      lambda **hooks: run_evaluation(config, store, local=in_process_engines(args.workspace,
                                                                                             dtype=config.dtype),
                                                     **hooks),
                      models=(target.load_spec, target.base), serving=engine_choice(config), dtype=config.dtype,
                      served=() if target.adapter_dir else (target.load_spec,))  # the rest stays in-process
    summary = {**summary, "results": json_results(summary["results"])}
    state = "cancelled" if summary["cancelled"] else "done"
    human = (f"{results_table(summary['results'])}\n{state}: {summary['items_scored']} items scored for "
             f"{summary['model']} (job {summary['job_id']}, {summary['seconds']} s"
             f"{', ' + summary['dtype'] if summary.get('dtype') else ''}) in {summary['db']}")
    emit(summary, args.json, human)


def add_eval_stage(stages: Stages) -> None:
    ev = add_stage(stages, "eval", "measure forgetting: general benchmarks, the domain test and drift of a model or "
                                   "a run")
    add_settings(ev, EvalConfig)
    ev.set_defaults(handler=cmd_eval)
