"""What the Explore tab's Coverage panel shows, computed without Gradio: per dimension a bar chart of the
observed share of rows beside the target's, and the imbalance figures as Markdown.

:func:`coverage_views` is the one function that reads the store (through ``core.profile.coverage``); the
rest are pure functions of a coverage report.
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from core.errors import ForgetlessError
from core.jobs import JobInfo
from core.profile.coverage import (
    DIMENSIONS,
    SHAREGPT,
    SMOOTHING,
    UNIFORM,
    CoverageConfig,
    coverage_report,
    kl_divergence,
    profiled_clusters,
    shares,
    under_filled_cells,
    uniform_shares,
)
from core.store import Store
from ui.views.screen import empty_figure, escape_markdown, figure_layout, shorten

TARGET_CHOICES = [("uniform", UNIFORM), ("ShareGPT user turns", SHAREGPT)]
CHART_HEIGHT = 340
TITLES = {"cluster": "Clusters", "category": "Task categories", "difficulty": "Difficulty levels"}
LACKING_SHOWN = 3  # under-filled cells named per dimension in the summary
_OBSERVED, _TARGET = "#4f6bed", "#c2c8d6"
_PROFILED, _ADDED = "#c2c8d6", "#4f6bed"
LIVE_HEIGHT = 320


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _nats(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def cell_name(row: dict[str, Any], limit: int = 28) -> str:
    """An axis label: the cell, and a cluster's label after it (shortened)."""
    return str(row["cell"]) + (f" · {shorten(row['label'], limit)}" if row.get("label") else "")


def coverage_figure(report: dict[str, Any], dimension: str) -> go.Figure:
    """Observed share of rows beside the target share, per cell of one dimension (hover: rows and deficit)."""
    part = report["dimensions"][dimension]
    if not part["cells"]:
        return empty_figure(f"{TITLES[dimension]} ({part['note'] or 'nothing to show'})", CHART_HEIGHT)
    cells = part["cells"]
    names = [cell_name(row) for row in cells]
    details = [[row["rows"], row["expected"], row["deficit"]] for row in cells]
    figure = go.Figure([
        go.Bar(x=names, y=[row["share"] for row in cells], name="observed", marker_color=_OBSERVED,
               customdata=details,
               hovertemplate="%{x}<br>%{y:.1%} of rows (%{customdata[0]})<br>lacks %{customdata[2]}<extra></extra>"),
        go.Bar(x=names, y=[row["target_share"] for row in cells], name="target", marker_color=_TARGET,
               customdata=details,
               hovertemplate="%{x}<br>target %{y:.1%} (%{customdata[1]:.1f} rows)<extra></extra>"),
    ])
    figure.update_layout(barmode="group", bargap=0.2, legend={"orientation": "h", "y": 1.08, "x": 1,
                                                               "xanchor": "right"})
    figure.update_yaxes(tickformat=".0%", title="share of rows")
    figure.update_xaxes(type="category", tickangle=0 if dimension == "difficulty" else -30)
    target = UNIFORM if part["target"].startswith(UNIFORM) else part["target"].removeprefix("builtin:")
    title = f"{TITLES[dimension]} · KL {_nats(part['kl'])} to {target}"
    return figure_layout(figure, title, CHART_HEIGHT)


def coverage_summary(report: dict[str, Any]) -> str:
    """The imbalance figures, what was counted, the reference used, notes, and the cells lacking most rows."""
    figures = report["imbalance"]
    top = report["dimensions"]["cluster"]["largest_10pct"]
    counted = "all profiled rows" if report["include_duplicates"] else "near-duplicate representatives"
    lines = [
        f"**Imbalance** (KL to the target, nats): clusters **{_nats(figures['cluster_kl'])}** · categories "
        f"{_nats(figures['category_kl'])} · difficulty {_nats(figures['difficulty_kl'])}. The largest 10% of "
        f"clusters ({top['clusters']}) hold **{_percent(top['share'])}** of rows "
        f"(target {_percent(top['target_share'])}).",
        f"{report['rows']:,} rows counted ({counted})" + (
            f"; {report['unprofiled']:,} stored instructions are not profiled yet." if report["unprofiled"] else "."),
    ]
    reference = report["reference"]
    if reference:
        how = "cached" if reference["cached"] else f"embedded in {reference['seconds']} s"
        lines.append(f"Target: {reference['texts']:,} texts of {escape_markdown(reference['source'])} ({how}), each "
                     "assigned to the nearest cluster centroid. Categories and difficulty stay uniform: no model runs "
                     "on the reference.")
    lacking = []
    for dimension in DIMENSIONS:
        cells = {row["cell"]: row for row in report["dimensions"][dimension]["cells"]}
        named = [f"{escape_markdown(cell_name(cells[cell], 40))} (+{deficit})"
                 for cell, deficit in under_filled_cells(report, dimension)[:LACKING_SHOWN]]
        if named:
            lacking.append(f"{TITLES[dimension].lower()}: " + ", ".join(named))
    if lacking:
        lines.append("Most under-filled: " + "; ".join(lacking) + ".")
    return "\n\n".join(lines)


