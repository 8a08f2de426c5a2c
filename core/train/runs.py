"""Training runs as the app sees them: start in the background, list, follow, cancel, resume.

A run is a folder under ``<workspace>/runs`` that is also its job folder (core/jobs.py), so the app
re-attaches to a run after a reload or a restart by reading the folder: ``job_info`` for the state,
``read_progress`` (core.train.progress) for the loss curve.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING

from core.config import load_yaml
from core.errors import ForgetlessError
from core.jobs import job_info, request_cancel, start_background
from core.train.progress import last_step
from core.train.training import TrainConfig, last_checkpoint

if TYPE_CHECKING:
    import pandas as pd

RUN_COLUMNS = ("name", "status", "model", "method", "step", "total_steps", "final_loss", "started", "folder")


def runs_root(workspace: Path) -> Path:
    return Path(workspace) / "runs"


def new_run_dir(workspace: Path, label: str = "run") -> Path:
    """A fresh folder name under ``<workspace>/runs`` (time-stamped, so two runs never share one)."""
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{''.join(c if c.isalnum() or c in '-_' else '-' for c in label)}"
    candidate, suffix = runs_root(workspace) / stem, 1
    while candidate.exists():
        suffix += 1
        candidate = runs_root(workspace) / f"{stem}-{suffix}"
    return candidate


def _absolute(config: TrainConfig) -> TrainConfig:
    # The worker runs from the repository root; paths relative to the app's directory would point elsewhere.
    model = str(Path(config.model).resolve()) if Path(config.model).exists() else config.model
    return dataclasses.replace(config, data=str(Path(config.data).resolve()), out=str(Path(config.out).resolve()),
                               model=model)


def start_training(config: TrainConfig, workspace: Path) -> Path:
    """Start ``forgetless train --config <out>/config.yaml`` in a detached process; return the run folder."""
    config = _absolute(config)
    out = Path(config.out)
    if last_checkpoint(out) or (out / "adapter").exists() or (out / "model").exists():
        raise ForgetlessError(f"{out} already holds a training run; resume it or pick another folder")
    return start_background(Path(workspace).resolve(), "train", config, out.name, folder=out)


def resume_training(run_dir: Path, workspace: Path) -> Path:
    """Continue a cancelled or interrupted run from its last checkpoint, in the background."""
    run_dir = Path(run_dir).resolve()
    if last_checkpoint(run_dir) is None:
        raise ForgetlessError(f"nothing to resume in {run_dir}: no checkpoint yet")
    config = load_yaml(TrainConfig, run_dir / "config.yaml")
    return start_background(Path(workspace).resolve(), "train", config, run_dir.name, folder=run_dir,
                            extra_args=["--resume"])


def cancel_run(run_dir: Path) -> None:
    """Ask a running training to save a checkpoint and stop (it checks after every step)."""
    request_cancel(Path(run_dir))


def list_runs(workspace: Path) -> pd.DataFrame:
    """Every run under ``<workspace>/runs``, newest first, with its state and latest step and loss."""
    import pandas as pd

    rows = []
    root = runs_root(workspace)
    for folder in sorted(root.iterdir()) if root.exists() else []:
        if not (folder / "config.yaml").exists():
            continue
        info = job_info(folder)
        try:
            config = load_yaml(TrainConfig, folder / "config.yaml")
        except ForgetlessError:
            continue
        last = last_step(folder)
        summary = info.summary or {}
        rows.append({
            "name": folder.name, "status": info.state, "model": config.model, "method": config.method,
            "step": int(last["step"]) if last is not None else 0,
            "total_steps": int(last["total_steps"]) if last is not None else config.max_steps,
            "final_loss": summary.get("final_loss", float(last["loss"]) if last is not None else None),
            "started": pd.to_datetime(info.started_at, unit="s") if info.started_at else None,
            "folder": str(folder),
        })
    frame = pd.DataFrame(rows, columns=list(RUN_COLUMNS))
    return frame.sort_values("started", ascending=False, na_position="last").reset_index(drop=True)
