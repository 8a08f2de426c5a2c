"""Typed queries behind `forgetless judge-check`: the check's pairs, each judge's score of each side, and the
accuracies computed from them (per job; the newest job's are what the Screen tab shows)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from core.store.base import StoreBase, now


def side_id(instruction: str, answer: str) -> str:
    """One side of a pair (an answer to an instruction): a side shared by several pairs is scored once."""
    return hashlib.sha1(f"{instruction}\x00{answer}".encode()).hexdigest()[:20]


@dataclass(frozen=True)
class CheckPair:
    """An instruction with two answers whose order is not in doubt: ``good`` is the better one."""

    pair_id: str  # kind:reference_id
    kind: str  # off_topic | truncated | shuffled | own
    source: str  # alpacaeval | arenahard
    reference_id: str
    instruction: str
    good: str
    worse: str
    answer_model: str | None = None  # own: the model that wrote ``worse``

    @property
    def good_side(self) -> str:
        return side_id(self.instruction, self.good)

    @property
    def worse_side(self) -> str:
        return side_id(self.instruction, self.worse)


@dataclass(frozen=True)
class CheckScore:
    judge: str
    method: str
    side_id: str
    score: float | None
    probs: list[float] | None
    raw: str | None
    failed: bool
    prompt_format: str
    engine: str
    engine_url: str | None


@dataclass(frozen=True)
class CheckResult:
    judge: str  # a judge, or "consensus"
    method: str
    kind: str  # a pair kind, or "all"
    pairs: int
    wins: int
    ties: int
    accuracy: float | None
    stderr: float | None


class JudgeCheckQueries(StoreBase):
    def add_check_pairs(self, job_id: str, pairs: Sequence[CheckPair]) -> int:
        """Store pairs of a check; pairs already stored (a rerun builds the same ones) are kept as they are."""
        if not pairs:
            return 0
        created = now()
        count = "SELECT count(*) FROM judge_check_pairs WHERE job_id = ?"
        with self.write() as con:
            before = con.execute(count, [job_id]).fetchone()[0]
            con.executemany(
                "INSERT INTO judge_check_pairs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [[job_id, p.pair_id, p.kind, p.source, p.reference_id, p.instruction, p.good, p.worse,
                  p.answer_model, created] for p in pairs])
            return con.execute(count, [job_id]).fetchone()[0] - before

    def check_pairs(self, job_id: str) -> list[CheckPair]:
        """The stored pairs of a check, by kind then pair id."""
        with self.read() as con:
            rows = con.execute(
                """SELECT pair_id, kind, source, reference_id, instruction, good, worse, answer_model
                   FROM judge_check_pairs WHERE job_id = ? ORDER BY kind, pair_id""", [job_id]).fetchall()
        return [CheckPair(*row) for row in rows]

    def scored_sides(self, job_id: str, judge: str, method: str) -> set[str]:
        """The sides this judge has already scored with this method in this check (a rerun skips them)."""
        with self.read() as con:
            rows = con.execute("SELECT side_id FROM judge_check_scores WHERE job_id = ? AND judge = ? AND method = ?",
                               [job_id, judge, method]).fetchall()
        return {side for (side,) in rows}

    def add_check_scores(self, job_id: str, scores: Sequence[CheckScore]) -> int:
        """Store one batch of side scores atomically."""
        if not scores:
            return 0
        created = now()
        with self.write() as con:
            con.executemany(
                "INSERT OR REPLACE INTO judge_check_scores VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [[job_id, s.judge, s.method, s.side_id, s.score, s.probs, s.raw, s.failed, s.prompt_format,
                  s.engine, s.engine_url, created] for s in scores])
        return len(scores)

    def check_scores(self, job_id: str) -> dict[tuple[str, str], dict[str, float | None]]:
        """Every stored score of a check: {(judge, method): {side_id: score (None: unparsed)}}."""
        with self.read() as con:
            rows = con.execute("SELECT judge, method, side_id, score FROM judge_check_scores WHERE job_id = ?",
                               [job_id]).fetchall()
        scores: dict[tuple[str, str], dict[str, float | None]] = {}
        for judge, method, side, score in rows:
            scores.setdefault((judge, method), {})[side] = score
        return scores

    def replace_check_results(self, job_id: str, results: Sequence[CheckResult]) -> None:
        """Swap in a check's freshly computed accuracies (readers never see half)."""
        created = now()
        with self.write() as con:
            con.execute("DELETE FROM judge_checks WHERE job_id = ?", [job_id])
            if results:
                con.executemany(
                    "INSERT INTO judge_checks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [[job_id, r.judge, r.method, r.kind, r.pairs, r.wins, r.ties, r.accuracy, r.stderr, created]
                     for r in results])

    def judge_check_results(self, job_id: str | None = None) -> pd.DataFrame:
        """A check's accuracies (default: the newest check's), one row per (judge, method, kind); the consensus
        rows last; ``created_at`` as naive UTC. Empty when no check has finished."""
        with self.read() as con:
            if job_id is None:
                newest = con.execute("SELECT job_id FROM judge_checks ORDER BY created_at DESC, job_id LIMIT 1"
                                     ).fetchone()
                job_id = newest[0] if newest else ""
            return con.execute(
                """SELECT * REPLACE (timezone('UTC', created_at) AS created_at) FROM judge_checks WHERE job_id = ?
                   ORDER BY judge = 'consensus', judge, method, kind""", [job_id]).df()

    def checked_accuracies(self, judges: Sequence[str], method: str) -> dict[str, tuple[float, float, str]]:
        """Each judge's newest checked accuracy with ``method`` over every degradation kind: {judge: (accuracy,
        stderr, check job id)}; judges never checked are missing."""
        with self.read() as con:
            rows = con.execute(
                """SELECT judge, accuracy, stderr, job_id FROM judge_checks
                   WHERE kind = 'all' AND method = ? AND list_contains(?, judge) AND accuracy IS NOT NULL
                   QUALIFY row_number() OVER (PARTITION BY judge ORDER BY created_at DESC, job_id DESC) = 1""",
                [method, list(judges)]).fetchall()
        return {judge: (accuracy, stderr, job_id) for judge, accuracy, stderr, job_id in rows}
