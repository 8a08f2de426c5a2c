"""Explore tab: profile the instructions in the background, then filter them and see what is left.

A filter change runs one ``Store.explore`` (count, one page, the chart data: the store's fast path) and
redraws the count, the table and the charts; paging reads one page. A refused filter (an unsafe SQL
WHERE, min above max) shows its reason and leaves the table as it was. Named selections save the
filters in the store, for the Mix stage and for coming back later. The Coverage section compares how the
profiled instructions spread over clusters, categories and difficulty with a target, redrawn with the views.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import gradio as gr

from core.data_paths import ReadableRoots
from core.engines.models import ALIASES
from core.errors import ForgetlessError
from core.profile.profiling import CATEGORIES, ProfileConfig
from core.screen.judge import JudgeConfig
from core.store import ExploreFilters
from ui.alerts import warn
from ui.forms import Form, setting_widget, to_widgets, wire_form
from ui.job_controls import QUIET, job_controls
from ui.views.coverage import TARGET_CHOICES, coverage_views
from ui.views.explore import (
    ANY_LENGTH,
    COLOUR_BY,
    ORDER_CHOICES,
    PAGE_SIZE,
    SCORE_RANGE,
    SELECTION_HEADERS,
    SLIDER_EDGES,
    STD_LIMIT,
    TABLE_HEADERS,
    category_bars,
    clamp_page,
    cluster_choices,
    count_line,
    difficulty_scatter,
    filters_from_form,
    form_from_filters,
    judge_histogram_figure,
    page_label,
    profile_config,
    profile_form,
    read_clusters,
    selection_names,
    selection_rows,
    semantic_map_figure,
    table_rows,
)
from ui.views.jobs import LazyStore, StageJobs, job_marker

_PROFILE = ProfileConfig()
_MODEL_CHOICES = [*ALIASES, "none"]
_TABLE_WIDTHS = ["19%", "19%", "9%", "8%", "5%", "7%", "5%", "8%", "8%", "6%", "6%"]


def _refusal(error: ForgetlessError) -> str:
    """A filter the store refused: the message line (and a toast) say why."""
    return f"⚠️ Not applied: {warn(error)}"


def _refused(error: ForgetlessError, width: int) -> tuple[Any, ...]:
    """A refused filter's message, every other output left as it was."""
    return (_refusal(error), *(gr.skip(),) * width)


def apply_filters(store: LazyStore, order: str, colour_by: str, **form: Any) -> tuple[Any, ...]:
    """A filter change (``form``: the filter widgets' values by field name): one explore() call, then the
    message, count, page 1 and every chart."""
    try:
        filters = filters_from_form(form)
        result = store.get().explore(filters, 1, PAGE_SIZE, order)
    except ForgetlessError as error:
        return _refused(error, 10)
    charts, rows = result.charts, {"headers": TABLE_HEADERS, "data": table_rows(result.page)}
    return ("", count_line(result.count, filters), result.count, rows, 1, page_label(1, result.count),
            judge_histogram_figure(charts["judge_histogram"]), difficulty_scatter(charts["difficulty_consensus"]),
            semantic_map_figure(charts["semantic_map"], colour_by), category_bars(charts["categories"]),
            charts["semantic_map"])


def show_page(store: LazyStore, delta: int | None, count: int, page: float | None, order: str,
              **form: Any) -> tuple[Any, ...]:
    """Paging (``delta`` pages on) or a new order (``delta`` None: back to page 1): one page of the filters."""
    target = clamp_page(1 if delta is None else (page or 1) + delta, count or 0)
    try:
        rows = store.get().explore_page(filters_from_form(form), target, PAGE_SIZE, order)
    except ForgetlessError as error:
        return _refused(error, 3)
    return "", {"headers": TABLE_HEADERS, "data": table_rows(rows)}, target, page_label(target, count or 0)


def recolour(points: Any, colour_by: str) -> Any:
    return semantic_map_figure(points, colour_by) if points is not None else gr.skip()


def _selections(store: LazyStore, **choice: Any) -> tuple[Any, Any]:
    """The saved-selections table and the names in the Saved dropdown (``choice``: its value too)."""
    listed = store.get().list_selections()
    return ({"headers": SELECTION_HEADERS, "data": selection_rows(listed)},
            gr.update(choices=selection_names(listed), **choice))


