"""Screen tab tables: each instruction's responses with every judge's score, the most disputed responses,
a judge × response score matrix, and the judges' pairwise agreement."""

from __future__ import annotations

import pandas as pd

from core.errors import ForgetlessError
from core.store.base import StoreBase
from core.store.explore import MAX_PAGE_SIZE


class ScreenTableQueries(StoreBase):
    # -- screening views -------------------------------------------------------------------------------
    def consensus_table(self, page: int = 1, page_size: int = 20) -> pd.DataFrame:
        """Instructions (in order, those with responses) with every response side by side and every
        judge's score: one row per (response, judge), long format; a response no judge scored has one
        row with judge NULL. is_best marks the kept response."""
        if page < 1 or not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ForgetlessError(f"page must be >= 1 and page_size between 1 and {MAX_PAGE_SIZE}")
        with self.read() as con:
            return con.execute(
                """WITH page AS (
                       SELECT i.id, i.text, i.created_at FROM instructions i
                       WHERE EXISTS (SELECT 1 FROM responses r WHERE r.instruction_id = i.id)
                       ORDER BY i.created_at, i.id LIMIT ? OFFSET ?)
                   SELECT p.id AS instruction_id, p.text AS instruction, r.id AS response_id, r.model,
                          r.sample_index, r.text AS response, c.mean, c.std, c.n_judges,
                          coalesce(b.response_id = r.id, false) AS is_best, s.judge, s.method, s.score
                   FROM page p JOIN responses r ON r.instruction_id = p.id
                   LEFT JOIN consensus c ON c.response_id = r.id
                   LEFT JOIN best_responses b ON b.instruction_id = p.id
                   LEFT JOIN scores s ON s.response_id = r.id AND NOT s.failed
                        AND (c.method IS NULL OR s.method = c.method)
                   ORDER BY p.created_at, p.id, r.model, r.sample_index, s.judge""",
                [page_size, (page - 1) * page_size],
            ).df()

    def count_screened_instructions(self) -> int:
        """How many instructions have responses (the pages of :meth:`consensus_table`)."""
        with self.read() as con:
            return con.execute("SELECT count(DISTINCT instruction_id) FROM responses").fetchone()[0]

    def most_disputed(self, limit: int = 20) -> pd.DataFrame:
        """The responses the judges disagree on most (highest consensus std), with their instruction."""
        with self.read() as con:
            return con.execute(
                """SELECT c.response_id, c.instruction_id, i.text AS instruction, r.model, r.text AS response,
                          c.mean, c.median, c.std, c.min, c.max, c.n_judges
                   FROM consensus c JOIN responses r ON r.id = c.response_id
                   JOIN instructions i ON i.id = c.instruction_id
                   WHERE c.std IS NOT NULL AND NOT isnan(c.std)
                   ORDER BY c.std DESC, c.mean DESC, c.response_id LIMIT ?""",
                [max(int(limit), 0)],
            ).df()

    def judge_score_matrix(self, limit: int = 50) -> pd.DataFrame:
        """Responses × judges for a heatmap: a stable sample of ``limit`` scored responses (hash order),
        sorted by consensus mean; columns response_id, model, mean, then one score column per judge."""
        with self.read() as con:
            long = con.execute(
                """WITH picked AS (
                       SELECT response_id, method, mean FROM consensus WHERE n_judges > 0
                       ORDER BY hash(response_id), response_id LIMIT ?)
                   SELECT p.response_id, r.model, p.mean, s.judge, s.score
                   FROM picked p JOIN responses r ON r.id = p.response_id
                   JOIN scores s ON s.response_id = p.response_id AND s.method = p.method AND NOT s.failed
                        AND s.score IS NOT NULL""",
                [max(int(limit), 0)],
            ).df()
        if not len(long):
            return pd.DataFrame({"response_id": [], "model": [], "mean": []})
        wide = long.pivot_table(index=["response_id", "model", "mean"], columns="judge", values="score",
                                aggfunc="first").reset_index()
        wide.columns.name = None
        return wide.sort_values(["mean", "response_id"], ascending=[False, True]).reset_index(drop=True)

    def agreement_frame(self) -> pd.DataFrame:
        """Pairwise judge agreement (rank correlations) from the last consensus run."""
        with self.read() as con:
            return con.execute(
                "SELECT judge_a, judge_b, method, n, spearman, kendall FROM judge_agreement "
                "ORDER BY method, judge_a, judge_b"
            ).df()
