"""`forgetless respond` and `forgetless judge`: K responses per model for every instruction, then every
response scored by every judge (consensus and agreement rebuilt)."""

from __future__ import annotations

import argparse
from typing import Any

from core.cli.common import Stages, add_stage, check_models, emit, run_job
from core.cli.flags import add_settings, config_from_args
from core.engines.choice import engine_choice
from core.errors import ForgetlessError
from core.screen.judge import JudgeConfig, checked_weights, run_judging
from core.screen.respond import RespondConfig, run_responses
from core.screen.signals import check_embedders, loaded_models
from core.store import Store


def cmd_respond(args: argparse.Namespace) -> None:
    config = config_from_args(RespondConfig, args)
    check_models(config.models, args.workspace)
    store = Store.for_workspace(args.workspace)
    if store.count_instructions() == 0:  # before the job: an empty store leaves no failed job behind
        raise ForgetlessError("no instructions in the store yet: run `forgetless reconstruct` first")
    summary = run_job(args, "respond", config,
                      lambda **hooks: run_responses(config, store, **hooks),
                      models=config.models, serving=engine_choice(config), sampling=True)
    state = "cancelled" if summary["cancelled"] else "done"
    human = (f"{state}: {summary['responses']} responses from {', '.join(summary['models'])} "
             f"({summary['tokens_per_s']} tok/s, {summary['seconds']} s) in {summary['db']}")
    emit(summary, args.json, human)


def cmd_judge(args: argparse.Namespace) -> None:
    config = config_from_args(JudgeConfig, args)
    check_embedders(config.judges)
    store = Store.for_workspace(args.workspace)
    if config.weighting == "checked":  # before the job starts: a judge never checked is one line, no job
        checked_weights(store.checked_accuracies(config.judges, config.method), config.judges, config.method)
    summary = run_job(args, "judge", config,
                      lambda **hooks: run_judging(config, store, **hooks),
                      models=loaded_models(config.judges), serving=engine_choice(config))
    emit(summary, args.json, judge_report(summary))


def judge_report(summary: dict[str, Any]) -> str:
    state = "cancelled" if summary["cancelled"] else "done"
    lines = [f"{state}: {summary['scores']} scores by {', '.join(summary['judges'])} ({summary['method']}), "
             f"{summary['failures']} failures; consensus for {summary['responses_with_consensus']} responses, "
             f"best response for {summary['instructions_with_best']} instructions "
             f"({summary['tokens_read']:,} tokens read, {summary['seconds']} s)"]
    if summary["weights"]:
        lines.append("consensus weighted by checked accuracy: "
                     + ", ".join(f"{judge} {weight:.2f}" for judge, weight in summary["weights"].items()))
    lines += [f"warning: {judge} is no better than chance in judge check {job}"
              for judge, job in summary["no_better_than_chance"].items()]
    return "\n".join(lines)


def add_screen_stages(stages: Stages) -> None:
    res = add_stage(stages, "respond", "sample K responses per model for every stored instruction that lacks them")
    add_settings(res, RespondConfig)
    res.set_defaults(handler=cmd_respond)

    jud = add_stage(stages, "judge", "score every response 1-5 with every judge; rebuild consensus and agreement")
    add_settings(jud, JudgeConfig)
    jud.set_defaults(handler=cmd_judge)
