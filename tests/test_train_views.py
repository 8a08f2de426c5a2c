"""The Train tab's views without a browser or a training run: form -> config, status lines, loss curve, run rows.

Run folders are written by hand (config.yaml, status.json, progress.jsonl, an empty checkpoint), as the
training worker would leave them.
"""

from __future__ import annotations

import fcntl
import json
import shlex
import time
from pathlib import Path

import pandas as pd
import pytest

from core.config import to_yaml
from core.errors import ForgetlessError
from core.train.runs import list_runs
from core.train.training import TrainConfig
from ui.views.train import (
    RUN_HEADERS,
    TrainRuns,
    config_form,
    followed_run,
    format_lr,
    loss_figure,
    read_run_view,
    resolve_data,
    run_command,
    run_label,
    run_rows,
    run_status_line,
    snapshot_choices,
    train_config,
)

FORM = {"data": "/mix", "model": "smollm2-135m-instruct", "method": "lora", "max_steps": 40, "epochs": 1.0,
        "learning_rate": None, "batch_size": 8, "grad_accum": 2, "max_length": 512, "lora_r": 8, "lora_alpha": 16,
        "lora_dropout": 0.1, "lora_target_modules": "q_proj,v_proj", "seed": 3, "save_steps": 10, "merge": True,
        "dtype": "auto"}


def form(**changes) -> dict:
    return {**FORM, **changes}


def step_line(step: int, total: int = 4, loss: float = 2.0, lr: float = 1.8e-4, **extra) -> dict:
    return {"time": 1.0, "step": step, "total_steps": total, "epoch": step / total, "loss": loss, "learning_rate": lr,
            "grad_norm": 1.0, "tokens_per_s": 130.4, "elapsed_s": 2.0 * step, "eta_s": 65.0, **extra}


def make_run(workspace: Path, name: str, state: str, lines: list[dict], *, checkpoint: int | None = None,
             started_at: float = 1_700_000_000.0, **status) -> Path:
    folder = workspace / "runs" / name
    folder.mkdir(parents=True)
    config = TrainConfig(data="/mix", out=str(folder), model="/models/tiny-llama", max_steps=4)
    (folder / "config.yaml").write_text(to_yaml(config))
    (folder / "status.json").write_text(json.dumps({"state": state, "kind": "train", "started_at": started_at,
                                                    **status}))
    (folder / "progress.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    if checkpoint is not None:
        saved = folder / "checkpoints" / f"checkpoint-{checkpoint}"
        saved.mkdir(parents=True)
        (saved / "trainer_state.json").write_text("{}")
    return folder


# -- the form ------------------------------------------------------------------------------------------
def test_form_values_become_a_config_and_come_back():
    config = train_config(form(batch_size=8.0), "/runs/a")
    assert (config.max_steps, config.grad_accum, config.lora_target_modules, config.merge) == (40, 2, "q_proj,v_proj",
                                                                                               True)
    assert config.out == "/runs/a"
    assert config.resolved_learning_rate() == 2e-4  # empty learning rate: the method's default
    assert train_config(form(learning_rate=0), "/runs/a").learning_rate is None  # a cleared box sends 0
    assert config_form(train_config(form(learning_rate=3e-4), "/runs/a"))["learning_rate"] == 3e-4
    assert set(config_form(config)) == set(FORM)  # every widget, by field name
    assert train_config(config_form(config), "/runs/a") == config
    assert isinstance(config.batch_size, int)  # gr.Number(precision=0) may hand over 8.0
    assert train_config(form(dtype="float32"), "/runs/a").dtype == "float32"
    assert train_config(form(model=" m ", lora_target_modules=" all-linear "), "/r").model == "m"


@pytest.mark.parametrize(("changes", "expected"), [
    ({"max_steps": -1}, None), ({"max_steps": None}, None), ({"max_steps": 7.0}, 7),
])
def test_max_steps_empty_or_minus_one_trains_by_epochs(changes, expected):
    config = train_config(form(**changes), "/runs/a")
    assert config.max_steps == expected
    assert config_form(config)["max_steps"] == (-1 if expected is None else expected)


def test_a_full_run_ignores_the_hidden_merge_box():
    assert train_config(form(method="full", merge=True), "/runs/a").merge is False


@pytest.mark.parametrize(("changes", "fragment"), [
    ({"batch_size": None}, "Batch size is empty"),
    ({"batch_size": 2.5}, "Batch size must be a whole number"),
    ({"epochs": None}, "Epochs is empty"),
    ({"max_steps": 0}, "max steps must be"),
    ({"learning_rate": 2.0}, "learning rate must be in"),
    ({"model": "  "}, "model must be given"),
    ({"lora_target_modules": ""}, "lora target modules"),
    ({"method": "qlora"}, "method must be lora or full"),
])
def test_bad_form_values_are_one_line_errors(changes, fragment):
    with pytest.raises(ForgetlessError, match=fragment):
        train_config(form(**changes), "/runs/a")


def test_data_is_a_listed_folder_a_typed_snapshot_name_or_a_typed_folder(tmp_path):
    mixes = tmp_path / "mixes"
    (mixes / "mix-a").mkdir(parents=True)
    (mixes / "mix-a" / "train.parquet").write_bytes(b"")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "train.parquet").write_bytes(b"")
    assert resolve_data(str(mixes / "mix-a"), mixes) == str(mixes / "mix-a")
    assert resolve_data(" mix-a ", mixes) == str(mixes / "mix-a")
    assert resolve_data(str(elsewhere), mixes) == str(elsewhere)
    for value, fragment in [(None, "pick a frozen mix"), ("", "pick a frozen mix"), ("nope", "not found"),
                            (str(tmp_path), "holds no train.parquet")]:
        with pytest.raises(ForgetlessError, match=fragment):
            resolve_data(value, mixes)


