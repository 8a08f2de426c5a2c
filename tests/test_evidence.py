"""The forgetting regime search of the evidence experiment (issue 16 item 1): the grid runs cheapest first, a
setting forgets only beyond 3 paired standard errors, the cheapest forgetting one is chosen, and the quick run
goes end to end through the real CLI and skips everything on a rerun."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.evidence_grid import (
    GridPoint,
    chosen_point,
    forgets,
    gains,
    grid_points,
    grid_table,
    next_action,
    outcome,
)
from experiments.stage_runner import machine, machine_label
from tests.helpers import ROOT

LOSS, NO_LOSS = {"diff": -0.1, "se": 0.02, "n": 2000}, {"diff": -0.01, "se": 0.02, "n": 2000}
GAIN, HARM = {"diff": 0.3, "se": 0.03, "n": 839}, {"diff": -0.7, "se": 0.05, "n": 839}


def test_the_grid_runs_cheapest_first_and_the_highest_learning_rate_first_at_one_cost():
    points = grid_points([1600, 400], [3, 1], [1e-4, 2e-5])
    assert [(p.domain_rows, p.epochs, p.lr) for p in points] == [
        (400, 1, 1e-4), (400, 1, 2e-5), (400, 3, 1e-4), (400, 3, 2e-5),
        (1600, 1, 1e-4), (1600, 1, 2e-5), (1600, 3, 1e-4), (1600, 3, 2e-5)]
    assert points[0].steps(8) == 50 and GridPoint(10, 10, 1, 1e-5).steps(8) == 2  # a partial batch is a step


def test_lower_learning_rates_are_skipped_below_one_that_did_not_forget_and_searched_below_one_that_did():
    high, mid, low = (GridPoint(400, 400, 1, lr) for lr in (1e-3, 3e-4, 1e-4))
    costly = GridPoint(1200, 400, 3, 1e-3)
    assert next_action(high, []) == "run"
    missed = [outcome(high, 8, NO_LOSS, GAIN, {}, 0.5, 0.49)]
    assert next_action(mid, missed) == "skip" and next_action(costly, missed) == "run"
    hit = [outcome(high, 8, LOSS, GAIN, {}, 0.5, 0.4)]
    assert next_action(mid, hit) == "run" and next_action(costly, hit) == "stop"
    assert next_action(low, [*hit, outcome(mid, 8, NO_LOSS, GAIN, {}, 0.5, 0.49)]) == "skip"
    assert next_action(low, [*hit, outcome(mid, 8, LOSS, GAIN, {}, 0.5, 0.4)]) == "run"


def test_a_setting_that_forgets_while_its_domain_fit_falls_is_not_chosen_and_the_search_goes_on():
    high, mid = GridPoint(400, 400, 1, 3e-3), GridPoint(400, 400, 1, 1e-3)
    damaged = outcome(high, 8, LOSS, HARM, {}, 0.5, 0.4)
    assert damaged["forgets"] and not damaged["gains"] and not damaged["qualifies"]
    assert next_action(mid, [damaged]) == "run"  # it forgot, so a gentler lr may forget and gain
    assert next_action(GridPoint(1600, 1600, 1, 1e-3), [damaged]) == "run"  # nothing cheaper qualified
    assert chosen_point([damaged]) is None
    assert chosen_point([damaged, outcome(mid, 8, LOSS, GAIN, {}, 0.5, 0.4)])["name"] == "rows400-ep1-lr0.001"


def test_forgetting_and_gaining_need_more_than_three_paired_standard_errors():
    assert forgets(-0.031, 0.01) and not forgets(-0.03, 0.01) and not forgets(-0.5, None)
    assert not forgets(0.2, 0.01) and not forgets(None, 0.01) and not forgets(-0.1, 0.0)
    assert gains(0.031, 0.01) and not gains(0.03, 0.01) and not gains(-0.5, 0.01) and not gains(0.5, None)


def test_the_cheapest_qualifying_setting_is_chosen_and_tabled():
    outcomes = [outcome(GridPoint(400, 400, 1, 2e-5), 8, NO_LOSS, GAIN, {"seconds": 300}, 0.5, 0.49),
                outcome(GridPoint(1200, 400, 3, 1e-4), 8, LOSS, GAIN, {"seconds": 900}, 0.5, 0.4),
                outcome(GridPoint(400, 400, 1, 1e-4), 8, LOSS, GAIN, {"seconds": 310}, 0.5, 0.4)]
    assert [o["qualifies"] for o in outcomes] == [False, True, True]
    assert chosen_point(outcomes)["name"] == "rows400-ep1-lr0.0001"
    assert chosen_point(outcomes[:1]) is None
    table = grid_table(outcomes)
    assert ("| rows400-ep1-lr2e-05 | 400 | 1 | 2e-05 | 50 | 0.500 | 0.490 | -1.0 ± 2.0 | no | +0.300 ± 0.030 | "
            "**yes** | 300 |") in table
    assert table.count("| **yes** | +0.300") == 2


def test_a_grid_in_progress_is_written_as_such_and_the_arms_do_not_start_from_it(tmp_path: Path):
    from experiments.evidence import Settings, main
    from experiments.evidence_grid_files import write_grid
    from experiments.stage_runner import StageRunner

    out = tmp_path / "docs"
    partial = {"outcomes": [outcome(GridPoint(400, 400, 1, 1e-3), 8, NO_LOSS, GAIN, {"seconds": 300}, 0.5, 0.49)],
               "skipped": [], "beyond_choice": [], "chosen": None, "finished": False}
    write_grid(partial, Settings(), out, StageRunner(tmp_path / "state", echo=False), "python experiments/...")
    assert json.loads((out / "evidence_grid.json").read_text(encoding="utf-8"))["finished"] is False
    text = (out / "evidence_grid.md").read_text(encoding="utf-8")
    assert "In progress: 1 point(s) evaluated so far" in text and "rows400-ep1-lr0.001" in text

    # a rerun that found nothing new (other arm settings and invocation aside) leaves both files (and their date) as
    # they were; a new finding, or another setting of the grid's own, rewrites them
    created = json.loads((out / "evidence_grid.json").read_text(encoding="utf-8"))["created"]
    dated = {path: path.read_text(encoding="utf-8").replace(created, "2000-01-01T00:00:00+00:00")
             for path in (out / "evidence_grid.json", out / "evidence_grid.md")}
    for path, old in dated.items():
        path.write_text(old, encoding="utf-8")
    again = write_grid(partial, Settings(train_dtype="float32", eval_dtype="float32"), out,
                       StageRunner(tmp_path / "state", echo=False), "python experiments/... --train-dtype float32")
    assert again["written"] is False
    assert all(path.read_text(encoding="utf-8") == old for path, old in dated.items())
    write_grid(partial, Settings(batch_size=4), out, StageRunner(tmp_path / "state", echo=False), "python ...")
    assert all("2000-01-01" not in path.read_text(encoding="utf-8") for path in dated)
    for path, old in dated.items():
        path.write_text(old, encoding="utf-8")
    write_grid({**partial, "skipped": ["rows400-ep1-lr0.0001"]}, Settings(), out,
               StageRunner(tmp_path / "state", echo=False), "python experiments/...")
    assert all("2000-01-01" not in path.read_text(encoding="utf-8") for path in dated)
    with pytest.raises(SystemExit, match="a grid in progress"):
        main(["--stage", "arms", "--workspace", str(tmp_path / "ws"), "--out", str(out)])


def test_a_fresh_workspace_takes_the_committed_grids_points_instead_of_running_them_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from experiments.evidence import Settings, search
    from experiments.evidence_grid_files import recorded_outcomes, write_grid
    from experiments.stage_runner import StageRunner

    class NothingRuns(StageRunner):
        def cli(self, name, argv, **kwargs):  # noqa: ANN001, ANN003, ANN201
            raise AssertionError(f"{name} ran")

    settings = Settings(grid_rows=[400], grid_epochs=[1], grid_lrs=[3e-4, 1e-3])
    other = {"cpu": "another CPU", "bf16": "AMX bf16", "python": "3.11"}
    points = [{**outcome(GridPoint(400, 400, 1, lr), 8, LOSS, GAIN, {"seconds": 300}, 0.56, 0.50), "machine": other}
              for lr in (1e-3, 3e-4)]
    out = tmp_path / "docs"
    write_grid({"outcomes": points, "skipped": [], "beyond_choice": [], "chosen": None, "finished": False},
               settings, out, StageRunner(tmp_path / "old", echo=False), "python experiments/evidence.py")
    recorded = recorded_outcomes(out / "evidence_grid.json", settings)
    assert set(recorded) == {"rows400-ep1-lr0.001", "rows400-ep1-lr0.0003"}
    assert recorded_outcomes(out / "evidence_grid.json", Settings(batch_size=4)) == {}  # other settings: none
    found = search(NothingRuns(tmp_path / "new", echo=False), settings, tmp_path / "ws", recorded=recorded)
    assert [o["name"] for o in found["outcomes"]] == ["rows400-ep1-lr0.001", "rows400-ep1-lr0.0003"]
    assert found["chosen"]["name"] == "rows400-ep1-lr0.0003" and found["finished"]
    write_grid(found, settings, out, StageRunner(tmp_path / "new", echo=False), "python experiments/evidence.py")
    text = (out / "evidence_grid.md").read_text(encoding="utf-8")
    assert "Points run on other machines: rows400-ep1-lr0.001 on another CPU (AMX bf16)" in text
    assert "Chosen: **rows400-ep1-lr0.0003**" in text

    # a later session on another machine takes every point again: its own commands and CPU change no finding
    written = (out / "evidence_grid.json").read_bytes()
    monkeypatch.setattr("experiments.evidence_grid_files.machine", lambda: {**other, "cpu": "a third CPU"})
    later = StageRunner(tmp_path / "later", echo=False)
    later.commands.append("forgetless sql --workspace elsewhere 'SELECT 1'")
    assert not write_grid(found, settings, out, later, "python experiments/evidence.py --stage all")["written"]
    assert (out / "evidence_grid.json").read_bytes() == written


def test_a_pinned_eval_dtype_reaches_every_arm_evaluation_and_names_its_own_jobs(tmp_path: Path):
    from experiments.evidence import Settings
    from experiments.evidence_arms import evaluate
    from experiments.stage_runner import StageRunner

    class Recording(StageRunner):
        def cli(self, name, argv, **kwargs):  # noqa: ANN001, ANN003, ANN201
            argv = [str(part) for part in argv]
            self.seen[name] = argv
            return {"job_id": argv[argv.index("--job-id") + 1] if "--job-id" in argv else f"job-{name}"}

    runner = Recording(tmp_path / "state", echo=False)
    runner.seen = {}
    evaluate(runner, Settings(eval_dtype="float32"), tmp_path, "base-float32", "m", drift=False)
    pinned = dict(runner.seen)
    assert all(argv[argv.index("--dtype") + 1] == "float32" for argv in pinned.values()) and len(pinned) == 3
    assert pinned["eval-ifeval-base-float32"][-1] == "arms-ifeval-base-float32-b128-float32"
    runner.seen = {}
    evaluate(runner, Settings(), tmp_path, "base", "m", drift=False)  # auto: the commands of before, no --dtype
    assert not any("--dtype" in argv for argv in runner.seen.values())
    assert runner.seen["eval-ifeval-base"][-1] == "arms-ifeval-base-b128"


@pytest.mark.integration
def test_quick_experiment_runs_end_to_end_and_resumes(tmp_path: Path):
    """The grid (two points, both recorded) then every arm at the quick setting, through the real CLI on the
    packaged model; a rerun retrains and re-evaluates nothing."""
    workspace, out = tmp_path / "ws", tmp_path / "report"
    command = [sys.executable, str(ROOT / "experiments" / "evidence.py"), "--quick", "--workspace", str(workspace),
               "--out", str(out), "--threads", "1"]
    first = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=1800)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    grid = json.loads((out / "evidence_grid.json").read_text(encoding="utf-8"))
    assert grid["primary_metric"] == "general" and len(grid["outcomes"]) == 2  # --grid-all in quick mode
    assert grid["finished"] is True
    for result in grid["outcomes"]:
        assert result["n"] == 16 and 0.0 <= result["tuned"] <= 1.0 and result["train_seconds"] > 0  # 4 tasks x 4
        assert result["gain_n"] == 4 and result["gain"] != 0.0  # every trained model moves its answers' fit
    assert grid["machine"]["bf16"] in ("AMX bf16", "AVX512-BF16", "no native bf16")
    assert "| setting | rows |" in (out / "evidence_grid.md").read_text(encoding="utf-8")

    record = json.loads((out / "evidence.json").read_text(encoding="utf-8"))
    assert list(record["arms"]) == ["a", "b", "c", "c@0.25", "d", "e"]
    assert record["n_items"] == {"general": 16, "arc_easy": 4, "piqa": 4, "hellaswag": 4, "sciq": 4, "medmcqa": 4,
                                 "domain_ppl": 4, "ifeval": 3}
    assert record["domain_gain_metric"] == "domain_ppl"
    for arm, tasks in record["arms"].items():
        assert set(tasks) == {"general", "arc_easy", "piqa", "hellaswag", "sciq", "medmcqa", "domain_ppl", "ifeval"}
        general = [tasks[name]["delta"] for name in ("arc_easy", "piqa", "hellaswag", "sciq")]
        assert tasks["general"]["delta"] == pytest.approx(sum(general) / 4), arm  # pooled 4 x 4 items
        assert all(-1.0 <= task["delta"] <= 1.0 for name, task in tasks.items() if name != "domain_ppl"), arm
        assert tasks["domain_ppl"]["delta"] != 0.0, arm  # every trained arm moves its answers' likelihood
        assert record["drift"][arm]["texts"] == "held out by the mix" and record["drift"][arm]["n"] >= 1
        assert record["drift"][arm]["ppl_tuned"] > 1 and record["drift"][arm]["ppl_base"] > 1  # held-out perplexity
    assert {"forgetting_reduction", "forgetting_reduction_ci", "domain_gain_retention",
            "domain_gain_retention_ci"} <= set(record["summary"])
    assert set(record["head_to_head"]) == {"b", "d", "e"}  # ours against each other main arm, on shared seeds
    assert all(entry["seeds"] == [0] and entry["general"]["n"] == 16 for entry in record["head_to_head"].values())
    assert "- (c) against (d) + reconstructed, not screened, item by item (seed 0): general accuracy " in (
        out / "evidence.md").read_text(encoding="utf-8")
    assert [row["ratio"] for row in record["sweep"]] == [0.25, 0.5]
    for row in record["sweep"]:  # the sweep's domain gain is the answer fit, on the seed every ratio has
        assert row["domain_gain"]["delta"] == record["arms"][row["arm"]]["domain_ppl"]["delta"]
        assert row["seeds"] == [0] and row["forgetting_reduction"]["n"] == 16
    costs = record["costs"]
    assert costs["c"]["synthesis_seconds"] > 0 and costs["c"]["screening_seconds"] > 0
    assert costs["d"]["synthesis_seconds"] == costs["c"]["synthesis_seconds"] and costs["d"]["screening_seconds"] == 0
    assert costs["a"]["synthesis_seconds"] == 0 and costs["a"]["train_seconds"] > 0 and costs["a"]["train_tokens"] > 0
    assert costs["e"]["train_seconds"] >= costs["a"]["train_seconds"]  # (a)'s training first
    here = machine_label(machine())
    assert all(cost["machines"] == [here] for cost in costs.values())  # every stage timed here, and says so
    assert "| (c) |" in (out / "evidence.md").read_text(encoding="utf-8")
    runs = sorted(p.name for p in (workspace / "runs").iterdir())
    assert not any((workspace / "runs" / name / "checkpoints").exists() for name in runs)  # pruned when finished

    written = {path: path.read_bytes() for path in out.glob("evidence_grid.*")}
    again = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert all(path.read_bytes() == text for path, text in written.items())  # nothing new: not rewritten, same date
    assert "forgetless train" not in again.stdout and "forgetless eval" not in again.stdout  # all skipped
    rerun = json.loads((out / "evidence.json").read_text(encoding="utf-8"))
    assert rerun["arms"] == record["arms"]

    def mixing(commands: list[str]) -> list[str]:
        return [line for line in commands if line.startswith(("forgetless mix ", "# freeze", "# write"))]

    assert mixing(rerun["commands"]) == mixing(record["commands"]) != []  # every report lists how each mix was made

    # the workspace lost (a new machine) before (e) was kept: the ledger beside the report brings back what was
    # finished, and only (e) runs again, on (a) trained again (its model went with the workspace)
    ledger = out / "evidence_runs"
    assert sorted(path.name for path in ledger.iterdir()) == [
        "a-s0", "b-s0", "base", "c@0.25-s0", "c@0.5-s0", "d-s0", "e-s0", "synthesis"]
    shutil.rmtree(ledger / "e-s0")
    fresh = [*command[:command.index("--workspace") + 1], str(tmp_path / "fresh"),
             *command[command.index("--workspace") + 2:]]
    restored = subprocess.run(fresh, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert restored.returncode == 0, restored.stderr[-3000:]
    ran = [line.split(": forgetless ")[0].split("] ")[1] for line in restored.stdout.splitlines()
           if ": forgetless " in line]
    assert not {"reconstruct", "respond", "judge"} & set(ran)
    assert [name for name in ran if name.startswith(("train", "eval"))] == [
        "train-a-s0", "eval-general-e-s0", "eval-domain-e-s0", "eval-ifeval-e-s0"]
    again_record = json.loads((out / "evidence.json").read_text(encoding="utf-8"))
    assert again_record["arms"] == record["arms"]  # (a) trained again gives the same (e)
    kept_costs = {arm: cost for arm, cost in record["costs"].items() if arm != "e"}
    assert {arm: cost for arm, cost in again_record["costs"].items() if arm != "e"} == kept_costs
    assert again_record["costs"]["e"]["train_tokens"] == record["costs"]["e"]["train_tokens"]  # only re-timed
    assert (ledger / "e-s0" / "stages.json").exists()

    # the report alone, from the ledger into a scratch workspace (newer report code, the run still going):
    # nothing is trained or evaluated, and the figures are the same
    (out / "evidence.md").unlink()
    at = fresh.index("--workspace") + 1
    report = subprocess.run([*fresh[:at], str(tmp_path / "scratch"), *fresh[at + 1:], "--stage", "report"],
                            capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert report.returncode == 0, report.stderr[-3000:]
    assert not re.search(r": forgetless (train|eval|reconstruct|respond|judge) ", report.stdout), report.stdout
    assert (out / "evidence.md").exists() and "forgetless mix " in (out / "evidence.md").read_text(encoding="utf-8")
    reported = json.loads((out / "evidence.json").read_text(encoding="utf-8"))
    assert reported["arms"] == record["arms"]
    empty = subprocess.run([*fresh[:at], str(tmp_path / "scratch2"), "--out", str(tmp_path / "no-ledger"),
                            "--threads", "1", "--stage", "report", "--domain-rows", "8", "--epochs", "1", "--lr",
                            "1e-3"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert empty.returncode == 1 and "nothing to report" in empty.stderr.strip().splitlines()[-1], empty.stderr

    # every stage timed again on this machine over a slice, once: the report puts every arm's seconds on it
    retime = [*fresh, "--stage", "retime"]
    timed = subprocess.run(retime, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert timed.returncode == 0, timed.stdout[-3000:] + timed.stderr[-3000:]
    rates = json.loads((out / "evidence_retime.json").read_text(encoding="utf-8"))["tokens_per_s"]
    assert set(rates) == {"reconstruct", "respond", "judge", "train-a", "train-b", "train-c", "train-c@0.25",
                          "train-d"} and all(rate > 0 for rate in rates.values())
    retimed = json.loads((out / "evidence.json").read_text(encoding="utf-8"))
    one = retimed["costs_one_machine"]
    assert one["machine"] == machine() and set(one["arms"]) == set(retimed["costs"])
    assert one["arms"]["c"]["synthesis_seconds"] > 0 and one["arms"]["d"]["screening_seconds"] == 0
    assert all(cost["train_seconds"] > 0 for cost in one["arms"].values())
    assert retimed["arms"] == record["arms"]  # timing again changes no figure
    in_fresh = [line.replace(str(tmp_path / "scratch"), str(tmp_path / "fresh")) for line in reported["commands"]]
    assert retimed["commands"] == in_fresh  # the experiment's, listed once as by any report; the slice's apart:
    assert all("/retime/" in line for line in one["commands"]) and "retime/" in (out / "evidence.md").read_text(
        encoding="utf-8").split("Timed again on one machine")[1]
    assert "The same costs on one machine" in (out / "evidence.md").read_text(encoding="utf-8")
    again_timed = subprocess.run(retime, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert again_timed.returncode == 0 and "forgetless train" not in again_timed.stdout  # timed here already


def test_wise_ft_interpolates_every_weight_and_writes_a_run_eval_can_read(tmp_path: Path):
    import torch
    import yaml
    from safetensors.torch import load_file

    from core.eval.evaluation import EvalConfig, resolve_target
    from experiments.wise_ft import interpolate_run
    from tests.helpers import build_tiny_model_folder

    base = build_tiny_model_folder(tmp_path / "base", seed=0)
    tuned = tmp_path / "run"
    build_tiny_model_folder(tuned / "model", seed=1)
    (tuned / "config.yaml").write_text(yaml.safe_dump({"model": str(base), "data": str(tmp_path / "mix")}))
    summary = interpolate_run(tuned, tmp_path / "wise", 0.25, tmp_path / "ws")
    assert summary["alpha"] == 0.25 and (tmp_path / "wise" / "summary.json").exists()

    folders = (base, tuned / "model", tmp_path / "wise" / "model")
    weights = [load_file(folder / "model.safetensors") for folder in folders]
    for name, mixed in weights[2].items():
        expected = 0.25 * weights[1][name].float() + 0.75 * weights[0][name].float()
        assert torch.allclose(mixed.float(), expected, atol=1e-6), name
    target = resolve_target(EvalConfig(model=str(tmp_path / "wise")))
    assert target.load_spec == str(tmp_path / "wise" / "model") and target.base == str(base)
    assert target.data_dir == str(tmp_path / "mix")  # drift reads the tuned run's mix: the same held-out texts


def test_the_unscreened_arm_draws_random_instructions_and_responses_outside_the_held_out_rows():
    import pandas as pd

    from experiments.unscreened import unscreened_rows

    pairs = pd.DataFrame([{"id": f"i{i}", "instruction": f"ask {i}", "response_id": f"i{i}-r{k}",
                           "response": f"answer {i}.{k}"} for i in range(10) for k in range(3)])
    rows = unscreened_rows(pairs, 6, seed=0, held_out_ids=["i0", "i1"])
    ids = [iid for iid, _ in rows]
    assert len(ids) == len(set(ids)) == 6 and not {"i0", "i1"} & set(ids)
    for iid, messages in rows:
        assert messages[0] == {"role": "user", "content": f"ask {iid[1:]}"}
        assert messages[1]["content"].startswith(f"answer {iid[1:]}.")  # one of its own responses
    assert unscreened_rows(pairs, 6, seed=0, held_out_ids=["i0", "i1"]) == rows  # seeded
    picks = {messages[1]["content"][-1] for seed in range(8) for _, messages in unscreened_rows(pairs, 8, seed, [])}
    assert picks == {"0", "1", "2"}  # not always the first response
    with pytest.raises(RuntimeError, match="only 8 instructions"):
        unscreened_rows(pairs, 9, seed=0, held_out_ids=["i0", "i1"])


def test_a_resumed_reconstruction_costs_all_its_rows_at_the_rate_it_ran():
    from experiments.evidence_arms import stage_cost

    fresh = stage_cost({"seconds": 10.0, "tokens_per_s": 50.0, "stored": 200, "new": 200})
    assert fresh == {"seconds": 10.0, "tokens": 500, "scaled": 1.0}
    resumed = stage_cost({"seconds": 10.0, "tokens_per_s": 50.0, "stored": 200, "new": 50})  # 150 made before
    assert resumed == {"seconds": 40.0, "tokens": 2000, "scaled": 4.0}
    assert stage_cost({"seconds": 3.0, "tokens_per_s": 2.0}) == {"seconds": 3.0, "tokens": 6, "scaled": 1.0}
    judged = stage_cost({"seconds": 8.0, "tokens_read": 900, "stored": 300, "new": 100})  # screening reads tokens
    assert judged == {"seconds": 24.0, "tokens": 2700, "scaled": 3.0}


def test_the_runner_lists_the_stages_it_ran_not_those_it_skipped(tmp_path: Path):
    from experiments.stage_runner import StageRunner

    out = tmp_path / "out.json"

    def work() -> dict:
        out.write_text("{}")
        return {"ok": True}

    first = StageRunner(tmp_path / "state", echo=False)
    assert first.step("write", "write a file", out, work) == {"ok": True} and first.ran == ["write"]
    again = StageRunner(tmp_path / "state", echo=False)  # a rerun: recorded and its output still there
    assert again.step("write", "write a file", out, work) == {"ok": True} and again.ran == []
