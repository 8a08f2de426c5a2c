"""What the Screen tab's judge-check panel shows, without Gradio: the newest check's accuracy per judge and
degradation kind as a table and a chart, and which judges are no better than chance.

A pure function of the DataFrame ``Store.judge_check_results`` returns; :func:`read_judge_check_view` is the
one function that reads the store.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from core.jobs import new_job_id
from core.screen.check_pairs import ALL_KINDS, CONSENSUS, no_better_than_chance
from core.screen.judge_check import JudgeCheckConfig
from core.settings import config_from_form
from core.store import Store
from ui.views.screen import EMPTY_HEIGHT, empty_figure, figure_layout, markdown_literal, short_names

CHANCE_FLAG = "⚠ no better than chance"


def judge_check_config(values: Mapping[str, Any]) -> JudgeCheckConfig:
    """The Judge check form (values by field name) as a JudgeCheckConfig with a fresh job id."""
    return config_from_form(JudgeCheckConfig, {**values, "job_id": new_job_id("judge-check")})


@dataclass(frozen=True)
class JudgeCheckView:
    headers: list[str]
    rows: list[list[str]]
    figure: go.Figure
    note: str  # which check, how many pairs, who is flagged (Markdown)


def _kinds(results: pd.DataFrame) -> list[str]:
    kinds = list(dict.fromkeys(results["kind"]))
    return ([ALL_KINDS] if ALL_KINDS in kinds else []) + [kind for kind in kinds if kind != ALL_KINDS]


def _names(results: pd.DataFrame) -> dict[tuple[str, str], str]:
    """Each (judge, method) as rows and legends show it: "<judge>/<method>", judges by their last part."""
    pairs = list(dict.fromkeys(zip(results["judge"], results["method"], strict=True)))
    judges = short_names([judge for judge, _ in pairs])
    return {pair: f"{judge}/{pair[1]}" for pair, judge in zip(pairs, judges, strict=True)}


def _cell(row: pd.Series) -> str:
    if row is None or row["accuracy"] is None or not math.isfinite(row["accuracy"]):
        return "–"
    return f"{row['accuracy']:.2f} ± {(row['stderr'] or 0):.2f}" + (
        " ⚠" if no_better_than_chance(row["accuracy"], row["stderr"]) else "")


def check_table(results: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """One row per judge and method (the consensus last), one column per kind ("all" first): accuracy ±
    stderr, ⚠ where it is no better than chance, and the pairs counted."""
    if results.empty:
        return ["judge/method"], []
    kinds = _kinds(results)
    names = _names(results)
    rows = []
    for (judge, method), name in names.items():
        mine = results[(results["judge"] == judge) & (results["method"] == method)].set_index("kind")
        rows.append([markdown_literal(name), *[_cell(mine.loc[kind]) if kind in mine.index else "–"
                                               for kind in kinds]])
    pairs = results.groupby("kind")["pairs"].max()
    return ["judge/method", *[f"{kind} ({int(pairs[kind])} pairs)" for kind in kinds]], rows


def check_figure(results: pd.DataFrame) -> go.Figure:
    """Accuracy per kind, one bar per judge and method (± stderr), with the chance line at 0.5."""
    if results.empty:
        return empty_figure("Judge check (none yet: run one to see how well each judge orders known pairs)",
                            EMPTY_HEIGHT)
    kinds = _kinds(results)
    figure = go.Figure()
    for (judge, method), name in _names(results).items():
        mine = results[(results["judge"] == judge) & (results["method"] == method)].set_index("kind")
        values = [mine.loc[kind] if kind in mine.index else None for kind in kinds]
        figure.add_trace(go.Bar(
            name=name, x=kinds, y=[None if v is None else v["accuracy"] for v in values],
            error_y={"type": "data", "array": [0 if v is None else (v["stderr"] or 0) for v in values]},
            marker_pattern_shape="/" if judge == CONSENSUS else "",
            hovertemplate=f"{markdown_literal(name)}<br>%{{x}}: %{{y:.2f}}<extra></extra>",
        ))
    figure.add_hline(y=0.5, line_dash="dash", line_color="grey", annotation_text="chance")
    figure.update_layout(barmode="group", yaxis={"range": [0, 1.05], "title": "pairwise accuracy"},
                         legend={"orientation": "h", "y": -0.2})
    title = f"Judge check {results['job_id'].iloc[0]}: is the better answer scored higher?"
    return figure_layout(figure, title, 420)


def check_note(results: pd.DataFrame) -> str:
    if results.empty:
        return "No judge check yet."
    flagged = [name for (judge, method), name in _names(results).items()
               if judge != CONSENSUS and any(no_better_than_chance(row.accuracy, row.stderr) for row in
                                             results[(results.judge == judge) & (results.method == method)]
                                             .itertuples())]
    line = f"Newest check: `{results['job_id'].iloc[0]}`."
    if flagged:
        line += (f" {CHANCE_FLAG} on some kind (within 2 stderr of 0.5, or below): "
                 + ", ".join(f"**{markdown_literal(name)}**" for name in flagged) + ".")
    return line


def read_judge_check_view(store: Store) -> JudgeCheckView:
    results = store.judge_check_results()
    headers, rows = check_table(results)
    return JudgeCheckView(headers, rows, check_figure(results), check_note(results))
