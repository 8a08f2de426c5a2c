"""The Evaluate tab's two charts, drawn from plain frames (no store, no Gradio).

* ``delta_figure``: per benchmark, each tuned run's change against the base in percentage points, a bar per
  run, green for a gain, red for a loss, grey within noise, with error bars of 2 standard errors (the same
  band that decides the colour, so a bar is grey exactly when its error bar crosses zero).
* ``history_figure``: the trade-off a mix ratio is chosen by: one point per evaluated run at (domain gain,
  mean change of the general benchmarks), both against the run's base, which sits at the origin (the domain gain
  in nats/token when it is the answer fit, else in percentage points); coloured by
  mix ratio so a sweep reads as a curve; each run labelled by its name and ratio where the label has room
  (ui/views/label_placement.py), every run detailed on hover.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import pandas as pd
import plotly.graph_objects as go

from core.eval.plan import target_label
from ui.views.label_placement import place_labels, text_size

CHANGE_COLORS = {"gain": "#2e9e44", "loss": "#d62728", "within noise": "#9e9e9e"}
RUN_PATTERNS = ("", "/", "x", ".", "\\", "+", "-", "|")  # tells runs apart when colour says gain or loss
ERROR_Z = 2.0  # error bars span this many standard errors (the gain/loss threshold of ui.views.evaluate)
# The narrowest span an axis shows (points change vs base; answer fit in nats/token), so noise does not fill it.
MIN_SPAN_POINTS, MIN_SPAN_FIT = 2.0, 0.02
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


HISTORY_HEIGHT = 460
_HISTORY_MARGIN = {"l": 70, "r": 30, "t": 100, "b": 60}  # Gradio raises a titled plot's top margin to 100 anyway
HISTORY_PLOT_HEIGHT = HISTORY_HEIGHT - _HISTORY_MARGIN["t"] - _HISTORY_MARGIN["b"]  # pixels of the plot area
# The plot's width follows the page: labels are placed for this narrowest plot area and stay apart up to
# MAX_STRETCH times as wide (a 1400-pixel window gives about 1200).
NARROWEST_PLOT_WIDTH = 560
MAX_STRETCH = 3.5
LABEL_FONT_SIZE = 11
MARKER_SIZE = 12
RATIO_SCALE = "Viridis"
UNKNOWN_RATIO_COLOR = "#9e9e9e"
BASE_LABEL = "base"
_STAMP = re.compile(r"^\d{8}-\d{6}-")  # the time stamp that starts a run folder's name (core.train.runs)


def short_run_name(name: str, limit: int = 16) -> str:
    """A run's folder name without its time stamp, its middle cut out when longer than ``limit``."""
    short = _STAMP.sub("", name) or name
    if len(short) <= limit:
        return short
    head = (limit - 1) // 2
    return f"{short[:head]}…{short[-(limit - 1 - head):]}"


def format_ratio(ratio: float | None) -> str:
    return "unknown" if ratio is None or pd.isna(ratio) else f"{round(float(ratio), 3):g}"


def point_label(run: str, ratio: float | None) -> str:
    """A run's label on the trade-off chart: ``tuned-lora r=0.25`` (no ratio part when it is unknown)."""
    known = ratio is not None and not pd.isna(ratio)
    return f"{short_run_name(run)} r={format_ratio(ratio)}" if known else short_run_name(run)


def _axis_range(values: Sequence[float], errors: Sequence[float | None], pad: float,
                minimum: float = MIN_SPAN_POINTS) -> list[float]:
    """From below the lowest to above the highest value (error bars and 0 included), at least ``minimum`` wide."""
    low = min([0.0, *(v - (e or 0.0) for v, e in zip(values, errors, strict=True))])
    high = max([0.0, *(v + (e or 0.0) for v, e in zip(values, errors, strict=True))])
    if high - low < minimum:
        middle = (high + low) / 2
        low, high = middle - minimum / 2, middle + minimum / 2
    span = high - low
    return [low - pad * span, high + pad * span]


