"""One Start on the Evaluate tab: a detached process that runs ``forgetless eval`` for each target in turn.

The plan's job folder (kind ``eval-queue``, under ``<workspace>/jobs``) belongs to a small driver process
(``python -m core.eval_queue FOLDER --workspace DIR``) that starts each target's eval job with
``start_background``, waits for it and moves on. Targets run one after another, not side by side: each
loads a model, and two at once would only compete for the same memory and cores. Like every job, the
driver outlives the app, so a reload or a restart re-attaches by reading the folders; a cancel stops the
eval job in flight and the rest of the plan.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from core.config import load_yaml, to_yaml
from core.dashboard import StageJobs, cli_command, format_duration, job_marker, new_job_id
from core.errors import ForgetlessError
from core.eval_form import EvalPlan, target_label
from core.jobs import JobInfo, JobRecorder, job_folder, job_info, job_session, request_cancel, start_background

QUEUE_KIND = "eval-queue"
IDLE = "No evaluation yet: pick a base and tuned runs, then press Start."
POLL_S = 0.5
_REPO = Path(__file__).resolve().parent.parent


class EvalJobs(StageJobs):
    """The Evaluate tab's jobs, shaped like StageJobs so the shared job controls drive them."""

    def __init__(self, workspace: Path) -> None:
        super().__init__(workspace, QUEUE_KIND, EvalPlan)

    def start(self, config: EvalPlan) -> str:
        running = self.newest()
        if running is not None and running.active:
            raise ForgetlessError(f"evaluation {running.job_id} is still {running.state}; cancel it or wait for it")
        plan = config if config.job_id else dataclasses.replace(config, job_id=new_job_id(QUEUE_KIND))
        start_plan(self.workspace, plan)
        count = len(plan.configs())
        what = "1 evaluation." if count == 1 else f"{count} evaluations, one after another."
        return f"Started {plan.job_id}: {what}"

    def cancel(self) -> str:
        job = self.newest()
        if job is None or not job.active:
            return "No evaluation is running."
        request_cancel(job.folder)  # the driver starts nothing more ...
        current = self.current(job)
        if current is not None and current.active:
            request_cancel(current.folder)  # ... and the eval in flight drops its batch; scored items stay
        return f"Cancel requested for {job.job_id}: scored items stay, a rerun resumes them."

    def current(self, job: JobInfo | None) -> JobInfo | None:
        """The eval job the plan is on (or ended on)."""
        current = (job.progress or {}).get("current") if job is not None else None
        folder = job_folder(self.workspace, current) if current else None
        return job_info(folder) if folder is not None and folder.exists() else None

    def command(self, job: JobInfo | None) -> str | None:
        """The plan as ``forgetless eval`` lines, one per target (each line resumes as the job does)."""
        plan = self.config(job)
        if plan is None:
            return None
        try:
            configs = plan.configs()
        except ForgetlessError:  # e.g. a run folder deleted since
            return None
        # The CLI derives the same job id from the settings, so the lines leave it out.
        return "\n".join(cli_command("eval", dataclasses.replace(config, job_id=None), self.workspace)
                         for config in configs)


def start_plan(workspace: Path, plan: EvalPlan) -> Path:
    """Spawn the driver for ``plan`` in its own session (so it outlives the app); return its job folder."""
    workspace = Path(workspace).resolve()
    folder = job_folder(workspace, str(plan.job_id))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(to_yaml(plan), encoding="utf-8")
    JobRecorder(folder, QUEUE_KIND).set_state("starting")
    command = [sys.executable, "-m", "core.eval_queue", str(folder), "--workspace", str(workspace)]
    with (folder / "log.txt").open("ab") as log:
        subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         start_new_session=True, cwd=_REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
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


def _details(current: JobInfo | None) -> str:
    """What the eval job in flight is doing: loading, or items done, tokens/s and its ETA."""
    if current is None or current.state == "starting" or "done" not in (current.progress or {}):
        phase = (current.progress or {}).get("phase") if current is not None and current.state != "starting" else None
        return f"{phase or 'starting'}…"
    progress = current.progress
    parts = [f"{progress['done']}/{progress.get('total', '?')} items"]
    if progress.get("tokens_per_s"):
        parts.append(f"{progress['tokens_per_s']:.0f} tokens/s")
    parts.append(f"ETA {format_duration(progress.get('eta_s'))}")
    return " · ".join(parts)


def _failures(summary: dict[str, Any]) -> str:
    failed = [t for t in summary.get("targets", []) if t.get("state") not in ("done", "cancelled")]
    why = {"interrupted": "its process ended without finishing"}
    return "; ".join(f"{t['target']}: {t.get('error') or why.get(t.get('state'), 'see log.txt in its job folder')}"
                     for t in failed)


def plan_status_line(job: JobInfo | None, current: JobInfo | None) -> str:
    """One line for the newest plan: which target is running and how far it is, or how the plan ended."""
    if job is None:
        return IDLE
    head = f"{job.state} · {job.job_id}"
    progress, summary = job.progress or {}, job.summary or {}
    if job.state == "starting" or (job.state == "running" and "total" not in progress):
        return f"{head} · starting…"
    if job.state == "running":
        step = f"target {min(progress.get('done', 0) + 1, progress['total'])} of {progress['total']}"
        return f"{head} · {step}: {progress.get('target', '?')} · {_details(current)}"
    if job.state == "failed":
        return f"{head} · {job.error or 'the plan stopped with an error; see log.txt in its folder'}"
    if job.state == "interrupted":
        return f"{head} · its process ended without finishing"
    total = summary.get("total", progress.get("total", "?"))
    parts = [head, f"{summary.get('evaluated', 0)} of {total} evaluated"]
    if job.state == "cancelled":
        parts.append("stopped on request")
    elif summary.get("seconds") is not None:
        parts.append(f"took {format_duration(summary['seconds'])}")
    failures = _failures(summary)
    return " · ".join(parts) + (f" · failed: {failures}" if failures else "")


def plan_marker(job: JobInfo | None, current: JobInfo | None) -> str:
    """Changes whenever new results may be in the store: a target ended, or the plan did."""
    return f"{job_marker(job)}|{(job.progress or {}).get('done') if job else ''}|{current.state if current else ''}"


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
