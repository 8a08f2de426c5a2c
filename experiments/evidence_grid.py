"""The forgetting regime search (issue 16, item 1): find the cheapest full fine-tuning setting where training on
the domain alone makes the model forget, by the primary metric declared before any final run.

Pure parts (the grid in cost order, the verdict, the table) are here; the runs are driven by
experiments/evidence.py through the real CLI.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

# Declared before the final runs: IFEval prompt-level strict accuracy over all 541 prompts, greedy replies of at
# most IFEVAL_TOKENS tokens. "Forgets" = more than FORGET_SIGMAS paired standard errors below the base.
PRIMARY_METRIC = "ifeval"
PRIMARY_DESCRIPTION = "IFEval prompt-level strict accuracy (all 541 prompts, greedy, replies up to 256 tokens)"
IFEVAL_TOKENS = 256
FORGET_SIGMAS = 3.0


@dataclass(frozen=True, order=True)
class GridPoint:
    """One domain-only full fine-tuning setting; ordered by its cost (conversations trained on), then lr."""

    cost: int  # domain rows x epochs: the conversations the run trains on
    domain_rows: int
    epochs: int
    lr: float

    @property
    def name(self) -> str:
        return f"rows{self.domain_rows}-ep{self.epochs}-lr{self.lr:g}"

    def steps(self, batch_size: int) -> int:
        return max(1, -(-self.cost // batch_size))


def grid_points(domain_rows: Iterable[int], epochs: Iterable[int], lrs: Iterable[float]) -> list[GridPoint]:
    """Every combination, cheapest first (cost = rows x epochs; the learning rate costs nothing, and at one cost
    the highest goes first: see ``next_action``)."""
    points = (GridPoint(rows * epoch, rows, epoch, lr) for rows in domain_rows for epoch in epochs for lr in lrs)
    return sorted(points, key=lambda point: (point.cost, -point.lr))


def next_action(point: GridPoint, outcomes: Sequence[Mapping[str, Any]]) -> str:
    """"run", "skip" or "stop" for ``point`` after ``outcomes`` (evaluated in ``grid_points``' order). At every cost
    the grid tried, forgetting grew with the learning rate (docs/results.md), so: once a cheaper point forgets, no
    costlier one can be the choice (stop); below a learning rate that did not forget at the same cost, a lower one
    is not tried (skip); below one that forgot, the next lower one is, to find the gentlest that forgets."""
    if any(o["forgets"] and o["point"]["cost"] < point.cost for o in outcomes):
        return "stop"
    higher = [o for o in outcomes if o["point"]["cost"] == point.cost and o["point"]["lr"] > point.lr]
    if higher and not min(higher, key=lambda o: o["point"]["lr"])["forgets"]:
        return "skip"
    return "run"


def forgets(diff: float | None, se: float | None, sigmas: float = FORGET_SIGMAS) -> bool:
    """A clear loss: the tuned-minus-base difference is below zero by more than ``sigmas`` paired stderrs."""
    return diff is not None and se is not None and se > 0 and diff < -sigmas * se


def chosen_point(outcomes: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The cheapest evaluated point that forgets (outcomes carry ``point`` as a dict and ``forgets``)."""
    hits = [o for o in outcomes if o.get("forgets")]
    return min(hits, key=lambda o: (o["point"]["cost"], o["point"]["lr"])) if hits else None


def outcome(point: GridPoint, batch_size: int, diff: dict[str, Any], train: Mapping[str, Any],
            base_acc: float | None, tuned_acc: float | None) -> dict[str, Any]:
    """What the grid records for one evaluated point."""
    return {"point": asdict(point), "name": point.name, "steps": point.steps(batch_size),
            "base": base_acc, "tuned": tuned_acc, "diff": diff["diff"], "se": diff["se"], "n": diff["n"],
            "forgets": forgets(diff["diff"], diff["se"]),
            "train_seconds": train.get("seconds"), "train_tokens_per_s": train.get("tokens_per_s"),
            "final_loss": train.get("final_loss"), "dtype": train.get("dtype")}


def grid_table(outcomes: Sequence[Mapping[str, Any]]) -> str:
    """The grid as a Markdown table, in the order it was run."""
    lines = ["| setting | rows | epochs | lr | steps | base | tuned | Δ ± paired SE (pts) | forgets (< −3 SE) | "
             "train s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for o in outcomes:
        point = o["point"]
        delta = "-" if o["diff"] is None else f"{100 * o['diff']:+.1f} ± {100 * (o['se'] or 0):.1f}"
        lines.append(f"| {o['name']} | {point['domain_rows']} | {point['epochs']} | {point['lr']:g} | {o['steps']} | "
                     f"{_acc(o['base'])} | {_acc(o['tuned'])} | {delta} | {'**yes**' if o['forgets'] else 'no'} | "
                     f"{o['train_seconds'] or '-'} |")
    return "\n".join(lines)


def _acc(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
