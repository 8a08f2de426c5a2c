"""Screening's token count after the fact (experiments/judged_tokens.py) equals what the judge stage counts as it
scores, on the tiny model and the packaged embedder."""

from __future__ import annotations

import json
from pathlib import Path

from core.engines.embedder import DEFAULT_EMBEDDER
from core.engines.in_process import in_process_engines
from core.screen.judge import JudgeConfig, run_judging
from core.screen.respond import RespondConfig, run_responses
from core.store import InstructionRow, Store
from experiments.judged_tokens import count_judged_tokens


def test_tokens_counted_from_the_stored_texts_match_the_judge_stage_count(tmp_path: Path, tiny_model_dir: Path):
    ws = tmp_path / "ws"
    store = Store.for_workspace(ws)
    texts = ["write a short poem about math", "explain how to cook rice", "give me tips to learn python"]
    rows = [InstructionRow(text, 5, "tiny", "<p>", 1.0, 1.0, 32, 0, "seed-job", 0) for text in texts]
    store.add_instruction_batch("seed-job", 0, rows, limit=10, sampled=3, dropped={}, new_tokens=15, seconds=0.1)
    engines = in_process_engines(ws)
    model = str(tiny_model_dir)
    run_responses(RespondConfig(models=(model,), k=2, max_new_tokens=8, batch_size=8), store, engines)
    judges = (model, f"completeness:{model}", f"relevance:{DEFAULT_EMBEDDER}")
    first = run_judging(JudgeConfig(judges=judges[:2], batch_size=4), store, engines)
    later = run_judging(JudgeConfig(judges=judges, batch_size=4), store, engines)  # only relevance was pending
    assert set(later["tokens_read_by_judge"]) == {judges[2]}

    out = tmp_path / "counted.json"
    counted = count_judged_tokens(ws, first["job_id"], out)
    assert counted["tokens_read_by_judge"] == first["tokens_read_by_judge"] and counted["tokens_read"] > 0
    assert json.loads(out.read_text(encoding="utf-8")) == counted
    again = count_judged_tokens(ws, later["job_id"], out)  # each job counts what it scored, not the others' scores
    assert again["tokens_read_by_judge"] == later["tokens_read_by_judge"]
