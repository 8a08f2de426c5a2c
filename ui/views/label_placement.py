"""Where each chart label goes so that no two overlap: a greedy pick among the 8 positions around a marker.

Pure geometry in pixels of the plot area (x to the right, y downwards, as on screen); ui/views/eval_charts.py
turns data into pixels and the picks into Plotly ``textposition`` values. The plot's height is fixed but its
width follows the page, so a pick must hold at every width from the assumed one up to ``max_stretch`` times
it: markers move apart horizontally while labels keep their size, and two labels that sit side by side at
one width could slide over each other at another when each lies on the far side of the other's marker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Plotly's textposition values, in the order they are tried (above the marker reads best).
POSITIONS = ("top center", "top right", "top left", "middle right", "middle left", "bottom center",
             "bottom right", "bottom left")
CHAR_WIDTH = 0.6  # of the font size, for an average character of a sans-serif font
WIDE_CHARS = frozenset("…mwMW@")  # about a full font size wide; estimated so, a label is never underestimated
LINE_HEIGHT = 1.2  # of the font size: ascent plus descent, what a browser's text box spans


@dataclass(frozen=True)
class Box:
    """A rectangle tied to an anchor (a marker's centre, in pixels): its edges are the anchor plus offsets."""

    x: float
    y: float
    left: float
    top: float
    right: float
    bottom: float

    def edges(self, stretch: float = 1.0) -> tuple[float, float, float, float]:
        """(left, top, right, bottom) when the plot is ``stretch`` times as wide (only anchors move)."""
        x = self.x * stretch
        return x + self.left, self.y + self.top, x + self.right, self.y + self.bottom


def text_size(text: str, font_size: float) -> tuple[float, float]:
    """Estimated (width, height) in pixels of one line of ``text``."""
    width = sum(1.0 if char in WIDE_CHARS else CHAR_WIDTH for char in text) * font_size
    return width, LINE_HEIGHT * font_size


def label_box(x: float, y: float, position: str, size: tuple[float, float], marker_radius: float) -> Box:
    """The box a label of ``size`` takes at ``position`` around a marker centred at (x, y).

    Mirrors plotly.js (Drawing.textPointPosition): the text keeps ``radius / 0.8 + 1`` pixels from the marker's
    centre on the side it is placed; its baseline sits a quarter of a line above that edge when on top.
    """
    width, height = size
    gap = marker_radius / 0.8 + 1 if marker_radius else 0.0
    vertical, horizontal = position.split(" ")
    if horizontal == "left":
        left, right = -gap - width, -gap
    elif horizontal == "right":
        left, right = gap, gap + width
    else:
        left, right = -width / 2, width / 2
    if vertical == "top":
        top, bottom = -gap - height, -gap
    elif vertical == "bottom":
        top, bottom = gap - height / 6, gap + height * 5 / 6
    else:
        top, bottom = -height * 7 / 12, height * 5 / 12
    return Box(x, y, left, top, right, bottom)


def boxes_clash(a: Box, b: Box, max_stretch: float = 1.0, padding: float = 0.0) -> bool:
    """Whether ``a`` and ``b`` (at least ``padding`` apart) touch at any plot width from 1 to ``max_stretch``."""
    a_left, a_top, a_right, a_bottom = a.edges()
    b_left, b_top, b_right, b_bottom = b.edges()
    if a_bottom + padding <= b_top or b_bottom + padding <= a_top:  # rows apart: the width never changes that
        return False
    # Edges move linearly with the stretch, so an order that holds at both ends holds in between.
    ends = ((a.edges(), b.edges()), (a.edges(max_stretch), b.edges(max_stretch)))
    a_first = all(ea[2] + padding <= eb[0] for ea, eb in ends)
    b_first = all(eb[2] + padding <= ea[0] for ea, eb in ends)
    return not (a_first or b_first)


def _inside(box: Box, plot_size: tuple[float, float]) -> bool:
    # Inside at the assumed width stays inside when wider: anchors keep their share of the width.
    left, top, right, bottom = box.edges()
    return left >= 0 and top >= 0 and right <= plot_size[0] and bottom <= plot_size[1]


def place_labels(anchors: Sequence[tuple[float, float]], sizes: Sequence[tuple[float, float] | None],
                 plot_size: tuple[float, float], *, marker_radius: float = 6.0, max_stretch: float = 1.0,
                 padding: float = 2.0) -> list[str | None]:
    """Each label's position among ``POSITIONS``, or None where none is free (that point is hover-only).

    Greedy in the order given: a label takes the first position whose box stays inside the plot area
    (``plot_size`` in pixels at its narrowest) and clear of every other marker and every label placed before
    it, at every width up to ``max_stretch`` times the narrowest. ``sizes[i]`` None: point ``i`` has no label,
    but its marker still blocks the others.
    """
    if len(anchors) != len(sizes):
        raise ValueError(f"{len(anchors)} anchors but {len(sizes)} label sizes")
    markers = [Box(x, y, -marker_radius, -marker_radius, marker_radius, marker_radius) for x, y in anchors]
    placed: list[Box] = []
    picks: list[str | None] = []
    for index, ((x, y), size) in enumerate(zip(anchors, sizes, strict=True)):
        pick = None
        if size is not None:
            obstacles = [*placed, *(marker for other, marker in enumerate(markers) if other != index)]
            for position in POSITIONS:
                box = label_box(x, y, position, size, marker_radius)
                if _inside(box, plot_size) and not any(boxes_clash(box, obstacle, max_stretch, padding)
                                                       for obstacle in obstacles):
                    pick = position
                    placed.append(box)
                    break
        picks.append(pick)
    return picks
