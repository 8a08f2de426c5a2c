"""Typed queries behind Compare: each model's reply to one prompt, kept so forgetting can be read and filtered.

A comparison job stores one row per model as its reply is generated, keyed by (job, model), so a rerun of
the job adds nothing twice. The queries are functions of a store (any ``StoreBase``) rather than a mixin of
``Store``: nothing else in the store depends on them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import pandas as pd

from core.store.base import StoreBase, now

# What `comparisons` returns, in this order (``sampling`` parsed from its JSON).
COMPARISON_COLUMNS = ("id", "job_id", "position", "created_at", "prompt", "source", "source_id", "model", "run_dir",
                      "base_model", "reply", "n_tokens", "stopped", "sampling", "seed", "seconds", "engine",
                      "engine_url")


@dataclass(frozen=True)
class ComparisonRow:
    """One model's reply to a comparison's prompt, with how it was sampled."""

    job_id: str
    position: int  # the model's place in the job's list (the base first)
    prompt: str
    source: str  # typed | held-out | domain
    source_id: str | None  # held-out: the instruction id; domain: the test row's id; None when typed
    model: str  # the MODEL spec or run folder that answered
    run_dir: str | None
    base_model: str | None  # a run's base model
    reply: str
    n_tokens: int
    stopped: bool  # ended at its end of turn (False: cut at max_new_tokens)
    sampling: dict[str, Any]  # temperature, top_p, max_new_tokens, seed, prompt_format
    seed: int
    seconds: float  # generating the reply (loading the model not counted)
    engine: str = "transformers"
    engine_url: str | None = None


def comparison_id(job_id: str, model: str) -> str:
    return hashlib.sha1(f"{job_id}\0{model}".encode()).hexdigest()[:20]


class CompareQueries(StoreBase):
    """The Compare tab's replies (table ``comparisons``)."""

    def add_comparison(self, row: ComparisonRow) -> bool:
        """Store one reply; False when the job already holds this model's reply (kept as it is)."""
        key = comparison_id(row.job_id, row.model)
        with self.write() as con:
            found = con.execute("SELECT count(*) FROM comparisons WHERE id = ?", [key]).fetchone()[0]
            if found:
                return False
            con.execute(
                "INSERT INTO comparisons VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [key, row.job_id, row.position, row.prompt, row.source, row.source_id, row.model, row.run_dir,
                 row.base_model, row.reply, row.n_tokens, row.stopped, json.dumps(row.sampling, sort_keys=True),
                 row.seed, row.seconds, row.engine, row.engine_url, now()])
        return True


    def compared_models(self, job_id: str) -> set[str]:
        """The models whose reply a job has stored (what a rerun skips)."""
        with self.read() as con:
            found = con.execute("SELECT model FROM comparisons WHERE job_id = ?", [job_id]).fetchall()
        return {model for (model,) in found}


    def comparisons(self, *, prompt: str = "", model: str = "", job_id: str | None = None,
                    limit: int | None = 200) -> pd.DataFrame:
        """Stored replies, newest job first and each job's models in their order; ``prompt`` and ``model`` keep the
        rows whose prompt or model contains them (case-insensitive), ``job_id`` one job's. ``created_at`` is naive
        UTC; ``sampling`` a dict."""
        where, params = [], {}
        for name, value in (("prompt", prompt), ("model", model)):
            if value and value.strip():
                where.append(f"contains(lower({name}), lower(${name}))")
                params[name] = value.strip()
        if job_id is not None:
            where.append("job_id = $job_id")
            params["job_id"] = job_id
        query = (f"""SELECT id, job_id, position, timezone('UTC', created_at) AS created_at, prompt, source, source_id,
                           model, run_dir, base_model, reply, n_tokens, stopped, sampling_json, seed, seconds, engine,
                           engine_url
                    FROM comparisons
                    JOIN (SELECT job_id, max(created_at) AS job_time FROM comparisons GROUP BY job_id) USING (job_id)
                    {'WHERE ' + ' AND '.join(where) if where else ''}
                    ORDER BY job_time DESC, job_id, position"""
                 + (f" LIMIT {int(limit)}" if limit is not None else ""))
        with self.read() as con:
            frame = con.sql(query, params=params).df()
        frame["sampling"] = [json.loads(text) for text in frame.pop("sampling_json")]
        for name in ("source_id", "run_dir", "base_model", "engine", "engine_url"):  # NULL is None, not NaN (JSON)
            frame[name] = frame[name].astype(object).where(frame[name].notna(), None)
        return frame[list(COMPARISON_COLUMNS)]
