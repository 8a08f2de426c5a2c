"""The Pipeline tab's views without a browser: presets, the YAML <-> key fields, the app's engine and readable
paths, and the stage table, status line and results of a pipeline job built by hand (its folder held as a live
worker holds it)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from core.data_paths import ReadableRoots
from core.engines.choice import EngineChoice, save_choice
from core.errors import ForgetlessError
from core.jobs import job_folder, job_info, job_session
from core.pipeline.config import pipeline_from_text
from core.pipeline.runner import KIND
from ui.views.pipeline import (
    IDLE,
    PipelineJobs,
    check_readable,
    key_fields,
    outcome,
    pipeline_config,
    pipeline_status_line,
    preset_choices,
    preset_text,
    results_markdown,
    stage_rows,
    with_key_fields,
)

SMALL = "name: small\nreconstruct: {n: 8}\nmix: {ratio: 0.5}\neval: {limit: 4}\n"


def test_presets_fill_the_key_fields():
    assert {"quickstart", "paper"} <= set(preset_choices())
    quick = key_fields(preset_text("quickstart"))
    assert quick["model"] == "smollm2-135m-instruct" and quick["domain"] == "builtin:medmcqa"
    assert isinstance(quick["n"], int) and quick["ratio"] == "0.5" and quick["max_steps"] >= 1
    paper = key_fields(preset_text("paper"))
    assert "," in paper["ratio"]  # the sweep shows as a list
    with pytest.raises(ForgetlessError, match="no preset named 'nope'"):
        preset_text("nope")


def test_key_fields_and_yaml_follow_each_other():
    text = with_key_fields(SMALL, {"n": 12.0, "ratio": "0.25, 0.5", "model": " my-model ", "limit": None})
    data = yaml.safe_load(text)
    assert data["reconstruct"] == {"n": 12} and data["mix"]["ratio"] == [0.25, 0.5] and data["model"] == "my-model"
    assert "limit" not in data["eval"]  # emptied: every item
    assert key_fields(text) == {"model": "my-model", "n": 12, "domain": "builtin:medmcqa", "ratio": "0.25, 0.5",
                                "max_steps": None, "limit": None}
    assert pipeline_from_text(with_key_fields(SMALL, {"max_steps": 3})).train_config().max_steps == 3
    assert key_fields("name: bare\n")["n"] == 100  # a missing key shows the stage's default
    with pytest.raises(ForgetlessError, match="ratio must be a number"):
        with_key_fields(SMALL, {"ratio": "half"})
    with pytest.raises(ForgetlessError, match="whole number"):
        with_key_fields(SMALL, {"n": 2.5})
    with pytest.raises(ForgetlessError, match="cannot parse the YAML"):
        key_fields("name: [unclosed")


def test_editing_a_key_field_keeps_the_yaml_comments_and_order():
    preset = preset_text("quickstart")
    comments = [line.strip() for line in preset.splitlines() if line.strip().startswith("#")]
    assert comments  # the shipped preset explains itself
    edited = with_key_fields(preset, {"ratio": "0.25", "n": 7})
    assert [line.strip() for line in edited.splitlines() if line.strip().startswith("#")] == comments
    assert list(yaml.safe_load(edited)) == list(yaml.safe_load(preset))  # sections stay where they were
    assert key_fields(edited) | {"ratio": "0.5", "n": key_fields(preset)["n"]} == key_fields(preset)
    assert key_fields(edited)["ratio"] == "0.25" and key_fields(edited)["n"] == 7
    assert with_key_fields("# mine\nname: bare\n", {"limit": 5}).startswith("# mine\n")  # a new section too


def test_the_app_engine_applies_when_the_yaml_names_none(tmp_path: Path):
    save_choice(tmp_path, EngineChoice(engine="vllm"))
    assert pipeline_config(SMALL, tmp_path).serving() == {"engine": "vllm"}
    assert pipeline_config(SMALL + "engine: transformers\n", tmp_path).serving() == {}


def test_paths_outside_the_readable_folders_are_refused(tmp_path: Path):
    roots = ReadableRoots.for_app(tmp_path / "ws")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "data.jsonl").write_text("{}\n")
    check_readable(pipeline_from_text(SMALL), roots)  # aliases and builtin data name no local file
    with pytest.raises(ForgetlessError, match="outside the folders this app reads"):
        check_readable(pipeline_from_text(f"model: {outside}\n"), roots)
    domain = f"mix: {{domain: {outside / 'data.jsonl'}, domain_test_fraction: 0.2}}\n"
    with pytest.raises(ForgetlessError, match="outside the folders this app reads"):
        check_readable(pipeline_from_text(domain), roots)


def _record(status: str, kind: str, folder: Path | None = None, seconds: float | None = None) -> dict:
    return {"status": status, "seconds": seconds, "job_id": folder.name if folder else None, "kind": kind,
            "folder": str(folder) if folder else None}


def test_stage_table_status_line_and_results_of_a_live_pipeline(tmp_path: Path):
    workspace = tmp_path / "ws"
    config = pipeline_from_text(SMALL)
    assert pipeline_status_line(None) == IDLE and stage_rows(None) == []
    folder = job_folder(workspace, config.resolved_job_id())
    reconstruct, run = job_folder(workspace, "reconstruct-abc"), workspace / "runs" / "small-run"
    with job_session(reconstruct, "reconstruct", config.reconstruct_config()) as stage:
        stage.progress({"job_id": "reconstruct-abc", "stored": 3, "total": 8, "tokens_per_s": 10.0})
        with job_session(folder, KIND, config) as recorder:
            jobs = PipelineJobs(workspace)
            assert stage_rows(jobs.newest())[0][:2] == ["reconstruct", "pending"]  # before its first line
            recorder.progress({"stages": {"reconstruct": _record("running", "reconstruct", reconstruct),
                                          "respond": _record("pending", "respond")}, "current": "reconstruct"})
            job = jobs.newest()
            rows = stage_rows(job)
            assert rows[0] == ["reconstruct", "running", "3/8 instructions", "", "reconstruct-abc", "1 · Reconstruct"]
            assert rows[1][:2] == ["respond", "pending"] and rows[1][5] == "2 · Screen"
            assert pipeline_status_line(job).startswith(f"running · {job.job_id} · stage 1 of 2: reconstruct")
            with pytest.raises(ForgetlessError, match="still running"):
                jobs.start(config)
            assert jobs.command(job) == f"forgetless pipeline --config {folder / 'config.yaml'} --workspace {workspace}"
            assert "name: small" in jobs.yaml(job)

            run.mkdir(parents=True)
            (run / "progress.jsonl").write_text(json.dumps({"step": 3, "total_steps": 6, "loss": 1.2345}) + "\n")
            recorder.progress({"stages": {"reconstruct": _record("skipped", "reconstruct", reconstruct, 0.0),
                                          "train": _record("running", "train", run)}, "current": "train"})
            rows = stage_rows(jobs.newest())
            assert rows[0][1:3] == ["skipped", "finished before, same settings"]
            assert rows[1][1:3] == ["running", "step 3/6 · loss 1.234"] and rows[1][5] == "5 · Train"
            assert jobs.cancel().startswith("Cancel requested")
            assert (folder / "cancel").exists() and (run / "cancel").exists()  # the stage in flight too
            recorder.summary = {"seconds": 75.0, "run": str(run), "eval": {
                "base": {"results": {"arc_easy": {"acc": 0.25}, "drift": {}}},
                "small-run": {"results": {"arc_easy": {"acc": 0.5}, "drift": {"kl": 0.0123}}}}}
            recorder.progress({"stages": {"reconstruct": _record("skipped", "reconstruct", reconstruct, 0.0),
                                          "train": _record("done", "train", run, 12.0)}, "current": None})
    job = job_info(folder)
    assert job.state == "cancelled"  # job_session: a cancel was asked for
    assert pipeline_status_line(job).startswith(f"cancelled · {job.job_id} · stopped on request after 2 of 2")
    table = results_markdown(job)
    assert "| task | base | small-run |" in table and "| arc_easy | 0.250 | 0.500 |" in table
    assert "| drift | — | 0.012 (KL) |" in table and str(run) in table


def test_a_stage_left_running_by_a_dead_pipeline_reads_as_interrupted(tmp_path: Path):
    workspace = tmp_path / "ws"
    config = pipeline_from_text(SMALL)
    folder = job_folder(workspace, config.resolved_job_id())
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"name": "small"}))
    (folder / "status.json").write_text(json.dumps({"state": "running", "kind": KIND, "started_at": time.time()}))
    (folder / "progress.jsonl").write_text(json.dumps(
        {"stages": {"reconstruct": _record("running", "reconstruct")}, "current": "reconstruct"}) + "\n")
    job = PipelineJobs(workspace).newest()
    assert job.state == "interrupted" and stage_rows(job)[0][1] == "interrupted"
    assert "Run resumes it" in pipeline_status_line(job)


def test_finished_stages_say_what_they_left(tmp_path: Path):
    run, mix, judge = tmp_path / "run", tmp_path / "mix", tmp_path / "judge"
    for folder, summary in ((run, {"steps": 6, "final_loss": 1.5}),
                            (judge, {"scores": 64, "instructions_with_best": 32})):
        folder.mkdir()
        (folder / "status.json").write_text(json.dumps({"state": "done", "summary": summary}))
    mix.mkdir()
    (mix / "manifest.yaml").write_text(yaml.safe_dump({"counts": {"general": 24, "domain": 24, "total": 48}}))
    assert outcome(_record("done", "train", run)) == "6 steps · loss 1.500"
    assert outcome(_record("done", "judge", judge)) == "64 scores · best answer for 32"
    assert outcome(_record("done", "mix", mix)) == "24 general + 24 domain rows"
    assert outcome(_record("done", "profile", tmp_path / "missing")) == ""
    assert outcome(_record("done", "reconstruct", judge)) == ""  # a summary of another shape says nothing
