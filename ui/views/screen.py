"""What the Screen tab shows, computed without Gradio: job configs from form values, table rows, figures.

Everything here is a pure function of plain values or DataFrames read by the store's screening views
(``judge_score_matrix``, ``consensus_table``, ``most_disputed``, ``agreement_frame``), so it is
unit-tested without a browser; :func:`read_screen_views` is the one function that reads the store.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.jobs import new_job_id
from core.screen.consensus import AGREEMENT_METHODS, agreement_matrix
from core.screen.judge import JudgeConfig
from core.screen.respond import RespondConfig
from core.settings import config_from_form
from core.store import Store
from ui.views.formatting import page_count

CONSENSUS_PAGE_SIZE = 10  # instructions per page of the side-by-side table
HEATMAP_RESPONSES = 40  # responses (rows) in the per-judge score heatmap
DISPUTED_LIMIT = 15
CELL_CHARS = 360  # response text shown per table cell
DISPUTED_HEADERS = ["instruction", "model", "response", "mean", "std", "min", "max", "judges"]
SCORE_COLOURS = "RdYlGn"  # 1 red .. 5 green
EMPTY_HEIGHT = 200  # an empty chart: its title says why, no need for a full-size blank
_MARKDOWN_SPECIALS = set("\\`*_{}[]<>()#+-.!|~")


# -- job forms -----------------------------------------------------------------------------------------
def respond_config(values: Mapping[str, Any]) -> RespondConfig:
    """The Responses form (values by field name) as a RespondConfig with a fresh job id (ForgetlessError on
    a bad value); a typed comma list of models counts as several."""
    return config_from_form(RespondConfig, {**values, "job_id": new_job_id("respond")})


def judge_config(values: Mapping[str, Any]) -> JudgeConfig:
    """The Judges form (values by field name) as a JudgeConfig with a fresh job id."""
    return config_from_form(JudgeConfig, {**values, "job_id": new_job_id("judge")})


# -- text cells ----------------------------------------------------------------------------------------
_MARKDOWN_ACTIVE = set("\\`*_[]<>|~#&")  # what could format a user's text (name, path, error) in Markdown


def markdown_literal(text: Any) -> str:
    """``text`` shown literally inside a Markdown line or table cell: no links, tags, entities or emphasis."""
    return "".join("\\" + char if char in _MARKDOWN_ACTIVE else char for char in str(text))


def shorten(text: Any, limit: int = CELL_CHARS) -> str:
    """One table cell's text: whitespace folded, cut at ``limit`` characters with an ellipsis."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return ""
    folded = " ".join(str(text).split())
    return folded if len(folded) <= limit else folded[: limit - 1].rstrip() + "…"


def short_model(spec: Any) -> str:
    """A model spec as a table or axis shows it: a folder or file path by its last part, an alias as is."""
    if spec is None or (isinstance(spec, float) and math.isnan(spec)):
        return ""
    text = str(spec).rstrip("/")
    name, colon, model = text.partition(":")
    if colon and name.isidentifier():  # a signal judge: its name, then its model shortened
        return f"{name}:{short_model(model)}"
    return text.rsplit("/", 1)[-1] if "/" in text else text


def short_names(specs: Sequence[str]) -> list[str]:
    """Several specs shortened by :func:`short_model`, unless that would make two of them look the same."""
    short = [short_model(spec) for spec in specs]
    return short if len(set(short)) == len(short) else [str(spec) for spec in specs]


def escape_markdown(text: str) -> str:
    """Model text shown literally inside a markdown cell (no headings, links or tables of its own)."""
    return "".join("\\" + char if char in _MARKDOWN_SPECIALS else char for char in text)


def _number(value: Any, digits: int = 2) -> Any:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return round(float(value), digits)


