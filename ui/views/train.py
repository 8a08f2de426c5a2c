"""What the Train tab shows, computed without Gradio: configs from form values, status lines, the loss curve, rows.

Everything but :func:`read_run_view` is a pure function of plain values or DataFrames (``list_runs``,
``list_snapshots``, ``read_progress``), so it is unit-tested without a browser or a training run;
``read_run_view`` reads one run folder (status, progress, checkpoints) and never imports torch.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.cli.flags import cli_command
from core.data_paths import ReadableRoots
from core.errors import ForgetlessError
from core.folders import check_out_free
from core.jobs import ACTIVE_STATES, JobInfo, job_info, list_jobs, load_job_config, new_job_id, start_background
from core.settings import config_from_form, form_values
from core.train.data import snapshot_file
from core.train.export import ExportConfig, finished_run
from core.train.progress import read_progress
from core.train.runs import cancel_run, list_runs, resume_training, runs_root, start_training
from core.train.training import TrainConfig, last_checkpoint
from ui.views.formatting import format_duration
from ui.views.jobs import StageJobs
from ui.views.screen import empty_figure, markdown_literal, short_model

RUN_HEADERS = ["name", "status", "model", "method", "step", "final loss", "started"]
IDLE_LINE = "No training run yet: pick a frozen mix and a model, then press Start."
EXPORTS_DIR = "exports"  # under the workspace: where an export goes unless a folder is typed
EXPORT_IDLE = "No export yet: pick a finished run, then press Export selected run."
RESUMABLE_STATES = ("cancelled", "interrupted", "failed")  # a done run has nothing left to continue
LOSS_COLOUR, LR_COLOUR = "#4f6bed", "#e8871e"
FORM_FIELDS = ("data", "model", "method", "max_steps", "epochs", "learning_rate", "batch_size", "grad_accum",
               "max_length", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "seed", "save_steps",
               "merge", "dtype")


# -- the form ------------------------------------------------------------------------------------------
def snapshot_choices(snapshots: pd.DataFrame) -> list[tuple[str, str]]:
    """``list_snapshots`` as dropdown (label, folder) pairs, newest first: the label says what is in each."""
    return [(f"{row.name} · {row.total} rows ({row.general} general + {row.domain} domain)", str(row.path))
            for row in snapshots.itertuples(index=False)]


def resolve_data(value: str | None, mixes: Path) -> str:
    """The data dropdown's value as a snapshot folder: a listed folder, a snapshot name typed in, or a typed
    folder path; checked here so a wrong folder is a message now rather than a failed run later."""
    text = str(value or "").strip()
    if not text:
        raise ForgetlessError("pick a frozen mix snapshot (Mix tab → Freeze mix), or type a snapshot folder")
    named = Path(mixes) / text
    folder = named if "/" not in text and named.is_dir() else Path(text).expanduser()
    snapshot_file(folder)
    return str(folder.resolve())


def train_config(values: Mapping[str, Any], out: str) -> TrainConfig:
    """The form's values by field name as a TrainConfig for the run folder ``out`` (ForgetlessError on a bad value).

    ``values["data"]`` is already resolved (:func:`resolve_data`). Max steps empty or -1 trains by epochs; a
    learning rate of 0 (what a cleared number box sends) or empty takes the method's default. Merge is ignored
    for a full run, whose LoRA fields are hidden.
    """
    values = dict(values)
    for name in ("model", "lora_target_modules"):
        values[name] = str(values.get(name) or "").strip()
    values["learning_rate"] = values.get("learning_rate") or None
    values["merge"] = bool(values.get("merge")) and values.get("method") == "lora"
    return config_from_form(TrainConfig, {**values, "out": out})


def config_form(config: TrainConfig) -> dict[str, Any]:
    """A run's settings back into the form, by field name (-1 max steps: by epochs; 0: the default rate)."""
    values = form_values(config, FORM_FIELDS)
    return {**values, "max_steps": -1 if config.max_steps is None else config.max_steps,
            "learning_rate": config.learning_rate or 0}


def run_label(config: TrainConfig) -> str:
    """The readable tail of a new run's folder name: which model, which method."""
    return f"{short_model(config.model).removesuffix('.gguf')}-{config.method}"


def run_command(config: TrainConfig, workspace: Path) -> str:
    """``forgetless train ...`` for this config, with the workspace the app uses (its model cache)."""
    return cli_command("train", config, workspace)


