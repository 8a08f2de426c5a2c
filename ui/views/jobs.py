"""The background jobs of a tab, as the page drives and shows them: start, cancel, command line, status line.

No Gradio here: ``ui/job_controls.py`` wires these to buttons and a timer.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from core.cli.flags import cli_command
from core.engines.choice import saved_choice, serving_fields
from core.errors import ForgetlessError
from core.eval.plan import EvalPlan
from core.eval.queue import QUEUE_KIND, start_plan
from core.jobs import (
    JobInfo,
    job_folder,
    job_info,
    list_jobs,
    load_job_config,
    new_job_id,
    request_cancel,
    start_background,
)
from core.store import Store
from ui.views.formatting import format_duration

IDLE_EVAL = "No evaluation yet: pick a base and tuned runs, then press Start."


def _job_counts(job: JobInfo, unit: str, noun: str | None) -> str:
    """``12/100 stored`` style: the reconstruct summary's own keys, else the newest progress line."""
    progress, summary = job.progress or {}, job.summary or {}
    if unit == "stored":
        done, total = summary.get("stored", progress.get("stored")), summary.get("target", progress.get("total"))
    else:
        done, total = progress.get(unit), progress.get("total")
    if done is None or total is None:
        return ""
    return f"{done}/{total} {noun or unit}"


def _job_rate(job: JobInfo, unit: str, noun: str | None, rate: float | None) -> str:
    """tokens/s; a job that makes no tokens (probability judging, profiling) gets items/s instead."""
    if unit == "stored":
        return f"{rate:.0f} tokens/s" if rate is not None else ""
    if rate:
        return f"{rate:.0f} tokens/s"
    progress = job.progress or {}
    done, elapsed = progress.get(unit), progress.get("elapsed_s")
    if done and elapsed:
        return f"{done / elapsed:.1f} {noun or unit}/s"
    return ""


def job_status_line(job: JobInfo | None, *, unit: str = "stored", noun: str | None = None,
                    idle: str = "No reconstruction job yet: pick a model and press Start.") -> str:
    """One line saying what the newest job is doing: state, done/total, tokens/s, ETA (or why it ended).

    ``unit`` is the progress key that counts finished work ("stored" for reconstruction, "done" for the
    later stages), ``noun`` names it in the line ("responses"), ``idle`` is the line when there is no job.
    """
    if job is None:
        return idle
    progress = job.progress or {}
    summary = job.summary or {}
    counts = _job_counts(job, unit, noun)
    head = f"{job.state} · {job.job_id}"
    if job.state == "queued":  # waiting for the workspace's compute slot
        holder = progress.get("waiting_for")
        return f"{head} · waiting for {f'job {holder}' if holder else 'another job'} to finish"
    if job.state == "starting" or (job.state == "running" and unit not in progress):
        return f"{head} · {progress.get('phase', 'starting')}…"
    if job.state == "running":
        parts = [counts, f"stage {progress['stage']}" if progress.get("stage") else "",
                 _job_rate(job, unit, noun, progress.get("tokens_per_s")),
                 f"ETA {format_duration(progress.get('eta_s'))}",
                 f"elapsed {format_duration(progress.get('elapsed_s'))}"]
        return " · ".join([head, *[part for part in parts if part]])
    if job.state == "done":
        rate = summary.get("tokens_per_s", progress.get("tokens_per_s"))
        seconds = summary.get("seconds", progress.get("elapsed_s"))
        nothing = not counts and summary.get("pending_before") == 0
        read = summary.get("tokens_read")  # a judge job's token cost: what its judges read
        parts = ["nothing was pending" if nothing else counts, _job_rate(job, unit, noun, rate),
                 f"{read:,} tokens read" if read else "", f"took {format_duration(seconds)}"]
        return " · ".join([head, *[part for part in parts if part]])
    if job.state == "failed":
        return f"{head} · {job.error or 'the job stopped with an error; see log.txt in its folder'}"
    if job.state == "cancelled":
        return " · ".join(part for part in [head, counts, "stopped on request"] if part)
    # interrupted: the worker process vanished without recording an end state
    return " · ".join(part for part in [head, counts, "its process ended without finishing"] if part)


def job_marker(job: JobInfo | None, unit: str | None = None) -> str:
    """What changes when the store may hold new rows: another job, a new state (and, with ``unit``, a
    higher done count). Tabs redraw their views only when it changes."""
    if job is None:
        return "no-job"
    count = f"|{job.progress.get(unit)}" if unit else ""
    return f"{job.job_id}|{job.state}{count}"


class StageJobs:
    """The background jobs of one stage in one workspace, as a tab drives them (no Gradio here)."""

    def __init__(self, workspace: Path, kind: str, config_cls: type) -> None:
        self.workspace, self.kind, self.config_cls = Path(workspace), kind, config_cls

    def newest(self) -> JobInfo | None:
        jobs = list_jobs(self.workspace, self.kind)
        return jobs[0] if jobs else None

    def config(self, job: JobInfo | None) -> Any | None:
        """The settings a job runs with (None when there is no job or its YAML is unreadable)."""
        if job is None:
            return None
        try:
            return load_job_config(job.folder, self.config_cls)
        except ForgetlessError:
            return None

    def startable(self, job: JobInfo | None) -> bool:
        """Whether Start is offered while ``job`` is the one shown: one job per stage at a time."""
        return job is None or not job.active

    def cancellable(self, job: JobInfo | None) -> bool:
        return job is not None and job.active

    def serving(self) -> dict[str, Any]:
        """The engine the app's Engine panel chose for this workspace, as a config's ``serving`` value."""
        return serving_fields(saved_choice(self.workspace))

    def start(self, config: Any) -> str:
        """Spawn the job (one per stage at a time) on the workspace's engine choice, for a stage whose models
        it serves; a ForgetlessError says why not."""
        running = self.newest()
        if running is not None and running.active:
            raise ForgetlessError(f"job {running.job_id} is still {running.state}; cancel it or wait for it")
        if any(field.name == "serving" for field in dataclasses.fields(config)):
            config = dataclasses.replace(config, serving=self.serving())
        start_background(self.workspace, self.kind, config, config.job_id)
        return f"Started {config.job_id}."

    def cancel(self) -> str:
        job = self.newest()
        if job is None or not job.active:
            return "No job is running."
        request_cancel(job.folder)
        return f"Cancel requested for {job.job_id}: the batch in flight is dropped, stored rows stay."

    def command(self, job: JobInfo | None) -> str | None:
        """The newest job as a ``forgetless`` command line (None without a readable config)."""
        config = self.config(job)
        return cli_command(self.kind, config, self.workspace) if config is not None else None


class LazyStore:
    """The workspace's store, opened on first use: creating it takes a write lock, so not at app start."""

    def __init__(self, workspace: Path) -> None:
        self.workspace = Path(workspace)
        self._store: Store | None = None

    def get(self) -> Store:
        if self._store is None:
            self._store = Store.for_workspace(self.workspace)
        return self._store


class EvalJobs(StageJobs):
    """The Evaluate tab's jobs, shaped like StageJobs so the shared job controls drive them."""

    def __init__(self, workspace: Path) -> None:
        super().__init__(workspace, QUEUE_KIND, EvalPlan)

    def start(self, config: EvalPlan) -> str:
        running = self.newest()
        if running is not None and running.active:
            raise ForgetlessError(f"evaluation {running.job_id} is still {running.state}; cancel it or wait for it")
        plan = dataclasses.replace(config, serving=self.serving(), job_id=config.job_id or new_job_id(QUEUE_KIND))
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
        return IDLE_EVAL
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
