"""One Start on the Evaluate tab: a detached process that runs ``forgetless eval`` for each target in turn.

The plan's job folder (kind ``eval-queue``, under ``<workspace>/jobs``) belongs to a small driver process
(``python -m core.eval.queue FOLDER --workspace DIR``) that starts each target's eval job with
``start_background``, waits for it and moves on. Targets run one after another, not side by side: each
loads a model, and two at once would only compete for the same memory and cores. Like every job, the
driver outlives the app, so a reload or a restart re-attaches by reading the folders; a cancel stops the
eval job in flight and the rest of the plan.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from core.config import load_yaml, to_yaml
from core.errors import ForgetlessError
from core.eval.plan import EvalPlan, target_label
from core.jobs import (
    REPO_ROOT,
    JobInfo,
    JobRecorder,
    job_folder,
    job_info,
    job_session,
    request_cancel,
    start_background,
)

QUEUE_KIND = "eval-queue"
POLL_S = 0.5


def start_plan(workspace: Path, plan: EvalPlan) -> Path:
    """Spawn the driver for ``plan`` in its own session (so it outlives the app); return its job folder."""
    workspace = Path(workspace).resolve()
    folder = job_folder(workspace, str(plan.job_id))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(to_yaml(plan), encoding="utf-8")
    JobRecorder(folder, QUEUE_KIND).set_state("starting")
    command = [sys.executable, "-m", "core.eval.queue", str(folder), "--workspace", str(workspace)]
    with (folder / "log.txt").open("ab") as log:
        subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         start_new_session=True, cwd=REPO_ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return folder


def _settled(folder: Path) -> JobInfo:
    """job_info, read again when it says interrupted: a job ending between job_info's status read and its
    lock check looks interrupted for that instant, and the second read sees its real end state."""
    info = job_info(folder)
    if info.state == "interrupted":
        time.sleep(POLL_S)
        info = job_info(folder)
    return info


def _wait(folder: Path, recorder: JobRecorder) -> JobInfo:
    """Wait for an eval job to end, passing a cancel of the plan on to it."""
    while True:
        info = _settled(folder)
        if not info.active:
            return info
        if recorder.cancel_requested():
            request_cancel(folder)
        time.sleep(POLL_S)


def _await_eval(workspace: Path, config: Any, recorder: JobRecorder) -> JobInfo:
    """Run one target's eval job in the background and wait for it.

    The job id leaves the suite out, so the same evaluation started elsewhere (the CLI) may hold the
    folder, perhaps for another suite: wait for it to end, then run ours, which skips what it scored.
    """
    folder = job_folder(workspace, config.job_id)
    if folder.exists() and job_info(folder).active:
        joined = _wait(folder, recorder)
        if recorder.cancel_requested():
            return joined
    start_background(workspace, "eval", config, config.job_id)
    return _wait(folder, recorder)


def run_plan(folder: Path, workspace: Path, plan: EvalPlan) -> dict[str, Any]:
    """Evaluate every target of the plan in turn inside the plan's job folder; the summary lists each."""
    configs = plan.configs()
    started = time.monotonic()
    targets: list[dict[str, Any]] = []
    cancelled_early = (folder / "cancel").exists()  # a Cancel while the plan was starting: job_session clears it
    with job_session(folder, QUEUE_KIND, plan) as recorder:
        if cancelled_early:
            request_cancel(folder)
        for index, config in enumerate(configs):
            if recorder.cancel_requested():
                break
            recorder.progress({"done": index, "total": len(configs), "current": config.job_id,
                               "target": target_label(config.model)})
            info = _await_eval(workspace, config, recorder)
            targets.append({"target": target_label(config.model), "model": config.model, "job_id": config.job_id,
                            "state": info.state, "error": info.error})
            if info.state == "cancelled":  # cancelled from elsewhere (the CLI, a second tab): stop the plan too
                request_cancel(folder)
        finished = sum(target["state"] == "done" for target in targets)
        recorder.progress({"done": len(targets), "total": len(configs),
                           "current": targets[-1]["job_id"] if targets else None})
        recorder.summary = {"targets": targets, "evaluated": finished, "total": len(configs),
                            "seconds": round(time.monotonic() - started, 2)}
    return recorder.summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="run an Evaluate-tab plan: forgetless eval for each target")
    parser.add_argument("folder", type=Path, help="the plan's job folder (holds config.yaml)")
    parser.add_argument("--workspace", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        plan = load_yaml(EvalPlan, args.folder / "config.yaml")
    except ForgetlessError as error:  # e.g. a run folder deleted between Start and now
        JobRecorder(args.folder, QUEUE_KIND).set_state("failed", error=str(error))
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        summary = run_plan(args.folder, args.workspace, plan)
    except ForgetlessError as error:  # job_session already recorded it as failed
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