def test_snapshot_choices_label_counts_and_keep_the_folder_as_value():
    snapshots = pd.DataFrame([{"name": "mix-b", "total": 10, "general": 6, "domain": 4, "path": "/ws/mixes/mix-b"}])
    assert snapshot_choices(snapshots) == [("mix-b · 10 rows (6 general + 4 domain)", "/ws/mixes/mix-b")]


def test_run_label_and_command(tmp_path):
    config = train_config(form(model="/models/tiny-llama/", method="full", merge=False), str(tmp_path / "runs" / "x"))
    assert run_label(config) == "tiny-llama-full"
    line = run_command(config, tmp_path / "my ws")
    words = shlex.split(line)
    assert words[:2] == ["forgetless", "train"] and "--full" in words and "--lora" not in words
    for flag, value in (("--data", "/mix"), ("--model", "/models/tiny-llama/"), ("--max-steps", "40"),
                        ("--out", str(tmp_path / "runs" / "x"))):
        assert words[words.index(flag) + 1] == value
    assert line.endswith(f"--workspace '{tmp_path / 'my ws'}'")


# -- status line and curve -------------------------------------------------------------------------------
def test_format_lr_drops_the_exponent_padding():
    assert [format_lr(value) for value in (1.8e-4, 2e-5, 0.0, None, 0.5)] == ["1.8e-4", "2.0e-5", "0", "—", "5.0e-1"]


def test_status_lines_for_each_state():
    last = step_line(12, total=40, loss=1.9312)
    assert run_status_line("r", "running", last) == "running · r · step 12/40 · loss 1.93 · lr 1.8e-4 · 130 tok/s · " \
                                                    "ETA 1:05"
    assert run_status_line("r", "running", last, phase="saving").endswith("ETA 1:05 · saving…")
    assert run_status_line("r", "starting", None) == "starting · r · starting…"
    assert run_status_line("r", "running", None, phase="loading model") == "running · r · loading model…"
    done = run_status_line("r", "done", step_line(40, total=40, loss=1.2), summary={
        "tokens_per_s": 150.0, "seconds": 65.2, "adapter": "/a"})
    assert done == "done · r · step 40/40 · loss 1.2 · 150 tok/s · took 1:05 · adapter saved"
    assert run_status_line("r", "cancelled", last, checkpoint_step=12) == (
        "cancelled · r · step 12/40 · loss 1.93 · 130 tok/s · stopped on request · Resume continues from step 12")
    assert run_status_line("r", "interrupted", last, checkpoint_step=10).endswith(
        "its process ended without finishing · Resume continues from step 10")
    assert run_status_line("r", "interrupted", None).endswith("no checkpoint yet, so nothing to resume")
    assert run_status_line("r", "failed", None, error="cannot set up training: bad modules") == (
        "failed · r · cannot set up training: bad modules")


