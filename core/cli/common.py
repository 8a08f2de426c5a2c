"""What every ``forgetless <stage>`` shares: the parser whose usage errors are one line, the common flags, the
output (a human line, or ``--json``'s one JSON object), the progress bar, the MODEL checks and the job runner."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from core.engines.choice import EngineChoice, open_engines
from core.engines.models import resolve_model
from core.engines.vllm import check_served
from core.errors import ForgetlessError
from core.jobs import job_folder, job_session, request_cancel


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line like every other error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ForgetlessError(f"{self.prog}: {message}")


Stages = Any  # argparse's subparsers object (its class is private): add_stage adds one stage to it


def add_stage(stages: Stages, name: str, help_text: str) -> argparse.ArgumentParser:
    """One ``forgetless <name>`` subcommand with the flags every stage takes."""
    sub = stages.add_parser(name, help=help_text, description=help_text)
    sub.add_argument("--workspace", type=Path, default=Path("workspace"),
                     help="folder holding the DuckDB store, model cache and jobs (default: ./workspace)")
    sub.add_argument("--json", action="store_true", help="print a JSON summary as the last stdout line")
    sub.add_argument("--debug", action="store_true", help="show tracebacks")
    return sub


def quiet_libraries() -> None:
    # Library progress bars and warnings would bury the one line a user needs to read. Environment
    # variables, read when the libraries are imported, keep start-up free of a transformers import.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def emit(summary: dict[str, Any], as_json: bool, human: str) -> None:
    print(json.dumps(summary, default=str) if as_json else human)


def progress_bar(total: int, description: str) -> Any:
    from tqdm.auto import tqdm  # tqdm.auto picks the notebook or terminal bar; only jobs with a bar need it

    return tqdm(total=total, desc=description, file=sys.stderr, mininterval=1.0,
                disable=os.environ.get("FORGETLESS_NO_PROGRESS") == "1")


def check_models(specs: Sequence[str | None], workspace: Path) -> None:
    """Resolve every MODEL spec (a typo, a missing file) before a job writes its folder or store row."""
    for spec in specs:
        if spec:
            resolve_model(spec, workspace)


def run_job(args: argparse.Namespace, kind: str, config: Any, work: Callable[..., dict[str, Any]],
            unit_key: str = "done", models: Sequence[str | None] = (), serving: EngineChoice | None = None,
            sampling: bool = False, served: Sequence[str | None] | None = None, dtype: str = "auto") -> dict[str, Any]:
    """Run one stage in its job folder: lock, status, progress.jsonl and a progress bar on stderr.

    ``models`` (the specs the stage loads) are checked first, so a bad one leaves no trace. The job waits
    for the workspace's compute slot (queued) before ``work(on_progress, should_stop)`` loads a model;
    SIGTERM asks it to stop (leave the queue, or stop after the batch). A model-facing stage gives its
    ``serving`` choice: ``work`` then also gets ``engines`` (`core.engines.choice.open_engines`; ``sampling``
    picks the in-process sampling dtype, ``dtype`` pins the in-process one), and a managed vLLM server's start
    shows as the job's phase. With ``--engine-url``, the server must serve ``served`` (default: ``models``),
    checked before anything is written.
    """
    check_models(models, args.workspace)
    if serving is not None and serving.engine_url:
        check_served(serving.engine_url, models if served is None else served, args.workspace)
    job_id = config.resolved_job_id()
    folder = job_folder(args.workspace, job_id)
    signal.signal(signal.SIGTERM, lambda *_: request_cancel(folder) if folder.exists() else None)
    with job_session(folder, kind, config, compute_slot=args.workspace) as recorder:
        bar = None

        def on_progress(values: dict[str, Any]) -> None:
            nonlocal bar
            recorder.progress(values)
            if bar is None:
                bar = progress_bar(values["total"], f"{kind} {job_id}")
            bar.update(values[unit_key] - bar.n)
            bar.set_postfix(tok_s=f"{values['tokens_per_s']:.0f}")

        recorder.progress({"phase": "loading model", "job_id": job_id})
        hooks: dict[str, Any] = {"on_progress": on_progress, "should_stop": recorder.cancel_requested}
        if serving is not None:
            hooks["engines"] = open_engines(
                serving, args.workspace, sampling=sampling, dtype=dtype, should_stop=recorder.cancel_requested,
                on_phase=lambda phase: recorder.progress({"phase": phase, "job_id": job_id}))
        summary = work(**hooks)
        if serving is not None:
            summary = {**summary, "engine": serving.describe()}
        if bar is not None:
            bar.close()
        recorder.summary = summary
    return summary
