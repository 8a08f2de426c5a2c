"""The Trainer callback of a training run: progress lines, and a cancel file that saves a checkpoint and stops.

Kept apart from core.train.progress because subclassing TrainerCallback imports transformers (and torch).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback


class TrainProgressCallback(TrainerCallback):
    """Reports each logged step and stops (with a checkpoint) when the run folder's cancel file appears."""

    def __init__(self, cancel_file: Path, write: Callable[[dict[str, Any]], None] | None = None,
                 on_progress: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.cancel_file, self.write, self.on_progress = cancel_file, write, on_progress
        self.cancelled = False
        self.last_loss: float | None = None
        self._start = self._last_time = time.monotonic()
        self._first_step = 0
        self._tokens_at_start = self._last_tokens = 0.0
        self._tokens_now = 0.0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._start = self._last_time = time.monotonic()
        self._first_step = state.global_step  # a resumed run's ETA counts only this session's steps

    def tokens_per_s(self) -> float:
        """Training tokens (non-padding, all ranks) per second over this session."""
        return (self._tokens_now - self._tokens_at_start) / max(time.monotonic() - self._start, 1e-9)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not logs or "loss" not in logs:  # the end-of-training summary log carries train_loss instead
            return
        now = time.monotonic()
        tokens = float(logs.get("num_tokens", 0.0))
        recent = (tokens - self._last_tokens) / max(now - self._last_time, 1e-9)
        self._last_time, self._last_tokens, self._tokens_now = now, tokens, tokens
        self.last_loss = float(logs["loss"])
        done = state.global_step - self._first_step
        elapsed = now - self._start
        values = {
            "step": state.global_step, "total_steps": state.max_steps, "epoch": round(float(state.epoch or 0), 4),
            "loss": self.last_loss, "learning_rate": logs.get("learning_rate"), "grad_norm": logs.get("grad_norm"),
            "tokens_per_s": round(recent, 1), "elapsed_s": round(elapsed, 2),
            "eta_s": round((state.max_steps - state.global_step) * elapsed / done, 1) if done > 0 else None,
        }
        if state.is_world_process_zero:
            if self.write:
                self.write(values)
            if self.on_progress:
                self.on_progress(values)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        requested = state.is_world_process_zero and self.cancel_file.exists()
        if _agreed_across_ranks(requested, args):
            self.cancelled = True
            control.should_save = True  # Trainer saves right after this callback, at this step
            control.should_log = True
            control.should_training_stop = True


def _agreed_across_ranks(flag: bool, args: Any) -> bool:
    """Rank 0's decision on every rank, so all processes stop at the same step instead of hanging in a collective."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    value = torch.tensor([int(flag)], device=args.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
