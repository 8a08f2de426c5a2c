"""Background jobs: a job is a folder under ``<workspace>/jobs`` and a process working on it.

The folder holds ``config.yaml``, ``status.json``, ``progress.jsonl`` and ``log.txt``, so any
process (the app after a reload or a restart, the CLI, a second browser) can find a job, follow its
progress and cancel it (by creating a ``cancel`` file the worker polls). A lock file held by the
running process tells a live job from one whose process died, and keeps two processes off one job.

Model jobs of one workspace run one after another: each takes the compute slot (a lock on
``<workspace>/jobs/.compute.lock``) before it loads a model and is "queued" while another job holds
it. Side by side on the same cores, each job's threads spin waiting for the other's: two reconstructions on
2 cores ran at ~3 tok/s each against ~30 alone (bench/concurrent_jobs.py), far below half speed. Waiting jobs
take the slot in the order they arrived: each holds a locked ticket in ``jobs/.queue`` (named by its arrival
time), and only the first live ticket may take it.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from core.config import load_yaml, to_yaml
from core.errors import ForgetlessError

ACTIVE_STATES = ("starting", "queued", "running")
COMPUTE_LOCK = ".compute.lock"  # under <workspace>/jobs; holds the id of the job that has the slot
QUEUE_DIR = ".queue"  # under <workspace>/jobs: a ticket per job waiting for the slot, first come first served
QUEUE_POLL_S = 0.5
STARTING_GRACE_S = 60  # a starting job's worker may take this long to lock its folder
REPO_ROOT = Path(__file__).resolve().parent.parent  # workers run from here, so `python -m core...` resolves


def new_job_id(kind: str, now: float | None = None) -> str:
    """A fresh id per click (timestamp for sorting by eye, random tail so two clicks never collide)."""
    stamp = datetime.fromtimestamp(time.time() if now is None else now).strftime("%Y%m%d-%H%M%S")
    return f"{kind}-{stamp}-{secrets.token_hex(3)}"


class CancelledWhileQueued(ForgetlessError):
    """A cancel reached a job waiting for the compute slot: it ends without having loaded a model."""


@dataclass(frozen=True)
class JobInfo:
    job_id: str
    kind: str
    state: str  # starting | queued | running | done | failed | cancelled | interrupted
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
    staging = path.with_name(f"{path.stem}.{os.getpid()}-{threading.get_ident()}.tmp")  # one per writer
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


def last_progress(folder: Path, keys: Sequence[str] = (), tail_bytes: int = 4096) -> dict[str, Any]:
    """The newest complete line of ``folder/progress.jsonl`` holding every key in ``keys`` ({} when none).

    Only the file's last ``tail_bytes`` are read (the app calls this for every job on every poll); a line
    being written, or one cut by the seek, is skipped.
    """
    path = folder / "progress.jsonl"
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(handle.tell() - tail_bytes, 0))
            lines = handle.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return {}
    for line in reversed(lines):
        try:
            values = json.loads(line)
        except ValueError:
            continue
        if isinstance(values, dict) and all(key in values for key in keys):
            return values
    return {}


def _stale(status: dict[str, Any]) -> bool:
    """An active state that a live worker would hold the folder lock for (a starting one after its grace)."""
    state = status.get("state", "starting")
    if state not in ACTIVE_STATES:
        return False
    return state != "starting" or time.time() - status.get("started_at", 0) > STARTING_GRACE_S


def _mark_interrupted(folder: Path) -> dict[str, Any]:
    """Rewrite a stale active status.json as "interrupted"; return the status to report.

    Done under the folder lock, so no worker writes its state in between: one that took the lock since
    the check keeps its status, and one that finished wrote its final state before releasing the lock,
    so the re-read here sees it and that state wins.
    """
    try:
        with (folder / "lock").open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a worker took the job over since the check
                return _read_json(folder / "status.json")
            try:
                status = _read_json(folder / "status.json")
                if _stale(status):
                    status = {**status, "state": "interrupted", "interrupted_at": time.time()}
                    _write_json(folder / "status.json", status)
                return status
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
    except OSError:  # e.g. a read-only copy of a workspace: report it, leave the file
        status = _read_json(folder / "status.json")
        return {**status, "state": "interrupted"} if _stale(status) else status


def job_info(folder: Path) -> JobInfo:
    status = _read_json(folder / "status.json")
    if _stale(status) and not _is_locked(folder):
        status = _mark_interrupted(folder)
    state = status.get("state", "starting")
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


def job_threads() -> int:
    """Torch threads for a model job: OMP_NUM_THREADS when set (by the user, or `accelerate launch`), else
    every core this process may run on (its CPU affinity, which a container or taskset narrows)."""
    explicit = os.environ.get("OMP_NUM_THREADS", "").strip()
    if explicit.isdigit() and int(explicit) > 0:
        return int(explicit)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _take_compute_slot(workspace: Path, recorder: JobRecorder) -> IO[str]:
    """Wait until this job holds the workspace's compute slot and return the held lock file.

    While another job holds it the job is "queued", its progress names the job it waits for and stderr
    says so once per holder; a cancel request ends the wait with CancelledWhileQueued.
    """
    path = jobs_root(workspace) / COMPUTE_LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    ticket, ticket_handle = _join_queue(path.parent / QUEUE_DIR, recorder.folder.name)
    handle = path.open("a+", encoding="utf-8")
    announced: str | None = None
    try:
        while True:
            if _first_in_line(ticket):
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    pass
            if recorder.cancel_requested():
                raise CancelledWhileQueued(f"job {recorder.folder.name} was cancelled while queued (no model was "
                                           "loaded)")
            announced = _announce_wait(path, recorder, announced)
            time.sleep(QUEUE_POLL_S)
    except BaseException:
        handle.close()
        raise
    finally:
        ticket.unlink(missing_ok=True)
        ticket_handle.close()
    handle.seek(0)
    handle.truncate()
    handle.write(recorder.folder.name)
    handle.flush()
    return handle


def _announce_wait(path: Path, recorder: JobRecorder, announced: str | None) -> str | None:
    """Say "queued" once per holder of the slot (in the job's state, progress and stderr); the holder announced."""
    holder = path.read_text(encoding="utf-8").strip()  # empty for an instant while the slot changes hands
    if announced is None or (holder and holder != announced):
        what = f"job {holder}" if holder else "another job"
        recorder.set_state("queued")
        recorder.progress({"phase": f"queued: waiting for {what} to finish", "waiting_for": holder or None})
        print(f"queued: waiting for {what} to finish", file=sys.stderr, flush=True)
        return holder
    return announced


def _join_queue(queue: Path, job_id: str) -> tuple[Path, IO[str]]:
    """A ticket named by this arrival's time, locked for as long as the job waits (a crashed waiter's lock goes
    with its process, so its ticket no longer holds anyone back). Locked before it is named, so no other
    waiter ever sees it unlocked."""
    queue.mkdir(parents=True, exist_ok=True)
    hidden = queue / f".{job_id}-{os.getpid()}-{secrets.token_hex(3)}"
    handle = hidden.open("w", encoding="utf-8")
    fcntl.flock(handle, fcntl.LOCK_EX)
    ticket = queue / f"{time.time_ns():020d}-{job_id}"
    hidden.rename(ticket)
    return ticket, handle


def _first_in_line(ticket: Path) -> bool:
    """Whether no live ticket arrived before ``ticket``; the tickets of dead waiters met on the way are removed."""
    for other in sorted(ticket.parent.glob("[0-9]*")):
        if other.name >= ticket.name:
            return True
        try:
            with other.open("a", encoding="utf-8") as probe:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # its waiter is gone
                other.unlink(missing_ok=True)
        except BlockingIOError:
            return False  # a live waiter came first
        except FileNotFoundError:
            continue  # it took the slot or left meanwhile
    return True


def _release_compute_slot(handle: IO[str]) -> None:
    handle.seek(0)
    handle.truncate()  # before unlocking, so no waiter reads this job as the holder after it ended
    handle.close()


@contextmanager
def job_session(folder: Path, kind: str, config: Any, compute_slot: Path | None = None) -> Iterator[JobRecorder]:
    """Own a job folder while it runs: lock it, record status and progress, leave a final state.

    A model job names its workspace as ``compute_slot``: it first waits its turn for that workspace's slot
    ("queued"), then uses every available core (``job_threads``), so jobs of one workspace run one after
    another.
    """
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
    slot = None
    try:
        if compute_slot is not None:
            slot = _take_compute_slot(compute_slot, recorder)
            import torch

            torch.set_num_threads(job_threads())
        recorder.set_state("running")
        yield recorder
    except BaseException as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        cancelled = isinstance(error, (KeyboardInterrupt, CancelledWhileQueued))
        recorder.set_state("cancelled" if cancelled else "failed", error=message)
        raise
    else:
        recorder.set_state("cancelled" if recorder.cancel_requested() else "done", summary=recorder.summary)
    finally:
        if slot is not None:
            _release_compute_slot(slot)
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
            cwd=REPO_ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
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
