"""`forgetless prequery` and `forgetless reconstruct`: the pre-query template of a model, and instructions
sampled from it into the store."""

from __future__ import annotations

import argparse

from core.cli.common import Stages, add_stage, emit, run_job
from core.cli.flags import add_settings, config_values
from core.engines.choice import engine_choice
from core.engines.models import load_tokenizer, resolve_model
from core.errors import ForgetlessError
from core.reconstruct.corpus import load_corpus
from core.reconstruct.prequery import PreQuery, derive_prequery
from core.reconstruct.reconstruction import ReconstructConfig, run_reconstruction
from core.reconstruct.steer import check_steerable
from core.store import Store


def cmd_prequery(args: argparse.Namespace) -> None:
    if args.prefix is not None and args.stop:
        resolve_model(args.model, args.workspace)  # both given: nothing to derive, only check the spec
        found = PreQuery(args.prefix, tuple(args.stop))
    else:
        derived = derive_prequery(load_tokenizer(args.model, args.workspace))
        found = PreQuery(args.prefix if args.prefix is not None else derived.prefix,
                         tuple(args.stop) if args.stop else derived.stop)
    human = f"prefix:\n{found.prefix}\nstop: {list(found.stop)}"
    emit(found.to_json(), args.json, human)


def cmd_reconstruct(args: argparse.Namespace) -> None:
    if not args.config and args.n is None:
        raise ForgetlessError("reconstruct needs --n (how many instructions to store) or --config")
    config = ReconstructConfig(**config_values(ReconstructConfig, args))
    # Read the corpus first: a missing, empty or binary file is one error line before a job folder or row exists.
    corpus = load_corpus(config.from_corpus, config.passage_max_words) if config.from_corpus else None
    store = Store.for_workspace(args.workspace)
    if config.steer:  # no profile to steer by: one line before a job folder exists
        check_steerable(store)

    summary = run_job(args, "reconstruct", config,
                      lambda **hooks: run_reconstruction(config, store, corpus=corpus, **hooks),
                      unit_key="stored", models=(config.model,), serving=engine_choice(config), sampling=True)
    state = "cancelled" if summary["cancelled"] else "done"
    seeded = summary.get("corpus")
    source = (f", seeded from {seeded['name']} ({seeded['rows_used']} of {seeded['rows']} rows, prompt "
              f"{seeded['prompt_id']})" if seeded else "")
    steered = summary.get("steer")
    if steered:
        met = "target spread met" if steered["target_met"] else f"stopped: {summary['stopped_because']}"
        source = (f", steered to under-filled clusters ({met}; rows lacking per cluster "
                  f"{steered['deficits_before']} -> {steered['deficits_after']}, prompt {steered['prompt_id']})")
    human = (f"{state}: {summary['stored']}/{summary['target']} instructions for job {summary['job_id']} in "
             f"{summary['db']}{source} ({summary['new']} new, dropped {summary['dropped']}, "
             f"{summary['tokens_per_s']} tok/s, {summary['seconds']} s)")
    emit(summary, args.json, human)


def add_reconstruct_stages(stages: Stages) -> None:
    pre = add_stage(stages, "prequery",
                    "print the pre-query prefix and end-of-turn stop strings of a model's chat template")
    pre.add_argument("model", help="alias, local model folder, .gguf file or hub id")
    pre.add_argument("--prefix", help="override the derived prefix")
    pre.add_argument("--stop", action="append", help="override the stop strings (repeatable)")
    pre.set_defaults(handler=cmd_prequery)

    rec = add_stage(stages, "reconstruct", "sample instructions from a model's pre-query template (or, with "
                    "--from-corpus, requests about a corpus's rows) into the store")
    add_settings(rec, ReconstructConfig, asked=("n",))
    rec.set_defaults(handler=cmd_reconstruct)