# -- the consensus table: each instruction's responses side by side ---------------------------------------
@dataclass(frozen=True)
class ConsensusTable:
    headers: list[str]
    rows: list[list[str]]

    @property
    def column_widths(self) -> list[str]:
        """The instruction a fixed share, the response columns the rest, evenly."""
        slots = len(self.headers) - 1
        if not slots:
            return ["100%"]
        first = 30 if slots == 1 else 22
        return [f"{first}%", *[f"{(100 - first) / slots:.2f}%"] * slots]


def _response_cell(group: pd.DataFrame) -> str:
    """One response with its consensus and every judge's score, as markdown (the kept one starred)."""
    first = group.iloc[0]
    scores = [f"{judge} {float(score):.1f}" for judge, score in zip(group["judge"], group["score"], strict=True)
              if isinstance(judge, str) and pd.notna(score)]
    if pd.notna(first["mean"]):
        spread = f" ± {float(first['std']):.2f}" if pd.notna(first["std"]) else ""
        head = f"mean **{float(first['mean']):.2f}**{spread}"
    else:
        head = "not judged yet"
    if bool(first["is_best"]):
        head = "★ kept · " + head
    judges = f"  \n{' · '.join(scores)}" if scores else ""
    return f"{head}{judges}  \n{escape_markdown(shorten(first['response']))}"


def consensus_rows(table: pd.DataFrame) -> ConsensusTable:
    """``Store.consensus_table`` (long: a row per response and judge) as one row per instruction with a
    column per response slot (model and sample number), each cell holding that response and its scores."""
    if table.empty:
        return ConsensusTable(["instruction"], [])
    slot = table["model"].map(short_model) + " #" + (table["sample_index"].astype(int) + 1).astype(str)
    table = table.assign(slot=slot)
    slots = list(dict.fromkeys(table.sort_values(["model", "sample_index"])["slot"]))  # model order
    rows = []
    for _, instruction in table.groupby("instruction_id", sort=False):
        cells = {name: _response_cell(group) for name, group in instruction.groupby("slot", sort=False)}
        text = escape_markdown(shorten(instruction["instruction"].iloc[0]))
        rows.append([text, *[cells.get(name, "") for name in slots]])
    return ConsensusTable(["instruction", *slots], rows)


def consensus_page_label(page: int, total: int, page_size: int = CONSENSUS_PAGE_SIZE) -> str:
    what = f"{total} instruction{'s' if total != 1 else ''} with responses"
    return f"{what} · page {page} of {page_count(total, page_size)}"


def disputed_rows(disputed: pd.DataFrame) -> list[list[Any]]:
    """``Store.most_disputed`` as rows in DISPUTED_HEADERS order; responses the judges agree on
    exactly (std 0, e.g. with a single judge) are not disputed and left out."""
    return [[shorten(row.instruction, 160), short_model(row.model), shorten(row.response, 240), _number(row.mean),
             _number(row.std), _number(row.min), _number(row.max), int(row.n_judges)]
            for row in disputed.itertuples(index=False) if pd.notna(row.std) and row.std > 0]


# -- figures -------------------------------------------------------------------------------------------
def figure_layout(figure: go.Figure, title: str, height: int) -> go.Figure:
    figure.update_layout(title=title, height=height, template="plotly_white",
                         margin={"l": 60, "r": 20, "t": 60, "b": 50})
    return figure


def empty_figure(title: str, height: int = 320) -> go.Figure:
    """A labelled chart with nothing to show yet (no axes pretending there is data)."""
    figure = go.Figure()
    figure.update_xaxes(visible=False)
    figure.update_yaxes(visible=False)
    return figure_layout(figure, title, height)


