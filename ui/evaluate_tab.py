"""Evaluate tab: measure forgetting. Evaluate a base and tuned runs in the background, compare them side by side.

Start hands the plan (the base, then each run, with the same suite, limit and seed) to a background
process (core.eval.queue); the UI process never loads a model. The table and both charts are redrawn
when an evaluation ends, when the base or the runs picked change, and on page load.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import gradio as gr

from core.data_paths import ReadableRoots
from core.engines.models import ALIASES
from core.errors import ForgetlessError
from core.eval.plan import EvalPlan
from ui.alerts import markdown_literal
from ui.forms import Form, by_name, run_picker, setting_widget, to_widgets
from ui.job_controls import QUIET, job_controls, start_job
from ui.views.eval_form import plan_form, plan_from_form
from ui.views.evaluate import TABLE_LEGEND, read_eval_views
from ui.views.jobs import IDLE_EVAL as IDLE
from ui.views.jobs import EvalJobs, LazyStore, plan_marker, plan_status_line
from ui.views.mix import domain_choices

INTRO = ("Measure forgetting: score the base model and each tuned run on the general benchmarks (ARC-Easy, "
         "PIQA, HellaSwag, SciQ), the held-out domain test (MedMCQA) and drift (how far a run's next-token "
         "distribution moved from its base on held-out general text). Targets are evaluated one after another "
         "in the background; scored items are kept, so a rerun or a wider suite resumes.")


def _form(workspace: Path) -> tuple[Form, gr.Button]:
    """The EvalPlan widgets by field name, and the ↻ button beside the runs (it lists them again)."""
    form = {"base": setting_widget(gr.Dropdown, EvalPlan, "base", choices=list(ALIASES), allow_custom_value=True,
                                   elem_id="eval-base", info="What the runs are compared with: an alias, or type a "
                                                             "model folder / .gguf path and press Enter.")}
    with gr.Row(equal_height=False):
        form["runs"] = setting_widget(gr.Dropdown, EvalPlan, "runs", choices=[], multiselect=True,
                                      allow_custom_value=True, elem_id="eval-runs", scale=4,
                                      info="Finished training runs of this workspace (or type a run folder and "
                                           "press Enter).")
        refresh = gr.Button("↻ Runs", size="sm", scale=0, min_width=90, elem_id="eval-refresh-runs")
    form["suite"] = setting_widget(gr.CheckboxGroup, EvalPlan, "suite", elem_id="eval-suites")
    with gr.Row(equal_height=False):
        form["domain"] = setting_widget(gr.Dropdown, EvalPlan, "domain", choices=domain_choices(workspace),
                                        allow_custom_value=True, scale=3, elem_id="eval-domain",
                                        info="What the domain suite scores: builtin:medmcqa (its test split), or "
                                             "your file from the Mix tab (type a path and press Enter): its held-out "
                                             "rows. Answer perplexity always; letter accuracy for MedMCQA and for "
                                             "multiple-choice rows.")
        form["domain_test_fraction"] = setting_widget(gr.Number, EvalPlan, "domain_test_fraction", min_width=120,
                                                      elem_id="eval-domain-test-fraction")
    with gr.Row():
        form["limit"] = setting_widget(gr.Number, EvalPlan, "limit", precision=0, elem_id="eval-limit")
        form["seed"] = setting_widget(gr.Number, EvalPlan, "seed", precision=0, elem_id="eval-seed")
        form["batch_size"] = setting_widget(gr.Number, EvalPlan, "batch_size", precision=0, elem_id="eval-batch-size")
        form["dtype"] = setting_widget(gr.Dropdown, EvalPlan, "dtype", elem_id="eval-dtype")
    return form, refresh



def _on_load(jobs: EvalJobs, workspace: Path, form: Form) -> dict[Any, Any]:
    """Fresh run and domain choices, and the newest plan's settings so a reload shows what is running."""
    plan = jobs.config(jobs.newest())
    shown = {} if plan is None else plan_form(plan, form)
    domain = {"value": shown["domain"]} if "domain" in shown else {}
    return {**to_widgets(form, shown), form["runs"]: run_picker(workspace, shown.get("runs")),
            form["domain"]: gr.update(choices=domain_choices(workspace), **domain)}


def _poll(jobs: EvalJobs) -> tuple[Any, ...]:
    """Status line, Start/Cancel state and CLI lines of the newest plan, and its marker."""
    job = jobs.newest()
    current = jobs.current(job)
    active = job is not None and job.active
    command = jobs.command(job)
    return (plan_status_line(job, current), gr.update(interactive=not active), gr.update(interactive=active),
            gr.skip() if command is None else gr.update(value=command, visible=True), plan_marker(job, current))


def _views(store: LazyStore, base: str | None, runs: list[str] | None) -> tuple[Any, ...]:
    try:
        views = read_eval_views(store.get(), base, runs)
    except ForgetlessError as error:  # e.g. a writer held the file longer than the lock wait
        return gr.skip(), gr.skip(), gr.skip(), f"(store busy: {markdown_literal(error)})"
    return {"headers": views.headers, "data": views.rows}, views.deltas, views.history, views.note


def _confined_plan(roots: ReadableRoots, form: Form, values: dict[Any, Any]) -> Any:
    """The form's plan (``values``: ``{widget: value}``), refused when a model, run or domain path lies outside
    the folders the app reads."""
    plan = roots.confine(plan_from_form, "base", "runs")(by_name(form, values))
    if "domain" in plan.suite:
        roots.check(plan.domain)
    return plan


def build_evaluate_tab(demo: gr.Blocks, workspace: Path, roots: ReadableRoots | None = None) -> None:
    """Render the tab's components inside ``demo`` and wire their events, including the page load. Typed domain
    paths are read only under ``roots`` (by default the workspace)."""
    workspace = Path(workspace)
    roots = roots or ReadableRoots.for_app(workspace)
    store, jobs = LazyStore(workspace), EvalJobs(workspace)
    gr.Markdown(INTRO)
    with gr.Column(elem_classes=["launcher"]):
        form, refresh = _form(workspace)
        controls = job_controls("eval", jobs, "items", IDLE)
    note = gr.Markdown(TABLE_LEGEND, elem_id="eval-note")
    table = gr.Dataframe(value={"headers": ["benchmark"], "data": []}, interactive=False, wrap=True,
                         max_height=560, elem_id="eval-table")
    deltas = gr.Plot(label="Change vs the base", elem_id="eval-deltas")
    history = gr.Plot(label="Trade-off: forgetting vs domain gain, per run", elem_id="eval-history")
    seen = gr.State("")  # the newest plan's marker; a change redraws the views
    timer = gr.Timer(1.0)
    base, runs = form["base"], form["runs"]

    controls.start.click(partial(start_job, jobs, partial(_confined_plan, roots, form)), set(form.values()),
                         controls.message, **QUIET)
    controls.cancel.click(jobs.cancel, None, controls.message, **QUIET)
    refresh.click(partial(run_picker, workspace), None, runs, **QUIET)
    demo.load(partial(_on_load, jobs, workspace, form), None, list(form.values()), **QUIET)

    poll_outputs = [*controls.outputs, seen]
    timer.tick(partial(_poll, jobs), None, poll_outputs, **QUIET)
    demo.load(partial(_poll, jobs), None, poll_outputs, **QUIET)
    view_outputs = [table, deltas, history, note]
    for trigger in (seen.change, base.change, runs.change):
        trigger(partial(_views, store), [base, runs], view_outputs, **QUIET)