def save_selection(store: LazyStore, name: str, **form: Any) -> tuple[Any, ...]:
    try:
        store.get().save_selection(name, filters_from_form(form))
    except ForgetlessError as error:
        return _refused(error, 2)
    return (f"Saved selection “{name.strip()}”.", *_selections(store))


def load_selection(store: LazyStore, message: gr.Markdown, form: Form, name: str | None) -> dict[Any, Any]:
    """The saved filters back into the filter widgets (the apply chained after redraws everything)."""
    try:
        filters = store.get().load_selection(name or "")
    except ForgetlessError as error:
        return {message: _refusal(error)}  # the widgets keep their values
    return {message: f"Loaded selection “{name}”.", **to_widgets(form, form_from_filters(filters))}


def delete_selection(store: LazyStore, name: str | None) -> tuple[Any, ...]:
    if not name:
        return "Pick a saved selection to delete.", gr.skip(), gr.skip()
    found = store.get().delete_selection(name)
    return ((f"Deleted selection “{name}”." if found else f"No selection named “{name}”."),
            *_selections(store, value=None))


def reload_data(store: LazyStore) -> tuple[Any, ...]:
    """New explore rows (a judge or profile job ended, or the page loaded): cluster choices and selections."""
    try:
        return (gr.update(choices=cluster_choices(read_clusters(store.get()))), *_selections(store))
    except ForgetlessError:  # a writer held the file past the lock wait: the next job change retries
        return gr.skip(), gr.skip(), gr.skip()


def show_coverage(store: LazyStore, target: str) -> tuple[Any, ...]:
    """The Coverage section for ``target``: its summary and the cluster, category and difficulty charts."""
    try:
        return coverage_views(store.get(), target)
    except ForgetlessError as error:  # the store could not be opened: the charts stay as they were
        return (_refusal(error), gr.skip(), gr.skip(), gr.skip())


def _coverage_section() -> tuple[gr.Radio, gr.Button, list[Any]]:
    """The Coverage section's target, refresh button and outputs (summary, cluster, category, difficulty)."""
    with gr.Accordion("Coverage", open=True, elem_id="exp-coverage"):
        with gr.Row(equal_height=True):
            target = gr.Radio(TARGET_CHOICES, value=TARGET_CHOICES[0][1], label="Target", scale=3,
                              info="ShareGPT: its first user turns embedded like the profile (the first time "
                                   "takes a while; cached after)", elem_id="exp-coverage-target")
            refresh = gr.Button("Refresh coverage", scale=1, min_width=120, elem_id="exp-coverage-refresh")
        summary = gr.Markdown("", elem_id="exp-coverage-summary")
        with gr.Row(equal_height=True):
            charts = [gr.Plot(show_label=False, elem_id=f"exp-coverage-{name}")
                      for name in ("cluster", "category", "difficulty")]
    return target, refresh, [summary, *charts]


def _profile_form() -> Form:
    with gr.Accordion("Profile settings", open=False, elem_id="exp-profile-settings"):
        with gr.Row():
            models = {name: setting_widget(gr.Dropdown, ProfileConfig, name, choices=_MODEL_CHOICES,
                                           allow_custom_value=True, elem_id=elem_id)
                      for name, elem_id in (("difficulty_judge", "exp-difficulty-judge"),
                                            ("category_model", "exp-category-model"),
                                            ("target_model", "exp-target-model"))}
        with gr.Row():
            clusters = setting_widget(gr.Textbox, ProfileConfig, "clusters", value=str(_PROFILE.clusters),
                                      elem_id="exp-k")
            dedup = setting_widget(gr.Slider, ProfileConfig, "dedup_threshold", elem_id="exp-dedup")
            projection = setting_widget(gr.Radio, ProfileConfig, "projection", elem_id="exp-projection")
            batch_size = setting_widget(gr.Number, ProfileConfig, "batch_size", precision=0,
                                        elem_id="exp-profile-batch-size")
    return {**models, "clusters": clusters, "dedup_threshold": dedup, "projection": projection,
            "batch_size": batch_size}


def _wire_filters(form: Form, apply: dict[str, Any]) -> None:
    """Apply on every committed change: a slider let go (or its box left), a pick, Enter in a box."""
    for name in SLIDER_EDGES:
        form[name].release(**apply)
    for name in ("clusters", "categories", "hide_duplicates"):
        form[name].input(**apply)
    for name in ANY_LENGTH:
        form[name].submit(**apply)
        form[name].blur(**apply)
    for name in ("search", "where"):
        form[name].submit(**apply)


