"""Typed queries behind mixing: the general candidates with their best response, profile and embeddings."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from core.store.base import StoreBase

GENERAL_COLUMNS = ("instruction_id", "instruction", "response", "consensus", "std", "difficulty", "cluster",
                   "cluster_label", "category")


class MixQueries(StoreBase):
    def general_rows(self, ids: Sequence[str]) -> pd.DataFrame:
        """The instructions among ``ids`` that have a best response, with its text and score and the
        instruction's profile (NULL before profiling), ordered by instruction id (a stable base order for
        seeded sampling). Read from the base tables, not explore_rows, so the texts are the stored ones."""
        if not ids:
            return pd.DataFrame({column: [] for column in GENERAL_COLUMNS})
        with self.read() as con:
            return con.execute(
                """SELECT i.id AS instruction_id, i.text AS instruction, r.text AS response,
                          CASE WHEN isfinite(b.mean) THEN b.mean END AS consensus,
                          CASE WHEN isfinite(b.std) THEN b.std END AS std,
                          CASE WHEN isfinite(p.difficulty) THEN p.difficulty END AS difficulty,
                          p.cluster, p.cluster_label, p.category
                   FROM instructions i
                   JOIN best_responses b ON b.instruction_id = i.id
                   JOIN responses r ON r.id = b.response_id
                   LEFT JOIN instruction_profile p ON p.instruction_id = i.id
                   WHERE i.id IN (SELECT unnest(?::VARCHAR[]))
                   ORDER BY i.id""",
                [list(ids)],
            ).df()

    def general_texts(self, ids: Sequence[str]) -> pd.DataFrame:
        """instruction_id, instruction, cluster, cluster_label of ``ids`` (for the semantic map's hover)."""
        with self.read() as con:
            return con.execute(
                """SELECT i.id AS instruction_id, i.text AS instruction, p.cluster, p.cluster_label
                   FROM instructions i LEFT JOIN instruction_profile p ON p.instruction_id = i.id
                   WHERE i.id IN (SELECT unnest(?::VARCHAR[])) ORDER BY i.id""",
                [list(ids)],
            ).df()
