"""`forgetless compare`: one prompt answered by the base model and tuned runs side by side, the replies stored."""

from __future__ import annotations

import argparse
from typing import Any

from core.cli.common import Stages, add_stage, emit, run_job
from core.cli.flags import add_settings, config_from_args
from core.engines.choice import engine_choice
from core.engines.in_process import in_process_engines
from core.eval.compare import CompareConfig, pick_prompt, run_comparison
from core.store import Store


def compare_report(summary: dict[str, Any]) -> str:
    """The prompt, then each model's reply under its name and what it took."""
    sampling = summary["sampling"]
    settings = (f"temperature {sampling['temperature']}, top-p {sampling['top_p']}, max {sampling['max_new_tokens']} "
                f"new tokens, seed {sampling['seed']}")
    source = summary["source"] + (f" {summary['source_id']}" if summary["source_id"] else "")
    lines = [f"prompt ({source}): {summary['prompt']}", f"sampling: {settings}"]
    for reply in summary["replies"]:
        cut = "" if reply["stopped"] else ", cut at max new tokens"
        lines += ["", f"== {reply['label']} ({reply['tokens']} tokens, {reply['seconds']:.1f} s{cut})", reply["reply"]]
    state = "cancelled" if summary["cancelled"] else "done"
    lines += ["", f"{state}: {summary['generated']} replies generated, {len(summary['replies'])} stored for job "
                  f"{summary['job_id']} ({summary['seconds']} s) in {summary['db']}"]
    return "\n".join(lines)


def cmd_compare(args: argparse.Namespace) -> None:
    config = config_from_args(CompareConfig, args)
    store = Store.for_workspace(args.workspace)
    pick_prompt(config, store)  # a missing source is one line before any job folder is written
    targets = config.targets()
    summary = run_job(args, "compare", config,
                      lambda **hooks: run_comparison(config, store, local=in_process_engines(args.workspace,
                                                                                             sampling=True), **hooks),
                      models=[target.load_spec for target in targets], serving=engine_choice(config), sampling=True,
                      served=[target.load_spec for target in targets if not target.adapter_dir])
    emit(summary, args.json, compare_report(summary))


def add_compare_stage(stages: Stages) -> None:
    cmp = add_stage(stages, "compare", "answer one prompt (typed, or drawn from held-out general instructions or the "
                                       "domain test split) with the base model and tuned runs side by side")
    add_settings(cmp, CompareConfig, asked=("models", "prompt"))
    cmp.set_defaults(handler=cmd_compare)
