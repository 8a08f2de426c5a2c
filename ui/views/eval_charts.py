"""The Evaluate tab's two charts, drawn from plain frames (no store, no Gradio).

* ``delta_figure``: per benchmark, each tuned run's change against the base in percentage points, a bar per
  run, green for a gain, red for a loss, grey within noise, with error bars of 2 standard errors (the same
  band that decides the colour, so a bar is grey exactly when its error bar crosses zero).
* ``history_figure``: one point per evaluated run against its mix ratio: the mean change of the general
  benchmarks and the domain gain, which is the trade-off the ratio is chosen by.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd
import plotly.graph_objects as go

CHANGE_COLORS = {"gain": "#2e9e44", "loss": "#d62728", "within noise": "#9e9e9e"}
RUN_PATTERNS = ("", "/", "x", ".", "\\", "+", "-", "|")  # tells runs apart when colour says gain or loss
ERROR_Z = 2.0  # error bars span this many standard errors (the gain/loss threshold of ui.views.evaluate)
_LAYOUT = {"height": 380, "margin": {"l": 60, "r": 20, "t": 60, "b": 50}, "template": "plotly_white"}


def _points(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else 100.0 * value


def _empty(figure: go.Figure, title: str) -> go.Figure:
    figure.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    figure.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    figure.update_layout(title=title, **_LAYOUT)
    return figure


def delta_figure(deltas: Mapping[str, pd.DataFrame], base_label: str) -> go.Figure:
    """Bars of each run's change vs the base: ``eval_deltas`` rows (accuracy-like metrics), keyed by run label."""
    figure = go.Figure()
    for index, (label, picked) in enumerate(deltas.items()):
        if not len(picked):
            continue
        errors = [ERROR_Z * e if e is not None and not pd.isna(e) else 0.0 for e in picked["stderr"]]
        names = [f"{task}<br>{metric}" for task, metric in zip(picked["task"], picked["metric"], strict=True)]
        figure.add_trace(go.Bar(
            name=label, x=names,
            y=[_points(float(d)) for d in picked["delta"]],
            error_y={"type": "data", "array": [_points(e) for e in errors], "visible": True, "color": "#444"},
            marker={"color": [CHANGE_COLORS[c] for c in picked["change"]], "line": {"color": "#333", "width": 1},
                    "pattern": {"shape": RUN_PATTERNS[index % len(RUN_PATTERNS)], "fgcolor": "#333"}},
            customdata=[[100 * b, 100 * t, c] for b, t, c in zip(picked["base"], picked["tuned"], picked["change"],
                                                                  strict=True)],
            hovertemplate=(f"{label}<br>%{{x}}: %{{y:+.1f}} pp (base %{{customdata[0]:.1f}} → "
                           "%{customdata[1]:.1f}, %{customdata[2]})<extra></extra>"),
        ))
    if not figure.data:
        return _empty(figure, "Change vs the base (no run and base evaluated on the same benchmark yet)")
    figure.add_hline(y=0, line={"color": "#555", "width": 1})
    figure.update_layout(
        title=f"Change vs {base_label} in percentage points (green gain, red loss, grey within noise; "
              f"bars ±{ERROR_Z:g} SE)",
        yaxis_title="Δ accuracy (pp)", barmode="group", legend_title_text="run", showlegend=True, **_LAYOUT,
    )
    return figure


def history_figure(points: pd.DataFrame) -> go.Figure:
    """General-benchmark change and domain gain of every run against its mix ratio (``ratio_points`` rows)."""
    figure = go.Figure()
    placed = points[points["mix_ratio"].notna()] if len(points) else points
    unplaced = len(points) - len(placed)
    series = (("general_change", "general_stderr", "general benchmarks (mean Δ)", "#4f6bed", "circle"),
              ("domain_gain", "domain_stderr", "domain (MedMCQA Δ)", "#f28e2b", "diamond"))
    for value, error, name, color, symbol in series:
        shown = placed[placed[value].notna()] if len(placed) else placed
        if not len(shown):
            continue
        figure.add_trace(go.Scatter(
            x=list(shown["mix_ratio"]), y=[_points(float(v)) for v in shown[value]], name=name, mode="markers+text",
            text=list(shown["run"]), textposition="top center", textfont={"size": 10},
            marker={"color": color, "symbol": symbol, "size": 11},
            error_y={"type": "data", "visible": True, "color": color,
                     "array": [_points(ERROR_Z * float(e)) if e is not None and not pd.isna(e) else 0.0
                               for e in shown[error]]},
            customdata=list(shown["base"]),
            hovertemplate="%{text}: ratio %{x:.2f}, %{y:+.1f} pp vs %{customdata}<extra>" + name + "</extra>",
        ))
    note = f" · {unplaced} run{'s' if unplaced != 1 else ''} without a known mix ratio not shown" if unplaced else ""
    if not figure.data:
        return _empty(figure, "Runs by mix ratio (no evaluated run with an evaluated base yet)" + note)
    figure.add_hline(y=0, line={"color": "#555", "width": 1})
    figure.update_xaxes(range=[-0.05, 1.05], title="mix ratio (share of general data)")
    figure.update_layout(title="Each run: general change and domain gain vs its mix ratio (bars ±2 SE)" + note,
                         yaxis_title="Δ vs base (pp)", **_LAYOUT)
    return figure