def _filter_form() -> Form:
    """The filter widgets by ExploreFilters field; a slider's end and a token box's 0 set no bound."""
    low, high = SCORE_RANGE

    def slider(name: str, value: float, **bounds: Any) -> gr.Slider:
        return setting_widget(gr.Slider, ExploreFilters, name, value=value, **bounds,
                              elem_id="exp-" + name.replace("_", "-"))

    def tokens(name: str) -> gr.Number:
        return setting_widget(gr.Number, ExploreFilters, name, value=0, precision=0, info="0: any", min_width=100,
                              elem_id="exp-" + name.replace("_", "-"))

    form: Form = {}
    with gr.Row():
        form |= {"consensus_min": slider("consensus_min", low, minimum=low, maximum=high),
                 "consensus_max": slider("consensus_max", high, minimum=low, maximum=high)}
    form["max_std"] = slider("max_std", STD_LIMIT, info="At the right end: no limit.")
    with gr.Row():
        form |= {"difficulty_min": slider("difficulty_min", low, minimum=low, maximum=high),
                 "difficulty_max": slider("difficulty_max", high, minimum=low, maximum=high)}
    # Picked, not typed: no info line (their help describes the CLI's comma list).
    form["clusters"] = setting_widget(gr.Dropdown, ExploreFilters, "clusters", choices=[], multiselect=True,
                                      info=None, elem_id="exp-clusters")
    form["categories"] = setting_widget(gr.Dropdown, ExploreFilters, "categories", choices=list(CATEGORIES),
                                        multiselect=True, info=None, elem_id="exp-categories")
    with gr.Row():
        form |= {name: tokens(name) for name in ANY_LENGTH}
    form["hide_duplicates"] = setting_widget(gr.Checkbox, ExploreFilters, "hide_duplicates", elem_id="exp-hide-dups")
    form["search"] = setting_widget(gr.Textbox, ExploreFilters, "search", value="",
                                    placeholder="substring; Enter to apply", elem_id="exp-search")
    form["where"] = setting_widget(gr.Textbox, ExploreFilters, "where", value="", elem_id="exp-where",
                                   placeholder="e.g. margin > 0.5 AND response_model = 'gemma-3-270m'")
    return form


