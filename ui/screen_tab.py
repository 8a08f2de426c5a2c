"""Screen tab: launch the response and judge jobs, follow them, and audit what the judges decided.

Both jobs run in the background (the UI process never loads a model). Below the launchers: every judge's
score of a sample of responses, each instruction's responses side by side with their scores, the
responses the judges disagree on most, and how well the judges agree. Those views are redrawn when a
job starts or ends, and on page load.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import gradio as gr

from core.data_paths import ReadableRoots
from core.engines.models import ALIASES
from core.errors import ForgetlessError
from core.screen.check_pairs import DEGRADATIONS
from core.screen.judge import METHODS, JudgeConfig
from core.screen.judge_check import JudgeCheckConfig
from core.screen.respond import RespondConfig
from core.screen.signals import SIGNAL_EXAMPLES
from ui.alerts import markdown_literal, warn
from ui.forms import Form, setting_widget, wire_form
from ui.job_controls import QUIET, job_controls
from ui.views.jobs import LazyStore, StageJobs
from ui.views.judge_check import judge_check_config, read_judge_check_view
from ui.views.screen import (
    DISPUTED_HEADERS,
    ConsensusTable,
    judge_config,
    read_consensus_page,
    read_screen_views,
    respond_config,
)


# -- the tab -----------------------------------------------------------------------------------------------
def _responses_form() -> Form:
    models = setting_widget(gr.Dropdown, RespondConfig, "models", choices=list(ALIASES), multiselect=True,
                            allow_custom_value=True, elem_id="scr-models",
                            info="Aliases, or type a local model folder / .gguf path and press Enter.")
    with gr.Row():
        k = setting_widget(gr.Number, RespondConfig, "k", precision=0, elem_id="scr-k")
        max_new_tokens = setting_widget(gr.Number, RespondConfig, "max_new_tokens", precision=0,
                                        elem_id="scr-max-new-tokens")
    with gr.Row():
        temperature = setting_widget(gr.Slider, RespondConfig, "temperature", elem_id="scr-temperature")
        top_p = setting_widget(gr.Slider, RespondConfig, "top_p", elem_id="scr-top-p")
    with gr.Row():
        batch_size = setting_widget(gr.Number, RespondConfig, "batch_size", precision=0, elem_id="scr-batch-size")
        seed = setting_widget(gr.Number, RespondConfig, "seed", precision=0, elem_id="scr-seed")
    return {"models": models, "k": k, "temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens,
            "batch_size": batch_size, "seed": seed}


def _judges_form() -> Form:
    judges = setting_widget(gr.Dropdown, JudgeConfig, "judges", choices=[*ALIASES, *SIGNAL_EXAMPLES], multiselect=True,
                            allow_custom_value=True, elem_id="scr-judges",
                            info="Each scores every response 1-5; their consensus picks the kept response.")
    with gr.Row():
        method = setting_widget(gr.Radio, JudgeConfig, "method", elem_id="scr-method")
        weighting = setting_widget(gr.Radio, JudgeConfig, "weighting", elem_id="scr-weighting")
    with gr.Row():
        exclude_self = setting_widget(gr.Checkbox, JudgeConfig, "exclude_self", elem_id="scr-exclude-self")
        retry_failed = setting_widget(gr.Checkbox, JudgeConfig, "retry_failed", elem_id="scr-retry-failed")
    batch_size = setting_widget(gr.Number, JudgeConfig, "batch_size", precision=0, elem_id="scr-judge-batch-size")
    return {"judges": judges, "method": method, "weighting": weighting, "exclude_self": exclude_self,
            "retry_failed": retry_failed, "batch_size": batch_size}


def _check_form() -> Form:
    judges = setting_widget(gr.Dropdown, JudgeCheckConfig, "judges", choices=[*ALIASES, *SIGNAL_EXAMPLES],
                            multiselect=True, allow_custom_value=True, elem_id="scr-check-judges",
                            info="Model judges and signals (SIGNAL:MODEL), as in the Judges form.")
    methods = setting_widget(gr.CheckboxGroup, JudgeCheckConfig, "methods", choices=list(METHODS),
                             elem_id="scr-check-methods")
    kinds = setting_widget(gr.CheckboxGroup, JudgeCheckConfig, "kinds", choices=list(DEGRADATIONS),
                           elem_id="scr-check-kinds")
    with gr.Row():
        pairs = setting_widget(gr.Number, JudgeCheckConfig, "pairs_per_kind", precision=0,
                               elem_id="scr-check-pairs")
        source = setting_widget(gr.Radio, JudgeCheckConfig, "source", elem_id="scr-check-source")
    return {"judges": judges, "methods": methods, "kinds": kinds, "pairs_per_kind": pairs, "source": source}


def _consensus_value(table: ConsensusTable) -> Any:
    return gr.update(value={"headers": table.headers, "data": table.rows}, column_widths=table.column_widths)


def _view_values(store: LazyStore, page: float | None) -> tuple[Any, ...]:
    try:
        views = read_screen_views(store.get(), page)
    except ForgetlessError as error:  # e.g. a writer held the file longer than the lock wait
        return (gr.skip(),) * 6 + (f"(store busy: {markdown_literal(error)})",)
    table = _consensus_value(views.consensus)
    return (views.heatmap, table, views.page, views.page_label, {"headers": DISPUTED_HEADERS, "data": views.disputed},
            views.agreement, "")


def _check_values(store: LazyStore) -> tuple[Any, ...]:
    try:
        view = read_judge_check_view(store.get())
    except ForgetlessError as error:
        return gr.skip(), gr.skip(), f"(store busy: {markdown_literal(error)})"
    return {"headers": view.headers, "data": view.rows}, view.figure, view.note


def _consensus_page(store: LazyStore, delta: int, page: float | None) -> tuple[Any, ...]:
    try:
        table, current, label = read_consensus_page(store.get(), (page or 1) + delta)
    except ForgetlessError as error:
        warn(error)
        return gr.skip(), gr.skip(), gr.skip()
    return _consensus_value(table), current, label


def build_screen_tab(demo: gr.Blocks, workspace: Path, roots: ReadableRoots | None = None) -> None:
    """Render the tab's components inside ``demo`` and wire their events, including the page load. Typed model
    paths are read only under ``roots`` (by default the workspace)."""
    workspace = Path(workspace)
    roots = roots or ReadableRoots.for_app(workspace)
    store = LazyStore(workspace)
    gr.Markdown("Answer every reconstructed instruction with several models (K samples each), then have "
                "several judge models score every response 1–5. The consensus of the judges keeps the best "
                "response per instruction; below, see where they agree and where they do not.")
    with gr.Row(equal_height=False):
        with gr.Column(min_width=360, elem_classes=["launcher"]):
            gr.Markdown("### Responses")
            respond_form = _responses_form()
            respond = job_controls("scr-respond", StageJobs(workspace, "respond", RespondConfig), "responses",
                                   "No response job yet: pick models and press Start.")
        with gr.Column(min_width=360, elem_classes=["launcher"]):
            gr.Markdown("### Judges")
            judge_form = _judges_form()
            judge = job_controls("scr-judge", StageJobs(workspace, "judge", JudgeConfig), "scores",
                                 "No judge job yet: pick judges and press Start.")
    views_note = gr.Markdown("", elem_id="scr-views-note")
    heatmap = gr.Plot(label="Scores per judge", elem_id="scr-heatmap")
    gr.Markdown("### Responses side by side")
    with gr.Row(elem_id="scr-table-controls"):
        page_info = gr.Markdown("", elem_id="scr-page-info")
        page = gr.Number(value=1, precision=0, label="Page", scale=0, min_width=100, elem_id="scr-page")
        prev_page = gr.Button("◀ Prev", scale=0, min_width=100, elem_id="scr-prev")
        next_page = gr.Button("Next ▶", scale=0, min_width=100, elem_id="scr-next")
    consensus = gr.Dataframe(value={"headers": ["instruction"], "data": []}, datatype="markdown", interactive=False,
                             wrap=True, max_height=720, elem_id="scr-consensus-table")
    gr.Markdown("### Most disputed responses (highest spread between judges)")
    disputed = gr.Dataframe(value={"headers": DISPUTED_HEADERS, "data": []}, interactive=False, wrap=True,
                            max_height=480, column_widths=["26%", "12%", "34%", "6%", "6%", "5%", "5%", "6%"],
                            elem_id="scr-disputed")
    agreement = gr.Plot(label="Judge agreement", elem_id="scr-agreement")
    gr.Markdown("### Judge check: do the judges order answers whose order is known?")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=360, elem_classes=["launcher"]):
            gr.Markdown("Each judge scores GPT-4 reference answers and worse copies of them (another question's "
                        "answer, cut to 15%, sentences shuffled); accuracy = how often the reference wins.")
            check_form = _check_form()
            check = job_controls("scr-check", StageJobs(workspace, "judge-check", JudgeCheckConfig), "scores",
                                 "No judge check yet: pick judges and press Start.")
        with gr.Column(scale=2):
            check_note = gr.Markdown("", elem_id="scr-check-note")
            check_chart = gr.Plot(label="Judge check", elem_id="scr-check-chart")
    check_table = gr.Dataframe(value={"headers": ["judge/method"], "data": []}, datatype="markdown",
                               interactive=False, wrap=True, elem_id="scr-check-table")
    seen = gr.State("")  # both jobs' markers; a change redraws the views
    timer = gr.Timer(1.0)

    wire_form(demo, respond, respond_form, roots.confine(respond_config, "models"))
    wire_form(demo, judge, judge_form, roots.confine(judge_config, "judges"))
    wire_form(demo, check, check_form, roots.confine(judge_check_config, "judges"))

    def poll() -> tuple[Any, ...]:
        values, markers = [], []
        for controls in (respond, judge, check):
            shown, marker = controls.poll()
            values += shown
            markers.append(marker)
        return (*values, "||".join(markers))

    poll_outputs = [*respond.outputs, *judge.outputs, *check.outputs, seen]
    timer.tick(poll, None, poll_outputs, **QUIET)
    demo.load(poll, None, poll_outputs, **QUIET)
    view_outputs = [heatmap, consensus, page, page_info, disputed, agreement, views_note]
    seen.change(partial(_view_values, store), page, view_outputs, **QUIET)
    seen.change(partial(_check_values, store), None, [check_table, check_chart, check_note], **QUIET)

    page_outputs = [consensus, page, page_info]
    page.submit(partial(_consensus_page, store, 0), page, page_outputs, **QUIET)
    prev_page.click(partial(_consensus_page, store, -1), page, page_outputs, **QUIET)
    next_page.click(partial(_consensus_page, store, +1), page, page_outputs, **QUIET)
