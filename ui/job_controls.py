"""Start/Cancel, status line, message and CLI command of one background stage, shared by the stage tabs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import gradio as gr

from core.dashboard import StageJobs, job_marker, job_status_line
from core.errors import ForgetlessError
from ui.alerts import warn

QUIET = {"show_progress": "hidden"}  # no spinner over the views on every timer tick


@dataclass
class JobControls:
    """One stage's Start/Cancel buttons, status line, last-click message and CLI command."""

    jobs: StageJobs
    noun: str  # what the progress counts, e.g. "responses"
    idle: str  # the status line before the first job
    start: gr.Button
    cancel: gr.Button
    status: gr.Markdown
    message: gr.Markdown
    command: gr.Code

    def poll(self) -> tuple[Any, ...]:
        """(status, start, cancel, command) updates and the job's marker."""
        job = self.jobs.newest()
        active = job is not None and job.active
        command = self.jobs.command(job)
        return (job_status_line(job, unit="done", noun=self.noun, idle=self.idle),
                gr.update(interactive=not active), gr.update(interactive=active),
                gr.skip() if command is None else gr.update(value=command, visible=True)), job_marker(job)

    @property
    def outputs(self) -> list[Any]:
        return [self.status, self.start, self.cancel, self.command]


def job_controls(prefix: str, jobs: StageJobs, noun: str, idle: str) -> JobControls:
    """Render Start/Cancel, the message line, the status line and the CLI command (ids ``<prefix>-...``)."""
    with gr.Row(elem_classes=["job-buttons"]):
        start = gr.Button("Start", variant="primary", scale=0, min_width=130, elem_id=f"{prefix}-start")
        cancel = gr.Button("Cancel", variant="stop", interactive=False, scale=0, min_width=130,
                           elem_id=f"{prefix}-cancel")
    status = gr.Markdown("Reading jobs…", elem_id=f"{prefix}-status", elem_classes=["status-line"])
    message = gr.Markdown("", elem_id=f"{prefix}-message")
    command = gr.Code(label="The newest job as a CLI command", language="shell", lines=1, interactive=False,
                      wrap_lines=True, show_line_numbers=False, visible=False, elem_id=f"{prefix}-command")
    return JobControls(jobs, noun, idle, start, cancel, status, message, command)


def start_job(jobs: StageJobs, build_config: Callable[..., Any], *form: Any) -> str:
    """Validate the form into a config and spawn the job; bad input becomes a warning, not a crash."""
    try:
        return jobs.start(build_config(*form))
    except ForgetlessError as error:
        return f"Not started: {warn(error)}"


def restore_form(jobs: StageJobs, to_form: Callable[[Any], tuple[Any, ...]], width: int) -> tuple[Any, ...]:
    """On page load, show the newest job's settings, so a reload does not pretend defaults are running."""
    config = jobs.config(jobs.newest())
    return (gr.skip(),) * width if config is None else to_form(config)


def wire_job(demo: gr.Blocks, controls: JobControls, form: list[Any], build_config: Callable[..., Any],
             to_form: Callable[[Any], tuple[Any, ...]]) -> None:
    """Start/Cancel clicks and the form's restore on page load (status polling is the tab's timer)."""
    controls.start.click(partial(start_job, controls.jobs, build_config), form, controls.message, **QUIET)
    controls.cancel.click(controls.jobs.cancel, None, controls.message, **QUIET)
    demo.load(partial(restore_form, controls.jobs, to_form, len(form)), None, form, **QUIET)
