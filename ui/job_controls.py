"""Start/Cancel, status line, message and CLI command of one background stage, shared by the stage tabs."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from functools import partial
from typing import Any

import gradio as gr

from core.errors import ForgetlessError
from core.jobs import JobInfo
from ui.alerts import warn
from ui.views.jobs import StageJobs, job_marker, job_status_line

QUIET = {"show_progress": "hidden"}  # no spinner over the views on every timer tick


@dataclass
class JobControls:
    """One stage's Start/Cancel buttons, status line, last-click message and CLI command."""

    jobs: StageJobs
    noun: str  # what the progress counts, e.g. "responses"
    idle: str  # the status line before the first job
    buttons: gr.Row  # Start and Cancel; a tab may add its own job buttons (``with controls.buttons:``)
    start: gr.Button
    cancel: gr.Button
    status: gr.Markdown
    message: gr.Markdown
    command: gr.Code
    unit: str = "done"  # the progress key that counts finished work ("stored" for reconstruction)
    follow_rows: bool = False  # the marker moves with every finished unit, so views follow rows as they arrive

    def show(self, job: JobInfo | None, line: str | None = None) -> tuple[Any, ...]:
        """(status, start, cancel, command) updates for ``job``; ``line`` replaces the stage's status line."""
        command = self.jobs.command(job)
        if line is None:
            line = job_status_line(job, unit=self.unit, noun=self.noun, idle=self.idle)
        return (line, gr.update(interactive=self.jobs.startable(job)),
                gr.update(interactive=self.jobs.cancellable(job)),
                gr.skip() if command is None else gr.update(value=command, visible=True))

    def poll(self) -> tuple[tuple[Any, ...], str]:
        """(status, start, cancel, command) updates for the newest job, and that job's marker."""
        job = self.jobs.newest()
        return self.show(job), job_marker(job, self.unit if self.follow_rows else None)

    @property
    def outputs(self) -> list[Any]:
        return [self.status, self.start, self.cancel, self.command]


def job_controls(prefix: str, jobs: StageJobs, noun: str, idle: str, *, unit: str = "done",
                 follow_rows: bool = False, command_label: str = "The newest job as a CLI command") -> JobControls:
    """Render Start/Cancel, the status line, the message line and the CLI command (ids ``<prefix>-...``)."""
    with gr.Row(elem_classes=["job-buttons"]) as buttons:
        start = gr.Button("Start", variant="primary", scale=0, min_width=130, elem_id=f"{prefix}-start")
        cancel = gr.Button("Cancel", variant="stop", interactive=False, scale=0, min_width=130,
                           elem_id=f"{prefix}-cancel")
    status = gr.Markdown("Reading jobs…", elem_id=f"{prefix}-status", elem_classes=["status-line"])
    message = gr.Markdown("", elem_id=f"{prefix}-message")
    command = gr.Code(label=command_label, language="shell", lines=1, interactive=False,
                      wrap_lines=True, show_line_numbers=False, visible=False, elem_id=f"{prefix}-command")
    return JobControls(jobs, noun, idle, buttons, start, cancel, status, message, command, unit, follow_rows)


def start_job(jobs: StageJobs, build_config: Callable[..., Any], *form: Any) -> str:
    """Validate the form into a config and spawn the job; bad input becomes a warning, not a crash."""
    try:
        return jobs.start(build_config(*form))
    except ForgetlessError as error:
        return f"Not started: {warn(error)}"


def restore_form(jobs: StageJobs, to_form: Callable[[Any], Any], width: int) -> Any:
    """On page load, show the newest job's settings, so a reload does not pretend defaults are running."""
    config = jobs.config(jobs.newest())
    return (gr.skip(),) * width if config is None else to_form(config)


def wire_job(demo: gr.Blocks, controls: JobControls, form: Collection[Any], build_config: Callable[..., Any],
             to_form: Callable[[Any], Any]) -> None:
    """Start/Cancel clicks and the form's restore on page load (status polling is the tab's timer).

    ``form`` is the widgets as Gradio takes inputs: a set (the handlers get and give ``{widget: value}``, see
    ui/forms.py) or a list (values in its order).
    """
    controls.start.click(partial(start_job, controls.jobs, build_config), form, controls.message, **QUIET)
    controls.cancel.click(controls.jobs.cancel, None, controls.message, **QUIET)
    demo.load(partial(restore_form, controls.jobs, to_form, len(form)), None, form, **QUIET)