def score_heatmap(matrix: pd.DataFrame) -> go.Figure:
    """``Store.judge_score_matrix`` (responses × judges, best mean first) as a 1-5 heatmap."""
    judges = [column for column in matrix.columns if column not in ("response_id", "model", "mean")]
    if matrix.empty or not judges:
        return empty_figure("Scores per judge (no judged responses yet)", EMPTY_HEIGHT)
    labels = [f"{short_model(model)} · {str(rid)[:6]} · {mean:.2f}" for rid, model, mean
              in zip(matrix["response_id"], matrix["model"], matrix["mean"], strict=True)]
    figure = go.Figure(go.Heatmap(
        z=matrix[judges].to_numpy(dtype=float), x=short_names(judges), y=labels, zmin=1, zmax=5,
        colorscale=SCORE_COLOURS, colorbar={"title": "score"},
        hovertemplate="%{y}<br>judge %{x}: %{z:.2f}<extra></extra>",
    ))
    figure.update_yaxes(autorange="reversed", tickfont={"size": 10})
    height = min(900, max(320, 120 + 16 * len(matrix)))
    return figure_layout(figure, f"Scores per judge ({len(matrix)} responses, best consensus first)", height)


def _pairs_of_one_method(pairs: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    if "method" not in pairs.columns or pairs.empty:
        return pairs, ""
    method = "probs" if "probs" in set(pairs["method"]) else str(pairs["method"].iloc[0])
    return pairs[pairs["method"] == method], method


def agreement_figure(pairs: pd.DataFrame) -> go.Figure:
    """``Store.agreement_frame`` as two judge × judge heatmaps: Spearman ρ and Kendall τ, -1 to 1."""
    pairs, method = _pairs_of_one_method(pairs)
    if pairs.empty:
        return empty_figure("Judge agreement (needs two judges that scored the same responses)", EMPTY_HEIGHT)
    judges = sorted(set(pairs["judge_a"]) | set(pairs["judge_b"]))
    labels = short_names(judges)
    names = {"spearman": "Spearman ρ", "kendall": "Kendall τ"}
    figure = make_subplots(rows=1, cols=len(AGREEMENT_METHODS), horizontal_spacing=0.12,
                           subplot_titles=[names[m] for m in AGREEMENT_METHODS])
    for column, correlation in enumerate(AGREEMENT_METHODS, start=1):
        matrix = agreement_matrix(pairs, correlation, judges)
        figure.add_trace(go.Heatmap(
            z=matrix.to_numpy(dtype=float), x=labels, y=labels, zmin=-1, zmax=1, colorscale="RdBu",
            texttemplate="%{z:.2f}", showscale=column == 1, name=names[correlation],
            hovertemplate=f"%{{y}} vs %{{x}}: {names[correlation]} %{{z:.2f}}<extra></extra>",
        ), row=1, col=column)
        figure.update_yaxes(autorange="reversed", row=1, col=column)
    shared = int(pairs["n"].max()) if "n" in pairs.columns and len(pairs) else 0
    title = f"Judge agreement ({method} scores, up to {shared} shared responses)" if method else "Judge agreement"
    return figure_layout(figure, title, 360)


# -- reading the store ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScreenViews:
    heatmap: go.Figure
    consensus: ConsensusTable
    page: int
    page_label: str
    disputed: list[list[Any]]
    agreement: go.Figure


def read_consensus_page(store: Store, page: float | None) -> tuple[ConsensusTable, int, str]:
    """One page of the side-by-side table (the page clamped to the pages there are)."""
    total = store.count_screened_instructions()
    current = min(max(1 if page is None else int(page), 1), page_count(total, CONSENSUS_PAGE_SIZE))
    table = consensus_rows(store.consensus_table(current, CONSENSUS_PAGE_SIZE))
    return table, current, consensus_page_label(current, total)


def read_screen_views(store: Store, page: float | None) -> ScreenViews:
    """Everything below the Screen tab's launchers, read from the store (read-only queries)."""
    table, current, label = read_consensus_page(store, page)
    return ScreenViews(score_heatmap(store.judge_score_matrix(HEATMAP_RESPONSES)), table, current, label,
                       disputed_rows(store.most_disputed(DISPUTED_LIMIT)), agreement_figure(store.agreement_frame()))
