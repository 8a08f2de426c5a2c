"""What the Reconstruct tab shows, computed without Gradio: the form <-> config, the instruction table page and
the length chart.

Everything here but ``read_instruction_view`` is a pure function of plain data, so it is unit-tested
without a browser.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import plotly.graph_objects as go

from core.errors import ForgetlessError
from core.jobs import new_job_id
from core.reconstruct.corpus import load_corpus
from core.reconstruct.reconstruction import ReconstructConfig
from core.reconstruct.steer import COVERAGE, check_steerable
from core.settings import config_from_form, form_values
from core.store import Store
from ui.views.formatting import PAGE_SIZE, clamp_page, page_label

TABLE_HEADERS = ["instruction", "tokens", "model", "temperature", "seed", "job", "created"]
_TABLE_KEYS = ["text", "n_tokens", "model", "temperature", "seed", "job_id", "created_at"]
FORM_FIELDS = ("model", "n", "batch_size", "temperature", "top_p", "max_new_tokens", "seed", "prefix", "stop",
               "from_corpus", "corpus_rows", "passage_max_words", "steer_examples", "steer_keep_all")
CORPUS_CHOICES = ("builtin:sharegpt", "builtin:alpacaeval")  # or type a file
FREE, STEERED, CORPUS = "free", "steered", "corpus"
MODE_CHOICES = [("Free sampling (the pre-query prefix)", FREE), ("Steered to under-filled clusters", STEERED),
                ("From a corpus", CORPUS)]


def mode_of(config: ReconstructConfig) -> str:
    """Which of the form's modes a job's config is."""
    return STEERED if config.steer else CORPUS if config.from_corpus else FREE


def mode_fields(mode: str) -> dict[str, bool]:
    """Which groups of the form the mode uses (the others are hidden): the pre-query override belongs to free
    sampling, the corpus fields to corpus seeding, the steering fields to steering."""
    return {"override": mode == FREE, "corpus": mode == CORPUS, "steer": mode == STEERED}


# -- the form ------------------------------------------------------------------------------------------
def reconstruct_config(values: Mapping[str, Any]) -> ReconstructConfig:
    """The form's values by field name as the config of a fresh job (ForgetlessError on a bad value).

    An empty prefix box means the derived prefix; the stop box holds one stop string per line, kept exactly as
    typed (blank lines dropped; empty: the template's own markers).
    """
    mode = values.get("mode") or FREE
    if mode not in (FREE, STEERED, CORPUS):
        raise ForgetlessError(f"mode must be one of {FREE}, {STEERED}, {CORPUS}")
    prefix, stop = values.get("prefix"), values.get("stop")
    corpus = str(values.get("from_corpus") or "").strip()
    if mode == CORPUS and not corpus:
        raise ForgetlessError("From a corpus needs a corpus: pick a built-in one or type a file path")
    rest = {name: value for name, value in values.items() if name not in ("mode", "model", "prefix", "stop")}
    config = config_from_form(ReconstructConfig, {
        **rest, "model": str(values.get("model") or "").strip(), "job_id": new_job_id("reconstruct"),
        # A mode's fields count only in that mode: the hidden boxes of the others may still hold values.
        "prefix": prefix if mode == FREE and (prefix or "").strip() else None,
        "from_corpus": corpus if mode == CORPUS else None, "steer": COVERAGE if mode == STEERED else None})
    stops = tuple(line for line in (stop or "").splitlines() if line.strip())
    return dataclasses.replace(config, stop=stops or None)


def with_readable_corpus(config: ReconstructConfig) -> ReconstructConfig:
    """``config`` once its corpus file (if any) reads, so a bad file is one message in the form rather than a
    failed job; call it after the path is confined to the app's folders."""
    if config.from_corpus and not config.from_corpus.startswith("builtin:"):
        load_corpus(config.from_corpus, config.passage_max_words)
    return config


def with_steerable(config: ReconstructConfig, store: Store) -> ReconstructConfig:
    """``config`` once the store has a profile to steer by (a steered job), so a missing profile is one message in
    the form rather than a failed job."""
    if config.steer:
        check_steerable(store)
    return config


def reconstruct_form(config: ReconstructConfig) -> dict[str, Any]:
    """A job's settings back into the form, by field name (and the mode they make)."""
    return {**form_values(config, FORM_FIELDS), "prefix": config.prefix or "", "stop": "\n".join(config.stop or ()),
            "from_corpus": config.from_corpus or "", "mode": mode_of(config)}


# -- the table and the chart -----------------------------------------------------------------------------
def _cell(key: str, value: Any) -> Any:
    if value is None:
        return ""
    if key == "created_at" and isinstance(value, datetime):
        return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    if key == "temperature":
        return round(float(value), 3)
    return value


def instruction_rows(records: list[dict[str, Any]]) -> list[list[Any]]:
    """Store records (``Store.page_instructions``) as table rows in ``TABLE_HEADERS`` order."""
    return [[_cell(key, record.get(key)) for key in _TABLE_KEYS] for record in records]


def _whole_tick_step(span: int, ticks: int = 10) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50, ... giving at most ``ticks`` ticks: no ticks at 5.5 tokens."""
    step = 1
    while span / step > ticks:
        step = step * 5 // 2 if str(step).startswith("2") else step * 2
    return step


def length_histogram(lengths: list[int]) -> go.Figure:
    """Distribution of instruction lengths in tokens (an empty store gets a labelled empty chart)."""
    figure = go.Figure()
    if lengths:
        # Lengths are whole tokens: bins of whole widths centred on integers, at most ~40 of them.
        low, high = min(lengths), max(lengths)
        width = max(1, math.ceil((high - low + 1) / 40))
        figure.add_trace(go.Histogram(
            x=lengths, xbins={"start": low - 0.5, "end": high + 0.5, "size": width}, marker_color="#4f6bed",
            hovertemplate="%{x} tokens: %{y}<extra></extra>",
        ))
        figure.update_xaxes(tick0=0, dtick=_whole_tick_step(high - low + 1))
        median = sorted(lengths)[len(lengths) // 2]
        title = f"Instruction length ({len(lengths)} instructions, median {median} tokens)"
    else:
        title = "Instruction length (no instructions yet)"
        figure.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
        figure.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    figure.update_layout(
        title=title, xaxis_title="tokens", yaxis_title="instructions", bargap=0.05, height=320,
        margin={"l": 50, "r": 20, "t": 50, "b": 45}, template="plotly_white",
    )
    return figure


@dataclass(frozen=True)
class InstructionView:
    """One screenful of the instruction store: the page asked for (clamped), its rows, and all lengths."""

    page: int
    total: int
    rows: list[list[Any]]
    lengths: list[int]
    label: str


def read_instruction_view(store: Store, search: str, page: float | None) -> InstructionView:
    """Read the table page and the length distribution the Reconstruct tab shows (read-only queries)."""
    search = search or ""
    total = store.count_instructions(search)
    current = clamp_page(page, total)
    records = store.page_instructions(search, current, PAGE_SIZE)
    return InstructionView(current, total, instruction_rows(records), store.instruction_lengths(),
                           page_label(current, total, search))
