"""What the Screen tab shows, computed without Gradio: job configs from form values, table rows, figures.

Everything here is a pure function of plain values or DataFrames read by the store's screening views
(``judge_score_matrix``, ``consensus_table``, ``most_disputed``, ``agreement_frame``), so it is
unit-tested without a browser; :func:`read_screen_views` is the one function that reads the store.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.consensus import AGREEMENT_METHODS, agreement_matrix
from core.dashboard import new_job_id, page_count, required_int
from core.judge import JudgeConfig
from core.respond import RespondConfig
from core.store import Store

CONSENSUS_PAGE_SIZE = 10  # instructions per page of the side-by-side table
HEATMAP_RESPONSES = 40  # responses (rows) in the per-judge score heatmap
DISPUTED_LIMIT = 15
CELL_CHARS = 360  # response text shown per table cell
DISPUTED_HEADERS = ["instruction", "model", "response", "mean", "std", "min", "max", "judges"]
SCORE_COLOURS = "RdYlGn"  # 1 red .. 5 green
EMPTY_HEIGHT = 200  # an empty chart: its title says why, no need for a full-size blank
_MARKDOWN_SPECIALS = set("\\`*_{}[]<>()#+-.!|~")


# -- job forms -----------------------------------------------------------------------------------------
def _names(values: Sequence[str] | str | None) -> tuple[str, ...]:
    """A multiselect's values (or one typed string, comma-separated) as model specs."""
    if values is None:
        return ()
    items = values.split(",") if isinstance(values, str) else values
    return tuple(str(item).strip() for item in items if str(item).strip())


def respond_config(models: Sequence[str] | str | None, k: float | None, temperature: float, top_p: float,
                   max_new_tokens: float | None, batch_size: float | None, seed: float | None) -> RespondConfig:
    """The Responses form as a RespondConfig with a fresh job id (ForgetlessError on a bad value)."""
    return RespondConfig(
        models=_names(models), k=required_int(k, "K"), temperature=float(temperature), top_p=float(top_p),
        max_new_tokens=required_int(max_new_tokens, "max new tokens"),
        batch_size=required_int(batch_size, "batch size"), seed=required_int(seed, "seed"),
        job_id=new_job_id("respond"),
    )


def respond_form(config: RespondConfig) -> tuple[Any, ...]:
    """A job's settings back into the form, in :func:`respond_config`'s argument order."""
    return (list(config.models), config.k, config.temperature, config.top_p, config.max_new_tokens,
            config.batch_size, config.seed)


def judge_config(judges: Sequence[str] | str | None, method: str, exclude_self: bool, retry_failed: bool,
                 batch_size: float | None) -> JudgeConfig:
    """The Judges form as a JudgeConfig with a fresh job id (ForgetlessError on a bad value)."""
    return JudgeConfig(judges=_names(judges), method=method, exclude_self=bool(exclude_self),
                       retry_failed=bool(retry_failed), batch_size=required_int(batch_size, "batch size"),
                       job_id=new_job_id("judge"))


def judge_form(config: JudgeConfig) -> tuple[Any, ...]:
    return list(config.judges), config.method, config.exclude_self, config.retry_failed, config.batch_size


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
def _layout(figure: go.Figure, title: str, height: int) -> go.Figure:
    figure.update_layout(title=title, height=height, template="plotly_white",
                         margin={"l": 60, "r": 20, "t": 60, "b": 50})
    return figure


def empty_figure(title: str, height: int = 320) -> go.Figure:
    """A labelled chart with nothing to show yet (no axes pretending there is data)."""
    figure = go.Figure()
    figure.update_xaxes(visible=False)
    figure.update_yaxes(visible=False)
    return _layout(figure, title, height)


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
    return _layout(figure, f"Scores per judge ({len(matrix)} responses, best consensus first)", height)


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
    return _layout(figure, title, 360)


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
