"""`forgetless profile`: difficulty, IFD, task categories, topic clusters, the 2-D map and near-duplicates."""

from __future__ import annotations

import argparse

from core.cli.common import Stages, add_stage, check_models, emit, run_job
from core.cli.flags import add_settings, config_from_args
from core.engines.choice import engine_choice
from core.engines.embedder import resolve_embedder
from core.errors import ForgetlessError
from core.profile.profiling import ProfileConfig, run_profile
from core.store import Store


def cmd_profile(args: argparse.Namespace) -> None:
    config = config_from_args(ProfileConfig, args)
    resolve_embedder(config.embedder)
    models = (config.difficulty_judge, config.category_model, config.target_model)
    check_models(models, args.workspace)
    store = Store.for_workspace(args.workspace)
    if store.count_instructions() == 0:  # before the job: an empty store leaves no failed job behind
        raise ForgetlessError("no instructions to profile: run `forgetless reconstruct` first")
    summary = run_job(args, "profile", config,
                      lambda **hooks: run_profile(config, store, **hooks),
                      models=models,
                      serving=engine_choice(config))
    state = "cancelled" if summary["cancelled"] else "done"
    human = (f"{state}: profiled {summary['instructions']} instructions: {summary['clusters']} clusters, "
             f"{summary['duplicate_groups']} near-duplicate groups ({summary['hidden_duplicates']} hidden), "
             f"categories {summary['categories']}, {summary['with_ifd']} with IFD ({summary['seconds']} s)")
    emit(summary, args.json, human)


def add_profile_stage(stages: Stages) -> None:
    pro = add_stage(stages, "profile", "difficulty, IFD, task categories, topic clusters, 2-D map and near-duplicates")
    add_settings(pro, ProfileConfig)
    pro.set_defaults(handler=cmd_profile)
