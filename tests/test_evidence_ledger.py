"""The evidence experiment's ledger (experiments/evidence_ledger.py): what a lost workspace had finished comes back
into a fresh one, rows and stage records, once, with this workspace's paths."""

from __future__ import annotations

import json
from pathlib import Path

from core.store import Store
from core.store.base import now
from core.store.evaluation import EvalItemRow
from experiments.evidence_ledger import has, kept_stage, record, restore, save_run, save_synthesis, snapshot
from experiments.stage_runner import StageRunner, machine


def _entry(ws: Path, stage: str, seconds: float) -> dict:
    command = f"forgetless {stage} --workspace {ws}"
    return {"key": command, "command": command, "seconds": seconds, "summary": {"out": str(ws / "runs" / stage)}}


def _workspace(ws: Path) -> StageRunner:
    """A workspace whose store holds one instruction and two evaluation jobs' items, and whose runner finished the
    general data's stages and one model's evaluation."""
    store = Store.for_workspace(ws)
    with store.write() as con:
        con.execute("INSERT INTO instructions (id, text, n_chars, n_tokens, model, prefix, temperature, top_p, "
                    "max_new_tokens, seed, job_id, batch, created_at) VALUES ('i1', 'Name a colour.', 14, 4, 'm', "
                    "'p', 1.0, 1.0, 64, 0, 'rec', 0, ?)", [now()])
        con.execute("INSERT INTO jobs VALUES ('j1', 'eval', 'x: 1', ?), ('j2', 'eval', 'x: 2', ?)", [now(), now()])
    store.add_eval_items("j1", "arc_easy", [EvalItemRow("q1", 1, 1, 1, [0.1, 0.9]),
                                            EvalItemRow("q2", 0, 1, 1, [0.2, 0.8], {"nll": 3.0, "tokens": 2})])
    store.add_eval_items("j2", "arc_easy", [EvalItemRow("q1", 1, 0, 0, [0.7, 0.3])])
    run = StageRunner(ws / "experiment", echo=False)
    run.state.update({stage: _entry(ws, stage, 5.0) for stage in ("reconstruct", "respond", "judge",
                                                                  "train-a-s0", "eval-general-a-s0")})
    return run


def test_a_fresh_workspace_gets_back_the_kept_rows_and_stage_records_with_its_own_paths(tmp_path: Path):
    old, new, ledger = tmp_path / "old", tmp_path / "new", tmp_path / "docs" / "evidence_runs"
    run = _workspace(old)
    assert save_synthesis(ledger, old, run) and not save_synthesis(ledger, old, run)  # once
    assert save_run(ledger, old, run, "a-s0", ["j1"], ["train-a-s0", "eval-general-a-s0"])
    assert has(ledger, "synthesis") and has(ledger, "a-s0") and not has(ledger, "b-s0")

    fresh = StageRunner(new / "experiment", echo=False)
    assert restore(ledger, new, fresh) == ["a-s0", "synthesis"]
    store = Store.for_workspace(new)
    with store.read() as con:
        assert con.execute("SELECT id, text FROM instructions").fetchall() == [("i1", "Name a colour.")]
        assert con.execute("SELECT job_id FROM jobs").fetchall() == [("j1",)]  # only the kept model's job
    assert [(row.item_id, row.pred, row.extra) for row in store.eval_items("j1", "arc_easy")] == [
        ("q1", 1, None), ("q2", 1, {"nll": 3.0, "tokens": 2})]
    assert store.eval_items("j2", "arc_easy") == []
    assert set(fresh.state) == {"reconstruct", "respond", "judge", "train-a-s0", "eval-general-a-s0"}
    assert fresh.state["train-a-s0"]["key"] == f"forgetless train-a-s0 --workspace {new}"
    assert kept_stage(ledger, "a-s0", "train-a-s0", new)["summary"]["out"] == str(new / "runs" / "train-a-s0")
    saved = json.loads((new / "experiment" / "stages.json").read_text(encoding="utf-8"))
    assert saved["judge"]["seconds"] == 5.0  # the state on disk has them too: a restart skips them
    # Stages recorded before the runner kept each one's machine take the record's; one that has its own keeps it.
    assert saved["judge"]["machine"] == record(ledger, "synthesis")["machine"] == machine()

    again = StageRunner(new / "experiment", echo=False)
    assert restore(ledger, new, again) == []  # nothing new, and no row twice
    with store.read() as con:
        assert con.execute("SELECT count(*) FROM eval_items").fetchone()[0] == 2
        assert con.execute("SELECT count(*) FROM instructions").fetchone()[0] == 1
    elsewhere = {"cpu": "another CPU", "bf16": "AMX bf16", "python": "3.11.7"}
    run.state["eval-general-a-s0"]["machine"] = elsewhere
    assert save_run(ledger, old, run, "a-s1", ["j2"], ["eval-general-a-s0"])
    assert kept_stage(ledger, "a-s1", "eval-general-a-s0", new)["machine"] == elsewhere


