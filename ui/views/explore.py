"""What the Explore tab shows, computed without Gradio: filters from widget values and back, the count
line, table rows, saved-selection rows and the Plotly charts of one ``Store.explore`` result.

All pure functions of plain values and DataFrames, unit-tested without a browser, except the two
``read_*`` functions, which read the store.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from core.errors import ForgetlessError
from core.jobs import new_job_id
from core.profile.profiling import ProfileConfig
from core.settings import config_from_form, form_values, setting_of
from core.store import ExploreFilters, Store
from ui.views.formatting import page_count
from ui.views.screen import SCORE_COLOURS, empty_figure, short_model, shorten

PAGE_SIZE = 20
SCORE_RANGE = (1.0, 5.0)  # consensus and difficulty sliders; a slider at its end sets no bound
STD_LIMIT = setting_of(ExploreFilters, "max_std").maximum  # the max-std slider's top: no bound
ORDER_CHOICES = [("consensus, high first", "consensus DESC"), ("consensus, low first", "consensus ASC"),
                 ("judge spread, high first", "std DESC"), ("difficulty, high first", "difficulty DESC"),
                 ("IFD, high first", "ifd DESC"), ("length, long first", "n_tokens DESC"),
                 ("margin to runner-up", "margin DESC"), ("newest first", "created_at DESC")]
TABLE_HEADERS = ["instruction", "best response", "model", "consensus", "std", "difficulty", "IFD", "category",
                 "cluster", "tokens", "dup"]
SELECTION_HEADERS = ["name", "filters"]
COLOUR_BY = ("cluster", "score")
CHART_HEIGHT = 340
_PALETTE = ["#4f6bed", "#e4572e", "#17bebb", "#ffc914", "#76b041", "#8e44ad", "#f28482", "#2e86ab", "#a23b72",
            "#3d5a80", "#ee964b", "#6a994e", "#bc4749", "#5e548e", "#0081a7", "#c9a227", "#52b788", "#9d4edd",
            "#e76f51", "#264653"]


# -- filters <-> widgets ---------------------------------------------------------------------------------
SLIDER_EDGES = {"consensus_min": SCORE_RANGE[0], "consensus_max": SCORE_RANGE[1], "max_std": STD_LIMIT,
                "difficulty_min": SCORE_RANGE[0], "difficulty_max": SCORE_RANGE[1]}  # a filter slider's no-bound end
ANY_LENGTH = ("length_min", "length_max")  # token-count boxes: 0 means any (a number box cannot stay empty)


def _bound(value: float | None, edge: float) -> float | None:
    """A slider at its end means no bound: rows without a value (not judged, not profiled) still pass."""
    if value is None or math.isclose(float(value), edge):
        return None
    return float(value)


def filters_from_form(values: Mapping[str, Any]) -> ExploreFilters:
    """The filter widgets' values, by field name, as ExploreFilters (ForgetlessError for a bad value or an
    unsafe WHERE). A slider at its end or a token box at 0 sets no bound; a cleared multiselect picks nothing."""
    form = dict(values)
    for name in form.keys() & SLIDER_EDGES.keys():
        form[name] = _bound(form[name], SLIDER_EDGES[name])
    for name in form.keys() & set(ANY_LENGTH):
        form[name] = form[name] or None
    for name in form.keys() & {"clusters", "categories"}:
        form[name] = form[name] or ()
    return config_from_form(ExploreFilters, form)


def form_from_filters(filters: ExploreFilters) -> dict[str, Any]:
    """Saved filters back into the filter widgets, by field name (an unset bound: the slider's end, a 0 box)."""
    form = form_values(filters, [field.name for field in dataclasses.fields(ExploreFilters)])
    for name, edge in SLIDER_EDGES.items():
        form[name] = edge if form[name] is None else form[name]
    for name in ANY_LENGTH:
        form[name] = form[name] or 0
    return {**form, "search": filters.search or "", "where": filters.where or ""}


def describe_filters(filters: ExploreFilters) -> str:
    """A short human summary: ``consensus ≥ 3 · categories coding · search “python”``."""
    parts = []
    for label, low, high in (("consensus", filters.consensus_min, filters.consensus_max),
                             ("difficulty", filters.difficulty_min, filters.difficulty_max),
                             ("tokens", filters.length_min, filters.length_max)):
        if low is not None and high is not None:
            parts.append(f"{low:g} ≤ {label} ≤ {high:g}")
        elif low is not None:
            parts.append(f"{label} ≥ {low:g}")
        elif high is not None:
            parts.append(f"{label} ≤ {high:g}")
    if filters.max_std is not None:
        parts.append(f"std ≤ {filters.max_std:g}")
    if filters.clusters:
        parts.append("clusters " + ", ".join(str(c) for c in filters.clusters))
    if filters.categories:
        parts.append("categories " + ", ".join(filters.categories))
    if filters.hide_duplicates:
        parts.append("no near-duplicates")
    if filters.search:
        parts.append(f"search “{filters.search}”")
    if filters.where:
        parts.append(f"WHERE {filters.where}")
    return " · ".join(parts) or "everything"


def profile_config(values: Mapping[str, Any]) -> ProfileConfig:
    """The Profile form (values by field name) as a ProfileConfig with a fresh job id (ForgetlessError on a
    bad value); an empty clusters box means auto."""
    form = {**values, "job_id": new_job_id("profile")}
    if "clusters" in form:
        form["clusters"] = str(form["clusters"] or "auto")
    return config_from_form(ProfileConfig, form)


def profile_form(config: ProfileConfig, names: Iterable[str]) -> dict[str, Any]:
    """A job's settings back into the Profile form's ``names``: a skipped model as "none", clusters as text."""
    form = form_values(config, names)
    for name in form.keys() & {"difficulty_judge", "category_model", "target_model"}:
        form[name] = form[name] or "none"
    if "clusters" in form:
        form["clusters"] = str(form["clusters"])
    return form


# -- lines and rows --------------------------------------------------------------------------------------
def count_line(count: int, filters: ExploreFilters) -> str:
    """``**12** instructions match · consensus ≥ 3``; an empty store says what fills it."""
    if count == 0 and filters.is_empty():
        return "**0** instructions to explore yet: judge the responses (Screen tab) or profile the instructions."
    noun = "instruction" if count == 1 else "instructions"
    return f"**{count:,}** {noun} match · {describe_filters(filters)}"


def page_label(page: int, count: int, page_size: int = PAGE_SIZE) -> str:
    return f"page {page} of {page_count(count, page_size)}"


def clamp_page(page: float | None, count: int, page_size: int = PAGE_SIZE) -> int:
    wanted = 1 if page is None else int(page)
    return min(max(wanted, 1), page_count(count, page_size))


def _value(value: Any, digits: int = 2) -> Any:
    if value is None or (isinstance(value, float) and not math.isfinite(value)) or value is pd.NA:
        return ""
    return round(float(value), digits) if isinstance(value, float) else value


def table_rows(page: pd.DataFrame) -> list[list[Any]]:
    """``ExploreResult.page`` as rows in TABLE_HEADERS order."""
    rows = []
    for row in page.itertuples(index=False):
        cluster = "" if pd.isna(row.cluster) else f"{int(row.cluster)} · {shorten(row.cluster_label, 40)}"
        duplicate = "" if pd.isna(row.dup_group) else f"#{int(row.dup_group)}" + (
            "" if row.is_representative else " (hidden)")
        rows.append([shorten(row.instruction, 300), shorten(row.response, 300), short_model(row.response_model),
                     _value(row.consensus), _value(row.std), _value(row.difficulty), _value(row.ifd),
                     _value(row.category), cluster, int(row.n_tokens), duplicate])
    return rows


def selection_rows(selections: pd.DataFrame) -> list[list[Any]]:
    """``Store.list_selections`` as rows in SELECTION_HEADERS order: each name and what it keeps."""
    rows = []
    for row in selections.itertuples(index=False):
        try:
            summary = describe_filters(ExploreFilters.from_json(row.filters_json))
        except ForgetlessError as error:
            summary = f"(unreadable: {error})"
        rows.append([row.name, summary])
    return rows


def cluster_choices(clusters: pd.DataFrame) -> list[tuple[str, int]]:
    """(label, value) dropdown choices from a frame of cluster, label, n."""
    return [(f"{int(row.cluster)} · {shorten(row.label, 50)} ({int(row.n)})", int(row.cluster))
            for row in clusters.itertuples(index=False)]


# -- charts --------------------------------------------------------------------------------------------
def _style(figure: go.Figure, title: str, x_title: str, y_title: str) -> go.Figure:
    figure.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, height=CHART_HEIGHT,
                         template="plotly_white", margin={"l": 55, "r": 20, "t": 55, "b": 45},
                         legend={"font": {"size": 10}})
    return figure


