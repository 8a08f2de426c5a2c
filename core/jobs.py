"""Background jobs: a job is a folder under ``<workspace>/jobs`` and a process working on it.

The folder holds ``config.yaml``, ``status.json``, ``progress.jsonl`` and ``log.txt``, so any
process (the app after a reload or a restart, the CLI, a second browser) can find a job, follow its
progress and cancel it (by creating a ``cancel`` file the worker polls). A lock file held by the
running process tells a live job from one whose process died, and keeps two processes off one job.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config import load_yaml, to_yaml
from core.errors import ForgetlessError

ACTIVE_STATES = ("starting", "running")


@dataclass(frozen=True)
class JobInfo:
    job_id: str
    kind: str
    state: str  # starting | running | done | failed | cancelled | interrupted
    folder: Path
    progress: dict[str, Any]
    error: str | None
    summary: dict[str, Any] | None
    started_at: float | None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


def jobs_root(workspace: Path) -> Path:
    return Path(workspace) / "jobs"


def job_folder(workspace: Path, job_id: str) -> Path:
    return jobs_root(workspace) / job_id


def _write_json(path: Path, data: dict[str, Any]) -> None:
    staging = path.with_suffix(".tmp")
    staging.write_text(json.dumps(data, default=str), encoding="utf-8")
    os.replace(staging, path)  # readers never see half a file


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _is_locked(folder: Path) -> bool:
    lock_path = folder / "lock"
    if not lock_path.exists():
        return False
    with lock_path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def last_progress(folder: Path) -> dict[str, Any]:
    """The newest complete line of progress.jsonl (a line being written is ignored)."""
    path = folder / "progress.jsonl"
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(handle.tell() - 4096, 0))
            lines = handle.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return {}
    for line in reversed(lines):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return {}


def job_info(folder: Path) -> JobInfo:
    status = _read_json(folder / "status.json")
    state = status.get("state", "starting")
    # A starting job gets a grace period before its missing lock means its process is gone.
    stale = state == "running" or time.time() - status.get("started_at", 0) > 60
    if state in ACTIVE_STATES and stale and not _is_locked(folder):
        # The process may have finished between the two reads: its final state wins over "interrupted".
        status = _read_json(folder / "status.json")
        state = status.get("state", "starting")
        state = "interrupted" if state in ACTIVE_STATES else state
    return JobInfo(
        job_id=folder.name, kind=status.get("kind", "?"), state=state, folder=folder,
        progress=last_progress(folder), error=status.get("error"), summary=status.get("summary"),
        started_at=status.get("started_at"),
    )


def list_jobs(workspace: Path, kind: str | None = None) -> list[JobInfo]:
    """All jobs, newest first."""
    root = jobs_root(workspace)
    if not root.exists():
        return []
    infos = [job_info(folder) for folder in root.iterdir() if (folder / "status.json").exists()]
    infos = [info for info in infos if kind is None or info.kind == kind]
    return sorted(infos, key=lambda info: info.started_at or 0, reverse=True)


def request_cancel(folder: Path) -> None:
    (folder / "cancel").touch()


def _drop_stale_cancel(folder: Path) -> None:
    """Forget a cancel left by an earlier run, but keep one pressed while this background job was starting."""
    cancel, status = folder / "cancel", _read_json(folder / "status.json")
    try:
        pressed_at = cancel.stat().st_mtime
    except FileNotFoundError:
        return
    if not (status.get("state") == "starting" and pressed_at >= status.get("started_at", float("inf"))):
        cancel.unlink(missing_ok=True)


@contextmanager
def job_session(folder: Path, kind: str, config: Any) -> Iterator[JobRecorder]:
    """Own a job folder while it runs: lock it, record status and progress, leave a final state."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(to_yaml(config), encoding="utf-8")
    lock = (folder / "lock").open("a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise ForgetlessError(f"job {folder.name} is already running in another process") from None
    _drop_stale_cancel(folder)
    recorder = JobRecorder(folder, kind)
    recorder.set_state("running")
    try:
        yield recorder
    except BaseException as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        recorder.set_state("cancelled" if isinstance(error, KeyboardInterrupt) else "failed", error=message)
        raise
    else:
        recorder.set_state("cancelled" if recorder.cancel_requested() else "done", summary=recorder.summary)
    finally:
        lock.close()


class JobRecorder:
    """What a running job writes into its folder."""

    def __init__(self, folder: Path, kind: str) -> None:
        self.folder, self.kind = folder, kind
        self.summary: dict[str, Any] | None = None
        self._started = time.time()

    def set_state(self, state: str, **extra: Any) -> None:
        _write_json(self.folder / "status.json", {
            "state": state, "kind": self.kind, "pid": os.getpid(), "started_at": self._started,
            "updated_at": time.time(), **extra,
        })

    def progress(self, values: dict[str, Any]) -> None:
        with (self.folder / "progress.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"time": time.time(), **values}, default=str) + "\n")

    def cancel_requested(self) -> bool:
        return (self.folder / "cancel").exists()


def start_background(workspace: Path, kind: str, config: Any, job_id: str, folder: Path | None = None,
                     extra_args: Sequence[str] = ()) -> Path:
    """Run ``forgetless <kind> --config ... [extra_args]`` for this job in a detached process; return the job folder.

    The process outlives the app (its own session), so a closed tab or a restarted app re-attaches.
    ``folder`` overrides ``<workspace>/jobs/<job_id>`` for stages whose output folder is the job folder (train).
    """
    folder = folder if folder is not None else job_folder(workspace, job_id)
    if folder.exists() and job_info(folder).active:
        raise ForgetlessError(f"job {job_id} is already running")
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "config.yaml"
    config_path.write_text(to_yaml(config), encoding="utf-8")
    _write_json(folder / "status.json", {"state": "starting", "kind": kind, "started_at": time.time()})
    (folder / "cancel").unlink(missing_ok=True)
    command = [sys.executable, "-m", "core.cli", kind, "--config", str(config_path),
               "--workspace", str(workspace), *extra_args]
    with (folder / "log.txt").open("ab") as log:
        subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            cwd=Path(__file__).resolve().parent.parent, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    return folder


def load_job_config(folder: Path, cls: type[Any]) -> Any:
    return load_yaml(cls, folder / "config.yaml")


def wait_for(folder: Path, timeout_s: float, done: Callable[[JobInfo], bool]) -> JobInfo:
    """Poll a job until ``done(info)`` (used by tests and scripts)."""
    deadline = time.monotonic() + timeout_s
    while True:
        info = job_info(folder)
        if done(info) or time.monotonic() > deadline:
            return info
        time.sleep(0.2)
