"""Screening's token count after the fact (experiments/judged_tokens.py) equals what the judge stage counts as it
scores, on the tiny model and the packaged embedder; the evidence experiment counts an older judge job's tokens
once and puts them in its cost."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from core.engines.embedder import DEFAULT_EMBEDDER
from core.engines.in_process import in_process_engines
from core.screen.judge import JudgeConfig, run_judging
from core.screen.respond import RespondConfig, run_responses
from core.store import InstructionRow, Store
from experiments.evidence_arms import general_data
from experiments.judged_tokens import count_judged_tokens
from experiments.stage_runner import StageRunner


def _responded(ws: Path, model: str) -> tuple[Store, Any]:
    """Three stored instructions with two responses each by ``model``; the store and the engines."""
    store = Store.for_workspace(ws)
    texts = ["write a short poem about math", "explain how to cook rice", "give me tips to learn python"]
    rows = [InstructionRow(text, 5, "tiny", "<p>", 1.0, 1.0, 32, 0, "seed-job", 0) for text in texts]
    store.add_instruction_batch("seed-job", 0, rows, limit=10, sampled=3, dropped={}, new_tokens=15, seconds=0.1)
    engines = in_process_engines(ws)
    run_responses(RespondConfig(models=(model,), k=2, max_new_tokens=8, batch_size=8), store, engines)
    return store, engines


def test_tokens_counted_from_the_stored_texts_match_the_judge_stage_count(tmp_path: Path, tiny_model_dir: Path):
    ws, model = tmp_path / "ws", str(tiny_model_dir)
    store, engines = _responded(ws, model)
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


def test_the_experiment_counts_an_older_judge_jobs_tokens_once_and_costs_them(tmp_path: Path, tiny_model_dir: Path):
    ws, model = tmp_path / "ws", str(tiny_model_dir)
    store, engines = _responded(ws, model)
    judged = run_judging(JudgeConfig(judges=(model, f"completeness:{model}"), batch_size=4), store, engines)
    # The synthesis stages as recorded before the judge stage counted what it reads.
    recorded = {"reconstruct": {"stored": 3, "new": 3, "seconds": 1.0, "tokens_per_s": 15.0},
                "respond": {"stored": 6, "new": 6, "seconds": 2.0, "tokens_per_s": 20.0},
                "judge": {key: value for key, value in judged.items() if not key.startswith("tokens_read")}}

    class Recorded(StageRunner):
        def cli(self, name: str, argv: Any, **kwargs: Any) -> dict[str, Any]:
            if name not in recorded:
                return super().cli(name, argv, **kwargs)
            self.state[name] = {"summary": recorded[name], "machine": None}
            return recorded[name]

    settings = SimpleNamespace(synthesis_batch_size=8, n_general=3, model=model, k=2, respond_tokens=8, seeds=[0],
                               screen_quantile=0.25)
    first = Recorded(tmp_path / "state", echo=False)
    general = general_data(first, settings, ws)
    assert first.ran[0] == "judge-tokens" and general["cost"]["judge"]["tokens"] == judged["tokens_read"] > 0
    assert general["with_best"] == 3 and general["min_score"] is not None

    again = Recorded(tmp_path / "state", echo=False)  # a rerun: the count is kept, not made again
    assert general_data(again, settings, ws)["cost"] == general["cost"] and "judge-tokens" not in again.ran