# -- one run: status line and loss curve -------------------------------------------------------------------
def format_lr(value: float | None) -> str:
    """``0.00018 -> '1.8e-4'`` (Python's own ``1.8e-04`` pads the exponent)."""
    if value is None or not math.isfinite(value):
        return "—"
    if value == 0:
        return "0"
    return re.sub(r"e([+-])0*(\d)", lambda m: "e" + m.group(1).replace("+", "") + m.group(2), f"{value:.1e}")


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _step_parts(last: dict[str, Any] | None, *, rate: float | None = None, live: bool = False) -> list[str]:
    """``step 12/40 · loss 1.93 · lr 1.8e-4 · 130 tok/s`` (+ ``ETA`` while live) from a progress row."""
    if not last:
        return []
    parts = [f"step {int(last['step'])}/{int(last['total_steps'])}"]
    if (loss := _number(last.get("loss"))) is not None:
        parts.append(f"loss {loss:.3g}")
    if live:
        parts.append(f"lr {format_lr(_number(last.get('learning_rate')))}")
    if (tokens := rate if rate is not None else _number(last.get("tokens_per_s"))) is not None:
        parts.append(f"{tokens:.0f} tok/s")
    if live:
        parts.append(f"ETA {format_duration(_number(last.get('eta_s')))}")
    return parts


def _saved(summary: dict[str, Any]) -> str:
    if summary.get("merged"):
        return "adapter and merged model saved"
    if summary.get("adapter"):
        return "adapter saved"
    return "model saved" if summary.get("model_dir") else ""


def run_status_line(name: str, state: str, last: dict[str, Any] | None, *, phase: str | None = None,
                    summary: dict[str, Any] | None = None, error: str | None = None,
                    checkpoint_step: int | None = None) -> str:
    """One line for a run: ``running · NAME · step 12/40 · loss 1.93 · lr 1.8e-4 · 130 tok/s · ETA 1:05``.

    ``last`` is the newest step row of progress.jsonl, ``phase`` the newest line's phase when that line is
    a phase (loading model, saving, merging), ``checkpoint_step`` the step a resume would continue from.
    """
    head = f"{state} · {name}"
    summary = summary or {}
    resume = (f"Resume continues from step {checkpoint_step}" if checkpoint_step is not None
              else "no checkpoint yet, so nothing to resume")
    if state in ACTIVE_STATES:
        if not last:
            return f"{head} · {phase or 'starting'}…"
        parts = _step_parts(last, live=True)
        return " · ".join([head, *parts, *([f"{phase}…"] if phase and phase != "training" else [])])
    if state == "done":
        took = _number(summary.get("seconds"))
        parts = [*_step_parts(last, rate=_number(summary.get("tokens_per_s"))),
                 f"took {format_duration(took)}" if took is not None else "", _saved(summary)]
        return " · ".join([head, *[part for part in parts if part]])
    if state == "cancelled":
        return " · ".join([head, *_step_parts(last), "stopped on request", resume])
    if state == "failed":
        return " · ".join([head, error or "the run stopped with an error; see log.txt in its folder",
                           *([resume] if checkpoint_step is not None else [])])
    return " · ".join([head, *_step_parts(last), "its process ended without finishing", resume])  # interrupted


def loss_figure(progress: pd.DataFrame | None, name: str = "") -> go.Figure:
    """Loss (left axis) and learning rate (right axis) against the optimizer step (None: no run picked)."""
    title = f"{name}: loss and learning rate" if name else "Loss and learning rate"
    if progress is None or progress.empty:
        return empty_figure(f"{title} (no steps logged yet)" if name else "Loss curve (pick or start a run)", 240)
    figure = make_subplots(specs=[[{"secondary_y": True}]])
    figure.add_trace(go.Scatter(x=progress["step"], y=progress["loss"], name="loss", mode="lines+markers",
                                line={"color": LOSS_COLOUR}, hovertemplate="step %{x}: loss %{y:.4f}<extra></extra>"),
                     secondary_y=False)
    figure.add_trace(go.Scatter(x=progress["step"], y=progress["learning_rate"], name="learning rate",
                                mode="lines", line={"color": LR_COLOUR, "dash": "dot"},
                                hovertemplate="step %{x}: lr %{y:.2e}<extra></extra>"), secondary_y=True)
    total = int(progress["total_steps"].iloc[-1])
    # The axis follows the steps logged (a long run's first steps stay readable); the title says how far it is.
    figure.update_xaxes(title_text="step", rangemode="tozero")
    figure.update_yaxes(title_text="loss", secondary_y=False)
    figure.update_yaxes(title_text="learning rate", exponentformat="e", showgrid=False, secondary_y=True)
    figure.update_layout(title=f"{title} ({int(progress['step'].iloc[-1])}/{total} steps)", height=340,
                         template="plotly_white", margin={"l": 60, "r": 60, "t": 60, "b": 45},
                         legend={"orientation": "h", "y": -0.25})
    return figure


