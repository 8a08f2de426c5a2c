"""Progress reporting and cancellation shared by the batch loops of every stage."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class Cancelled(Exception):
    """Raised inside generation when the job is asked to stop; the batch in flight is discarded."""


class Progress:
    """Counts finished units and generated tokens; reports at most once a second, with rate and ETA."""

    def __init__(self, job_id: str, total: int, done: int = 0, *,
                 on_progress: Callable[[dict[str, Any]], None] | None = None,
                 should_stop: Callable[[], bool] = lambda: False, unit: str = "stored") -> None:
        self.job_id, self.total, self.unit = job_id, total, unit
        self.done_before, self.done_now = done, 0
        self.tokens, self.live_tokens = 0, 0
        self._on_progress, self._should_stop = on_progress, should_stop
        self._start = time.monotonic()
        self._last = 0.0
        self.details: dict[str, Any] = {}  # stage-specific figures sent with every report (e.g. live coverage)

    @property
    def elapsed(self) -> float:
        return max(time.monotonic() - self._start, 1e-9)

    @property
    def done(self) -> int:
        return self.done_before + self.done_now

    def stop_requested(self) -> bool:
        return self._should_stop()

    def on_token(self, count: int) -> None:
        """The sampler's per-step callback: live tokens/s, and the way a cancel interrupts a batch."""
        self.live_tokens += count
        if self._should_stop():
            raise Cancelled
        self.report()

    def batch_done(self, units: int, tokens: int) -> None:
        self.done_now += units
        self.tokens += tokens
        self.live_tokens = 0
        self.report(force=True)

    def tokens_per_s(self) -> float:
        return (self.tokens + self.live_tokens) / self.elapsed

    def report(self, force: bool = False) -> None:
        if self._on_progress is None or (not force and time.monotonic() - self._last < 1.0):
            return
        self._last = time.monotonic()
        rate = self.done_now / self.elapsed
        self._on_progress({
            "job_id": self.job_id, self.unit: self.done, "total": self.total, "tokens_per_s": self.tokens_per_s(),
            "eta_s": (self.total - self.done) / rate if rate > 0 else None, "elapsed_s": self.elapsed,
            **self.details,
        })
