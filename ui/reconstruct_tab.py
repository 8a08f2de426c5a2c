"""Reconstruct tab: start/cancel a background sampling job, follow it, browse what it stored.

The UI process never loads a model: Start writes a job folder and spawns the CLI. Every view is derived
from the job folders and the DuckDB store, so a reloaded page or a second browser sees the same thing.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import gradio as gr

from core.dashboard import (
    TABLE_HEADERS,
    cli_command,
    job_status_line,
    length_histogram,
    new_job_id,
    read_instruction_view,
)
from core.data_paths import ReadableRoots
from core.errors import ForgetlessError
from core.jobs import JobInfo, list_jobs, load_job_config, request_cancel, start_background
from core.models import ALIASES, DEFAULT_MODEL
from core.reconstruct import ReconstructConfig
from core.store import Store
from ui.alerts import markdown_literal, warn

KIND = "reconstruct"
_DEFAULTS = ReconstructConfig()
_NO_JOB = "no-job"


class _Workspace:
    """The tab's view of one workspace; the store is opened lazily (creating it takes a write lock)."""

    def __init__(self, root: Path, roots: ReadableRoots | None = None) -> None:
        self.root = root
        self.roots = roots or ReadableRoots.for_app(root)  # where a typed model path may point
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store.for_workspace(self.root)
        return self._store

    def newest_job(self) -> JobInfo | None:
        jobs = list_jobs(self.root, KIND)
        return jobs[0] if jobs else None

    def job_config(self, job: JobInfo | None) -> ReconstructConfig | None:
        """The settings a job runs with (None when there is no job or its YAML is unreadable)."""
        if job is None:
            return None
        try:
            return load_job_config(job.folder, ReconstructConfig)
        except ForgetlessError:
            return None


def _required_int(value: float | None, label: str) -> int:
    if value is None:
        raise ForgetlessError(f"{label} is empty; type a whole number")
    return int(value)


def _config_from_form(model: str | None, n: float | None, batch_size: float | None, temperature: float,
                      top_p: float, max_new_tokens: float | None, seed: float | None, prefix: str | None = "",
                      stop: str | None = "") -> ReconstructConfig:
    if not (model or "").strip():
        raise ForgetlessError("pick a model alias or type a model folder / .gguf path")
    stops = tuple(line for line in (stop or "").splitlines() if line.strip())
    return ReconstructConfig(
        model=model.strip(), n=_required_int(n, "N"), batch_size=_required_int(batch_size, "batch size"),
        temperature=float(temperature), top_p=float(top_p),
        max_new_tokens=_required_int(max_new_tokens, "max new tokens"), seed=_required_int(seed, "seed"),
        prefix=prefix if (prefix or "").strip() else None, stop=stops or None, job_id=new_job_id(KIND),
    )


def _job_marker(job: JobInfo | None) -> str:
    """What changes when the store may have new rows: a new job, a new state, a higher stored count."""
    if job is None:
        return _NO_JOB
    return f"{job.job_id}|{job.state}|{job.progress.get('stored')}"


def _table_value(rows: list[list[Any]]) -> dict[str, Any]:
    return {"headers": TABLE_HEADERS, "data": rows}


def start_job(space: _Workspace, *form: Any) -> str:
    """Validate the form into a config and spawn the job; bad input becomes a warning, not a crash."""
    try:
        running = space.newest_job()
        if running is not None and running.active:
            raise ForgetlessError(f"job {running.job_id} is still {running.state}; cancel it or wait for it")
        config = space.roots.confine(_config_from_form, "model")(*form)
        start_background(space.root, KIND, config, config.job_id)
    except ForgetlessError as error:
        return f"Not started: {warn(error)}"
    return f"Started {config.job_id}."


def cancel_job(space: _Workspace) -> str:
    job = space.newest_job()
    if job is None or not job.active:
        return "No job is running."
    request_cancel(job.folder)
    return f"Cancel requested for {job.job_id}: the batch in flight is dropped, stored rows stay."


def refresh(space: _Workspace, search: str, page: float | None, seen: str) -> tuple[Any, ...]:
    """Timer tick and page load: status and buttons always; the rest only when the job or store moved."""
    job = space.newest_job()
    active = job is not None and job.active
    marker = _job_marker(job)
    head = (job_status_line(job), gr.update(interactive=not active), gr.update(interactive=active))
    unchanged = (gr.skip(),) * 5
    if marker == seen:
        return (*head, *unchanged, seen)
    try:
        view = read_instruction_view(space.store, search, page)
    except ForgetlessError as error:  # e.g. a writer held the file longer than the lock wait
        return (f"{head[0]} · (store busy: {markdown_literal(error)})", *head[1:], *unchanged, seen)
    config = space.job_config(job)
    command = cli_command(KIND, config, space.root) if config else gr.skip()
    return (*head, _table_value(view.rows), view.page, view.label, length_histogram(view.lengths), command,
            marker)


def restore_form(space: _Workspace) -> tuple[Any, ...]:
    """On page load, show the newest job's settings, so a reload does not pretend defaults are running."""
    config = space.job_config(space.newest_job())
    if config is None:
        return (gr.skip(),) * 9
    return (config.model, config.n, config.batch_size, config.temperature, config.top_p,
            config.max_new_tokens, config.seed, config.prefix or "", "\n".join(config.stop or ()))


def show_page(space: _Workspace, search: str, page: float | None) -> tuple[Any, ...]:
    """Search or paging by hand: re-read just the table."""
    try:
        view = read_instruction_view(space.store, search, page)
    except ForgetlessError as error:
        warn(error)
        return gr.skip(), gr.skip(), gr.skip()
    return _table_value(view.rows), view.page, view.label


