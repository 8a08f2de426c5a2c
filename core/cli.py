"""`forgetless <stage> ...`: every stage runnable headless.

Errors print one line on stderr and exit non-zero (a traceback only with --debug); ``--json`` prints
one JSON summary as the last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from core.errors import ForgetlessError

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line like every other error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ForgetlessError(f"{self.prog}: {message}")


def _quiet_libraries() -> None:
    # Library progress bars and warnings would bury the one line a user needs to read. Environment
    # variables, read when the libraries are imported, keep start-up free of a transformers import.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _emit(summary: dict[str, Any], as_json: bool, human: str) -> None:
    print(json.dumps(summary, default=str) if as_json else human)


def cmd_prequery(args: argparse.Namespace) -> None:
    from core.models import load_tokenizer, resolve_model
    from core.prequery import PreQuery, derive_prequery

    if args.prefix is not None and args.stop:
        resolve_model(args.model, args.workspace)  # both given: nothing to derive, only check the spec
        found = PreQuery(args.prefix, tuple(args.stop))
    else:
        derived = derive_prequery(load_tokenizer(args.model, args.workspace))
        found = PreQuery(args.prefix if args.prefix is not None else derived.prefix,
                         tuple(args.stop) if args.stop else derived.stop)
    human = f"prefix:\n{found.prefix}\nstop: {list(found.stop)}"
    _emit(found.to_json(), args.json, human)


def _config(args: argparse.Namespace, cls: type, overrides: dict[str, Any]) -> Any:
    """The stage's config: its YAML (--config) if given, then every flag the user set on top."""
    from core.config import load_yaml, to_dict

    values = to_dict(load_yaml(cls, args.config) if args.config else cls())
    values.update({key: value for key, value in overrides.items() if value is not None})
    return cls(**values)


def _check_models(specs: Sequence[str | None], workspace: Path) -> None:
    """Resolve every MODEL spec (a typo, a missing file) before a job writes its folder or store row."""
    from core.models import resolve_model

    for spec in specs:
        if spec:
            resolve_model(spec, workspace)


def _run_job(args: argparse.Namespace, kind: str, config: Any, work: Callable[..., dict[str, Any]],
             unit_key: str = "done", models: Sequence[str | None] = ()) -> dict[str, Any]:
    """Run one stage in its job folder: lock, status, progress.jsonl and a progress bar on stderr.

    ``models`` (the specs the stage loads) are checked first, so a bad one leaves no trace. The job waits
    for the workspace's compute slot (queued) before ``work(on_progress, should_stop, recorder)`` loads a
    model; SIGTERM asks it to stop (leave the queue, or stop after the batch).
    """
    from core.jobs import job_folder, job_session, request_cancel

    _check_models(models, args.workspace)
    job_id = config.resolved_job_id()
    folder = job_folder(args.workspace, job_id)
    signal.signal(signal.SIGTERM, lambda *_: request_cancel(folder) if folder.exists() else None)
    with job_session(folder, kind, config, compute_slot=args.workspace) as recorder:
        bar = None

        def on_progress(values: dict[str, Any]) -> None:
            nonlocal bar
            recorder.progress(values)
            if bar is None:
                bar = _progress_bar(values["total"], f"{kind} {job_id}")
            bar.update(values[unit_key] - bar.n)
            bar.set_postfix(tok_s=f"{values['tokens_per_s']:.0f}")

        recorder.progress({"phase": "loading model", "job_id": job_id})
        summary = work(on_progress=on_progress, should_stop=recorder.cancel_requested)
        if bar is not None:
            bar.close()
        recorder.summary = summary
    return summary


def _progress_bar(total: int, description: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, file=sys.stderr, mininterval=1.0,
                disable=os.environ.get("FORGETLESS_NO_PROGRESS") == "1")


