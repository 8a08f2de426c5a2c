"""Typed queries on responses, judge scores and the consensus built from them."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import astuple, dataclass
from typing import Any

import pandas as pd

from core.store.base import StoreBase, now


def response_id(instruction_id: str, model: str, sample_index: int) -> str:
    """Stable per (instruction, model, sample): a rerun recomputes exactly the missing ones."""
    return hashlib.sha1(f"{instruction_id}|{model}|{sample_index}".encode()).hexdigest()[:20]


@dataclass(frozen=True)
class ResponseRow:
    id: str
    instruction_id: str
    model: str
    sample_index: int
    text: str
    n_tokens: int
    stopped: bool
    prompt_format: str
    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int
    job_id: str
    engine: str = "transformers"  # what served the model (the columns after created_at)
    engine_url: str | None = None


@dataclass(frozen=True)
class ScoreRow:
    response_id: str
    judge: str
    method: str
    score: float | None
    probs: list[float] | None
    raw: str | None
    failed: bool
    prompt_format: str
    job_id: str
    engine: str = "transformers"  # what served the judge (the columns after created_at)
    engine_url: str | None = None


def _row_values(row: ResponseRow | ScoreRow, created: Any) -> tuple[Any, ...]:
    """A row's values in its table's column order: created_at stands before the engine columns (added later)."""
    values = astuple(row)
    return (*values[:-2], created, *values[-2:])


@dataclass(frozen=True)
class PendingResponse:
    instruction_id: str
    instruction: str
    sample_index: int


@dataclass(frozen=True)
class PendingScore:
    response_id: str
    instruction: str
    response: str


class ScreeningQueries(StoreBase):
    def pending_responses(self, model: str, k: int) -> list[PendingResponse]:
        """(instruction, sample index) pairs for which ``model`` has no response yet, oldest first."""
        with self.read() as con:
            rows = con.execute(
                """SELECT i.id, i.text, s.idx FROM instructions i CROSS JOIN range(?) s(idx)
                   WHERE NOT EXISTS (SELECT 1 FROM responses r WHERE r.instruction_id = i.id AND r.model = ?
                                     AND r.sample_index = s.idx)
                   ORDER BY i.created_at, i.id, s.idx""",
                [k, model],
            ).fetchall()
        return [PendingResponse(*row) for row in rows]

    def add_responses(self, rows: Sequence[ResponseRow]) -> int:
        """Insert one batch atomically; rows already stored (a resumed run) are skipped."""
        if not rows:
            return 0
        created = now()
        with self.write() as con:
            before = con.execute("SELECT count(*) FROM responses").fetchone()[0]
            con.executemany(
                "INSERT INTO responses VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [_row_values(row, created) for row in rows],
            )
            return con.execute("SELECT count(*) FROM responses").fetchone()[0] - before

    def pending_scores(self, judge: str, method: str, *, exclude_self: bool, retry_failed: bool,
                       author: str | None = None) -> list[PendingScore]:
        """Responses this judge has not scored with this method (or whose score failed, when retrying);
        ``exclude_self`` leaves out those written by ``author`` (default: the judge itself)."""
        self_clause = "AND r.model <> ?" if exclude_self else ""
        failed_clause = "AND NOT s.failed" if retry_failed else ""
        params: list[Any] = [judge, method] + ([author or judge] if exclude_self else [])
        with self.read() as con:
            rows = con.execute(
                f"""SELECT r.id, i.text, r.text FROM responses r JOIN instructions i ON i.id = r.instruction_id
                    WHERE NOT EXISTS (SELECT 1 FROM scores s WHERE s.response_id = r.id AND s.judge = ?
                                      AND s.method = ? {failed_clause}) {self_clause}
                    ORDER BY r.created_at, r.id""",
                params,
            ).fetchall()
        return [PendingScore(*row) for row in rows]

    def add_scores(self, rows: Sequence[ScoreRow]) -> int:
        """Insert one batch atomically; a retried row replaces its failed predecessor."""
        if not rows:
            return 0
        created = now()
        with self.write() as con:
            con.executemany(
                "INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [_row_values(row, created) for row in rows],
            )
        return len(rows)

    def count_responses(self, models: Sequence[str], k: int) -> int:
        """Responses stored by ``models`` among the first ``k`` samples of each instruction."""
        with self.read() as con:
            return con.execute("SELECT count(*) FROM responses WHERE sample_index < ? AND list_contains(?, model)",
                               [k, list(models)]).fetchone()[0]

    def count_scores(self, method: str, judges: Sequence[str]) -> tuple[int, int]:
        """(scores, failed ones among them) that ``judges`` gave with ``method``."""
        with self.read() as con:
            return con.execute(
                """SELECT count(*), count(*) FILTER (WHERE failed) FROM scores
                   WHERE method = ? AND list_contains(?, judge)""",
                [method, list(judges)],
            ).fetchone()

    def scores_frame(self, method: str) -> pd.DataFrame:
        """One row per usable (response, judge) score with what consensus needs."""
        with self.read() as con:
            return con.execute(
                """SELECT s.response_id, r.instruction_id, r.model, length(r.text) AS length, s.judge, s.score
                   FROM scores s JOIN responses r ON r.id = s.response_id
                   WHERE s.method = ? AND NOT s.failed AND s.score IS NOT NULL""",
                [method],
            ).df()

    def replace_consensus(self, method: str, consensus: pd.DataFrame, best: pd.DataFrame,
                          agreement: pd.DataFrame) -> None:
        """Swap in freshly computed consensus tables in one transaction (readers never see half)."""
        with self.write() as con:
            for table, frame in (("consensus", consensus), ("best_responses", best), ("judge_agreement", agreement)):
                con.execute(f"DELETE FROM {table}")
                if len(frame):
                    con.register("incoming", frame)
                    con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM incoming")
                    con.unregister("incoming")
