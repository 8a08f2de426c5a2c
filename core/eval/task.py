"""The eval task protocol: a benchmark is one object, registered by name in ``TASKS``.

`core.eval.evaluation.run_evaluation` drives every task the same way: ``check`` it before the model loads
(bad data fails early), list its ``items``, leave out those already stored, ``score`` the rest batch by batch
(each batch committed), then compute its ``metrics`` from the stored rows. The CLI prints each task's
``headline`` numbers and its ``table_cells`` through the same object. The tasks live in
`core.eval.benchmarks`, one module per family; this module holds what they share.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

from core.progress import Progress
from core.store import Store
from core.store.evaluation import EvalItemRow

T = TypeVar("T")
# Tasks run (and print) suite by suite in this order, a suite not listed here after these; within a suite,
# by module name, then in the order the module registers them.
SUITE_ORDER = ("general", "domain", "drift", "ifeval")


@dataclass(frozen=True)
class EvalTarget:
    """What MODEL_OR_RUN names: a plain model, or a run's adapter/full model and its base."""

    model: str  # as configured (spec or absolute run folder)
    run_dir: str | None
    base: str | None  # drift's reference: --base, else the run's base model
    adapter_dir: str | None
    load_spec: str  # what the loader loads (for an adapter: the base it goes on)
    data_dir: str | None  # the run's mix snapshot


@dataclass
class TaskRun:
    """One evaluation as its tasks see it: its settings, store and target, and what its tasks share."""

    config: Any  # the EvalConfig (core.eval.evaluation imports this module, so its type is not imported here)
    store: Store
    target: EvalTarget
    _shared: dict[str, Any] = field(default_factory=dict)

    def shared(self, key: str, compute: Callable[[], T]) -> T:
        """A value several tasks of this run use (a user's held-out rows), computed once."""
        if key not in self._shared:
            self._shared[key] = compute()
        return self._shared[key]


@dataclass
class TaskModels:
    """The models a batch is scored with."""

    model: Any  # the model under evaluation
    base: Any = None  # the reference model, loaded before the first batch of a task that needs_base


@runtime_checkable
class EvalTask(Protocol):
    """One benchmark: its items, batching, scoring, metrics, and how its headline numbers print."""

    name: str  # the task's name: its key in TASKS, in the store and in results
    suite: str  # the suite that runs it (general, domain, drift, ifeval)
    needs_base: bool  # scored against a reference model (drift)

    def in_suite(self, config: Any) -> bool:
        """Whether naming its suite runs it for this EvalConfig (naming the task itself always does)."""
        ...

    def check(self, run: TaskRun) -> bool:
        """Before the model loads: raise ForgetlessError for what cannot run; False leaves the task out."""
        ...

    def items(self, run: TaskRun, tokenizer: Any) -> list[Any]:
        """Every item of this run (the model's tokenizer is there for items made of token ids)."""
        ...

    def item_id(self, item: Any) -> str:
        """The item's id in the store: what a resumed run skips."""
        ...

    def batches(self, items: Sequence[Any], batch_size: int) -> list[list[Any]]:
        ...

    def score(self, batch: list[Any], models: TaskModels, progress: Progress) -> tuple[list[EvalItemRow], int]:
        """The rows to store for one batch, and roughly how many tokens went through the model."""
        ...

    def metrics(self, rows: Sequence[EvalItemRow], run: TaskRun) -> dict[str, Any]:
        """Its metrics from its stored rows: ``n`` always; ``acc``, ``acc_norm``, ``stderr`` where they apply."""
        ...

    def headline(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """The numbers ``forgetless eval --json`` prints (everything else stays in the store)."""
        ...

    def table_cells(self, metrics: dict[str, Any]) -> tuple[Any, Any, Any, str]:
        """Its line of the CLI's table, from its headline: acc, acc_norm and stderr columns (None: "-"), notes."""
        ...


TASKS: dict[str, EvalTask] = {}  # filled by the modules of core.eval.benchmarks (import that package to use it)


def register(task: EvalTask) -> EvalTask:
    if task.name in TASKS:
        raise ValueError(f"eval task '{task.name}' is registered twice")
    TASKS[task.name] = task
    return task


def sort_tasks() -> None:
    """Put TASKS in run order (SUITE_ORDER), whatever order their modules were imported in."""
    position = {name: index for index, name in enumerate(TASKS)}

    def key(task: EvalTask) -> tuple[int, str, str, int]:
        rank = SUITE_ORDER.index(task.suite) if task.suite in SUITE_ORDER else len(SUITE_ORDER)
        return rank, task.suite, type(task).__module__, position[task.name]

    ordered = sorted(TASKS.values(), key=key)
    TASKS.clear()
    TASKS.update((task.name, task) for task in ordered)


def metric_cell(value: Any) -> str:
    """A metric as the CLI's table shows it."""
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def subsample(total: int, limit: int | None, seed: int) -> list[int]:
    """Indices of a seeded subsample of ``limit`` items (all, in order, when limit is None or covers all).

    A seed fixes one permutation, and a limit takes its head, so a larger limit extends a smaller one.
    """
    import numpy as np

    if limit is None or limit >= total:
        return list(range(total))
    return sorted(int(i) for i in np.random.default_rng(seed).permutation(total)[:limit])


def seeded_pick(items: Sequence[T], limit: int | None, seed: int) -> list[T]:
    return [items[i] for i in subsample(len(items), limit, seed)]


def length_buckets(items: Sequence[T], key: Callable[[T], int], batch_size: int) -> list[list[T]]:
    """Items grouped into batches of similar length (longest first), so padding stays small."""
    ordered = sorted(items, key=key, reverse=True)
    return [ordered[start : start + batch_size] for start in range(0, len(ordered), batch_size)]


def in_order(items: Sequence[T], batch_size: int) -> list[list[T]]:
    return [list(items[start : start + batch_size]) for start in range(0, len(items), batch_size)]


def accuracy_stats(correct: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and its standard error (sample standard deviation / sqrt(n), as lm-evaluation-harness).

    Used for 0/1 correctness and for any per-item numbers (paired differences, per-text KL)."""
    n = len(correct)
    if not n:
        return None, None
    mean = sum(correct) / n
    if n < 2:
        return mean, None
    variance = sum((c - mean) ** 2 for c in correct) / (n - 1)
    return mean, math.sqrt(variance / n)
