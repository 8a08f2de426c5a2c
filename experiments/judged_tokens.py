"""Screening's token cost for a judge job that ran before the judge stage counted the tokens it reads.

The count is the judge stage's own (`core.screen.judge.tokens_read`), over the texts the job scored as the store
keeps them: each judge's prompts, or a signal's measured texts. It loads each judge's tokenizer (and the embedder)
but runs no forward pass, so it takes seconds where the scoring took minutes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.engines.embedder import open_embedder
from core.engines.in_process import in_process_engines
from core.screen.judge import tokens_read
from core.screen.signals import scorer_opener
from core.store import Store


def judged_items(store: Store, job_id: str) -> dict[str, list[tuple[str, str]]]:
    """Per judge, the (instruction, response) texts job ``job_id`` scored, in a stable order."""
    with store.read() as con:
        rows = con.execute("""SELECT s.judge, i.text, r.text FROM scores s
                              JOIN responses r ON r.id = s.response_id JOIN instructions i ON i.id = r.instruction_id
                              WHERE s.job_id = ? ORDER BY s.judge, s.response_id""", [job_id]).fetchall()
    items: dict[str, list[tuple[str, str]]] = {}
    for judge, instruction, response in rows:
        items.setdefault(judge, []).append((instruction, response))
    return items


def count_judged_tokens(workspace: Path, job_id: str, out: Path) -> dict[str, Any]:
    """Count the tokens each judge of job ``job_id`` read; write the summary to ``out`` (JSON) and return it."""
    opened = scorer_opener(in_process_engines(workspace), open_embedder)
    read = {}
    for judge, items in judged_items(Store.for_workspace(workspace), job_id).items():
        with opened(judge) as scorer:
            read[judge] = tokens_read(judge, scorer, items)
    summary = {"job_id": job_id, "tokens_read": sum(read.values()), "tokens_read_by_judge": read,
               "counted": "after the job, from the texts it scored"}
    out.write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return summary
