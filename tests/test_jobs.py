import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from core.errors import ForgetlessError
from core.jobs import (
    CancelledWhileQueued,
    job_folder,
    job_info,
    job_session,
    job_threads,
    last_progress,
    list_jobs,
    request_cancel,
    start_background,
    wait_for,
)
from core.reconstruct.reconstruction import ReconstructConfig
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
    # The status file itself is corrected (atomically), not only what job_info reports.
    status = json.loads((folder / "status.json").read_text())
    assert status["state"] == "interrupted" and status["pid"] == pid and status["kind"] == "reconstruct"


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


def _progress_lines(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "progress.jsonl").read_text().splitlines()]


def _hold_slot(workspace: Path, job_id: str = "holder"):
    """A job session of this test process holding the workspace's compute slot."""
    return job_session(job_folder(workspace, job_id), "judge", ReconstructConfig(n=1), compute_slot=workspace)


def test_second_model_job_queues_until_the_first_ends(tiny_model_dir: Path, tmp_path: Path):
    with _hold_slot(tmp_path):
        folder = background(tmp_path, tiny_model_dir, "bg-queued", n=3)
        info = wait_for(folder, 120, lambda job: job.state != "starting")
        assert info.state == "queued" and info.active, (folder / "log.txt").read_text()
        assert info.progress["waiting_for"] == "holder"
        assert info.progress["phase"] == "queued: waiting for job holder to finish"
        time.sleep(1.5)  # still queued, and job_info does not call it interrupted
        assert job_info(folder).state == "queued"
        assert Store.for_workspace(tmp_path).count_instructions(job_id="bg-queued") == 0
        released = time.time()
    info = wait_for(folder, 120, lambda job: not job.active)
    assert info.state == "done" and info.summary["stored"] == 3, (folder / "log.txt").read_text()
    loading = [line for line in _progress_lines(folder) if line.get("phase") == "loading model"]
    assert loading and loading[0]["time"] >= released  # no model was loaded while it waited
    queued_lines = [line for line in (folder / "log.txt").read_text().splitlines() if line.startswith("queued:")]
    assert queued_lines == ["queued: waiting for job holder to finish"]


def test_cancel_while_queued_ends_cancelled_without_loading_a_model(tiny_model_dir: Path, tmp_path: Path):
    with _hold_slot(tmp_path):
        folder = background(tmp_path, tiny_model_dir, "bg-leaves-queue", n=3)
        assert wait_for(folder, 120, lambda job: job.state != "starting").state == "queued"
        request_cancel(folder)
        info = wait_for(folder, 30, lambda job: not job.active)
        assert info.state == "cancelled" and "cancelled while queued" in info.error
    assert all(line.get("phase") != "loading model" for line in _progress_lines(folder))
    assert Store.for_workspace(tmp_path).count_instructions(job_id="bg-leaves-queue") == 0
    assert "error: job bg-leaves-queue was cancelled while queued" in (folder / "log.txt").read_text()


def test_killed_queued_job_is_interrupted(tiny_model_dir: Path, tmp_path: Path):
    with _hold_slot(tmp_path):
        folder = background(tmp_path, tiny_model_dir, "bg-queued-kill", n=3)
        assert wait_for(folder, 120, lambda job: job.state != "starting").state == "queued"
        os.kill(json.loads((folder / "status.json").read_text())["pid"], signal.SIGKILL)
        assert wait_for(folder, 30, lambda job: job.state == "interrupted").state == "interrupted"
        assert json.loads((folder / "status.json").read_text())["state"] == "interrupted"


def test_in_process_queue_cancel_and_threads(tmp_path: Path, monkeypatch):
    import torch

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)

    with _hold_slot(tmp_path):
        waiter = job_folder(tmp_path, "waiter")
        threading.Timer(1.0, request_cancel, [waiter]).start()
        with pytest.raises(CancelledWhileQueued), \
                job_session(waiter, "respond", ReconstructConfig(n=1), compute_slot=tmp_path):
            pytest.fail("the body ran although the slot was held")
        assert job_info(waiter).state == "cancelled"
    torch.set_num_threads(1)
    with job_session(job_folder(tmp_path, "next"), "respond", ReconstructConfig(n=1), compute_slot=tmp_path):
        assert torch.get_num_threads() == job_threads() == len(os.sched_getaffinity(0))
        assert (tmp_path / "jobs" / ".compute.lock").read_text() == "next"
    assert (tmp_path / "jobs" / ".compute.lock").read_text() == ""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # set by the user or by `accelerate launch`: kept
    with job_session(job_folder(tmp_path, "one"), "respond", ReconstructConfig(n=1), compute_slot=tmp_path):
        assert torch.get_num_threads() == 1


