"""The loop respond and judge share: one model at a time, its pending work in committed batches."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from core.engines.base import Engine, OpenEngine
from core.progress import Cancelled, Progress

Item = TypeVar("Item")


def model_by_model(
    specs: Sequence[str],
    engines: OpenEngine,
    pending: Callable[[str], Sequence[Item]],
    batch_size: int,
    progress: Progress,
    do_batch: Callable[[Engine, str, Sequence[Item]], tuple[int, int]],
) -> bool:
    """For each MODEL spec with pending work: open it, run ``do_batch(engine, spec, batch)`` over its pending
    items ``batch_size`` at a time, and close it before the next one (only one model is held at a time).

    ``do_batch`` commits its batch and returns (units done, tokens generated), which go to ``progress``.
    A cancel request is honoured between batches, and inside one when ``do_batch`` raises `Cancelled`
    (that batch is not committed). Returns False when cancelled.
    """
    for spec in specs:
        todo = pending(spec)
        if not todo:
            continue
        with engines(spec) as engine:
            for start in range(0, len(todo), batch_size):
                if progress.stop_requested():
                    return False
                try:
                    units, tokens = do_batch(engine, spec, todo[start : start + batch_size])
                except Cancelled:
                    return False
                progress.batch_done(units, tokens)
    return True
