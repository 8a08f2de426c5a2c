import json
import os
import signal
from pathlib import Path

import pytest

from core.errors import ForgetlessError
from core.jobs import job_info, job_session, list_jobs, request_cancel, start_background, wait_for
from core.reconstruct import ReconstructConfig
from core.store import Store


def background(workspace: Path, model: Path, job_id: str, n: int) -> Path:
    config = ReconstructConfig(model=str(model), n=n, batch_size=16, max_new_tokens=24, min_chars=6, job_id=job_id)
    return start_background(workspace, "reconstruct", config, job_id)


def test_background_job_runs_to_done_and_is_listed(tiny_model_dir: Path, tmp_path: Path):
    folder = background(tmp_path, tiny_model_dir, "bg-done", n=3)
    info = wait_for(folder, 120, lambda job: job.state not in ("starting", "running"))
    assert info.state == "done", (folder / "log.txt").read_text()
    assert info.summary["stored"] == 3 and info.progress["stored"] == 3
    assert [job.job_id for job in list_jobs(tmp_path, "reconstruct")] == ["bg-done"]
    assert Store.for_workspace(tmp_path).count_instructions(job_id="bg-done") == 3


def test_cancel_then_resume_keeps_stored_rows(tiny_model_dir: Path, tmp_path: Path):
    folder = background(tmp_path, tiny_model_dir, "bg-cancel", n=5000)
    wait_for(folder, 120, lambda job: job.progress.get("stored", 0) >= 5)
    with pytest.raises(ForgetlessError, match="already running"):
        background(tmp_path, tiny_model_dir, "bg-cancel", n=5000)
    request_cancel(folder)
    info = wait_for(folder, 60, lambda job: not job.active)
    assert info.state == "cancelled"
    kept = Store.for_workspace(tmp_path).count_instructions(job_id="bg-cancel")
    assert 5 <= kept < 5000
    resumed = background(tmp_path, tiny_model_dir, "bg-cancel", n=kept + 3)
    assert wait_for(resumed, 120, lambda job: not job.active).state == "done"
    assert Store.for_workspace(tmp_path).count_instructions(job_id="bg-cancel") == kept + 3


def test_killed_worker_shows_as_interrupted(tiny_model_dir: Path, tmp_path: Path):
    folder = background(tmp_path, tiny_model_dir, "bg-kill", n=5000)
    wait_for(folder, 120, lambda job: job.state == "running")
    pid = json.loads((folder / "status.json").read_text())["pid"]
    os.kill(pid, signal.SIGKILL)
    assert wait_for(folder, 30, lambda job: job.state == "interrupted").state == "interrupted"


def test_job_session_records_failure_and_refuses_a_second_owner(tmp_path: Path):
    config = ReconstructConfig(n=1)
    with pytest.raises(RuntimeError), job_session(tmp_path / "j", "reconstruct", config):
        with pytest.raises(ForgetlessError, match="already running"), job_session(tmp_path / "j", "x", config):
            pass
        raise RuntimeError("model exploded")
    info = job_info(tmp_path / "j")
    assert info.state == "failed" and info.error == "model exploded"


def test_cancel_pressed_while_starting_is_kept_but_a_stale_one_is_dropped(tmp_path: Path):
    import time

    starting = tmp_path / "starting"
    starting.mkdir()
    (starting / "status.json").write_text(json.dumps({"state": "starting", "started_at": time.time() - 1}))
    request_cancel(starting)  # pressed after the app spawned the job, before the job took its lock
    with job_session(starting, "reconstruct", ReconstructConfig(model="m", n=1)) as recorder:
        assert recorder.cancel_requested()

    rerun = tmp_path / "rerun"
    rerun.mkdir()
    request_cancel(rerun)  # left over from an earlier, cancelled run of the same job
    (rerun / "status.json").write_text(json.dumps({"state": "cancelled", "started_at": time.time()}))
    with job_session(rerun, "reconstruct", ReconstructConfig(model="m", n=1)) as recorder:
        assert not recorder.cancel_requested()
