"""The processes of managed servers, named by pid and kernel start time (a recycled pid has another one): whether
one still runs, and stopping its process group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

STOP_GRACE_S = 20.0  # SIGTERM, then SIGKILL after this long
children: dict[int, subprocess.Popen] = {}  # servers this process started: polled so they never linger as zombies


def _stat(proc_entry: Path) -> list[str] | None:
    """/proc/<pid>/stat after the command name (which may hold spaces and parentheses): state, ppid, pgrp, ..."""
    try:
        stat = (proc_entry / "stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()


def process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (None when gone or a zombie): a recycled pid has another one."""
    fields = _stat(Path(f"/proc/{pid}"))
    return None if fields is None or fields[0] == "Z" else fields[19]


def _answers(send: Callable[[int, int], None], target: int) -> bool:
    """Whether signal 0 reaches ``target`` (where there is no /proc to read)."""
    try:
        send(target, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def alive(pid: int, started: str | None) -> bool:
    """Whether ``pid`` is still the process that was recorded (started at ``started``)."""
    child = children.get(pid)
    if child is not None and child.poll() is not None:
        return False
    if not Path("/proc").is_dir():
        return _answers(os.kill, pid)
    now = process_start(pid)
    return now is not None and (started is None or now == started)


def group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs. Zombies do not count: a dead server whose parent (the job or
    app that started it) has not reaped it yet must not make a stop wait out its grace period."""
    if not Path("/proc").is_dir():
        return _answers(os.killpg, pgid)
    entries = (_stat(entry) for entry in Path("/proc").iterdir() if entry.name.isdigit())
    return any(fields is not None and fields[2] == str(pgid) and fields[0] != "Z" for fields in entries)


def wait_gone(pid: int, started: str | None, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while alive(pid, started) or group_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def terminate(pid: int, started: str | None) -> None:
    """SIGTERM the server's process group (it leads one, started in its own session; else the process alone),
    then SIGKILL if it has not ended after the grace period."""
    if not alive(pid, started):
        return
    with contextlib.suppress(ProcessLookupError):
        send = os.killpg if os.getpgid(pid) == pid else os.kill
        send(pid, signal.SIGTERM)
        if not wait_gone(pid, started, STOP_GRACE_S):
            send(pid, signal.SIGKILL)
            wait_gone(pid, started, 5.0)
    children.pop(pid, None)
