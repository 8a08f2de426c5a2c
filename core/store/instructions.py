"""Typed queries on reconstructed instructions and the jobs that produced them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core.store.base import StoreBase, now, text_key

PLAIN, CORPUS, CELL = "plain", "corpus", "cell"  # how a row was steered (store v6; cell: issue 15 item 2)


@dataclass(frozen=True)
class InstructionRow:
    text: str
    n_tokens: int
    model: str
    prefix: str  # the prompt text the model continued: the pre-query prefix, or a steered row's rendered prompt
    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int
    job_id: str
    batch: int
    steer_mode: str = PLAIN  # plain (free Magpie sampling) | corpus | cell
    steer_source: str | None = None  # corpus: builtin:NAME or the file's path; cell: the cell's key
    steer_seed_ids: tuple[str, ...] | None = None  # corpus: seed row ids; cell: example instruction ids
    steer_prompt: str | None = None  # the steering template's id and version, e.g. corpus-request-v1


_INSTRUCTION_COLUMNS = ("id", "text", "n_chars", "n_tokens", "model", "prefix", "temperature", "top_p",
                        "max_new_tokens", "seed", "job_id", "batch", "created_at", "steer_mode", "steer_source",
                        "steer_seed_ids", "steer_prompt")


@dataclass(frozen=True)
class BatchResult:
    stored: int
    duplicates: int


class InstructionQueries(StoreBase):
    # -- jobs ---------------------------------------------------------------------------------
    def register_job(self, job_id: str, kind: str, config_yaml: str) -> None:
        with self.write() as con:
            con.execute(
                "INSERT INTO jobs VALUES (?, ?, ?, ?) ON CONFLICT (job_id) DO NOTHING",
                [job_id, kind, config_yaml, now()],
            )

    # -- instructions -------------------------------------------------------------------------
    def add_instruction_batch(
        self, job_id: str, batch: int, rows: Sequence[InstructionRow], *, limit: int, sampled: int,
        dropped: dict[str, int], new_tokens: int, seconds: float, engine: str = "transformers",
        engine_url: str | None = None,
    ) -> BatchResult:
        """Store one batch atomically with its bookkeeping row (which records the engine that sampled it); skip
        texts already stored; keep at most ``limit`` new rows, so a job never overshoots its target."""
        keyed: dict[str, InstructionRow] = {}
        for row in rows:
            keyed.setdefault(text_key(row.text), row)
        within_batch_duplicates = len(rows) - len(keyed)
        with self.write() as con:
            existing = set()
            if keyed:
                found = con.execute("SELECT id FROM instructions WHERE list_contains(?, id)", [list(keyed)])
                existing = {key for (key,) in found.fetchall()}
            fresh = [(key, row) for key, row in keyed.items() if key not in existing][: max(limit, 0)]
            created = now()
            if fresh:
                con.executemany(
                    f"INSERT INTO instructions ({', '.join(_INSTRUCTION_COLUMNS)}) "
                    f"VALUES ({', '.join('?' * len(_INSTRUCTION_COLUMNS))})",
                    [
                        (key, r.text, len(r.text), r.n_tokens, r.model, r.prefix, r.temperature, r.top_p,
                         r.max_new_tokens, r.seed, r.job_id, r.batch, created, r.steer_mode, r.steer_source,
                         None if r.steer_seed_ids is None else list(r.steer_seed_ids), r.steer_prompt)
                        for key, r in fresh
                    ],
                )
            duplicates = within_batch_duplicates + len(existing)
            all_dropped = {**dropped, "duplicate": dropped.get("duplicate", 0) + duplicates}
            con.execute(
                "INSERT INTO reconstruct_batches VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [job_id, batch, sampled, len(fresh), json.dumps(all_dropped, sort_keys=True), new_tokens, seconds,
                 created, engine, engine_url],
            )
        return BatchResult(stored=len(fresh), duplicates=duplicates)

    def job_progress(self, job_id: str) -> dict[str, Any]:
        """What a reconstruction job has committed so far: the next batch index and running totals."""
        with self.read() as con:
            batches, stored, sampled, tokens, seconds = con.execute(
                "SELECT count(*), coalesce(sum(stored), 0), coalesce(sum(sampled), 0), "
                "coalesce(sum(new_tokens), 0), coalesce(sum(seconds), 0) FROM reconstruct_batches WHERE job_id = ?",
                [job_id],
            ).fetchone()
            next_batch = con.execute(
                "SELECT coalesce(max(batch) + 1, 0) FROM reconstruct_batches WHERE job_id = ?", [job_id]
            ).fetchone()[0]
            dropped_rows = con.execute(
                "SELECT dropped_json FROM reconstruct_batches WHERE job_id = ?", [job_id]
            ).fetchall()
        dropped: dict[str, int] = {}
        for (text,) in dropped_rows:
            for reason, count in json.loads(text).items():
                dropped[reason] = dropped.get(reason, 0) + count
        return {"batches": batches, "next_batch": next_batch, "stored": stored, "sampled": sampled,
                "new_tokens": tokens, "seconds": seconds, "dropped": dropped}

    def count_instructions(self, search: str = "", job_id: str | None = None) -> int:
        where, params = _instruction_filter(search, job_id)
        with self.read() as con:
            return con.execute(f"SELECT count(*) FROM instructions {where}", params).fetchone()[0]

    def page_instructions(self, search: str = "", page: int = 1, page_size: int = 50,
                          job_id: str | None = None) -> list[dict[str, Any]]:
        """One page of instructions, newest first, filtered by a case-insensitive substring."""
        where, params = _instruction_filter(search, job_id)
        offset = max(page - 1, 0) * page_size
        with self.read() as con:
            cursor = con.execute(
                f"SELECT text, n_tokens, model, temperature, seed, job_id, created_at FROM instructions {where} "
                "ORDER BY created_at DESC, id LIMIT ? OFFSET ?",
                [*params, page_size, offset],
            )
            names = [column[0] for column in cursor.description]
            return [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]

    def instruction_lengths(self, job_id: str | None = None) -> list[int]:
        where, params = _instruction_filter("", job_id)
        with self.read() as con:
            return [n for (n,) in con.execute(f"SELECT n_tokens FROM instructions {where}", params).fetchall()]

    def instruction_steering(self, job_id: str | None = None) -> list[dict[str, Any]]:
        """How each instruction was steered (mode, source, seed ids, prompt id) with its text, oldest first."""
        where, params = _instruction_filter("", job_id)
        with self.read() as con:
            cursor = con.execute(
                f"SELECT id, text, job_id, batch, steer_mode, steer_source, steer_seed_ids, steer_prompt, prefix "
                f"FROM instructions {where} ORDER BY created_at, batch, id", params)
            names = [column[0] for column in cursor.description]
            return [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]

    def job_instruction_ids(self, job_id: str) -> list[str]:
        with self.read() as con:
            return [i for (i,) in con.execute("SELECT id FROM instructions WHERE job_id = ?", [job_id]).fetchall()]


def _instruction_filter(search: str, job_id: str | None) -> tuple[str, list[Any]]:
    clauses, params = [], []
    if search.strip():
        clauses.append("contains(lower(text), lower(?))")
        params.append(search.strip())
    if job_id:
        clauses.append("job_id = ?")
        params.append(job_id)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), params

