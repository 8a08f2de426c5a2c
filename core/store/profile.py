"""Typed queries behind instruction profiling: its inputs, the profile table, and cached embeddings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from core.store.base import StoreBase, now

PROFILE_COLUMNS = (
    "instruction_id", "difficulty", "difficulty_probs", "ifd", "cluster", "cluster_label", "x", "y", "dup_group",
    "is_representative", "category", "category_probs",
)


class ProfileQueries(StoreBase):
    def profile_inputs(self) -> pd.DataFrame:
        """Every instruction, oldest first, with its best response (NULL before judging) and that one's score.

        Columns: id, text, response, response_score. Store order matters: near-duplicate groups keep
        their earliest member when scores tie.
        """
        with self.read() as con:
            return con.execute(
                """SELECT i.id, i.text, r.text AS response, b.mean AS response_score
                   FROM instructions i
                   LEFT JOIN best_responses b ON b.instruction_id = i.id
                   LEFT JOIN responses r ON r.id = b.response_id
                   ORDER BY i.created_at, i.id"""
            ).df()

    def replace_profile(self, frame: pd.DataFrame) -> int:
        """Swap in a freshly computed profile (one row per instruction) in one transaction.

        ``frame`` has the PROFILE_COLUMNS (missing optional ones are stored NULL); readers never see a
        half-written profile.
        """
        frame = frame.copy()
        for column in PROFILE_COLUMNS:
            if column not in frame:
                frame[column] = None
        frame = frame[list(PROFILE_COLUMNS)].astype(object).where(frame[list(PROFILE_COLUMNS)].notna(), None)
        frame["updated_at"] = now()
        with self.write() as con:
            con.execute("DELETE FROM instruction_profile")
            if len(frame):
                con.register("incoming", frame)
                con.execute("INSERT INTO instruction_profile BY NAME SELECT * FROM incoming")
                con.unregister("incoming")
        return len(frame)

    def profile_frame(self) -> pd.DataFrame:
        """The stored profile joined with each instruction's text, oldest first (what the app plots).

        ``updated_at`` comes back as naive UTC (a time-zone column makes DuckDB's pandas export warn).
        """
        with self.read() as con:
            return con.execute(
                """SELECT p.* REPLACE (timezone('UTC', p.updated_at) AS updated_at), i.text
                   FROM instruction_profile p JOIN instructions i ON i.id = p.instruction_id
                   ORDER BY i.created_at, i.id"""
            ).df()

    def save_embeddings(self, model: str, ids: Sequence[str], vectors: np.ndarray) -> int:
        """Store (or replace) one embedding per instruction, tagged with the embedder that made it."""
        import pyarrow as pa

        vectors = np.asarray(vectors, dtype=np.float32)
        if len(ids) != len(vectors):
            raise ValueError("ids and vectors differ in length")
        if not len(ids):
            return 0
        table = pa.table({
            "instruction_id": list(ids), "model": [model] * len(ids),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1]),
        })
        with self.write() as con:
            con.register("incoming", table)
            con.execute("INSERT OR REPLACE INTO embeddings BY NAME SELECT * FROM incoming")
            con.unregister("incoming")
        return len(ids)

    def load_embeddings(self, model: str, ids: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Stored embeddings made by ``model`` (optionally only these instruction ids), id -> float32 vector."""
        query = "SELECT instruction_id, vector FROM embeddings WHERE model = $model"
        params: dict[str, object] = {"model": model}
        if ids is not None:
            query += " AND list_contains($ids, instruction_id)"
            params["ids"] = list(ids)
        with self.read() as con:
            table = con.sql(query, params=params).to_arrow_table()
        if not table.num_rows:
            return {}
        column = table.column("vector").combine_chunks()
        flat = np.asarray(column.flatten(), dtype=np.float32)
        matrix = flat.reshape(len(column), -1)
        return dict(zip(table.column("instruction_id").to_pylist(), matrix, strict=True))

    # -- coverage: how the profiled instructions spread over clusters, categories and difficulty levels --
    def coverage_counts(self, include_duplicates: bool = False) -> dict[str, Any]:
        """Row counts per cluster, category and rounded difficulty level (1..5) of the stored profile.

        Counts only near-duplicate representatives unless ``include_duplicates``. Returns ``cluster`` (cluster,
        label, rows: every profiled cluster, 0 rows when it holds only hidden duplicates), ``category``
        (category, rows) and ``difficulty`` (level, rows), where a NULL cell counts rows without that measure;
        plus ``profiled`` (profile rows), ``counted`` (rows counted) and ``instructions`` (stored instructions,
        so rows reconstructed after the profile show as unprofiled).
        """
        counted = "TRUE" if include_duplicates else "is_representative"
        with self.read() as con:
            clusters = con.execute(
                f"""SELECT cluster, any_value(cluster_label) AS label, count(*) FILTER (WHERE {counted}) AS rows
                    FROM instruction_profile GROUP BY cluster ORDER BY cluster NULLS LAST""").df()
            categories = con.execute(
                f"""SELECT category, count(*) AS rows FROM instruction_profile WHERE {counted}
                    GROUP BY category ORDER BY category NULLS LAST""").df()
            # Round half up, clamped to the 1-5 scale (an expected rating is within it anyway); greatest() skips
            # NULLs, so a row without a difficulty is kept NULL explicitly.
            levels = con.execute(
                f"""SELECT CASE WHEN difficulty IS NOT NULL THEN
                        CAST(least(5, greatest(1, floor(difficulty + 0.5))) AS INTEGER) END AS level, count(*) AS rows
                    FROM instruction_profile WHERE {counted} GROUP BY level ORDER BY level NULLS LAST""").df()
            profiled, in_count = con.execute(
                f"SELECT count(*), count(*) FILTER (WHERE {counted}) FROM instruction_profile").fetchone()
            instructions = con.execute("SELECT count(*) FROM instructions").fetchone()[0]
        return {"cluster": clusters, "category": categories, "difficulty": levels, "profiled": int(profiled),
                "counted": int(in_count), "instructions": int(instructions)}

    def profiled_embedder(self) -> str | None:
        """The embedder whose stored vectors the profiled instructions have (the one the profile clustered with);
        None without any. Each instruction keeps one embedding, so the most common model is the profile's."""
        with self.read() as con:
            found = con.execute(
                """SELECT e.model FROM embeddings e JOIN instruction_profile p USING (instruction_id)
                   GROUP BY e.model ORDER BY count(*) DESC, e.model LIMIT 1""").fetchone()
        return found[0] if found else None

    def cluster_centroids(self, embedder: str) -> dict[int, np.ndarray]:
        """Per profiled cluster, the mean of its instructions' stored ``embedder`` vectors (all rows, duplicates
        too: the clusters were fitted on all of them)."""
        with self.read() as con:
            table = con.sql(
                """SELECT p.cluster, e.vector FROM instruction_profile p JOIN embeddings e USING (instruction_id)
                   WHERE e.model = $model AND p.cluster IS NOT NULL""", params={"model": embedder}).to_arrow_table()
        if not table.num_rows:
            return {}
        column = table.column("vector").combine_chunks()
        matrix = np.asarray(column.flatten(), dtype=np.float64).reshape(len(column), -1)
        labels = np.asarray(table.column("cluster").to_pylist())
        return {int(c): matrix[labels == c].mean(axis=0) for c in np.unique(labels)}
