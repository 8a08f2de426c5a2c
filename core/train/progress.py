"""Reading a training run's ``progress.jsonl`` (written by core.train.callback).

One line per logging step: step, total_steps, epoch, loss, learning_rate, grad_norm, tokens_per_s,
eta_s, elapsed_s (plus ``phase`` lines: loading model, training, saving). A resumed run appends, so
steps between its checkpoint and the kill appear twice; ``read_progress`` keeps the newest of each.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.jobs import last_progress

if TYPE_CHECKING:
    import pandas as pd

PROGRESS_COLUMNS = ("step", "total_steps", "epoch", "loss", "learning_rate", "grad_norm", "tokens_per_s", "eta_s",
                    "elapsed_s", "time")


def _progress_lines(run_dir: Path) -> list[dict[str, Any]]:
    try:
        text = (Path(run_dir) / "progress.jsonl").read_text(encoding="utf-8")
    except OSError:
        return []
    lines = []
    for line in text.splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:  # a line being written
            continue
    return lines


def first_progress_with(run_dir: Path, key: str) -> dict[str, Any] | None:
    return next((line for line in _progress_lines(run_dir) if key in line), None)


def read_progress(run_dir: Path) -> pd.DataFrame:
    """The step lines of a run (for the loss curve), one row per step, newest value kept after a resume."""
    import pandas as pd

    rows = [line for line in _progress_lines(run_dir) if "step" in line and "loss" in line]
    frame = pd.DataFrame(rows, columns=list(PROGRESS_COLUMNS))
    if frame.empty:
        return frame
    frame = frame.drop_duplicates("step", keep="last").sort_values("step")
    return frame.reset_index(drop=True)


def last_step(run_dir: Path) -> dict[str, Any] | None:
    """The newest step line, read from the file's tail: the run list calls this for every run on every poll."""
    return last_progress(Path(run_dir), ("step", "loss"), tail_bytes=16384) or None