def test_loss_figure_plots_loss_and_learning_rate_against_the_step():
    progress = pd.DataFrame([step_line(1, loss=3.0, lr=1e-4), step_line(2, loss=2.5, lr=2e-4)])
    figure = loss_figure(progress, "run-a")
    loss, lr = figure.data
    assert list(loss.x) == [1, 2] and list(loss.y) == [3.0, 2.5] and loss.yaxis == "y"
    assert list(lr.y) == [1e-4, 2e-4] and lr.yaxis == "y2"
    assert figure.layout.title.text == "run-a: loss and learning rate (2/4 steps)"
    empty = loss_figure(pd.DataFrame(columns=list(progress.columns)), "run-a")
    assert not empty.data and "no steps logged yet" in empty.layout.title.text


def test_read_run_view_of_a_cancelled_then_resumed_folder(tmp_path):
    lines = [{"phase": "loading model"}, {"phase": "training"}, step_line(1, loss=3.0), step_line(2, loss=2.8),
             step_line(3, loss=2.7), {"phase": "training", "resumed_from_step": 2}, step_line(3, loss=2.6)]
    folder = make_run(tmp_path, "run-a", "cancelled", lines, checkpoint=3, summary={"steps": 3})
    view = read_run_view(folder)
    assert view.line == ("cancelled · run-a · step 3/4 · loss 2.6 · 130 tok/s · stopped on request · "
                         "Resume continues from step 3")
    assert view.resumable and not view.active and view.marker == "run-a|cancelled|3"
    assert list(view.figure.data[0].y) == [3.0, 2.8, 2.6]  # a repeated step keeps its newest value

    (folder / "status.json").write_text(json.dumps({"state": "done", "kind": "train", "started_at": 1.0}))
    assert not read_run_view(folder).resumable  # a finished run has nothing to continue
    bare = make_run(tmp_path, "run-b", "failed", [], error="boom")
    assert read_run_view(bare).line == "failed · run-b · boom" and not read_run_view(bare).resumable


def test_a_running_folder_is_active_while_its_worker_holds_the_lock(tmp_path):
    folder = make_run(tmp_path, "run-a", "running", [{"phase": "training"}, step_line(1)], started_at=time.time())
    with (folder / "lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        view = read_run_view(folder)
        assert view.active and view.line.startswith("running · run-a · step 1/4") and not view.resumable
    assert read_run_view(folder).state == "interrupted"  # the lock went with its process


# -- run list -------------------------------------------------------------------------------------------
def test_run_rows_and_the_run_a_fresh_page_follows(tmp_path):
    make_run(tmp_path, "old", "done", [step_line(4, loss=1.23456)], started_at=1_700_000_000.0,
             summary={"final_loss": 1.23456})
    make_run(tmp_path, "new", "cancelled", [step_line(2)], started_at=1_700_000_100.0)
    runs = list_runs(tmp_path)
    rows = run_rows(runs)
    assert len(RUN_HEADERS) == len(rows[0])
    assert [row[:6] for row in rows] == [["new", "cancelled", "tiny-llama", "lora", "2/4", 2.0],
                                         ["old", "done", "tiny-llama", "lora", "4/4", 1.2346]]
    assert rows[0][6] == time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(1_700_000_100))
    assert followed_run(runs) == "new"  # nothing active: the newest
    active = runs.assign(status=["cancelled", "running"])
    assert followed_run(active) == "old"  # the newest active run wins over a newer stopped one
    assert followed_run(runs.iloc[0:0]) is None


