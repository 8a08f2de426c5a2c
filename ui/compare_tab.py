"""Compare tab: one prompt answered by the base model and tuned runs side by side, to read what a run forgot.

The prompt is typed, or drawn from what no run trained on (a held-out general instruction of the runs' mix, or
a domain test question). Start hands the comparison to a background job (``forgetless compare``), which
answers with one model at a time and stores each reply; the page follows it, shows the replies in one
column per model with their sampling settings, and lists past comparisons, filterable by prompt and model.
A reload re-attaches to the newest job.
"""

from __future__ import annotations

import html
from functools import partial
from pathlib import Path
from typing import Any

import gradio as gr

from core.data_paths import ReadableRoots
from core.engines.models import ALIASES, DEFAULT_MODEL
from core.errors import ForgetlessError
from core.eval.compare import CompareConfig, pick_prompt
from ui.alerts import markdown_literal, warn
from ui.forms import Form, by_name, run_picker, setting_widget, to_widgets
from ui.job_controls import QUIET, job_controls, start_job
from ui.views.compare import (
    HISTORY_HEADERS,
    IDLE,
    CompareJobs,
    compare_config,
    draw,
    form_of,
    job_prompt,
    read_history,
    read_replies,
)
from ui.views.jobs import LazyStore
from ui.views.mix import domain_choices

INTRO = ("Read what a tuned run forgot: the base model and one or more tuned runs answer the same prompt, side by "
         "side, with the same sampling settings. Type a prompt, or draw one no run trained on: a general instruction "
         "the runs' mix held out, or a domain test question. Every reply is kept, so past comparisons can be "
         "filtered and read again below.")


def _form(workspace: Path) -> tuple[Form, gr.Button, gr.Button]:
    """The comparison's widgets by field name (base and runs make up its models), ↻ Runs and Draw."""
    form: Form = {"base": gr.Dropdown(choices=list(ALIASES), value=DEFAULT_MODEL, allow_custom_value=True,
                                      label="Base model", elem_id="cmp-base",
                                      info="An alias, or type a model folder / .gguf path and press Enter.")}
    with gr.Row(equal_height=False):
        form["runs"] = gr.Dropdown(choices=[], multiselect=True, allow_custom_value=True, label="Tuned runs",
                                   scale=4, elem_id="cmp-runs",
                                   info="Finished training runs of this workspace (or type a run folder and press "
                                        "Enter); each answers after the base.")
        refresh = gr.Button("↻ Runs", size="sm", scale=0, min_width=90, elem_id="cmp-refresh-runs")
    with gr.Row(equal_height=False):
        form["source"] = setting_widget(gr.Radio, CompareConfig, "source", scale=3, elem_id="cmp-source")
        form["pick_seed"] = setting_widget(gr.Number, CompareConfig, "pick_seed", precision=0, scale=1,
                                           min_width=110, elem_id="cmp-pick-seed")
        drawer = gr.Button("Draw another", size="sm", scale=0, min_width=150, elem_id="cmp-draw")
    form["prompt"] = setting_widget(gr.Textbox, CompareConfig, "prompt", lines=3, value="", elem_id="cmp-prompt",
                                    info="Type it, or pick a source above to draw one (editing a drawn prompt makes "
                                         "it typed).")
    with gr.Accordion("Domain data for drawn domain questions", open=False), gr.Row(equal_height=False):
        form["domain"] = setting_widget(gr.Dropdown, CompareConfig, "domain", value="", scale=3,
                                        choices=[("the tuned runs' mix", ""), *domain_choices(workspace)],
                                        allow_custom_value=True, elem_id="cmp-domain")
        form["domain_test_fraction"] = setting_widget(gr.Number, CompareConfig, "domain_test_fraction",
                                                      min_width=120, elem_id="cmp-domain-test-fraction")
    with gr.Row():
        form["max_new_tokens"] = setting_widget(gr.Number, CompareConfig, "max_new_tokens", precision=0,
                                                elem_id="cmp-max-new-tokens")
        form["temperature"] = setting_widget(gr.Number, CompareConfig, "temperature", elem_id="cmp-temperature")
        form["top_p"] = setting_widget(gr.Number, CompareConfig, "top_p", elem_id="cmp-top-p")
        form["seed"] = setting_widget(gr.Number, CompareConfig, "seed", precision=0, elem_id="cmp-seed")
    return form, refresh, drawer



def _confined(roots: ReadableRoots, store: LazyStore, form: Form, values: dict[Any, Any]) -> CompareConfig:
    """The form's comparison, refused when a model, run or domain path lies outside the folders the app reads, or
    when its source has no prompt to draw (said here, rather than by a job that fails)."""
    config = roots.confine(compare_config, "models")(by_name(form, values))
    if config.domain:
        roots.check(config.domain)
    if config.source != "typed":
        pick_prompt(config, store.get())
    return config


def _draw(store: LazyStore, roots: ReadableRoots, form: Form, step: int, values: dict[Any, Any]) -> tuple[Any, ...]:
    """(draw seed, prompt, message): the prompt the source and the draw seed plus ``step`` pick, shown in the
    prompt box, or why there is none. A typed source draws nothing (Draw says so)."""
    named = by_name(form, values)
    if (named.get("source") or "typed") == "typed":
        message = warn("Choose held-out or domain as the prompt source to draw a prompt.") if step else ""
        return gr.skip(), gr.skip(), message
    seed = int(named.get("pick_seed") or 0) + step
    try:
        if named.get("domain"):
            roots.check(named["domain"])
        picked = draw(store.get(), {**named, "pick_seed": seed})
    except ForgetlessError as error:
        return seed, gr.skip(), warn(error)
    return seed, picked.text, ""