def test_a_workspace_keeps_its_own_records_over_the_ledgers(tmp_path: Path):
    old, ledger = tmp_path / "old", tmp_path / "evidence_runs"
    run = _workspace(old)
    save_run(ledger, old, run, "a-s0", ["j1"], ["train-a-s0"])
    run.state["train-a-s0"]["seconds"] = 9.0  # trained again here (its model had gone)
    assert restore(ledger, old, run) == []
    assert run.state["train-a-s0"]["seconds"] == 9.0
    assert Store.for_workspace(old).eval_items("j1", "arc_easy")[0].item_id == "q1"  # rows not doubled
    assert len(Store.for_workspace(old).eval_items("j1", "arc_easy")) == 2


def test_an_unfinished_ledger_entry_is_neither_restored_nor_counted(tmp_path: Path):
    ledger = tmp_path / "evidence_runs"
    (ledger / "a-s0").mkdir(parents=True)
    (ledger / "a-s0" / "eval_items.parquet").write_bytes(b"cut short")  # no record: the write stopped midway
    fresh = StageRunner(tmp_path / "ws" / "experiment", echo=False)
    assert not has(ledger, "a-s0") and restore(ledger, tmp_path / "ws", fresh) == [] and fresh.state == {}


def test_a_session_stopping_mid_stage_keeps_what_finished_and_a_fresh_workspace_goes_on_from_it(tmp_path: Path):
    old, new, ledger = tmp_path / "old", tmp_path / "new", tmp_path / "evidence_runs"
    run = _workspace(old)
    for stage in ("respond", "judge", "train-a-s0"):  # responding when the session ended; (a) half evaluated
        del run.state[stage]
    run.state["eval-general-a-s0"]["summary"]["job_id"] = "j1"
    run.state["eval-general-grid-rows400"] = {**run.state["eval-general-a-s0"]}  # the grid's: not kept here

    assert snapshot(ledger, old, run) == ["synthesis", "a-s0"]
    assert not has(ledger, "synthesis") and not has(ledger, "a-s0")  # partial: the arms loop does not skip (a)
    assert set(record(ledger, "a-s0")["stages"]) == {"eval-general-a-s0"}  # no training record: trained again
    fresh = StageRunner(new / "experiment", echo=False)
    assert restore(ledger, new, fresh) == ["a-s0", "synthesis"]
    assert set(fresh.state) == {"reconstruct", "eval-general-a-s0"}  # respond runs, resuming from the kept rows
    with Store.for_workspace(new).read() as con:
        assert con.execute("SELECT count(*) FROM instructions").fetchone()[0] == 1
    assert len(Store.for_workspace(new).eval_items("j1", "arc_easy")) == 2

    assert snapshot(ledger, old, run) == ["synthesis", "a-s0"]  # rewritten with what finished since (nothing here)
    for stage in ("respond", "judge"):
        run.state[stage] = _entry(old, stage, 7.0)
    assert save_synthesis(ledger, old, run) and has(ledger, "synthesis")  # complete now, and kept as it is
    assert snapshot(ledger, old, run) == ["a-s0"]