# -- the runs as a jobs object, and the tab's handlers (Gradio imported, no server) ------------------------------
def test_train_runs_are_driven_like_the_other_stages_jobs(tmp_path):
    runs = TrainRuns(tmp_path)
    assert runs.newest() is None and runs.config(None) is None and runs.command(None) is None
    assert runs.startable(None) and not runs.cancellable(None)
    make_run(tmp_path, "old", "done", [step_line(4)], started_at=1_700_000_000.0)
    make_run(tmp_path, "new", "cancelled", [step_line(2)], checkpoint=2, started_at=1_700_000_100.0)
    job = runs.newest()
    assert (job.job_id, job.state) == ("new", "cancelled")  # nothing active: the newest
    assert runs.config(job).max_steps == 4 and runs.command(job).startswith("forgetless train --data /mix ")
    assert runs.startable(job) and not runs.cancellable(job)
    with pytest.raises(ForgetlessError, match="not running"):
        runs.cancel("new")
    with pytest.raises(ForgetlessError, match="pick a run first"):
        runs.resume(None)
    starting = make_run(tmp_path, "starting", "starting", [], started_at=time.time())
    job = runs.newest()  # the newest active run wins
    assert job.job_id == "starting" and not runs.startable(job) and not runs.cancellable(job)
    with pytest.raises(ForgetlessError, match="still starting"):
        runs.cancel()
    assert not (starting / "cancel").exists()


def test_tab_handlers_follow_a_run_and_refuse_bad_input_visibly(tmp_path):
    gr = pytest.importorskip("gradio")
    from ui.train_tab import build_train_tab

    with gr.Blocks() as demo:
        handlers = build_train_tab(demo, tmp_path)  # the layout and every event wire up
    idle = handlers.poll(None, "", "")
    assert idle[0].startswith("No training run yet") and idle[2] == {"__type__": "update", "interactive": False}

    make_run(tmp_path, "run-a", "cancelled", [step_line(1), step_line(2)], checkpoint=2)
    picked = handlers.poll(None, "", "")
    assert picked[8] == {"__type__": "update", "choices": ["run-a"], "value": "run-a"}  # followed without a click
    status, start, cancel, command, resume, figure, marker, table, _, runs_marker = handlers.poll("run-a", "", "")
    assert status.startswith("cancelled · run-a · step 2/4") and marker == "run-a|cancelled|2"
    assert (start["interactive"], cancel["interactive"], resume["interactive"]) == (True, False, True)
    assert command["value"].startswith("forgetless train --data /mix ")  # the followed run as a CLI command
    assert len(figure.data) == 2 and table["data"][0][0] == "run-a"
    again = handlers.poll("run-a", marker, runs_marker)
    assert again[3] == again[5] == again[7] == gr.skip()  # nothing moved: no redraw (nor a command over the form's)
    with (tmp_path / "runs" / "run-a" / "progress.jsonl").open("a") as progress:
        progress.write(json.dumps(step_line(3)) + "\n")
    moved = handlers.poll("run-a", marker, runs_marker)
    assert len(moved[5].data[0].x) == 3 and moved[7]["data"][0][4] == "3/4"
    assert moved[8] == gr.skip()  # same runs: the Run dropdown's list (maybe open) is left alone

    loaded = handlers.on_load()  # {widget: value}
    assert loaded[handlers.form["data"]]["value"] == "/mix" and loaded[handlers.form["max_steps"]] == 4
    assert loaded[handlers.run_picker] == {"__type__": "update", "value": "run-a"}
    widgets = {handlers.form[name]: value for name, value in form(data="").items()}
    with pytest.warns(UserWarning, match="pick a frozen mix"):
        assert handlers.start(widgets)[0].startswith("Not started: pick a frozen mix")
    with pytest.warns(UserWarning, match="not running"):
        assert handlers.cancel("run-a").startswith("Not cancelled")
    assert not (tmp_path / "runs" / "run-a" / "cancel").exists()