def _loader(workspace: Path, sampling: bool = False) -> Callable[[str], Any]:
    """Loads MODEL specs; ``sampling`` stages (reconstruct, respond) get the dtype that decodes fastest."""
    from core.models import choose_device, generation_dtype, load_model

    dtype = generation_dtype(choose_device()) if sampling else None
    return lambda spec: load_model(spec, workspace, dtype=dtype)


def cmd_reconstruct(args: argparse.Namespace) -> None:
    from core.reconstruct import ReconstructConfig, run_reconstruction
    from core.store import Store

    config = _config(args, ReconstructConfig, {
        "model": args.model, "n": args.n, "batch_size": args.batch_size, "temperature": args.temperature,
        "top_p": args.top_p, "max_new_tokens": args.max_new_tokens, "seed": args.seed, "prefix": args.prefix,
        "stop": tuple(args.stop) if args.stop else None, "job_id": args.job_id,
    })
    store = Store.for_workspace(args.workspace)

    def work(**hooks: Any) -> dict[str, Any]:
        return run_reconstruction(config, store, _loader(args.workspace, sampling=True)(config.model), **hooks)

    summary = _run_job(args, "reconstruct", config, work, unit_key="stored", models=(config.model,))
    state = "cancelled" if summary["cancelled"] else "done"
    human = (f"{state}: {summary['stored']}/{summary['target']} instructions for job {summary['job_id']} in "
             f"{summary['db']} ({summary['new']} new, dropped {summary['dropped']}, {summary['tokens_per_s']} tok/s, "
             f"{summary['seconds']} s)")
    _emit(summary, args.json, human)


def _models(text: str | None) -> tuple[str, ...] | None:
    return tuple(part.strip() for part in text.split(",") if part.strip()) if text else None


def cmd_respond(args: argparse.Namespace) -> None:
    from core.respond import RespondConfig, run_responses
    from core.store import Store

    config = _config(args, RespondConfig, {
        "models": _models(args.models), "k": args.k, "temperature": args.temperature, "top_p": args.top_p,
        "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "seed": args.seed,
        "job_id": args.job_id,
    })
    store = Store.for_workspace(args.workspace)
    summary = _run_job(args, "respond", config,
                       lambda **hooks: run_responses(config, store, _loader(args.workspace, sampling=True), **hooks),
                       models=config.models)
    state = "cancelled" if summary["cancelled"] else "done"
    human = (f"{state}: {summary['responses']} responses from {', '.join(summary['models'])} "
             f"({summary['tokens_per_s']} tok/s, {summary['seconds']} s) in {summary['db']}")
    _emit(summary, args.json, human)


def cmd_judge(args: argparse.Namespace) -> None:
    from core.judge import JudgeConfig, run_judging
    from core.store import Store

    config = _config(args, JudgeConfig, {
        "judges": _models(args.judges), "method": args.method, "exclude_self": args.exclude_self or None,
        "retry_failed": args.retry_failed or None, "batch_size": args.batch_size, "job_id": args.job_id,
    })
    store = Store.for_workspace(args.workspace)
    summary = _run_job(args, "judge", config,
                       lambda **hooks: run_judging(config, store, _loader(args.workspace), **hooks),
                       models=config.judges)
    state = "cancelled" if summary["cancelled"] else "done"
    human = (f"{state}: {summary['scores']} scores by {', '.join(summary['judges'])} ({summary['method']}), "
             f"{summary['failures']} failures; consensus for {summary['responses_with_consensus']} responses, "
             f"best response for {summary['instructions_with_best']} instructions ({summary['seconds']} s)")
    _emit(summary, args.json, human)