def judge_histogram_figure(histogram: pd.DataFrame) -> go.Figure:
    """Per judge, how many matching best responses fall in each 0.5-wide score bin (grouped bars)."""
    if histogram.empty or int(histogram["count"].sum()) == 0:
        return empty_figure("Scores per judge (no judged responses match)", CHART_HEIGHT)
    figure = go.Figure()
    for index, (judge, bins) in enumerate(histogram.groupby("judge", sort=True)):
        centres = (bins["bin_start"] + bins["bin_end"]) / 2
        figure.add_trace(go.Bar(
            x=centres, y=bins["count"], name=short_model(judge), marker_color=_PALETTE[index % len(_PALETTE)],
            customdata=bins[["bin_start", "bin_end"]].to_numpy(),
            hovertemplate=f"{short_model(judge)}: %{{customdata[0]:.1f}}–%{{customdata[1]:.1f}}: %{{y}}<extra></extra>",
        ))
    figure.update_layout(barmode="group", bargap=0.15)
    figure.update_xaxes(range=[1, 5], dtick=0.5)
    return _style(figure, "Scores per judge (best responses)", "score", "responses")


def difficulty_scatter(points: pd.DataFrame) -> go.Figure:
    """Difficulty × consensus of the (sampled) matching instructions, coloured by category."""
    if points.empty:
        return empty_figure("Difficulty × consensus (needs judging and profiling)", CHART_HEIGHT)
    figure = go.Figure()
    categories = points["category"].fillna("(none)")
    for index, category in enumerate(sorted(categories.unique())):
        part = points[categories == category]
        figure.add_trace(go.Scatter(
            x=part["difficulty"], y=part["consensus"], mode="markers", name=str(category),
            marker={"size": 6, "opacity": 0.7, "color": _PALETTE[index % len(_PALETTE)]},
            hovertemplate=f"{category}<br>difficulty %{{x:.2f}}<br>consensus %{{y:.2f}}<extra></extra>",
        ))
    return _style(figure, f"Difficulty × consensus ({len(points):,} shown)", "difficulty", "consensus")