def build_explore_tab(demo: gr.Blocks, workspace: Path, roots: ReadableRoots | None = None) -> None:
    """Render the tab's components inside ``demo`` and wire their events, including the page load. Typed model
    paths are read only under ``roots`` (by default the workspace)."""
    workspace = Path(workspace)
    roots = roots or ReadableRoots.for_app(workspace)
    store = LazyStore(workspace)
    judges = StageJobs(workspace, "judge", JudgeConfig)
    gr.Markdown("Profile the instructions (difficulty, IFD, task category, topic clusters, a 2-D map, "
                "near-duplicates), then narrow them down: the count, the table and the charts follow every filter. "
                "Save a filter setting under a name to mix exactly that selection later.")
    profile_inputs = _profile_form()
    profile = job_controls("exp-profile", StageJobs(workspace, "profile", ProfileConfig), "steps",
                           "No profile job yet: press Start to profile the stored instructions.")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=300, elem_id="exp-filters"):
            filters = _filter_form()
            with gr.Row():
                apply = gr.Button("Apply filters", variant="primary", elem_id="exp-apply")
                reset = gr.Button("Reset", elem_id="exp-reset")
            gr.Markdown("#### Saved selections")
            with gr.Row():
                selection_name = gr.Textbox(label="Name", scale=3, elem_id="exp-selection-name")
                save = gr.Button("Save selection", scale=1, min_width=90, elem_id="exp-save")
            with gr.Row():
                saved = gr.Dropdown([], value=None, label="Saved", scale=3, elem_id="exp-saved")
                load = gr.Button("Load", scale=1, min_width=60, elem_id="exp-load")
                delete = gr.Button("Delete", scale=1, min_width=60, variant="stop", elem_id="exp-delete")
            selections = gr.Dataframe(value={"headers": SELECTION_HEADERS, "data": []}, interactive=False, wrap=True,
                                      max_height=260, column_widths=["35%", "65%"], elem_id="exp-selections")
        with gr.Column(scale=3, min_width=480):
            count = gr.Markdown("Reading…", elem_id="exp-count", elem_classes=["status-line"])
            message = gr.Markdown("", elem_id="exp-message")
            with gr.Row(equal_height=True):
                histogram = gr.Plot(show_label=False, elem_id="exp-judge-histogram")
                scatter = gr.Plot(show_label=False, elem_id="exp-scatter")
            with gr.Row(equal_height=True):
                with gr.Column(min_width=300):
                    semantic_map = gr.Plot(show_label=False, elem_id="exp-map")
                    colour_by = gr.Radio(list(COLOUR_BY), value="cluster", label="Colour the map by",
                                         elem_id="exp-colour-by")
                categories_chart = gr.Plot(show_label=False, elem_id="exp-categories-chart")
            with gr.Row(equal_height=False, elem_id="exp-table-controls"):
                order = gr.Dropdown(ORDER_CHOICES, value=ORDER_CHOICES[0][1], label="Sort by", scale=3,
                                    elem_id="exp-order")
                page = gr.Number(value=1, precision=0, label="Page", scale=1, min_width=90, elem_id="exp-page")
                prev_page = gr.Button("◀ Prev", scale=0, min_width=90, elem_id="exp-prev")
                next_page = gr.Button("Next ▶", scale=0, min_width=90, elem_id="exp-next")
            page_info = gr.Markdown("", elem_id="exp-page-info")
            table = gr.Dataframe(value={"headers": TABLE_HEADERS, "data": []}, interactive=False, wrap=True,
                                 max_height=640, column_widths=_TABLE_WIDTHS, elem_id="exp-table")
    coverage_target, coverage_refresh, coverage_outputs = _coverage_section()
    match_count = gr.State(0)
    map_points = gr.State(None)  # the last map sample, so recolouring needs no query
    seen = gr.State("")  # profile and judge jobs' markers: a change means new explore rows
    timer = gr.Timer(1.0)

    wire_form(demo, profile, profile_inputs,
              roots.confine(profile_config, "difficulty_judge", "category_model", "target_model", "embedder"),
              partial(profile_form, names=list(profile_inputs)))

    def poll() -> tuple[Any, ...]:
        values, marker = profile.poll()
        return (*values, f"{marker}||{job_marker(judges.newest())}")

    poll_outputs = [*profile.outputs, seen]
    timer.tick(poll, None, poll_outputs, **QUIET)
    demo.load(poll, None, poll_outputs, **QUIET)

    filter_inputs = list(filters.values())
    apply_outputs = [message, count, match_count, table, page, page_info, histogram, scatter, semantic_map,
                     categories_chart, map_points]
    apply_event = {"fn": partial(apply_filters, store), "inputs": [order, colour_by], "inputs_kwargs": filters,
                   "outputs": apply_outputs, **QUIET}
    _wire_filters(filters, apply_event)
    apply.click(**apply_event)
    reset.click(lambda: to_widgets(filters, form_from_filters(ExploreFilters())), None, filter_inputs,
                **QUIET).then(**apply_event)
    coverage_event = {"fn": partial(show_coverage, store), "inputs": [coverage_target], "outputs": coverage_outputs}
    seen.change(partial(reload_data, store), None, [filters["clusters"], selections, saved], **QUIET).then(
        **apply_event).then(**coverage_event, **QUIET)
    coverage_target.input(**coverage_event)  # a spinner here: the first reference report embeds its texts
    coverage_refresh.click(**coverage_event)
    colour_by.input(recolour, [map_points, colour_by], semantic_map, **QUIET)

    page_inputs = {"inputs": [match_count, page, order], "inputs_kwargs": filters}
    page_outputs = [message, table, page, page_info]
    page.submit(partial(show_page, store, 0), **page_inputs, outputs=page_outputs, **QUIET)
    order.input(partial(show_page, store, None), **page_inputs, outputs=page_outputs, **QUIET)
    prev_page.click(partial(show_page, store, -1), **page_inputs, outputs=page_outputs, **QUIET)
    next_page.click(partial(show_page, store, +1), **page_inputs, outputs=page_outputs, **QUIET)

    save.click(partial(save_selection, store), [selection_name], [message, selections, saved], inputs_kwargs=filters,
               **QUIET)
    load.click(partial(load_selection, store, message, filters), saved, [message, *filter_inputs],
               **QUIET).then(**apply_event)
    delete.click(partial(delete_selection, store), saved, [message, selections, saved], **QUIET)
