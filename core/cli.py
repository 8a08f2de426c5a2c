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


def _reconstruct_config(args: argparse.Namespace) -> Any:
    from core.config import load_yaml, to_dict
    from core.reconstruct import ReconstructConfig

    base = load_yaml(ReconstructConfig, args.config) if args.config else ReconstructConfig()
    values = to_dict(base)
    overrides = {
        "model": args.model, "n": args.n, "batch_size": args.batch_size, "temperature": args.temperature,
        "top_p": args.top_p, "max_new_tokens": args.max_new_tokens, "seed": args.seed, "prefix": args.prefix,
        "stop": tuple(args.stop) if args.stop else None, "job_id": args.job_id,
    }
    values.update({key: value for key, value in overrides.items() if value is not None})
    return ReconstructConfig(**values)


def cmd_reconstruct(args: argparse.Namespace) -> None:
    from core.jobs import job_folder, job_session, request_cancel
    from core.models import load_model
    from core.reconstruct import run_reconstruction
    from core.store import Store

    config = _reconstruct_config(args)
    job_id = config.resolved_job_id()
    folder = job_folder(args.workspace, job_id)
    store = Store.for_workspace(args.workspace)
    with job_session(folder, "reconstruct", config) as recorder:
        signal.signal(signal.SIGTERM, lambda *_: request_cancel(folder))
        recorder.progress({"phase": "loading model", "job_id": job_id, "total": config.n})
        lm = load_model(config.model, args.workspace)
        bar = _progress_bar(config.n, f"reconstruct {job_id}")
        start_count = store.job_progress(job_id)["stored"]
        bar.update(start_count)

        def on_progress(values: dict[str, Any]) -> None:
            recorder.progress(values)
            bar.update(values["stored"] - bar.n)
            bar.set_postfix(tok_s=f"{values['tokens_per_s']:.0f}")

        summary = run_reconstruction(config, store, lm, on_progress=on_progress,
                                     should_stop=recorder.cancel_requested)
        bar.close()
        recorder.summary = summary
    state = "cancelled" if summary["cancelled"] else "done"
    human = (f"{state}: {summary['stored']}/{summary['target']} instructions for job {job_id} in {summary['db']} "
             f"({summary['new']} new, dropped {summary['dropped']}, {summary['tokens_per_s']} tok/s, "
             f"{summary['seconds']} s)")
    _emit(summary, args.json, human)


def _progress_bar(total: int, description: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="instr", file=sys.stderr, mininterval=1.0,
                disable=os.environ.get("FORGETLESS_NO_PROGRESS") == "1")


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
