"""Typed queries behind evaluation: per-item scores (so a rerun resumes), per-task results, drift inputs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from core.store.base import StoreBase, now


@dataclass(frozen=True)
class EvalItemRow:
    item_id: str
    gold: int | None
    pred: int | None
    pred_norm: int | None
    scores: list[float] | None
    extra: dict[str, Any] | None = None


@dataclass(frozen=True)
class EvalResultRow:
    job_id: str
    task: str
    suite: str
    model: str
    run_dir: str | None
    base_model: str | None
    acc: float | None
    acc_norm: float | None
    stderr: float | None
    n: int
    extra: dict[str, Any]
    item_limit: int | None
    seed: int


class EvaluationQueries(StoreBase):
    def add_eval_items(self, job_id: str, task: str, rows: Sequence[EvalItemRow]) -> int:
        """Store one scored batch atomically; items already stored (a resumed run) are kept as they are."""
        if not rows:
            return 0
        created = now()
        values = [[job_id, task, r.item_id, r.gold, r.pred, r.pred_norm, r.scores,
                   json.dumps(r.extra) if r.extra is not None else None, created] for r in rows]
        with self.write() as con:
            con.executemany("INSERT INTO eval_items VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                            values)
        return len(rows)

    def eval_items(self, job_id: str, task: str) -> list[EvalItemRow]:
        """The items of one evaluation's task already scored, in item order."""
        with self.read() as con:
            rows = con.execute(
                """SELECT item_id, gold, pred, pred_norm, scores, extra_json FROM eval_items
                   WHERE job_id = ? AND task = ? ORDER BY item_id""", [job_id, task]).fetchall()
        return [EvalItemRow(item, gold, pred, pred_norm, list(scores) if scores is not None else None,
                            json.loads(extra) if extra else None)
                for item, gold, pred, pred_norm, scores, extra in rows]

    def save_eval_result(self, row: EvalResultRow) -> None:
        """Record (or refresh) one task's result of one evaluation."""
        with self.write() as con:
            con.execute(
                "INSERT OR REPLACE INTO eval_results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [row.job_id, row.task, row.suite, row.model, row.run_dir, row.base_model, row.acc, row.acc_norm,
                 row.stderr, row.n, json.dumps(row.extra, default=str), row.item_limit, row.seed, now()])

    def eval_results(self, models: Sequence[str] | None = None) -> pd.DataFrame:
        """Stored task results, oldest first (optionally only these models), ``created_at`` as naive UTC."""
        query = "SELECT * REPLACE (timezone('UTC', created_at) AS created_at) FROM eval_results"
        params: dict[str, Any] = {}
        if models is not None:
            query += " WHERE list_contains($models, model)"
            params["models"] = list(models)
        with self.read() as con:
            return con.sql(query + " ORDER BY created_at, job_id, task", params=params).df()

    def response_pairs(self) -> pd.DataFrame:
        """Every stored response with its instruction, screened or not: id (the instruction's), instruction,
        response_id, response; by instruction id, then response id."""
        with self.read() as con:
            return con.execute(
                """SELECT i.id, i.text AS instruction, r.id AS response_id, r.text AS response
                   FROM responses r JOIN instructions i ON i.id = r.instruction_id ORDER BY i.id, r.id"""
            ).df()

    def general_pairs(self) -> pd.DataFrame:
        """Every instruction with a best response (the screened general data): id, instruction, response."""
        with self.read() as con:
            return con.execute(
                """SELECT i.id, i.text AS instruction, r.text AS response
                   FROM best_responses b JOIN instructions i ON i.id = b.instruction_id
                   JOIN responses r ON r.id = b.response_id ORDER BY i.id"""
            ).df()