def cmd_profile(args: argparse.Namespace) -> None:
    from core.profile import ProfileConfig, run_profile
    from core.profile_semantic import resolve_embedder
    from core.store import Store

    config = _config(args, ProfileConfig, {
        "difficulty_judge": args.difficulty_judge, "category_model": args.category_model,
        "target_model": args.target_model, "embedder": args.embedder, "clusters": args.clusters,
        "dedup_threshold": args.dedup_threshold, "projection": args.projection,
        "category_calibration": args.category_calibration, "batch_size": args.batch_size,
        "seed": args.seed, "job_id": args.job_id})
    resolve_embedder(config.embedder)
    store = Store.for_workspace(args.workspace)
    summary = _run_job(args, "profile", config,
                       lambda **hooks: run_profile(config, store, _loader(args.workspace), **hooks),
                       models=(config.difficulty_judge, config.category_model, config.target_model))
    state = "cancelled" if summary["cancelled"] else "done"
    human = (f"{state}: profiled {summary['instructions']} instructions: {summary['clusters']} clusters, "
             f"{summary['duplicate_groups']} near-duplicate groups ({summary['hidden_duplicates']} hidden), "
             f"categories {summary['categories']}, {summary['with_ifd']} with IFD ({summary['seconds']} s)")
    _emit(summary, args.json, human)