def _hover_texts(points: pd.DataFrame) -> list[str]:
    texts = []
    for row in points.itertuples(index=False):
        score = "not judged" if pd.isna(row.consensus) else f"consensus {row.consensus:.2f}"
        label = "" if pd.isna(row.cluster_label) else f" · {shorten(row.cluster_label, 40)}"
        texts.append(f"{shorten(row.instruction, 120)}<br>cluster {row.cluster}{label} · {score}")
    return texts


def semantic_map_figure(points: pd.DataFrame, colour_by: str = "cluster") -> go.Figure:
    """The 2-D map of the (sampled) matching instructions, coloured by cluster or by consensus score;
    hovering a point shows its instruction."""
    if colour_by not in COLOUR_BY:
        raise ValueError(f"colour_by must be one of {COLOUR_BY}")
    if points.empty:
        return empty_figure("Semantic map (needs profiling)", CHART_HEIGHT)
    figure = go.Figure()
    if colour_by == "score":
        figure.add_trace(go.Scatter(
            x=points["x"], y=points["y"], mode="markers", text=_hover_texts(points), hoverinfo="text",
            marker={"size": 7, "color": points["consensus"], "colorscale": SCORE_COLOURS, "cmin": 1, "cmax": 5,
                    "colorbar": {"title": "consensus"}, "showscale": True},
            name="instructions",
        ))
    else:
        for index, (cluster, part) in enumerate(points.groupby("cluster", sort=True, dropna=False)):
            label = part["cluster_label"].iloc[0]
            name = f"{cluster}" + ("" if pd.isna(label) else f" · {shorten(label, 24)}")
            figure.add_trace(go.Scatter(
                x=part["x"], y=part["y"], mode="markers", name=name, text=_hover_texts(part), hoverinfo="text",
                marker={"size": 7, "opacity": 0.8, "color": _PALETTE[index % len(_PALETTE)]},
            ))
    figure.update_xaxes(showticklabels=False)
    figure.update_yaxes(showticklabels=False)
    return _style(figure, f"Semantic map by {colour_by} ({len(points):,} shown)", "", "")


def category_bars(categories: pd.DataFrame) -> go.Figure:
    """How many matching instructions fall in each task category (largest on top)."""
    if categories.empty or int(categories["count"].sum()) == 0:
        return empty_figure("Categories (no instructions match)", CHART_HEIGHT)
    ordered = categories.sort_values("count")
    figure = go.Figure(go.Bar(x=ordered["count"], y=ordered["category"], orientation="h",
                              marker_color="#4f6bed", hovertemplate="%{y}: %{x}<extra></extra>"))
    return _style(figure, "Categories", "instructions", "")


# -- reading the store ---------------------------------------------------------------------------------
def read_clusters(store: Store) -> pd.DataFrame:
    """cluster, label, n of every profiled cluster (empty before profiling or before the explore rows exist)."""
    return store.explore_clusters()


def selection_names(selections: pd.DataFrame) -> list[str]:
    return [str(name) for name in selections["name"]] if len(selections) else []

