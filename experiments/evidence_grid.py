"""The forgetting regime search (issue 16, item 1): find the cheapest full fine-tuning setting where training on
the domain alone makes the model forget, by the primary metric declared before any final run, while it still learns
the domain (its answer fit rises).

Pure parts (the grid in cost order, the verdict, the table) are here; the runs are driven by
experiments/evidence.py through the real CLI.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

# Declared before the final runs (it replaced IFEval on 2026-12-02, after the grid found IFEval, at 17.6% for the
# base, rising under domain training and falling only where the domain fit fell too: docs/results.md): the general
# benchmarks' accuracy, their items pooled (500 each, so their mean). "Forgets" = more than FORGET_SIGMAS paired
# standard errors below the base.
PRIMARY_METRIC = "general"
PRIMARY_DESCRIPTION = ("general-benchmark accuracy: ARC-Easy, PIQA, HellaSwag and SciQ, 500 items each, pooled item "
                       "by item (their mean)")
# Reported beside it for every model: IFEval prompt-level strict over all 541 prompts, greedy replies of at most
# IFEVAL_TOKENS tokens.
IFEVAL = "ifeval"
IFEVAL_TOKENS = 256
# The domain gain, declared before the arms ran: how much likelier the model finds the gold answers of the whole
# MedMCQA test split (per item, minus the answer's NLL per token; up = better fit). A grid setting counts only if it
# both forgets and gains by more than FORGET_SIGMAS paired standard errors: one that makes the domain answers less
# likely too damages the model rather than specialising it (lr 3e-3 did, docs/results.md).
DOMAIN_FIT = "domain_ppl"
DOMAIN_FIT_DESCRIPTION = ("MedMCQA answer fit: minus the NLL per token of each test item's gold answer (letter and "
                          "text, the tokens training teaches), all 839 test items; in nats/token, up = better")
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
    the grid tried, forgetting grew with the learning rate (docs/results.md), so: once a cheaper point qualifies
    (forgets and gains), no costlier one can be the choice (stop); below a learning rate that did not forget at the
    same cost, a lower one is not tried (skip); below one that forgot, the next lower one is, to find the gentlest
    that forgets while it still gains."""
    if any(o["qualifies"] and o["point"]["cost"] < point.cost for o in outcomes):
        return "stop"
    higher = [o for o in outcomes if o["point"]["cost"] == point.cost and o["point"]["lr"] > point.lr]
    if higher and not min(higher, key=lambda o: o["point"]["lr"])["forgets"]:
        return "skip"
    return "run"


def forgets(diff: float | None, se: float | None, sigmas: float = FORGET_SIGMAS) -> bool:
    """A clear loss: the tuned-minus-base difference is below zero by more than ``sigmas`` paired stderrs."""
    return diff is not None and se is not None and se > 0 and diff < -sigmas * se


def gains(diff: float | None, se: float | None, sigmas: float = FORGET_SIGMAS) -> bool:
    """A clear gain: above zero by more than ``sigmas`` paired stderrs."""
    return diff is not None and se is not None and se > 0 and diff > sigmas * se


def chosen_point(outcomes: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The cheapest evaluated point that qualifies, at its cost the gentlest learning rate (outcomes carry
    ``point`` as a dict and ``qualifies``)."""
    hits = [o for o in outcomes if o.get("qualifies")]
    return min(hits, key=lambda o: (o["point"]["cost"], o["point"]["lr"])) if hits else None


def outcome(point: GridPoint, batch_size: int, diff: Mapping[str, Any], gain: Mapping[str, Any],
            train: Mapping[str, Any], base_acc: float | None, tuned_acc: float | None) -> dict[str, Any]:
    """What the grid records for one evaluated point: the primary metric's paired change (``diff``) and the
    domain answer fit's (``gain``), each {diff, se, n}."""
    lost, won = forgets(diff["diff"], diff["se"]), gains(gain["diff"], gain["se"])
    return {"point": asdict(point), "name": point.name, "steps": point.steps(batch_size),
            "base": base_acc, "tuned": tuned_acc, "diff": diff["diff"], "se": diff["se"], "n": diff["n"],
            "forgets": lost, "gain": gain["diff"], "gain_se": gain["se"], "gain_n": gain["n"], "gains": won,
            "qualifies": lost and won,
            "train_seconds": train.get("seconds"), "train_tokens_per_s": train.get("tokens_per_s"),
            "final_loss": train.get("final_loss"), "dtype": train.get("dtype")}


def grid_table(outcomes: Sequence[Mapping[str, Any]]) -> str:
    """The grid as a Markdown table, in the order it was run."""
    lines = ["| setting | rows | epochs | lr | steps | base | tuned | Δ ± paired SE (pts) | forgets (< −3 SE) | "
             "answer fit Δ ± paired SE (nats/token) | gains (> 3 SE) | train s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for o in outcomes:
        point = o["point"]
        delta = "-" if o["diff"] is None else f"{100 * o['diff']:+.1f} ± {100 * (o['se'] or 0):.1f}"
        fit = "-" if o.get("gain") is None else f"{o['gain']:+.3f} ± {o['gain_se'] or 0:.3f}"
        lines.append(f"| {o['name']} | {point['domain_rows']} | {point['epochs']} | {point['lr']:g} | {o['steps']} | "
                     f"{_acc(o['base'])} | {_acc(o['tuned'])} | {delta} | {'**yes**' if o['forgets'] else 'no'} | "
                     f"{fit} | {'**yes**' if o.get('gains') else 'no'} | {o['train_seconds'] or '-'} |")
    return "\n".join(lines)


def _acc(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
