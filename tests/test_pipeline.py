"""`forgetless pipeline`: one YAML runs every stage as its own job; a rerun skips what finished; a kill -9 mid-stage
resumes without duplicates; a cancel reaches the stage in flight; the shipped presets validate.

The whole-pipeline tests run the real CLI on the tiny 2-layer model of conftest (responders, judges and the tuned
model all the tiny model, a few instructions, two training steps, two items per benchmark).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from core.config import to_yaml
from core.errors import ForgetlessError
from core.jobs import job_folder, job_info, last_progress, request_cancel, start_background, wait_for
from core.pipeline.config import load_pipeline, pipeline_from_text, preset_paths
from core.pipeline.runner import KIND, stage_plan
from core.store import Store
from tests.helpers import ROOT, assert_one_line_error, forgetless, tiny_pipeline, wait_until, write_domain

STAGES = ["reconstruct", "respond", "judge", "profile", "mix", "train", "eval"]
GENERAL_TASKS = {"arc_easy", "piqa", "hellaswag", "sciq"}


def write_yaml(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def last_json(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def count(store: Store, sql: str) -> int:
    with store.read() as con:
        return con.execute(sql).fetchone()[0]


# -- validation: one line, before any job --------------------------------------------------------------------
BAD = [
    ({"trian": {}}, "unknown key 'trian' in bad.yaml"),
    ({"reconstruct": {"nn": 5}}, "unknown key 'reconstruct.nn': ReconstructConfig has model, n,"),
    ({"mix": {"out": "somewhere"}}, "key 'mix.out' is set by the pipeline"),
    ({"reconstruct": {"n": 0}}, "bad.yaml: reconstruct: n must be at least 1"),
    ({"mix": {"ratio": [0.5, 1.5]}}, "mix: ratio must be in [0, 1)"),
    ({"train": {"method": "half"}}, "train: method must be lora or full"),
    ({"eval": {"suite": ["general", "vibes"]}}, "eval: unknown suite 'vibes'"),
    ({"eval": {"limit": "many"}}, "eval: a value has the wrong type"),
    ({"judge": "everyone"}, "section 'judge' must be a mapping of JudgeConfig fields"),
    ({"engine": "magic"}, "engine: unknown engine 'magic'"),
    ({"name": "my pipeline"}, "name 'my pipeline' must be"),
]


@pytest.mark.parametrize(("change", "fragment"), BAD)
def test_bad_yaml_is_one_line_naming_the_key(tmp_path: Path, change: dict, fragment: str):
    path = write_yaml(tmp_path / "bad.yaml", {"name": "bad", **change})
    with pytest.raises(ForgetlessError) as raised:
        load_pipeline(path)
    assert fragment in str(raised.value) and "\n" not in str(raised.value)


def test_cli_errors_are_one_line_and_leave_no_job(tmp_path: Path):
    workspace = tmp_path / "ws"
    (tmp_path / "syntax.yaml").write_text("name: [unclosed\n")
    assert_one_line_error(forgetless("pipeline", "--config", str(tmp_path / "syntax.yaml"), workspace=workspace),
                          "cannot parse syntax.yaml")
    assert_one_line_error(forgetless("pipeline", workspace=workspace), "--config")
    assert_one_line_error(forgetless("pipeline", "--config", str(tmp_path / "missing.yaml"), workspace=workspace),
                          "cannot read pipeline")
    typo = write_yaml(tmp_path / "typo.yaml", {"name": "typo", "model": "no-such-alias"})
    assert_one_line_error(forgetless("pipeline", "--config", str(typo), workspace=workspace), "no-such-alias")
    assert not (workspace / "jobs").exists() or not any((workspace / "jobs").iterdir())


def test_presets_parse_and_validate():
    presets = preset_paths()
    assert {"quickstart", "paper"} <= set(presets)
    quick = load_pipeline(presets["quickstart"])
    assert quick.model == "smollm2-135m-instruct" and quick.model_specs() == ["smollm2-135m-instruct"]
    assert quick.mix_config(0.5).domain == "builtin:medmcqa" and quick.ratios() == (0.5,)
    assert [name for name, _ in stage_plan(quick)] == STAGES

    paper = load_pipeline(presets["paper"])
    assert paper.serving() == {"engine": "vllm"}
    assert len(paper.respond_config().models) == 3 and paper.respond_config().k == 3
    assert len(paper.judge_config().judges) == 3
    assert len(paper.ratios()) >= 3  # the sweep: one mix and one run per ratio
    names = [name for name, _ in stage_plan(paper)]
    assert names[:4] == STAGES[:4] and names[-1] == "eval"
    assert [name for name in names if name.startswith("train-")] == [f"train-r{r:g}" for r in paper.ratios()]


def test_sections_default_to_the_pipeline_model_and_round_trip(tmp_path: Path):
    data = write_domain(tmp_path / "data.jsonl")
    model = str(tmp_path)  # eval checks that a model path exists
    config = pipeline_from_text(f"name: t\nmodel: {model}\nrespond: {{models: 'a, b', k: 2}}\nprofile: false\n"
                                f"mix: {{domain: {data}, domain_test_fraction: 0.3, ratio: [0.2, 0.4]}}\n")
    assert config.reconstruct_config().model == model and config.respond_config().models == ("a", "b")
    assert config.profile_config() is None and "profile" not in [name for name, _ in stage_plan(config)]
    assert config.train_config().model == model and config.mix_config(0.2).tokenizer_model == model
    plan = config.eval_plan()  # scores the rows the mix held out
    assert plan.base == model and plan.domain_test_fraction == 0.3 and plan.domain == str(data)
    again = pipeline_from_text(to_yaml(config))
    assert again == config and again.resolved_job_id() == config.resolved_job_id()


# -- the whole pipeline on the tiny model ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_model_dir: Path) -> tuple[Path, Path, dict]:
    """One pipeline run to the end: (workspace, its YAML, the --json summary)."""
    folder = tmp_path_factory.mktemp("pipeline")
    workspace, path = folder / "ws", write_yaml(folder / "tiny.yaml", tiny_pipeline(tiny_model_dir))
    return workspace, path, last_json(forgetless("pipeline", "--config", str(path), "--json", workspace=workspace,
                                                 timeout=900))


def test_pipeline_runs_every_stage_and_a_rerun_skips_them(finished):
    workspace, path, summary = finished
    assert list(summary["stages"]) == STAGES
    for name, stage in summary["stages"].items():
        assert set(stage) == {"status", "seconds", "job_id"}
        assert stage["status"] == "done" and stage["seconds"] > 0 and stage["job_id"], name
    run = Path(summary["run"])
    assert run.parent == workspace.resolve() / "runs" and (run / "adapter").is_dir()
    assert set(summary["eval"]) == {"base", run.name}
    for target in summary["eval"].values():
        assert set(target["results"]) == GENERAL_TASKS and all(r["n"] == 2 for r in target["results"].values())
    # Each stage is the job its command runs: the respond stage's job is `forgetless respond`'s.
    config = load_pipeline(path)
    assert summary["stages"]["respond"]["job_id"] == config.respond_config().resolved_job_id()
    assert job_info(job_folder(workspace, summary["pipeline"])).state == "done"
    store = Store.for_workspace(workspace)
    instructions, responses = store.count_instructions(), count(store, "SELECT count(*) FROM responses")

    again = last_json(forgetless("pipeline", "--config", str(path), "--json", workspace=workspace, timeout=300))
    assert {name: stage["status"] for name, stage in again["stages"].items()} == dict.fromkeys(STAGES, "skipped")
    assert [stage["job_id"] for stage in again["stages"].values()] == \
        [stage["job_id"] for stage in summary["stages"].values()]
    assert again["run"] == summary["run"] and again["eval"] == summary["eval"]
    assert store.count_instructions() == instructions
    assert count(store, "SELECT count(*) FROM responses") == responses


def test_a_failing_stage_is_one_line_and_recorded(finished, tiny_model_dir: Path, tmp_path: Path):
    """MedMCQA asks the tiny model for answer letters its vocabulary lacks: only the evaluation is new, and fails."""
    workspace, _, first = finished
    path = write_yaml(tmp_path / "domain.yaml", tiny_pipeline(tiny_model_dir, eval={"suite": ["general", "domain"]}))
    result = forgetless("pipeline", "--config", str(path), "--json", workspace=workspace, timeout=600)
    assert_one_line_error(result, f"stage eval failed: {tiny_model_dir.name}: the tokenizer has no single token for "
                                  "'A'")  # the evaluation plan's first target, the base, named as the Evaluate tab does
    folder = job_folder(workspace, load_pipeline(path).resolved_job_id())
    assert job_info(folder).state == "failed" and job_info(folder).error.startswith("stage eval failed")
    stages = last_progress(folder, keys=("stages",), tail_bytes=65536)["stages"]
    assert [stage["status"] for stage in stages.values()] == ["skipped"] * 6 + ["failed"]
    assert stages["train"]["job_id"] == first["stages"]["train"]["job_id"]


def test_kill_9_mid_stage_then_rerun_resumes_without_duplicates(finished, tiny_model_dir: Path, tmp_path: Path):
    """A bigger N in the same workspace: reconstruct is a new job, killed (pipeline and stage) mid-way; the rerun
    resumes it to exactly N, and every later stage runs again (its inputs changed) rather than being skipped."""
    workspace, _, first = finished
    path = write_yaml(tmp_path / "more.yaml", tiny_pipeline(tiny_model_dir, reconstruct={"n": 60}))
    reconstruct = job_folder(workspace, load_pipeline(path).reconstruct_config().resolved_job_id())
    command = [sys.executable, "-m", "core.cli", "pipeline", "--config", str(path), "--workspace", str(workspace)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FORGETLESS_NO_PROGRESS": "1"}
    driver = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and last_progress(reconstruct).get("stored", 0) < 10:
        time.sleep(0.05)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    stage_pid = json.loads((reconstruct / "status.json").read_text())["pid"]
    os.kill(stage_pid, signal.SIGKILL)  # as if the machine went down: nothing records an end state
    wait_until(lambda: job_info(reconstruct).state == "interrupted", 30, "the stage to read as interrupted")
    store = Store.for_workspace(workspace)
    killed_at = store.count_instructions(job_id=reconstruct.name)
    assert 10 <= killed_at < 60, killed_at

    summary = last_json(forgetless("pipeline", "--config", str(path), "--json", workspace=workspace, timeout=900))
    assert {name: stage["status"] for name, stage in summary["stages"].items()} == dict.fromkeys(STAGES, "done")
    assert summary["run"] != first["run"]  # a new mix of the new rows, and a new run on it
    assert store.count_instructions(job_id=reconstruct.name) == 60
    ids = count(store, f"SELECT count(DISTINCT text) FROM instructions WHERE job_id = '{reconstruct.name}'")
    assert ids == 60
    total = store.count_instructions()
    # Exactly K=1 response per instruction (the old ones kept theirs), one score per response.
    assert count(store, "SELECT count(*) FROM responses") == total
    assert count(store, "SELECT count(DISTINCT instruction_id) FROM responses") == total
    assert count(store, "SELECT count(*) FROM scores WHERE method = 'probs'") == total


def test_cancel_reaches_the_stage_in_flight(tmp_path: Path, tiny_model_dir: Path):
    """Started as the app starts it (a background job); a cancel of the pipeline stops the stage it is on."""
    workspace = (tmp_path / "ws").resolve()
    config = pipeline_from_text(yaml.safe_dump(tiny_pipeline(tiny_model_dir, reconstruct={"n": 100_000})))
    folder = start_background(workspace, KIND, config, config.resolved_job_id())
    reconstruct = job_folder(workspace, config.reconstruct_config().resolved_job_id())
    wait_until(lambda: last_progress(reconstruct).get("stored", 0) >= 1, 120, "the reconstruct stage to store rows")
    request_cancel(folder)
    assert wait_for(folder, 60, lambda info: not info.active).state == "cancelled"
    assert job_info(reconstruct).state == "cancelled"
    stages = last_progress(folder, keys=("stages",), tail_bytes=65536)["stages"]
    assert stages["reconstruct"]["status"] == "cancelled" and stages["respond"]["status"] == "pending"