def cmd_sql(args: argparse.Namespace) -> None:
    import pandas as pd

    from core.sql_safety import run_readonly_sql
    from core.store import STORE_FILE

    frame = run_readonly_sql(args.workspace / STORE_FILE, args.query, max_rows=args.max_rows)
    truncated = bool(frame.attrs.get("truncated"))
    if args.json:
        rows = json.loads(frame.to_json(orient="values", date_format="iso"))
        _emit({"columns": [str(c) for c in frame.columns], "rows": rows, "n_rows": len(frame),
               "truncated": truncated}, True, "")
        return
    with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 200,
                           "display.max_colwidth", 80):
        print(frame.to_string(index=False))
    if truncated:
        print(f"(only the first {args.max_rows} rows; raise --max-rows to see more)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="forgetless", description="Fine-tune an aligned LLM on domain data without forgetting.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    stages = parser.add_subparsers(dest="stage", required=True, parser_class=_Parser)

    def stage(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = stages.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--workspace", type=Path, default=Path("workspace"),
                         help="folder holding the DuckDB store, model cache and jobs (default: ./workspace)")
        sub.add_argument("--json", action="store_true", help="print a JSON summary as the last stdout line")
        sub.add_argument("--debug", action="store_true", help="show tracebacks")
        return sub

    pre = stage("prequery", "print the pre-query prefix and end-of-turn stop strings of a model's chat template")
    pre.add_argument("model", help="alias, local model folder, .gguf file or hub id")
    pre.add_argument("--prefix", help="override the derived prefix")
    pre.add_argument("--stop", action="append", help="override the stop strings (repeatable)")
    pre.set_defaults(handler=cmd_prequery)

    rec = stage("reconstruct", "sample instructions from a model's pre-query template into the store")
    rec.add_argument("--config", type=Path, help="a ReconstructConfig YAML (flags override its fields)")
    rec.add_argument("--model", help="alias, local model folder, .gguf file or hub id")
    rec.add_argument("--n", type=int, help="instructions to store for this job")
    rec.add_argument("--batch-size", type=int)
    rec.add_argument("--temperature", type=float)
    rec.add_argument("--top-p", type=float)
    rec.add_argument("--max-new-tokens", type=int)
    rec.add_argument("--seed", type=int)
    rec.add_argument("--prefix", help="override the derived pre-query prefix")
    rec.add_argument("--stop", action="append", help="override the stop strings (repeatable)")
    rec.add_argument("--job-id", help="name the job (default: derived from the settings, so reruns resume)")
    rec.set_defaults(handler=cmd_reconstruct)

    res = stage("respond", "sample K responses per model for every stored instruction that lacks them")
    res.add_argument("--config", type=Path, help="a RespondConfig YAML (flags override its fields)")
    res.add_argument("--models", help="comma-separated MODEL specs, e.g. smollm2-135m-instruct,gemma-3-270m")
    res.add_argument("--k", type=int, help="responses per instruction and model (default 2)")
    res.add_argument("--temperature", type=float, help="default 0.7")
    res.add_argument("--top-p", type=float, help="default 0.9")
    res.add_argument("--max-new-tokens", type=int, help="default 256")
    res.add_argument("--batch-size", type=int)
    res.add_argument("--seed", type=int)
    res.add_argument("--job-id")
    res.set_defaults(handler=cmd_respond)

    jud = stage("judge", "score every response 1-5 with every judge; rebuild consensus and agreement")
    jud.add_argument("--config", type=Path, help="a JudgeConfig YAML (flags override its fields)")
    jud.add_argument("--judges", help="comma-separated MODEL specs, e.g. smollm2-135m-instruct,gemma-3-270m")
    jud.add_argument("--method", choices=("probs", "generate"),
                     help="probs: expected rating from the rating-token probabilities (default); "
                          "generate: the judge writes its rating, parsed")
    jud.add_argument("--exclude-self", action="store_true", help="a model does not judge its own responses")
    jud.add_argument("--retry-failed", action="store_true", help="generate: rerun only ratings that failed")
    jud.add_argument("--batch-size", type=int)
    jud.add_argument("--job-id")
    jud.set_defaults(handler=cmd_judge)

    pro = stage("profile", "difficulty, IFD, task categories, topic clusters, 2-D map and near-duplicates")
    pro.add_argument("--config", type=Path, help="a ProfileConfig YAML (flags override its fields)")
    pro.add_argument("--difficulty-judge", help="MODEL spec, or 'none' to skip")
    pro.add_argument("--category-model", help="MODEL spec, or 'none' to skip")
    pro.add_argument("--target-model", help="MODEL spec whose losses give IFD, or 'none'")
    pro.add_argument("--embedder", help="all-minilm-l6-v2 (packaged) or a sentence-transformers folder")
    pro.add_argument("--clusters", help="k-means k, or 'auto'")
    pro.add_argument("--dedup-threshold", type=float, help="cosine similarity for near-duplicates (default 0.92)")
    pro.add_argument("--projection", choices=("pca", "tsne"))
    pro.add_argument("--category-calibration", choices=("auto", "batch", "null", "none"))
    pro.add_argument("--batch-size", type=int)
    pro.add_argument("--seed", type=int)
    pro.add_argument("--job-id")
    pro.set_defaults(handler=cmd_profile)

    from core.eval_cli import add_eval_arguments, cmd_eval

    ev = stage("eval", "measure forgetting: general benchmarks, the domain test and drift of a model or a run")
    add_eval_arguments(ev)
    ev.set_defaults(handler=cmd_eval)

    from core.train_cli import add_train_arguments, cmd_train

    tra = stage("train", "fine-tune a model on a frozen mix snapshot (TRL SFT: LoRA or full), resumable")
    add_train_arguments(tra)
    tra.set_defaults(handler=cmd_train)

    from core.mix_cli import add_mix_arguments, cmd_mix

    mix = stage("mix", "mix screened general data with domain data at a ratio; freeze it as a dataset snapshot")
    add_mix_arguments(mix)
    mix.set_defaults(handler=cmd_mix)

    sql = stage("sql", "run one read-only SELECT on the store (no writes, no file access)")
    sql.add_argument("query", help='e.g. "SELECT model, count(*) FROM responses GROUP BY model"')
    sql.add_argument("--max-rows", type=int, default=1000)
    sql.set_defaults(handler=cmd_sql)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        if args.stage == "reconstruct" and not args.config and args.n is None:
            raise ForgetlessError("reconstruct needs --n (how many instructions to store) or --config")
        _quiet_libraries()
        args.handler(args)
    except ForgetlessError as error:
        if debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # anything unexpected still gets one line; --debug shows where
        if debug:
            raise
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        print(f"error: {type(error).__name__}: {first} (rerun with --debug for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
