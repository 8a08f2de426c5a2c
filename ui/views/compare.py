"""What the Compare tab shows, computed without Gradio: the form as a CompareConfig and back, the replies side by
side (one column per model, with its name and sampling settings), and the table of past comparisons."""

from __future__ import annotations

import dataclasses
import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from core.cli.flags import cli_command
from core.errors import ForgetlessError
from core.eval.compare import CompareConfig, PickedPrompt, pick_prompt
from core.eval.plan import target_label
from core.jobs import JobInfo, job_folder, job_info
from core.settings import config_from_form, form_values
from core.store import Store
from ui.views.jobs import StageJobs
from ui.views.screen import shorten

KIND = "compare"
IDLE = "No comparison yet: pick the base and tuned runs, type or draw a prompt, then press Start."
# The form's fields besides base and runs, which together are CompareConfig.models.
FIELDS = ("source", "prompt", "pick_seed", "domain", "domain_test_fraction", "max_new_tokens", "temperature", "top_p",
          "seed")
HISTORY_HEADERS = ["when (UTC)", "prompt", "source", "model", "reply", "settings", "seconds"]
HISTORY_ROWS = 200
SOURCE_NAMES = {"typed": "typed", "held-out": "held-out general instruction", "domain": "domain test question"}


# -- the form --------------------------------------------------------------------------------------------------
def compare_config(values: Mapping[str, Any]) -> CompareConfig:
    """The form's values by name (base, runs and FIELDS) as a validated config named by its settings (so pressing
    Start again on the same comparison resumes it). A drawn source ignores the prompt box: the job draws the same
    prompt again from the source and seed."""
    fields = {name: values[name] for name in FIELDS if name in values}
    fields["models"] = [values.get("base") or "", *(values.get("runs") or [])]
    if fields.get("source", "typed") != "typed":
        fields["prompt"] = None
    config = config_from_form(CompareConfig, fields)
    return dataclasses.replace(config, job_id=config.resolved_job_id())


def draw_config(values: Mapping[str, Any]) -> CompareConfig:
    """The config the Draw button draws with: the form's, with its prompt source (never typed)."""
    if (values.get("source") or "typed") == "typed":
        raise ForgetlessError("choose held-out or domain as the prompt source to draw a prompt")
    return compare_config(values)


def draw(store: Store, values: Mapping[str, Any]) -> PickedPrompt:
    """The prompt the form's source and draw seed pick (what the job will ask)."""
    return pick_prompt(draw_config(values), store)


def form_of(config: CompareConfig, prompt: str | None = None) -> dict[str, Any]:
    """A config as the form's values by name; ``prompt`` (a drawn source's text) fills the prompt box."""
    form = form_values(config, FIELDS)
    form.update(base=config.models[0] if config.models else None, runs=list(config.models[1:]),
                prompt=prompt if prompt is not None else config.prompt or "", domain=config.domain or "")
    return form


def job_prompt(store: Store, config: CompareConfig) -> str | None:
    """The prompt a job asked: its stored replies', else drawn again (None when it cannot be)."""
    if config.source == "typed":
        return config.prompt
    rows = store.comparisons(job_id=config.resolved_job_id(), limit=1)
    if len(rows):
        return str(rows["prompt"].iloc[0])
    try:
        return pick_prompt(config, store).text
    except ForgetlessError:
        return None


class CompareJobs(StageJobs):
    """The Compare tab's jobs; the CLI line leaves the job id out (the CLI derives the same one)."""

    def __init__(self, workspace: Path) -> None:
        super().__init__(workspace, KIND, CompareConfig)

    def command(self, job: JobInfo | None) -> str | None:
        config = self.config(job)
        return None if config is None else cli_command(KIND, dataclasses.replace(config, job_id=None), self.workspace)


# -- the replies side by side ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reply:
    """One model's column: who answered and, once stored, what and how."""

    model: str
    label: str
    role: str  # base | run | model
    row: Mapping[str, Any] | None  # its stored comparison (None: not answered yet)


def settings_line(sampling: Mapping[str, Any]) -> str:
    """``temperature 0.7 · top-p 0.9 · max 256 new tokens · seed 0 · chat template``."""
    parts = [f"temperature {sampling.get('temperature')}", f"top-p {sampling.get('top_p')}",
             f"max {sampling.get('max_new_tokens')} new tokens", f"seed {sampling.get('seed')}"]
    if sampling.get("prompt_format"):
        parts.append("chat template" if sampling["prompt_format"] == "chat" else "plain prompt (no chat template)")
    return " · ".join(parts)


def replies_of(models: Sequence[str], rows: pd.DataFrame) -> list[Reply]:
    """One Reply per model in the job's order (the models of ``rows`` when the job's list is unknown)."""
    stored = {row["model"]: row for row in rows.to_dict("records")}
    order = list(models) or list(stored)
    replies = []
    for position, model in enumerate(order):
        row = stored.get(model)
        is_run = isinstance(row.get("run_dir"), str) if row is not None else (Path(model) / "config.yaml").is_file()
        role = "run" if is_run else "base" if position == 0 else "model"
        replies.append(Reply(model, target_label(model), role, row))
    return replies


_CARD = ("border:1px solid var(--border-color-primary);border-radius:8px;padding:0.7em 0.9em;"
         "background:var(--block-background-fill);min-width:0")
_NOTE = "font-size:0.85em;opacity:0.8"