def test_stale_status_is_rewritten_but_a_fresh_start_or_final_state_is_not(tmp_path: Path):
    def folder_with(name: str, **status) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "status.json").write_text(json.dumps({"kind": "respond", **status}))
        return folder

    dead = folder_with("dead", state="running", pid=999999, started_at=time.time())
    assert job_info(dead).state == "interrupted"
    assert json.loads((dead / "status.json").read_text())["state"] == "interrupted"
    fresh = folder_with("fresh", state="starting", started_at=time.time())  # within the starting grace
    assert job_info(fresh).state == "starting"
    assert json.loads((fresh / "status.json").read_text())["state"] == "starting"
    old = folder_with("old", state="starting", started_at=time.time() - 3600)
    assert job_info(old).state == "interrupted"
    finished = folder_with("finished", state="done", started_at=time.time())
    assert job_info(finished).state == "done"
    assert not list(tmp_path.glob("*/*.tmp"))


def test_app_status_line_shows_queued():
    from core.jobs import JobInfo
    from ui.views.jobs import job_status_line as status_line

    queued = JobInfo("respond-1", "respond", "queued", Path("/x"),
                     {"phase": "queued: waiting for job judge-2 to finish", "waiting_for": "judge-2"}, None, None, 1.0)
    line = status_line(queued, unit="done", noun="responses")
    assert line == "queued · respond-1 · waiting for job judge-2 to finish"
    unknown = JobInfo("respond-1", "respond", "queued", Path("/x"), {}, None, None, 1.0)
    assert "waiting for another job" in status_line(unknown, unit="done")
    assert "interrupted" not in status_line(queued) and queued.active


def test_last_progress_reads_the_newest_complete_line_with_the_keys_asked_for(tmp_path: Path):
    assert last_progress(tmp_path) == {}  # no progress.jsonl yet
    steps = "".join(json.dumps({"step": step, "loss": 1.0 / step}) + "\n" for step in range(1, 901))
    (tmp_path / "progress.jsonl").write_text(steps + '{"phase": "saving"}\n{"step": 901, "lo')  # one being written
    assert last_progress(tmp_path) == {"phase": "saving"}
    assert last_progress(tmp_path, ("step", "loss")) == {"step": 900, "loss": 1.0 / 900}
    assert last_progress(tmp_path, ("stored",)) == {}  # not within the tail
    assert last_progress(tmp_path, ("step",), tail_bytes=10) == {}  # only the tail is read


def test_waiting_jobs_take_the_slot_in_the_order_they_arrived(tmp_path: Path):
    """Four jobs queue one after another behind a holder; released, they run first come first served (each used to
    grab the slot whenever its own poll came first). A crashed waiter's ticket holds no one back."""
    entered: list[str] = []

    def wait_then_run(job_id: str) -> None:
        with job_session(job_folder(tmp_path, job_id), "judge", ReconstructConfig(n=1), compute_slot=tmp_path):
            entered.append(job_id)
            time.sleep(0.1)

    queue = tmp_path / "jobs" / ".queue"
    order = [f"waiter-{i}" for i in range(4)]
    threads = []
    with _hold_slot(tmp_path):
        for i, job_id in enumerate(order):
            if i == 2:  # a waiter that died queued: its ticket stays, unlocked
                queue.mkdir(parents=True, exist_ok=True)
                (queue / f"{time.time_ns():020d}-crashed").write_text("")
            threads.append(threading.Thread(target=wait_then_run, args=(job_id,)))
            threads[-1].start()
            wait_for(job_folder(tmp_path, job_id), 30, lambda job: job.state == "queued")
        assert len(list(queue.glob("[0-9]*"))) == 5
    for thread in threads:
        thread.join(60)
    assert entered == order
    assert not list(queue.iterdir())  # every ticket gone, the dead one's too