def coverage_views(store: Store, target: str) -> tuple[str, go.Figure, go.Figure, go.Figure]:
    """The panel for ``target``: summary Markdown and the cluster, category and difficulty charts. Before a
    profile (or on any refused read) the summary says why and the charts are empty."""
    try:
        report = coverage_report(store, CoverageConfig(target=target or UNIFORM))
    except ForgetlessError as error:
        message = escape_markdown(str(error))
        return (f"Coverage: {message}", *(empty_figure(f"{TITLES[d]} (needs profiling)", CHART_HEIGHT)
                                          for d in DIMENSIONS))
    return (coverage_summary(report), *(coverage_figure(report, d) for d in DIMENSIONS))


# -- the Reconstruct tab's live chart ------------------------------------------------------------------------
def job_clusters(job: JobInfo | None) -> list[dict[str, Any]] | None:
    """Where a steered job's rows landed, per cluster (its newest report, or its summary once it ended); None for
    a free or corpus-seeded job, whose rows are placed only by the next profile."""
    if job is None:
        return None
    summary = job.summary or {}
    if "steer" in summary:
        return summary["steer"].get("clusters")
    return (job.progress or {}).get("clusters")


def live_coverage_figure(clusters: list[dict[str, Any]], title: str) -> go.Figure:
    """Rows per cluster, the profile's and this job's stacked, against the uniform spread of the current total
    (dashed line); the title carries the cluster KL to uniform."""
    if not clusters:
        return empty_figure(title, LIVE_HEIGHT)
    names = [cell_name({"cell": row["cluster"], "label": row.get("label")}, 22) for row in clusters]
    totals = [row["profiled"] + row["added"] for row in clusters]
    kl = kl_divergence(shares(totals, SMOOTHING), uniform_shares(len(totals)))
    figure = go.Figure([
        go.Bar(x=names, y=[row["profiled"] for row in clusters], name="profiled", marker_color=_PROFILED,
               hovertemplate="%{x}<br>%{y} profiled rows<extra></extra>"),
        go.Bar(x=names, y=[row["added"] for row in clusters], name="this job", marker_color=_ADDED,
               hovertemplate="%{x}<br>%{y} rows of this job<extra></extra>"),
    ])
    figure.add_hline(y=sum(totals) / len(totals), line_dash="dash", line_color="#555",
                     annotation_text="uniform", annotation_position="top right")
    figure.update_layout(barmode="stack", bargap=0.2, legend={"orientation": "h", "y": 1.1, "x": 1,
                                                                "xanchor": "right"})
    figure.update_xaxes(type="category", tickangle=-30)
    figure.update_yaxes(title="rows")
    return figure_layout(figure, f"{title} · KL {_nats(kl)} to uniform", LIVE_HEIGHT)


def reconstruct_coverage(job: JobInfo | None, store: Store) -> go.Figure:
    """The Reconstruct tab's coverage chart: a steered job's clusters live as its batches finish; otherwise the
    stored profile's clusters (new rows join them at the next profile), or why there is nothing to draw."""
    clusters = job_clusters(job)
    if clusters is not None:
        added = sum(row["added"] for row in clusters)
        return live_coverage_figure(clusters, f"Clusters · job {job.job_id}: +{added} rows")
    try:
        counts = store.coverage_counts()
    except ForgetlessError as error:
        return empty_figure(f"Clusters ({shorten(str(error), 60)})", LIVE_HEIGHT)
    clusters = [{**row, "profiled": row["rows"], "added": 0} for row in profiled_clusters(counts)]
    if not clusters:
        return empty_figure("Clusters (none yet: profile the instructions in the Explore tab)", LIVE_HEIGHT)
    waiting = counts["instructions"] - counts["profiled"]
    return live_coverage_figure(clusters, "Clusters of the profile" + (
        f" ({waiting} rows not profiled yet)" if waiting > 0 else ""))
