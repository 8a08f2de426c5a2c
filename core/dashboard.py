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
from dataclasses import MISSING, dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from core.cli import build_parser
from core.errors import ForgetlessError
from core.jobs import JobInfo, list_jobs, load_job_config, request_cancel, start_background
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


def _job_counts(job: JobInfo, unit: str, noun: str | None) -> str:
    """``12/100 stored`` style: the reconstruct summary's own keys, else the newest progress line."""
    progress, summary = job.progress or {}, job.summary or {}
    if unit == "stored":
        done, total = summary.get("stored", progress.get("stored")), summary.get("target", progress.get("total"))
    else:
        done, total = progress.get(unit), progress.get("total")
    if done is None or total is None:
        return ""
    return f"{done}/{total} {noun or unit}"


def _job_rate(job: JobInfo, unit: str, noun: str | None, rate: float | None) -> str:
    """tokens/s; a job that makes no tokens (probability judging, profiling) gets items/s instead."""
    if unit == "stored":
        return f"{rate:.0f} tokens/s" if rate is not None else ""
    if rate:
        return f"{rate:.0f} tokens/s"
    progress = job.progress or {}
    done, elapsed = progress.get(unit), progress.get("elapsed_s")
    if done and elapsed:
        return f"{done / elapsed:.1f} {noun or unit}/s"
    return ""


def job_status_line(job: JobInfo | None, *, unit: str = "stored", noun: str | None = None,
                    idle: str = "No reconstruction job yet: pick a model and press Start.") -> str:
    """One line saying what the newest job is doing: state, done/total, tokens/s, ETA (or why it ended).

    ``unit`` is the progress key that counts finished work ("stored" for reconstruction, "done" for the
    later stages), ``noun`` names it in the line ("responses"), ``idle`` is the line when there is no job.
    """
    if job is None:
        return idle
    progress = job.progress or {}
    summary = job.summary or {}
    counts = _job_counts(job, unit, noun)
    head = f"{job.state} · {job.job_id}"
    if job.state == "queued":  # waiting for the workspace's compute slot
        holder = progress.get("waiting_for")
        return f"{head} · waiting for {f'job {holder}' if holder else 'another job'} to finish"
    if job.state == "starting" or (job.state == "running" and unit not in progress):
        return f"{head} · {progress.get('phase', 'starting')}…"
    if job.state == "running":
        parts = [counts, f"stage {progress['stage']}" if progress.get("stage") else "",
                 _job_rate(job, unit, noun, progress.get("tokens_per_s")),
                 f"ETA {format_duration(progress.get('eta_s'))}",
                 f"elapsed {format_duration(progress.get('elapsed_s'))}"]
        return " · ".join([head, *[part for part in parts if part]])
    if job.state == "done":
        rate = summary.get("tokens_per_s", progress.get("tokens_per_s"))
        seconds = summary.get("seconds", progress.get("elapsed_s"))
        nothing = not counts and summary.get("pending_before") == 0
        parts = ["nothing was pending" if nothing else counts, _job_rate(job, unit, noun, rate),
                 f"took {format_duration(seconds)}"]
        return " · ".join([head, *[part for part in parts if part]])
    if job.state == "failed":
        return f"{head} · {job.error or 'the job stopped with an error; see log.txt in its folder'}"
    if job.state == "cancelled":
        return " · ".join(part for part in [head, counts, "stopped on request"] if part)
    # interrupted: the worker process vanished without recording an end state
    return " · ".join(part for part in [head, counts, "its process ended without finishing"] if part)


def job_marker(job: JobInfo | None, unit: str | None = None) -> str:
    """What changes when the store may hold new rows: another job, a new state (and, with ``unit``, a
    higher done count). Tabs redraw their views only when it changes."""
    if job is None:
        return "no-job"
    count = f"|{job.progress.get(unit)}" if unit else ""
    return f"{job.job_id}|{job.state}{count}"


def required_int(value: float | None, label: str) -> int:
    """A typed whole number from a gr.Number (None when the box was cleared)."""
    if value is None:
        raise ForgetlessError(f"{label} is empty; type a whole number")
    return int(value)


class StageJobs:
    """The background jobs of one stage in one workspace, as a tab drives them (no Gradio here)."""

    def __init__(self, workspace: Path, kind: str, config_cls: type) -> None:
        self.workspace, self.kind, self.config_cls = Path(workspace), kind, config_cls

    def newest(self) -> JobInfo | None:
        jobs = list_jobs(self.workspace, self.kind)
        return jobs[0] if jobs else None

    def config(self, job: JobInfo | None) -> Any | None:
        """The settings a job runs with (None when there is no job or its YAML is unreadable)."""
        if job is None:
            return None
        try:
            return load_job_config(job.folder, self.config_cls)
        except ForgetlessError:
            return None

    def start(self, config: Any) -> str:
        """Spawn the job (one per stage at a time); a ForgetlessError says why not."""
        running = self.newest()
        if running is not None and running.active:
            raise ForgetlessError(f"job {running.job_id} is still {running.state}; cancel it or wait for it")
        start_background(self.workspace, self.kind, config, config.job_id)
        return f"Started {config.job_id}."

    def cancel(self) -> str:
        job = self.newest()
        if job is None or not job.active:
            return "No job is running."
        request_cancel(job.folder)
        return f"Cancel requested for {job.job_id}: the batch in flight is dropped, stored rows stay."

    def command(self, job: JobInfo | None) -> str | None:
        """The newest job as a ``forgetless`` command line (None without a readable config)."""
        config = self.config(job)
        return cli_command(self.kind, config, self.workspace) if config is not None else None


class LazyStore:
    """The workspace's store, opened on first use: creating it takes a write lock, so not at app start."""

    def __init__(self, workspace: Path) -> None:
        self.workspace = Path(workspace)
        self._store: Store | None = None

    def get(self) -> Store:
        if self._store is None:
            self._store = Store.for_workspace(self.workspace)
        return self._store


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


def _stage_actions(kind: str) -> dict[str, argparse.Action]:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction) and kind in action.choices:
            return dict(action.choices[kind]._option_string_actions)
    return {}


def stage_flags(kind: str) -> set[str]:
    """The option strings ``forgetless <kind>`` accepts (read from the CLI parser, so they never drift)."""
    return set(_stage_actions(kind))


def _flag_words(flag: str, value: Any, action: argparse.Action | None) -> list[str]:
    """One field as CLI words: a store_true flag alone (or nothing), a list as repeated flags where the
    flag repeats (append) and comma-joined otherwise."""
    if isinstance(action, argparse._StoreTrueAction):
        return [flag] if value else []
    if isinstance(value, tuple):
        if isinstance(action, argparse._AppendAction):
            return [word for item in value for word in (flag, str(item))]
        return [flag, ",".join(str(item) for item in value)]
    return [flag, str(value)]


def cli_command(kind: str, config: Any, workspace: Path, flags: set[str] | None = None) -> str:
    """The ``forgetless`` command that runs the same job headless.

    Fields the CLI has no flag for (``flags``, default: the real parser's) are omitted; such fields keep
    their defaults in the UI, so the command still reproduces the job. A field left at None is omitted
    too, unless its default is something else: then it was switched off, which the CLI spells ``none``.
    """
    actions = _stage_actions(kind)
    known = set(actions) if flags is None else flags
    parts = ["forgetless", kind]
    for field in fields(config):
        value, flag = getattr(config, field.name), "--" + field.name.replace("_", "-")
        if flag not in known:
            continue
        if value is None:
            if field.default is None or field.default is MISSING:
                continue
            value = "none"
        parts += _flag_words(flag, value, actions.get(flag))
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