@dataclass(frozen=True)
class RunView:
    """One run as the tab shows it: its line, its curve, which buttons apply, and when to redraw."""

    name: str
    state: str
    line: str
    figure: go.Figure
    active: bool
    resumable: bool
    marker: str  # changes when the curve or the state does: the tab redraws the plot only then
    job: JobInfo  # the run folder as a job (state, progress, summary)


def read_run_view(run_dir: Path) -> RunView:
    """Read a run folder: status.json (via job_info), progress.jsonl and its newest complete checkpoint."""
    run_dir = Path(run_dir)
    info = job_info(run_dir)
    progress = read_progress(run_dir)
    last = progress.iloc[-1].to_dict() if len(progress) else None
    checkpoint = last_checkpoint(run_dir)
    checkpoint_step = int(checkpoint.name.rsplit("-", 1)[1]) if checkpoint else None
    phase = (info.progress or {}).get("phase")
    line = run_status_line(run_dir.name, info.state, last, phase=phase, summary=info.summary, error=info.error,
                           checkpoint_step=checkpoint_step)
    return RunView(run_dir.name, info.state, line, loss_figure(progress, run_dir.name), info.active,
                   info.state in RESUMABLE_STATES and checkpoint is not None,
                   f"{run_dir.name}|{info.state}|{len(progress)}", info)


# -- the run list --------------------------------------------------------------------------------------
def _started(value: Any) -> str:
    if value is None or pd.isna(value):
        return ""
    return datetime.fromtimestamp(pd.Timestamp(value).timestamp()).strftime("%Y-%m-%d %H:%M:%S")  # UTC -> local


def run_rows(runs: pd.DataFrame) -> list[list[Any]]:
    """``list_runs`` as table rows in RUN_HEADERS order (newest first, as listed)."""
    rows = []
    for run in runs.itertuples(index=False):
        total = "" if run.total_steps is None or pd.isna(run.total_steps) else int(run.total_steps)
        loss = _number(run.final_loss)
        rows.append([run.name, run.status, short_model(run.model), run.method, f"{int(run.step)}/{total or '?'}",
                     "" if loss is None else round(loss, 4), _started(run.started)])
    return rows


def followed_run(runs: pd.DataFrame) -> str | None:
    """The run a fresh page follows: the newest active one, else the newest one (``list_runs`` order)."""
    if runs.empty:
        return None
    active = runs[runs["status"].isin(ACTIVE_STATES)]
    return str((active if len(active) else runs).iloc[0]["name"])


# -- the runs as the tab drives them ----------------------------------------------------------------------
class TrainRuns(StageJobs):
    """The workspace's training runs, shaped like StageJobs so the shared job controls drive them.

    A run folder under ``<workspace>/runs`` is its job folder. Unlike the other stages, runs may go side by
    side (each waits its turn for the compute slot), and the tab follows one run: the one picked, else
    :meth:`newest` (the newest active run, else the newest run).
    """

    def __init__(self, workspace: Path) -> None:
        super().__init__(workspace, "train", TrainConfig)

    def run(self, name: str | None) -> JobInfo:
        """The named run (a folder name under runs/) as a job."""
        if not name:
            raise ForgetlessError("pick a run first (the Run dropdown, or click a row of the run list)")
        return job_info(runs_root(self.workspace) / Path(name).name)

    def newest(self) -> JobInfo | None:
        name = followed_run(list_runs(self.workspace))
        return None if name is None else self.run(name)

    def startable(self, job: JobInfo | None) -> bool:
        return job is None or job.state != "starting"  # runs go side by side; only a double click is refused

    def cancellable(self, job: JobInfo | None) -> bool:
        # A starting worker has not taken the run over yet; queued and running ones check the cancel file.
        return job is not None and job.state in ("queued", "running")

    def start(self, config: TrainConfig) -> str:
        """Start the run in its folder (``config.out``); a ForgetlessError says why not."""
        folder = start_training(config, self.workspace)
        return f"Started **{folder.name}** in the background: loading the model takes a few seconds."

    def cancel(self, name: str | None = None) -> str:
        """Ask the named run (default: the followed one) to save a checkpoint and stop; a ForgetlessError says
        why it cannot."""
        job = self.run(name) if name else self.newest()
        if job is None:
            raise ForgetlessError("no training run yet")
        if job.state == "starting":
            raise ForgetlessError(f"{job.job_id} is still starting; Cancel works once it runs (a few seconds)")
        if not self.cancellable(job):
            raise ForgetlessError(f"{job.job_id} is not running ({job.state})")
        cancel_run(job.folder)
        return f"Cancel requested for **{job.job_id}**: it saves a checkpoint after the current step and stops."

    def resume(self, name: str | None) -> str:
        """Continue the named run from its last checkpoint, in the background."""
        folder = resume_training(self.run(name).folder, self.workspace)
        return f"Resuming **{folder.name}** from its last checkpoint."

    def command(self, job: JobInfo | None) -> str | None:
        config = self.config(job)
        return None if config is None else run_command(config, self.workspace)


