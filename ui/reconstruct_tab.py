"""Reconstruct tab: start/cancel a background sampling job, follow it, browse what it stored.

The UI process never loads a model: Start writes a job folder and spawns the CLI. Every view is derived
from the job folders and the DuckDB store, so a reloaded page or a second browser sees the same thing.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import gradio as gr

from core.data_paths import ReadableRoots
from core.engines.models import ALIASES
from core.errors import ForgetlessError
from core.reconstruct.reconstruction import ReconstructConfig
from ui.alerts import markdown_literal, warn
from ui.forms import Form, by_name, setting_widget, to_widgets
from ui.job_controls import QUIET, JobControls, job_controls, wire_job
from ui.views.coverage import reconstruct_coverage
from ui.views.jobs import LazyStore, StageJobs
from ui.views.reconstruct import (
    CORPUS_CHOICES,
    FREE,
    MODE_CHOICES,
    TABLE_HEADERS,
    length_histogram,
    mode_fields,
    read_instruction_view,
    reconstruct_config,
    reconstruct_form,
    with_readable_corpus,
    with_steerable,
)

KIND = "reconstruct"
IDLE = "No reconstruction job yet: pick a model and press Start."


def _table_value(rows: list[list[Any]]) -> dict[str, Any]:
    return {"headers": TABLE_HEADERS, "data": rows}


def refresh(store: LazyStore, controls: JobControls, search: str, page: float | None, seen: str) -> tuple[Any, ...]:
    """Timer tick and page load: status and buttons always; the rest only when the job or store moved."""
    head, marker = controls.poll()
    unchanged = (gr.skip(),) * 5
    if marker == seen:
        return (*head, *unchanged, seen)
    try:
        view = read_instruction_view(store.get(), search, page)
        coverage = reconstruct_coverage(controls.jobs.newest(), store.get())
    except ForgetlessError as error:  # e.g. a writer held the file longer than the lock wait: retried next tick
        return (f"{head[0]} · (store busy: {markdown_literal(error)})", *head[1:], *unchanged, seen)
    return (*head, _table_value(view.rows), view.page, view.label, length_histogram(view.lengths), coverage, marker)


def show_page(store: LazyStore, search: str, page: float | None) -> tuple[Any, ...]:
    """Search or paging by hand: re-read just the table."""
    try:
        view = read_instruction_view(store.get(), search, page)
    except ForgetlessError as error:
        warn(error)
        return gr.skip(), gr.skip(), gr.skip()
    return _table_value(view.rows), view.page, view.label


def step_page(store: LazyStore, delta: int | None, search: str, page: float | None) -> tuple[Any, ...]:
    """Prev/Next move one page; a new search (``delta`` None) starts again at page 1."""
    target = 1 if delta is None else (page or 1) + delta
    return show_page(store, search, target)


def _form() -> tuple[Form, dict[str, Any]]:
    """The job's settings as widgets by field name (labels, help and bounds from ReconstructConfig's fields), and
    the groups of fields only one mode uses (shown in that mode)."""
    def number(name: str) -> Any:
        return setting_widget(gr.Number, ReconstructConfig, name, precision=0, elem_id=f"rec-{name.replace('_', '-')}")

    form = {"model": setting_widget(gr.Dropdown, ReconstructConfig, "model", choices=list(ALIASES),
                                    allow_custom_value=True, elem_id="rec-model"),
            "mode": gr.Radio(MODE_CHOICES, value=FREE, label="Mode", elem_id="rec-mode",
                             info="Free: the model writes whatever users it was tuned on asked. Steered: new samples "
                                  "aim at the clusters the profile (Explore tab) finds thin. From a corpus: the model "
                                  "rewrites public texts as requests in its own words.")}
    with gr.Row():
        form |= {"n": number("n"), "batch_size": number("batch_size")}
    with gr.Row():
        form |= {name: setting_widget(gr.Slider, ReconstructConfig, name, elem_id=f"rec-{name.replace('_', '-')}")
                 for name in ("temperature", "top_p")}
    with gr.Row():
        form |= {"max_new_tokens": number("max_new_tokens"), "seed": number("seed")}
    groups = {}
    with gr.Group(visible=False, elem_id="rec-steer") as groups["steer"], gr.Row():
        form["steer_examples"] = number("steer_examples")
        form["steer_keep_all"] = setting_widget(gr.Checkbox, ReconstructConfig, "steer_keep_all",
                                                elem_id="rec-steer-keep-all")
    with gr.Accordion("Pre-query template override", open=False, elem_id="rec-override") as groups["override"]:
        form["prefix"] = setting_widget(gr.Textbox, ReconstructConfig, "prefix", value="", lines=3,
                                        elem_id="rec-prefix", placeholder="empty: derived from the model's chat "
                                                                          "template (see `forgetless prequery MODEL`)")
        form["stop"] = setting_widget(gr.Textbox, ReconstructConfig, "stop", value="", lines=2, elem_id="rec-stop",
                                      placeholder="empty: the template's end-of-turn markers")
    with gr.Group(visible=False, elem_id="rec-corpus") as groups["corpus"]:
        form["from_corpus"] = setting_widget(gr.Dropdown, ReconstructConfig, "from_corpus", value=CORPUS_CHOICES[0],
                                             choices=list(CORPUS_CHOICES), allow_custom_value=True,
                                             elem_id="rec-from-corpus",
                                             info="A built-in corpus, or type a file path (workspace or --data-dir) "
                                                  "and press Enter.")
        with gr.Row():
            form |= {"corpus_rows": number("corpus_rows"), "passage_max_words": number("passage_max_words")}
    return form, groups


def show_mode(groups: dict[str, Any], mode: str) -> dict[Any, Any]:
    """Show the groups of fields the mode uses, hide the others."""
    return {groups[name]: gr.update(visible=shown) for name, shown in mode_fields(mode).items()}


def build_reconstruct_tab(demo: gr.Blocks, workspace: Path, roots: ReadableRoots | None = None) -> None:
    """Render the tab's components inside ``demo`` and wire their events, including the page load. Typed model
    paths are read only under ``roots`` (by default the workspace)."""
    workspace = Path(workspace)
    roots = roots or ReadableRoots.for_app(workspace)
    store = LazyStore(workspace)
    gr.Markdown(
        "Prompt the model with only the start of its chat template, up to where a user's message would "
        "begin, and let it write the user's turn (free sampling), or steer it toward the clusters the profile "
        "finds thin, or seed it from a public corpus. Each cleaned, de-duplicated instruction is stored with its "
        "sampling settings and how it was steered. The job runs in the background: you can reload the page or "
        "close the tab."
    )
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=320, elem_classes=["launcher"]):
            form, groups = _form()
            controls = job_controls("rec", StageJobs(workspace, KIND, ReconstructConfig), "stored", IDLE,
                                    unit="stored", follow_rows=True)
        with gr.Column(scale=3, min_width=360):
            histogram = gr.Plot(label="Instruction lengths", elem_id="rec-histogram")
            coverage = gr.Plot(label="Coverage of the profile's clusters", elem_id="rec-coverage")
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

    build = roots.confine(reconstruct_config, "model", "from_corpus")
    wire_job(demo, controls, set(form.values()),
             lambda values: with_steerable(with_readable_corpus(build(by_name(form, values))), store.get()),
             lambda config: to_widgets(form, reconstruct_form(config)))
    # .change, not .input: a page load restoring a steered job's settings shows its fields too.
    form["mode"].change(partial(show_mode, groups), form["mode"], set(groups.values()), **QUIET)
    refresh_handler = partial(refresh, store, controls)
    refresh_inputs = [search, page, seen]
    refresh_outputs = [*controls.outputs, table, page, page_info, histogram, coverage, seen]
    timer.tick(refresh_handler, refresh_inputs, refresh_outputs, **QUIET)
    # Re-attach after a reload: gr.State restarts at "", so the first load redraws everything from disk.
    demo.load(refresh_handler, refresh_inputs, refresh_outputs, **QUIET)

    page_handler = partial(show_page, store)
    page_outputs = [table, page, page_info]
    search.submit(partial(step_page, store, None), [search, page], page_outputs, **QUIET)
    page.submit(page_handler, [search, page], page_outputs, **QUIET)
    prev_page.click(partial(step_page, store, -1), [search, page], page_outputs, **QUIET)
    next_page.click(partial(step_page, store, +1), [search, page], page_outputs, **QUIET)
