"""Evaluate tab: measure forgetting. Evaluate a base and tuned runs in the background, compare them side by side.

Start hands the plan (the base, then each run, with the same suite, limit and seed) to a background
process (core.eval_queue); the UI process never loads a model. The table and both charts are redrawn
when an evaluation ends, when the base or the runs picked change, and on page load.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import gradio as gr

from core.dashboard import LazyStore
from core.data_paths import ReadableRoots
from core.errors import ForgetlessError
from core.eval_form import UI_SUITES, EvalPlan, plan_form, plan_from_form, run_choices
from core.eval_queue import IDLE, EvalJobs, plan_marker, plan_status_line
from core.eval_views import TABLE_LEGEND, read_eval_views
from core.mix_views import TEST_FRACTION_MAX, TEST_FRACTION_STEP, domain_choices
from core.models import ALIASES
from ui.alerts import markdown_literal, warn
from ui.job_controls import QUIET, job_controls, start_job

_PLAN = EvalPlan()
INTRO = ("Measure forgetting: score the base model and each tuned run on the general benchmarks (ARC-Easy, "
         "PIQA, HellaSwag, SciQ), the held-out domain test (MedMCQA) and drift (how far a run's next-token "
         "distribution moved from its base on held-out general text). Targets are evaluated one after another "
         "in the background; scored items are kept, so a rerun or a wider suite resumes.")


def _form(workspace: Path) -> list[Any]:
    base = gr.Dropdown(choices=list(ALIASES), value=_PLAN.base, allow_custom_value=True, label="Base model",
                       elem_id="eval-base", info="What the runs are compared with: an alias, or type a model "
                                                 "folder / .gguf path and press Enter.")
    with gr.Row(equal_height=False):
        runs = gr.Dropdown(choices=[], value=[], multiselect=True, allow_custom_value=True, label="Tuned runs",
                           elem_id="eval-runs", scale=4,
                           info="Finished training runs of this workspace (or type a run folder and press Enter).")
        refresh = gr.Button("↻ Runs", size="sm", scale=0, min_width=90, elem_id="eval-refresh-runs")
    suites = gr.CheckboxGroup(list(UI_SUITES), value=list(_PLAN.suite), label="Suites", elem_id="eval-suites",
                              info="general: 4 benchmarks · domain: MedMCQA test (or your held-out rows) · "
                                   "drift: KL and perplexity vs the run's base (runs only) · ifeval: 541 "
                                   "instruction prompts answered and rule-checked (slow: set a limit).")
    with gr.Row(equal_height=False):
        domain = gr.Dropdown(domain_choices(workspace), value=_PLAN.domain, allow_custom_value=True, scale=3,
                             label="Domain data", elem_id="eval-domain",
                             info="What the domain suite scores: builtin:medmcqa (its test split), or your file "
                                  "from the Mix tab (type a path and press Enter): its held-out rows (perplexity; "
                                  "letter accuracy too when they are multiple choice).")
        test_fraction = gr.Number(value=_PLAN.domain_test_fraction, minimum=0, maximum=TEST_FRACTION_MAX,
                                  step=TEST_FRACTION_STEP, label="Held-out share", min_width=120,
                                  elem_id="eval-domain-test-fraction",
                                  info="Your file only: the share held out when mixing. Ignored for MedMCQA.")
    with gr.Row():
        limit = gr.Number(value=_PLAN.limit, precision=0, label="Items per task", elem_id="eval-limit",
                          info="A seeded subsample; empty: every item.")
        seed = gr.Number(value=_PLAN.seed, precision=0, label="Seed", elem_id="eval-seed")
        batch_size = gr.Number(value=_PLAN.batch_size, precision=0, label="Batch size", elem_id="eval-batch-size")
    return [base, runs, suites, limit, seed, batch_size, domain, test_fraction, refresh]


def _run_picker(workspace: Path, value: Any = None) -> Any:
    """The runs dropdown with fresh choices (and, when given, a value to show)."""
    try:
        choices = run_choices(workspace)
    except (ForgetlessError, OSError) as error:  # e.g. a run folder removed while listing
        warn(f"Could not list the runs: {error}")
        return gr.skip()
    return gr.update(choices=choices) if value is None else gr.update(choices=choices, value=value)


def _on_load(jobs: EvalJobs, workspace: Path) -> tuple[Any, ...]:
    """Fresh run and domain choices, and the newest plan's settings so a reload shows what is running."""
    plan = jobs.config(jobs.newest())
    if plan is None:
        return (gr.skip(), _run_picker(workspace), *(gr.skip(),) * 4, gr.update(choices=domain_choices(workspace)),
                gr.skip())
    base, runs, suites, limit, seed, batch_size, domain, test_fraction = plan_form(plan)
    return (base, _run_picker(workspace, runs), suites, limit, seed, batch_size,
            gr.update(choices=domain_choices(workspace), value=domain), test_fraction)


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


def _confined_plan(roots: ReadableRoots, *form: Any) -> Any:
    """The form's plan, refused when a model, run or domain path lies outside the folders the app reads."""
    plan = roots.confine(plan_from_form, "base", "runs")(*form)
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
        *form, refresh = _form(workspace)
        controls = job_controls("eval", jobs, "items", IDLE)
    note = gr.Markdown(TABLE_LEGEND, elem_id="eval-note")
    table = gr.Dataframe(value={"headers": ["benchmark"], "data": []}, interactive=False, wrap=True,
                         max_height=560, elem_id="eval-table")
    deltas = gr.Plot(label="Change vs the base", elem_id="eval-deltas")
    history = gr.Plot(label="Runs by mix ratio", elem_id="eval-history")
    seen = gr.State("")  # the newest plan's marker; a change redraws the views
    timer = gr.Timer(1.0)
    base, runs = form[0], form[1]

    controls.start.click(partial(start_job, jobs, partial(_confined_plan, roots)), form, controls.message, **QUIET)
    controls.cancel.click(jobs.cancel, None, controls.message, **QUIET)
    refresh.click(partial(_run_picker, workspace), None, runs, **QUIET)
    demo.load(partial(_on_load, jobs, workspace), None, form, **QUIET)

    poll_outputs = [*controls.outputs, seen]
    timer.tick(partial(_poll, jobs), None, poll_outputs, **QUIET)
    demo.load(partial(_poll, jobs), None, poll_outputs, **QUIET)
    view_outputs = [table, deltas, history, note]
    for trigger in (seen.change, base.change, runs.change):
        trigger(partial(_views, store), [base, runs], view_outputs, **QUIET)