# -- exports --------------------------------------------------------------------------------------------
def export_folder(workspace: Path, run_name: str, typed: str | None, roots: ReadableRoots) -> Path:
    """Where the app writes an export: nothing typed, ``<workspace>/exports/<run>``; a bare name, under
    ``<workspace>/exports``; a path, only under the folders the app may use (the workspace, ``--data-dir``)."""
    text = str(typed or "").strip()
    if not text:
        return Path(workspace) / EXPORTS_DIR / run_name
    if "/" not in text and text not in (".", ".."):
        return Path(workspace) / EXPORTS_DIR / text
    return Path(roots.check(text))


def start_export(workspace: Path, run_name: str | None, typed: str | None, roots: ReadableRoots) -> tuple[str, Path]:
    """Check the picked run and the folder, then start ``forgetless export`` in the background; return the
    message and the export's job folder (a ForgetlessError says why not, before anything is written)."""
    if not run_name:
        raise ForgetlessError("pick a run first (the Run dropdown, or click a row of the run list)")
    run = finished_run(runs_root(workspace) / Path(run_name).name)
    out = export_folder(workspace, run.folder.name, typed, roots)
    check_out_free(out)
    config = ExportConfig(run=str(run.folder), out=str(out), job_id=new_job_id("export"))
    folder = start_background(Path(workspace).resolve(), "export", config, str(config.job_id))
    message = f"Exporting **{markdown_literal(run.folder.name)}** to {markdown_literal(config.out)} in the background…"
    return message, folder


def newest_export(workspace: Path) -> JobInfo | None:
    jobs = list_jobs(workspace, "export")
    return jobs[0] if jobs else None


def export_status_line(job: JobInfo | None) -> str:
    """One line for an export job: its phase while it runs, then where the model went (or why it did not)."""
    if job is None:
        return EXPORT_IDLE
    try:
        config = load_job_config(job.folder, ExportConfig)
        what = f"**{markdown_literal(Path(config.run).name)}** → {markdown_literal(config.out)}"
    except ForgetlessError:
        what = f"**{markdown_literal(job.job_id)}**"
    progress, summary = job.progress or {}, job.summary or {}
    if job.state == "queued":
        holder = progress.get("waiting_for")
        return f"Export {what} · waiting for {f'job {holder}' if holder else 'another job'} to finish"
    if job.state in ACTIVE_STATES:
        return f"Exporting {what} · {progress.get('phase') or 'starting'}…"
    if job.state == "done":
        tasks = summary.get("eval_tasks") or []
        evaluated = f"eval vs base: {', '.join(tasks)}" if tasks else "no stored eval (see its README.md)"
        size = f"{(summary.get('bytes') or 0) / 1e6:.1f} MB"
        return (f"Exported {what} · {summary.get('method')}, {summary.get('dtype')}, {size} · {evaluated} · took "
                f"{format_duration(_number(summary.get('seconds')))}")
    if job.state == "failed":
        return f"Export {what} failed: {markdown_literal(job.error or f'see log.txt in {job.folder}')}"
    ended = "stopped on request" if job.state == "cancelled" else "ended without finishing"
    return f"Export {what} {ended}; nothing was written there"