def _on_load(jobs: CompareJobs, store: LazyStore, workspace: Path, form: Form) -> dict[Any, Any]:
    """Fresh run choices, and the newest comparison's settings (its prompt too) so a reload shows what ran."""
    config = jobs.config(jobs.newest())
    try:
        shown = {} if config is None else form_of(config, job_prompt(store.get(), config))
    except ForgetlessError:  # the store busy longer than the lock wait: the settings without a drawn prompt
        shown = form_of(config)
    return {**to_widgets(form, {name: value for name, value in shown.items() if name != "runs"}),
            form["runs"]: run_picker(workspace, shown.get("runs"))}


def _replies(store: LazyStore, jobs: CompareJobs, job_id: str | None = None) -> Any:
    try:
        return read_replies(store.get(), jobs, job_id)
    except ForgetlessError as error:  # e.g. a writer held the file longer than the lock wait
        return f"<p>(store busy: {html.escape(str(error))})</p>"


def _history(store: LazyStore, prompt: str, model: str) -> tuple[Any, ...]:
    try:
        rows, job_ids, note = read_history(store.get(), prompt, model)
    except ForgetlessError as error:
        return gr.skip(), gr.skip(), f"(store busy: {markdown_literal(error)})"
    return {"headers": HISTORY_HEADERS, "data": rows}, job_ids, note


def build_compare_tab(demo: gr.Blocks, workspace: Path, roots: ReadableRoots | None = None) -> None:
    """Render the tab's components inside ``demo`` and wire their events, including the page load. Typed model and
    domain paths are read only under ``roots`` (by default the workspace)."""
    workspace = Path(workspace)
    roots = roots or ReadableRoots.for_app(workspace)
    store, jobs = LazyStore(workspace), CompareJobs(workspace)
    gr.Markdown(INTRO)
    with gr.Column(elem_classes=["launcher"]):
        form, refresh, drawer = _form(workspace)
        controls = job_controls("cmp", jobs, "replies", IDLE, follow_rows=True)
    replies = gr.HTML("", elem_id="cmp-view")
    gr.Markdown("### Past comparisons")
    with gr.Row():
        prompt_filter = gr.Textbox(label="Filter by prompt", placeholder="words in the prompt",
                                   elem_id="cmp-filter-prompt")
        model_filter = gr.Textbox(label="Filter by model", placeholder="part of a model or run name",
                                  elem_id="cmp-filter-model")
    history_note = gr.Markdown("", elem_id="cmp-history-note")
    history = gr.Dataframe(value={"headers": HISTORY_HEADERS, "data": []}, interactive=False, wrap=True,
                           max_height=560, column_widths=["10%", "22%", "10%", "12%", "26%", "14%", "6%"],
                           elem_id="cmp-history")
    history_jobs = gr.State([])  # each history row's job id, for a click on the row
    seen = gr.State("")  # the newest job's marker; a change redraws the replies and the history
    timer = gr.Timer(1.0)
    inputs = set(form.values())

    controls.start.click(partial(start_job, jobs, partial(_confined, roots, store, form)), inputs, controls.message,
                         **QUIET)
    controls.cancel.click(jobs.cancel, None, controls.message, **QUIET)
    refresh.click(partial(run_picker, workspace), None, form["runs"], **QUIET)
    demo.load(partial(_on_load, jobs, store, workspace, form), None, list(form.values()), **QUIET)

    draw_outputs = [form["pick_seed"], form["prompt"], controls.message]
    drawer.click(partial(_draw, store, roots, form, 1), inputs, draw_outputs, **QUIET)
    for trigger in (form["source"].input, form["runs"].input, form["domain"].input):  # what changes the draw
        trigger(partial(_draw, store, roots, form, 0), inputs, draw_outputs, **QUIET)
    # Editing a drawn prompt makes it the user's own.
    form["prompt"].input(lambda source: "typed" if source != "typed" else gr.skip(), form["source"], form["source"],
                         **QUIET)

    def poll() -> tuple[Any, ...]:
        shown, marker = controls.poll()
        return (*shown, marker)

    poll_outputs = [*controls.outputs, seen]
    timer.tick(poll, None, poll_outputs, **QUIET)
    demo.load(poll, None, poll_outputs, **QUIET)
    seen.change(partial(_replies, store, jobs), None, replies, **QUIET)
    history_outputs = [history, history_jobs, history_note]
    seen.change(partial(_history, store), [prompt_filter, model_filter], history_outputs, **QUIET)
    for box in (prompt_filter, model_filter):
        box.submit(partial(_history, store), [prompt_filter, model_filter], history_outputs, **QUIET)
        box.blur(partial(_history, store), [prompt_filter, model_filter], history_outputs, **QUIET)

    def show_row(job_ids: list[str], event: gr.SelectData) -> Any:
        """A click on a past reply shows its whole comparison above."""
        row = event.index[0] if isinstance(event.index, list | tuple) else event.index
        return _replies(store, jobs, job_ids[row]) if isinstance(row, int) and 0 <= row < len(job_ids) else gr.skip()

    history.select(show_row, history_jobs, replies, **QUIET)
