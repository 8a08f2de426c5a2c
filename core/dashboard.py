"""What the app shows, computed without Gradio: status lines, table rows, figures, job ids.

Everything here but ``read_instruction_view`` is a pure function of plain data, so it is unit-tested
without a browser; the UI handlers only move widget values in and these results out.
"""

from __future__ import annotations

import argparse
import math
import secrets
import shlex
import time
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from core.cli import build_parser
from core.jobs import JobInfo
from core.store import Store

PAGE_SIZE = 20
TABLE_HEADERS = ["instruction", "tokens", "model", "temperature", "seed", "job", "created"]
_TABLE_KEYS = ["text", "n_tokens", "model", "temperature", "seed", "job_id", "created_at"]


def new_job_id(kind: str, now: float | None = None) -> str:
    """A fresh id per click (timestamp for sorting by eye, random tail so two clicks never collide)."""
    stamp = datetime.fromtimestamp(time.time() if now is None else now).strftime("%Y%m%d-%H%M%S")
    return f"{kind}-{stamp}-{secrets.token_hex(3)}"


def format_duration(seconds: float | None) -> str:
    """``75 -> '1:15'``, ``3725 -> '1:02:05'``; unknown or negative -> '—'."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "—"
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def job_status_line(job: JobInfo | None) -> str:
    """One line saying what the newest job is doing: state, stored/total, tokens/s, ETA (or why it ended)."""
    if job is None:
        return "No reconstruction job yet: pick a model and press Start."
    progress = job.progress or {}
    summary = job.summary or {}
    stored = summary.get("stored", progress.get("stored"))
    total = summary.get("target", progress.get("total"))
    counts = f"{stored}/{total} stored" if stored is not None and total is not None else ""
    head = f"{job.state} · {job.job_id}"
    if job.state == "starting" or (job.state == "running" and "stored" not in progress):
        return f"{head} · {progress.get('phase', 'starting')}…"
    if job.state == "running":
        rate = progress.get("tokens_per_s")
        parts = [counts, f"{rate:.0f} tokens/s" if rate is not None else "",
                 f"ETA {format_duration(progress.get('eta_s'))}",
                 f"elapsed {format_duration(progress.get('elapsed_s'))}"]
        return " · ".join([head, *[part for part in parts if part]])
    if job.state == "done":
        rate = summary.get("tokens_per_s", progress.get("tokens_per_s"))
        seconds = summary.get("seconds", progress.get("elapsed_s"))
        parts = [counts, f"{rate:.0f} tokens/s" if rate is not None else "",
                 f"took {format_duration(seconds)}"]
        return " · ".join([head, *[part for part in parts if part]])
    if job.state == "failed":
        return f"{head} · {job.error or 'the job stopped with an error; see log.txt in its folder'}"
    if job.state == "cancelled":
        return " · ".join(part for part in [head, counts, "stopped on request"] if part)
    # interrupted: the worker process vanished without recording an end state
    return " · ".join(part for part in [head, counts, "its process ended without finishing"] if part)


def page_count(total: int, page_size: int = PAGE_SIZE) -> int:
    return max(1, math.ceil(total / page_size))


def clamp_page(page: float | None, total: int, page_size: int = PAGE_SIZE) -> int:
    """A typed page number made valid: empty or below 1 -> 1, past the end -> the last page."""
    wanted = 1 if page is None else int(page)
    return min(max(wanted, 1), page_count(total, page_size))


def page_label(page: int, total: int, search: str = "", page_size: int = PAGE_SIZE) -> str:
    what = f"{total} instruction{'s' if total != 1 else ''}"
    if search.strip():
        what += f" matching “{search.strip()}”"
    return f"{what} · page {page} of {page_count(total, page_size)}"


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


def stage_flags(kind: str) -> set[str]:
    """The option strings ``forgetless <kind>`` accepts (read from the CLI parser, so they never drift)."""
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction) and kind in action.choices:
            return set(action.choices[kind]._option_string_actions)
    return set()


def cli_command(kind: str, config: Any, workspace: Path, flags: set[str] | None = None) -> str:
    """The ``forgetless`` command that runs the same job headless.

    Fields left at None, and fields the CLI has no flag for (``flags``, default: the real parser's), are
    omitted; such fields keep their defaults in the UI, so the command still reproduces the job.
    """
    known = stage_flags(kind) if flags is None else flags
    parts = ["forgetless", kind]
    for field in fields(config):
        value, flag = getattr(config, field.name), "--" + field.name.replace("_", "-")
        if value is None or flag not in known:
            continue
        for item in value if isinstance(value, tuple) else (value,):
            parts += [flag, str(item)]
    parts += ["--workspace", str(workspace)]
    return shlex.join(parts)


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
