"""Chart labels that never overlap: the greedy placement (pure pixels) and the trade-off chart that uses it."""

from __future__ import annotations

import pandas as pd
import pytest

from ui.views.eval_charts import (
    HISTORY_PLOT_HEIGHT,
    LABEL_FONT_SIZE,
    MARKER_SIZE,
    MAX_STRETCH,
    NARROWEST_PLOT_WIDTH,
    history_figure,
    point_label,
)
from ui.views.evaluate import POINT_COLUMNS
from ui.views.label_placement import Box, boxes_clash, label_box, place_labels, text_size

BASE = "smollm2-135m-instruct"


def _crowded(count: int = 9) -> pd.DataFrame:
    """``count`` runs at ratio 0.5 within a tenth of a point of each other, and a sweep of four ratios."""
    rows = [{"run": f"20250101-00000{i}-arm-c-s{i}", "run_dir": f"/runs/c{i}", "mix_ratio": 0.5, "mix": "arm-c",
             "base": BASE, "general_change": -0.020 + 0.0001 * i, "general_stderr": 0.004,
             "domain_gain": 0.100 + 0.0001 * i, "domain_stderr": 0.006} for i in range(count)]
    rows += [{"run": f"20250102-000000-sweep-r{round(100 * r)}", "run_dir": f"/runs/r{r}", "mix_ratio": r,
              "mix": None, "base": BASE, "general_change": -0.05 + 0.05 * r, "general_stderr": 0.004,
              "domain_gain": 0.12 - 0.04 * r, "domain_stderr": None} for r in (0.1, 0.25, 0.5, 0.75)]
    return pd.DataFrame(rows, columns=POINT_COLUMNS).sort_values(["mix_ratio", "run"]).reset_index(drop=True)


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_crowded_labels_never_overlap_and_the_rest_are_hover_only():
    points = _crowded()
    width, height = 560.0, 300.0
    x = [0.0, *(100 * points["domain_gain"])]
    y = [0.0, *(100 * points["general_change"])]
    anchors = [(width * (v + 1) / 15, height * (1 - (w + 6) / 8)) for v, w in zip(x, y, strict=True)]  # pp -> px
    labels = ["base", *(point_label(r, q) for r, q in zip(points["run"], points["mix_ratio"], strict=True))]
    sizes = [text_size(label, 11) for label in labels]
    picks = place_labels(anchors, sizes, (width, height), marker_radius=6, max_stretch=3.0)
    placed = [label_box(*anchor, pick, size, 6) for anchor, pick, size in zip(anchors, picks, sizes, strict=True)
              if pick is not None]
    markers = [Box(ax, ay, -6, -6, 6, 6) for ax, ay in anchors]
    assert picks[0] == "top center"  # the base, alone at the origin, gets the first choice
    assert 5 <= len(placed) < len(anchors) and picks.count(None) == len(anchors) - len(placed)
    for stretch in (1.0, 1.7, 3.0):  # the plot only ever gets wider than planned for
        rects = [box.edges(stretch) for box in placed]
        assert not any(_overlap(a, b) for i, a in enumerate(rects) for b in rects[i + 1:])
        for box in placed:  # clear of every marker but its own
            others = [m for m in markers if (m.x, m.y) != (box.x, box.y)]
            assert not any(_overlap(box.edges(stretch), m.edges(stretch)) for m in others)
    edges = [box.edges() for box in placed]  # inside the plot area
    assert all(left >= 0 and top >= 0 and right <= width and bottom <= height for left, top, right, bottom in edges)


def test_a_pick_must_hold_when_the_plot_gets_wider():
    size = text_size("arm-c r=0.5", 11)
    right_of_left_marker = label_box(90, 50, "top right", size, 6)  # the left marker's label, on its right
    left_of_right_marker = label_box(100, 50, "top left", size, 6)
    assert not _overlap(right_of_left_marker.edges(1.0), left_of_right_marker.edges(1.0))
    assert _overlap(right_of_left_marker.edges(2.0), left_of_right_marker.edges(2.0))  # they slide over each other
    assert not boxes_clash(right_of_left_marker, left_of_right_marker, max_stretch=1.0)
    assert boxes_clash(right_of_left_marker, left_of_right_marker, max_stretch=2.0)
    # Two markers 10 px apart on one row, planned for up to twice the width: the labels never face each other.
    picks = place_labels([(90, 50), (100, 50)], [size, size], (400, 100), max_stretch=2.0)
    boxes = [label_box(x, 50, pick, size, 6) for x, pick in zip((90, 100), picks, strict=True)]
    assert all(picks) and not any(_overlap(boxes[0].edges(s), boxes[1].edges(s)) for s in (1.0, 1.5, 2.0))
    with pytest.raises(ValueError, match="2 anchors but 1 label sizes"):
        place_labels([(0, 0), (1, 1)], [size], (10, 10))


def test_history_figure_places_crowded_labels_apart_in_its_own_pixels():
    figure = history_figure(_crowded())
    x_range, y_range = figure.layout.xaxis.range, figure.layout.yaxis.range
    boxes, hidden = [], 0
    for trace in figure.data:
        positions = [trace.textposition] * len(trace.x) if isinstance(trace.textposition, str) else trace.textposition
        for x, y, text, position in zip(trace.x, trace.y, trace.text, positions, strict=True):
            if not text:
                hidden += 1
                continue
            anchor = ((x - x_range[0]) / (x_range[1] - x_range[0]) * NARROWEST_PLOT_WIDTH,
                      (y_range[1] - y) / (y_range[1] - y_range[0]) * HISTORY_PLOT_HEIGHT)
            boxes.append(label_box(*anchor, position, text_size(text, LABEL_FONT_SIZE), MARKER_SIZE / 2))
    assert hidden and f"{hidden} labels hover-only" in figure.layout.title.text
    assert len(boxes) + hidden == 1 + 13
    for stretch in (1.0, MAX_STRETCH):
        rects = [box.edges(stretch) for box in boxes]
        assert not any(_overlap(a, b) for i, a in enumerate(rects) for b in rects[i + 1:])
    runs = figure.data[1]
    assert sorted(set(runs.marker.color)) == [0.1, 0.25, 0.5, 0.75]  # one colour per ratio of the sweep
    assert {row[0] for row in runs.customdata} >= {"20250101-000004-arm-c-s4", "20250102-000000-sweep-r10"}
