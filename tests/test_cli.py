"""The CLI as users run it: a subprocess, one error line, JSON last line, resume after kill -9."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.jobs import job_folder, last_progress
from core.store import Store, text_key
from tests.helpers import ROOT, assert_one_line_error, damaged_ggufs, forgetless


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["prequery", "no-such-model"], "unknown model"),
        (["prequery", "/nowhere/model.gguf"], "not found"),
        (["reconstruct", "--model", "smollm2-135m-instruct"], "--n"),
        (["reconstruct", "--n", "0"], "n must be at least 1"),
        (["reconstruct", "--n", "3", "--top-p", "1.5"], "top-p"),
        (["reconstruct", "--n", "three"], "invalid int value"),
        (["launch-rockets"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(args, fragment, tmp_path: Path):
    assert_one_line_error(forgetless(*args, workspace=tmp_path if args[0] in ("prequery", "reconstruct") else None),
                          fragment)


def test_template_less_model_is_one_line(tiny_model_dir: Path, tmp_path: Path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for item in tiny_model_dir.iterdir():
        (bare / item.name).write_bytes(item.read_bytes())
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((bare / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    assert_one_line_error(forgetless("prequery", str(bare), workspace=tmp_path), "no chat template")


def test_prequery_json_is_last_line(tiny_model_dir: Path, tmp_path: Path):
    result = forgetless("prequery", str(tiny_model_dir), "--json", workspace=tmp_path)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["prefix"].endswith("<|im_start|>user\n") and "tiny test assistant" in found["prefix"]
    assert found["stop"] == ["<|im_end|>"]
    custom = forgetless("prequery", str(tiny_model_dir), "--json", "--prefix", "USER:", "--stop", "END",
                        workspace=tmp_path)
    assert json.loads(custom.stdout.strip().splitlines()[-1]) == {"prefix": "USER:", "stop": ["END"]}


def test_resume_after_kill_ends_with_exactly_n_and_no_duplicates(tiny_model_dir: Path, tmp_path: Path):
    args = ["reconstruct", "--model", str(tiny_model_dir), "--n", "100", "--batch-size", "16",
            "--max-new-tokens", "24", "--seed", "3", "--json"]
    command = [sys.executable, "-m", "core.cli", *args, "--workspace", str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FORGETLESS_NO_PROGRESS": "1"}
    victim = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    jobs = tmp_path / "jobs"
    deadline = time.monotonic() + 120
    stored = 0
    while time.monotonic() < deadline and stored < 10:
        folders = list(jobs.glob("reconstruct-*")) if jobs.exists() else []
        stored = last_progress(folders[0]).get("stored", 0) if folders else 0
        time.sleep(0.05)
    assert victim.poll() is None, "the run ended before it could be killed"
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    store = Store.for_workspace(tmp_path)
    job_id = folders[0].name
    killed_at = store.count_instructions(job_id=job_id)
    assert 10 <= killed_at < 100

    resumed = forgetless(*args[:-1], "--json", workspace=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert summary["job_id"] == job_id and summary["stored"] == 100 and summary["new"] == 100 - killed_at
    for key in ("stored", "dropped", "db", "tokens_per_s", "seconds"):
        assert key in summary
    texts = [row["text"] for row in store.page_instructions(job_id=job_id, page_size=1000)]
    assert len(texts) == 100 and len({text_key(text) for text in texts}) == 100
    assert json.loads((job_folder(tmp_path, job_id) / "status.json").read_text())["state"] == "done"

    rerun = forgetless(*args, workspace=tmp_path)  # a finished job stays finished
    assert json.loads(rerun.stdout.strip().splitlines()[-1])["new"] == 0
    assert store.count_instructions(job_id=job_id) == 100


@pytest.mark.parametrize("args", [
    ["respond", "--models", "no-such-alias", "--k", "1"],
    ["reconstruct", "--model", "no-such-alias", "--n", "2"],
    ["judge", "--judges", "smollm2-135m-instruct,no-such-alias"],
    ["profile", "--target-model", "no-such-alias"],
    ["eval", "--model", "no-such-alias", "--suite", "general", "--limit", "1"],
    ["train", "--model", "no-such-alias", "--data", "{ws}/snapshot", "--out", "{ws}/runs/r1"],
])
def test_failed_start_leaves_no_job_behind(args: list[str], tmp_path: Path):
    store = Store.for_workspace(tmp_path)
    store.register_job("earlier", "reconstruct", "n: 1\n")

    def jobs_table() -> list[tuple]:
        with store.read() as con:
            return con.execute("SELECT * FROM jobs ORDER BY job_id").fetchall()

    before = jobs_table()
    (tmp_path / "jobs" / "earlier").mkdir(parents=True)
    (tmp_path / "snapshot").mkdir()
    (tmp_path / "snapshot" / "train.parquet").write_bytes(b"")  # train checks the model before reading it
    result = forgetless(*[arg.replace("{ws}", str(tmp_path)) for arg in args], workspace=tmp_path)
    assert result.returncode == 2
    assert_one_line_error(result, "unknown model 'no-such-alias'")
    assert jobs_table() == before
    assert sorted(p.name for p in (tmp_path / "jobs").iterdir()) == ["earlier"]
    assert not (tmp_path / "runs").exists()


def test_damaged_gguf_is_one_line_naming_the_file(tmp_path: Path):
    for bad in damaged_ggufs(tmp_path):
        result = forgetless("prequery", str(bad), workspace=tmp_path / "ws")
        assert result.returncode == 2
        assert_one_line_error(result, f"{bad} is not a readable GGUF file (corrupt or truncated): ")


@pytest.mark.parametrize(("stage", "fragment"), [
    ("respond", "no instructions in the store yet: run `forgetless reconstruct` first"),
    ("profile", "no instructions to profile: run `forgetless reconstruct` first"),
])
def test_stages_on_an_empty_store_are_one_line_and_leave_no_job(stage: str, fragment: str, tmp_path: Path):
    assert_one_line_error(forgetless(stage, workspace=tmp_path), fragment)
    assert not (tmp_path / "jobs").exists()