def step_page(space: _Workspace, delta: int | None, search: str, page: float | None) -> tuple[Any, ...]:
    """Prev/Next move one page; a new search (``delta`` None) starts again at page 1."""
    target = 1 if delta is None else (page or 1) + delta
    return show_page(space, search, target)


def build_reconstruct_tab(demo: gr.Blocks, workspace: Path, roots: ReadableRoots | None = None) -> None:
    """Render the tab's components inside ``demo`` and wire their events, including the page load."""
    space = _Workspace(Path(workspace), roots)
    gr.Markdown(
        "Prompt the model with only the start of its chat template, up to where a user's message would "
        "begin, and let it write the user's turn. Each cleaned, de-duplicated instruction is stored with its "
        "sampling settings. The job runs in the background: you can reload the page or close the tab."
    )
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=320):
            model = gr.Dropdown(
                choices=list(ALIASES), value=DEFAULT_MODEL, allow_custom_value=True, label="Model",
                elem_id="rec-model",
                info="Pick a built-in alias, or type a local Hugging Face model folder or a .gguf file path.",
            )
            with gr.Row():
                n = gr.Number(value=_DEFAULTS.n, precision=0, label="Instructions to store (N)",
                              elem_id="rec-n")
                batch_size = gr.Number(value=_DEFAULTS.batch_size, precision=0, label="Batch size",
                                       elem_id="rec-batch-size")
            with gr.Row():
                temperature = gr.Slider(0.0, 2.0, value=_DEFAULTS.temperature, step=0.05, label="Temperature",
                                        elem_id="rec-temperature")
                top_p = gr.Slider(0.05, 1.0, value=_DEFAULTS.top_p, step=0.05, label="Top-p",
                                  elem_id="rec-top-p")
            with gr.Row():
                max_new_tokens = gr.Number(value=_DEFAULTS.max_new_tokens, precision=0,
                                           label="Max new tokens", elem_id="rec-max-new-tokens")
                seed = gr.Number(value=_DEFAULTS.seed, precision=0, label="Seed", elem_id="rec-seed")
            with gr.Accordion("Pre-query template override", open=False, elem_id="rec-override"):
                prefix = gr.Textbox(label="Prefix", lines=3, elem_id="rec-prefix",
                                    placeholder="empty: derived from the model's chat template "
                                                "(see `forgetless prequery MODEL`)")
                stop = gr.Textbox(label="Stop strings, one per line", lines=2, elem_id="rec-stop",
                                  placeholder="empty: the template's end-of-turn markers")
            with gr.Row():
                start = gr.Button("Start", variant="primary", elem_id="rec-start")
                cancel = gr.Button("Cancel", variant="stop", interactive=False, elem_id="rec-cancel")
            message = gr.Markdown("", elem_id="rec-message")  # what the last click did (or why it did not)
            command = gr.Code(label="The newest job as a CLI command", language="shell", lines=2,
                              interactive=False, wrap_lines=True, show_line_numbers=False,
                              elem_id="rec-command")
        with gr.Column(scale=3, min_width=360):
            status = gr.Markdown("Reading jobs…", elem_id="rec-status", elem_classes=["status-line"])
            histogram = gr.Plot(label="Instruction lengths", elem_id="rec-histogram")
    with gr.Row(equal_height=False, elem_id="rec-table-controls"):
        search = gr.Textbox(label="Search instructions", scale=4, elem_id="rec-search",
                            placeholder="substring, case-insensitive; Enter to apply")
        page = gr.Number(value=1, precision=0, label="Page", scale=0, min_width=100, elem_id="rec-page")
        prev_page = gr.Button("◀ Prev", size="md", scale=0, min_width=100, elem_id="rec-prev")
        next_page = gr.Button("Next ▶", size="md", scale=0, min_width=100, elem_id="rec-next")
    page_info = gr.Markdown("", elem_id="rec-page-info")
    table = gr.Dataframe(headers=TABLE_HEADERS, value=_table_value([]), interactive=False, wrap=True,
                         column_widths=["39%", "6%", "11%", "9%", "9%", "15%", "11%"], max_height=640,
                         elem_id="rec-table")
    seen = gr.State("")  # marker of the store state the table shows; "" forces the first refresh
    timer = gr.Timer(1.0)

    form = [model, n, batch_size, temperature, top_p, max_new_tokens, seed, prefix, stop]
    refresh_outputs = [status, start, cancel, table, page, page_info, histogram, command, seen]
    quiet = {"show_progress": "hidden"}  # no spinner over the table every second
    refresh_handler = partial(refresh, space)

    start.click(partial(start_job, space), form, message, **quiet).then(
        refresh_handler, [search, page, seen], refresh_outputs, **quiet)
    cancel.click(partial(cancel_job, space), None, message, **quiet).then(
        refresh_handler, [search, page, seen], refresh_outputs, **quiet)
    timer.tick(refresh_handler, [search, page, seen], refresh_outputs, **quiet)
    # Re-attach after a reload: gr.State restarts at "", so the first load redraws everything from disk.
    demo.load(partial(restore_form, space), None, form, **quiet)
    demo.load(refresh_handler, [search, page, seen], refresh_outputs, **quiet)

    page_handler = partial(show_page, space)
    page_outputs = [table, page, page_info]
    search.submit(partial(step_page, space, None), [search, page], page_outputs, **quiet)
    page.submit(page_handler, [search, page], page_outputs, **quiet)
    prev_page.click(partial(step_page, space, -1), [search, page], page_outputs, **quiet)
    next_page.click(partial(step_page, space, +1), [search, page], page_outputs, **quiet)