def _card(reply: Reply, waiting: str) -> str:
    label = html.escape(reply.label)
    head = (f'<div class="cmp-model" style="font-weight:600">{label} '
            f'<span class="cmp-role" style="font-weight:400;opacity:0.7">· {reply.role}</span></div>')
    if reply.row is None:
        body = f'<div class="cmp-waiting" style="opacity:0.7;font-style:italic">{html.escape(waiting)}</div>'
        return f'<div class="cmp-reply" data-model="{label}" style="{_CARD}">{head}{body}</div>'
    row = reply.row
    settings = settings_line(row["sampling"])
    base = row.get("base_model")
    if isinstance(base, str) and base:
        settings += f" · tuned from {target_label(base)}"
    stats = f"{int(row['n_tokens'])} tokens · {float(row['seconds']):.1f} s"
    if not row.get("stopped"):
        stats += " · cut at max new tokens"
    text = str(row["reply"]) or "(empty reply)"
    return (f'<div class="cmp-reply" data-model="{label}" style="{_CARD}">{head}'
            f'<div class="cmp-settings" style="{_NOTE}">{html.escape(settings)}</div>'
            f'<div class="cmp-stats" style="{_NOTE}">{html.escape(stats)}</div>'
            f'<div class="cmp-text" style="white-space:pre-wrap;margin-top:0.5em">{html.escape(text)}</div></div>')


def replies_html(replies: Sequence[Reply], prompt: str | None, source: str | None, source_id: str | None,
                 waiting: str) -> str:
    """The prompt, then one column per model: its name, its sampling settings and its reply (all text escaped).
    ``waiting`` is what a column without a stored reply says."""
    if not replies:
        return f'<div class="cmp-empty" style="opacity:0.7">{html.escape(IDLE)}</div>'
    where = SOURCE_NAMES.get(source or "", source or "")
    if source_id:
        where += f" {source_id}"
    head = (f'<div class="cmp-prompt" style="{_CARD};margin-bottom:0.8em"><div style="font-weight:600">Prompt'
            f'{f" ({html.escape(where)})" if where else ""}</div><div class="cmp-prompt-text" '
            f'style="white-space:pre-wrap">{html.escape(prompt or "")}</div></div>')
    columns = f"repeat({len(replies)}, minmax(220px, 1fr))"
    cards = "".join(_card(reply, waiting) for reply in replies)
    return (f'{head}<div class="cmp-replies" style="display:grid;grid-template-columns:{columns};gap:0.8em;'
            f'overflow-x:auto">{cards}</div>')


def read_replies(store: Store, jobs: CompareJobs, job_id: str | None = None) -> str:
    """The replies of a job (by default the newest) as HTML, its models in the job's order."""
    if job_id is None:
        job = jobs.newest()
    else:
        folder = job_folder(jobs.workspace, job_id)
        job = job_info(folder) if folder.is_dir() else None  # a job folder deleted since: its stored rows only
    job_id = job_id or (job.job_id if job is not None else None)
    if job_id is None:
        return replies_html([], None, None, None, "")
    config = jobs.config(job)
    rows = store.comparisons(job_id=job_id, limit=None)
    first = rows.iloc[0] if len(rows) else None
    if first is not None:
        prompt, source = str(first["prompt"]), str(first["source"])
        source_id = first["source_id"] if isinstance(first["source_id"], str) else None
    else:
        prompt = job_prompt(store, config) if config is not None else None
        source, source_id = (config.source if config is not None else None), None
    waiting = "waiting for its reply…" if job is not None and job.active else "no reply: the job ended before it"
    models = config.models if config is not None else ()
    return replies_html(replies_of(models, rows), prompt, source, source_id, waiting)


# -- past comparisons ------------------------------------------------------------------------------------------
def history_rows(frame: pd.DataFrame) -> tuple[list[list[Any]], list[str]]:
    """One table row per stored reply (newest job first) and each row's job id (a click shows that job)."""
    rows = []
    for row in frame.to_dict("records"):
        when = row["created_at"]
        rows.append([
            when.strftime("%Y-%m-%d %H:%M") if isinstance(when, pd.Timestamp) and not pd.isna(when) else "",
            shorten(row["prompt"], 160), SOURCE_NAMES.get(row["source"], row["source"]), target_label(row["model"]),
            shorten(row["reply"], 400), settings_line(row["sampling"]),
            "" if row["seconds"] is None or math.isnan(row["seconds"]) else round(float(row["seconds"]), 1),
        ])
    return rows, [str(job_id) for job_id in frame["job_id"]]


def read_history(store: Store, prompt: str = "", model: str = "") -> tuple[list[list[Any]], list[str], str]:
    """The past comparisons matching the filters, their job ids, and a line saying how many are shown."""
    frame = store.comparisons(prompt=prompt or "", model=model or "", limit=HISTORY_ROWS)
    rows, job_ids = history_rows(frame)
    filtered = bool((prompt or "").strip() or (model or "").strip())
    if not rows:
        note = "No stored replies match these filters." if filtered else "No comparisons stored yet."
    else:
        note = (f"{len(rows)} stored replies{' matching the filters' if filtered else ''}"
                f"{f' (the newest {HISTORY_ROWS})' if len(rows) == HISTORY_ROWS else ''}; click a row to show its "
                "comparison above.")
    return rows, job_ids, note