def _pixels(value: float, axis: list[float], length: float, flip: bool) -> float:
    share = (value - axis[0]) / (axis[1] - axis[0])
    return length * (1 - share if flip else share)


def _plus_minus(delta: float, stderr: float | None, unit: str = "pp", digits: int = 1) -> str:
    if stderr is None:
        return f"{delta:+.{digits}f} {unit} (SE unknown)"
    return f"{delta:+.{digits}f} ± {stderr:.{digits}f} {unit} (1 SE)"


def _answer_fit(points: pd.DataFrame) -> bool:
    """Whether the domain gain of ``ratio_points`` rows is the answer fit (nats/token), not an accuracy (pp)."""
    return bool(len(points)) and "domain_measure" in points and (points["domain_measure"] == "answer fit").all()


def history_figure(points: pd.DataFrame) -> go.Figure:
    """Each run's general change (y, below 0 = forgetting) against its domain gain (x), in percentage points
    against its base at the origin, from ``ratio_points`` rows; labels that would overlap are left to hover."""
    figure = go.Figure()
    both = points["general_change"].notna() & points["domain_gain"].notna() if len(points) else []
    shown = points[both].reset_index(drop=True) if len(points) else points
    missing = len(points) - len(shown)
    note = (f"{missing} run{'s' if missing != 1 else ''} without both general and domain results not shown"
            if missing else "")
    if not len(shown):
        return _empty(figure, "Trade-off: general change vs domain gain (no run with general and domain results "
                              "and an evaluated base yet)" + (f"<br>{note}" if note else ""))

    fit = _answer_fit(shown)
    x_scale = 1.0 if fit else 100.0  # nats/token as they are; fractions as percentage points

    def scaled(column: str, scale: float = 100.0) -> list[float]:
        return [scale * float(v) for v in shown[column]]

    def errors(column: str, scale: float = 100.0) -> list[float | None]:  # None: no bar where the SE is unknown
        return [None if e is None or pd.isna(e) else scale * ERROR_Z * float(e) for e in shown[column]]

    x, y, x_errors, y_errors = scaled("domain_gain", x_scale), scaled("general_change"), \
        errors("domain_stderr", x_scale), errors("general_stderr")
    x_range = _axis_range(x, x_errors, 0.12, MIN_SPAN_FIT if fit else MIN_SPAN_POINTS)
    y_range = _axis_range(y, y_errors, 0.15)
    # The base first, then the runs by ratio: where space runs out, the later labels go to hover.
    anchors = [(_pixels(px, x_range, NARROWEST_PLOT_WIDTH, False), _pixels(py, y_range, HISTORY_PLOT_HEIGHT, True))
               for px, py in [(0.0, 0.0), *zip(x, y, strict=True)]]
    labels = [BASE_LABEL, *(point_label(run, ratio) for run, ratio in zip(shown["run"], shown["mix_ratio"],
                                                                           strict=True))]
    picks = place_labels(anchors, [text_size(label, LABEL_FONT_SIZE) for label in labels],
                         (NARROWEST_PLOT_WIDTH, HISTORY_PLOT_HEIGHT), marker_radius=MARKER_SIZE / 2,
                         max_stretch=MAX_STRETCH)
    bases = ", ".join(dict.fromkeys(target_label(str(b)) for b in shown["base"]))
    figure.add_trace(go.Scatter(
        x=[0.0], y=[0.0], name="base", mode="markers+text", text=[labels[0] if picks[0] else ""],
        textposition=picks[0] or "top center", textfont={"size": LABEL_FONT_SIZE, "color": "#222"},
        marker={"symbol": "x-thin", "size": MARKER_SIZE, "line": {"width": 3, "color": "#222"}},
        hovertemplate=f"base: {bases}<br>every run is drawn against its own base<extra></extra>",
    ))
    known = [i for i, ratio in enumerate(shown["mix_ratio"]) if ratio is not None and not pd.isna(ratio)]
    unknown = [i for i in range(len(shown)) if i not in known]
    for rows, by_ratio in ((known, True), (unknown, False)):
        if not rows:
            continue
        marker = ({"color": [float(shown["mix_ratio"][i]) for i in rows], "colorscale": RATIO_SCALE, "cmin": 0.0,
                   "cmax": 1.0, "showscale": True,
                   "colorbar": {"title": {"text": "mix ratio"}, "thickness": 14, "len": 0.9}} if by_ratio
                  else {"color": UNKNOWN_RATIO_COLOR})
        name = "runs" if by_ratio else "runs without a known mix ratio"
        figure.add_trace(go.Scatter(
            x=[x[i] for i in rows], y=[y[i] for i in rows], name=name, mode="markers+text",
            text=[labels[i + 1] if picks[i + 1] else "" for i in rows],
            textposition=[picks[i + 1] or "top center" for i in rows], textfont={"size": LABEL_FONT_SIZE},
            marker={**marker, "size": MARKER_SIZE, "line": {"color": "#333", "width": 1}},
            error_x={"type": "data", "array": [x_errors[i] for i in rows], "color": "#aaa", "thickness": 1},
            error_y={"type": "data", "array": [y_errors[i] for i in rows], "color": "#aaa", "thickness": 1},
            customdata=[_hover_fields(shown.iloc[i]) for i in rows],
            hovertemplate=("<b>%{customdata[0]}</b><br>mix ratio %{customdata[1]} (snapshot %{customdata[2]})"
                           "<br>general change %{customdata[3]}<br>domain gain %{customdata[4]}"
                           "<br>vs base %{customdata[5]}<extra></extra>"),
        ))
    hover_only = sum(pick is None for pick in picks)
    notes = [f"{hover_only} label{'s' if hover_only != 1 else ''} hover-only (no room)"] if hover_only else []
    notes += [note] if note else []
    figure.add_hline(y=0, line={"color": "#777", "width": 1, "dash": "dot"})
    figure.add_vline(x=0, line={"color": "#777", "width": 1, "dash": "dot"})
    figure.update_xaxes(range=x_range, zeroline=False, title=("domain gain: answer fit (NLL drop, nats/token vs base) →"
                                                              if fit else "domain gain (pp vs base) →"))
    figure.update_yaxes(range=y_range, title="general change (pp; below 0 = forgetting)", zeroline=False)
    title = f"Trade-off per run: general change vs domain gain (±{ERROR_Z:g} SE), colour = mix ratio"
    figure.update_layout(
        title={"text": title + (f"<br><span style='font-size:12px'>{' · '.join(notes)}</span>" if notes else ""),
               "font": {"size": 15}},
        showlegend=False, hovermode="closest", height=HISTORY_HEIGHT, margin=_HISTORY_MARGIN,
        template="plotly_white",
    )
    return figure


def _hover_fields(row: pd.Series) -> list[str]:
    """Full run name, ratio, snapshot, both changes ± 1 SE, and the base, as the hover shows them."""
    def known(column: str) -> bool:
        return column in row and row[column] is not None and not pd.isna(row[column])

    def stderr(column: str, scale: float = 100.0) -> float | None:
        return scale * float(row[column]) if known(column) else None

    fit = known("domain_measure") and row["domain_measure"] == "answer fit"
    domain = (_plus_minus(float(row["domain_gain"]), stderr("domain_stderr", 1.0), "nats/token", 3) if fit else
              _plus_minus(100.0 * float(row["domain_gain"]), stderr("domain_stderr")))
    return [str(row["run"]), format_ratio(row["mix_ratio"]), str(row["mix"]) if known("mix") else "unknown",
            _plus_minus(100.0 * float(row["general_change"]), stderr("general_stderr")), domain,
            target_label(str(row["base"]))]
