"""The app's engine panel as plain data: the three choices, the status line a timer refreshes, and starting a
managed vLLM server in the background so the page never waits for one.

No Gradio here: ``ui/engine_panel.py`` wires these to the panel's widgets.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from core.engines.choice import EngineChoice
from core.engines.server import (
    ManagedServer,
    engines_root,
    running_servers,
    server_state,
    stop_servers,
    vllm_python,
)
from core.engines.vllm import served_models
from core.errors import ForgetlessError
from core.jobs import REPO_ROOT
from ui.views.screen import markdown_literal, shorten

IN_PROCESS, MANAGED, URL = "in-process", "managed", "url"
CHOICES = [("In-process (transformers, the default)", IN_PROCESS),
           ("Managed vLLM server (Forgetless starts one from .venv-vllm)", MANAGED),
           ("vLLM server URL", URL)]
DEFAULT_SERVER_MODEL = "smollm2-135m-instruct"
STARTER_LOG = "start.log"  # <workspace>/engines/start.log: what each background `engine start` printed
POLL_TIMEOUT_S = 2.0  # each status poll asks a server at most this long: the timer ticks every 2 s
LOG_LINE_CHARS = 160
TAIL_BYTES = 8192  # the last line of a log is read from its end, however long the log grows
STOP_GRACE_S = 10.0

IDLE_MANAGED = ("no vLLM server is running: a job starts one for its model (about 2 minutes on a CPU), "
                "or press Start server")


def choice_key(choice: EngineChoice) -> str:
    """Which radio option ``choice`` is."""
    if choice.engine_url:
        return URL
    return IN_PROCESS if choice.in_process else MANAGED


def choice_from_form(key: str, url: str | None) -> EngineChoice:
    """The radio option and URL box as a checked choice (a ForgetlessError says what is wrong)."""
    if key == IN_PROCESS:
        return EngineChoice()
    if key == MANAGED:
        return EngineChoice(engine="vllm")
    if key == URL:
        url = (url or "").strip()
        if not url:
            raise ForgetlessError("type the vLLM server's URL (http://HOST:PORT/v1) and press Enter")
        return EngineChoice(engine_url=url)
    raise ForgetlessError(f"unknown engine choice '{key}'")


# -- the status line ---------------------------------------------------------------------------------------
_VLLM_PREFIX = re.compile(r"^(?:\(\w+ pid=\d+\) )?(?:(?:DEBUG|INFO) |(?P<level>WARNING|ERROR|CRITICAL) )"
                          r"[\d-]+ [\d:.]+ (?:\[[^\]]*\] ?)?")


def last_log_line(path: Path, limit: int = LOG_LINE_CHARS) -> str:
    """The last non-empty line of a log, without vLLM's ``(APIServer pid=1) INFO date time [file:line]`` head,
    cut to ``limit`` characters ("" when there is none yet)."""
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - TAIL_BYTES))
            tail = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    line = next((line.strip() for line in reversed(tail.splitlines()) if line.strip()), "")
    line = _VLLM_PREFIX.sub(lambda found: f"{found['level']}: " if found["level"] else "", line)
    return shorten(line, limit)


def _uptime(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"up {seconds} s"
    if seconds < 3600:
        return f"up {seconds // 60} min"
    return f"up {seconds // 3600} h {seconds % 3600 // 60:02d} min"


def server_line(server: ManagedServer, now: float | None = None) -> str:
    """``ready · URL · NAME · up 3 min · log: ...``: starting, warming up once it lists its model, ready once it has
    also answered the warm-up completion."""
    state = server_state(server)
    log = last_log_line(server.log)
    parts = [state, server.url, server.served, _uptime((now or time.time()) - server.started_at)]
    return markdown_literal(" · ".join(parts + ([f"log: {log}"] if log else [])))


def engine_status_line(workspace: Path, choice: EngineChoice) -> str:
    """What the chosen engine is doing, as Markdown lines (user text and logs shown literally)."""
    workspace = Path(workspace)
    if choice.engine_url:
        try:
            names = served_models(choice.engine_url, timeout_s=POLL_TIMEOUT_S)
        except ForgetlessError as error:
            return markdown_literal(str(error))
        return markdown_literal(f"ready · {choice.engine_url} · serves {', '.join(names) or 'no model'}")
    servers = running_servers(workspace)
    if choice.in_process:
        line = "in-process: each job loads its models in its own process (transformers); no server is used"
        if servers:
            line += (f" · {len(servers)} managed vLLM server{'s' if len(servers) != 1 else ''} still running: "
                     "Stop servers frees their memory")
        return line
    lines = [server_line(server) for server in servers]
    lines += _starter_lines(workspace, servers)
    return "  \n".join(lines) if lines else IDLE_MANAGED


# -- starting a server without waiting for it ----------------------------------------------------------------
@dataclass
class _Starter:
    """One background ``forgetless engine start`` this app spawned."""

    spec: str
    process: subprocess.Popen
    began: float


_starters: dict[Path, list[_Starter]] = {}  # by workspace; polled, so finished starters never linger as zombies


def _starter_lines(workspace: Path, servers: list[ManagedServer]) -> list[str]:
    """A start still preparing its model (no server recorded since it began), or one that failed."""
    log = last_log_line(engines_root(workspace) / STARTER_LOG)
    lines = []
    for starter in _starters.get(workspace.resolve(), []):
        if any(server.started_at >= starter.began for server in servers):
            continue  # its server has a line of its own
        code = starter.process.poll()
        if code is None:
            lines.append(" · ".join(["starting", starter.spec, "preparing the model", f"log: {log}" if log else ""]))
        elif code != 0:
            lines.append(f"the start for {starter.spec} failed: {log or f'exit code {code}'}")
    return [markdown_literal(line.rstrip(" ·")) for line in lines]


def start_server_in_background(workspace: Path, spec: str) -> str:
    """Spawn ``forgetless engine start SPEC`` detached (its output goes to ``engines/start.log``) and return at
    once; the status line follows it. A missing .venv-vllm or an empty model is a ForgetlessError first."""
    workspace = Path(workspace).resolve()
    spec = (spec or "").strip()
    if not spec:
        raise ForgetlessError("name the model to start a vLLM server for (an alias, a model folder or a hub id)")
    vllm_python()  # raises the one-line `make vllm` hint
    starters = _starters.setdefault(workspace, [])
    if any(starter.spec == spec and starter.process.poll() is None for starter in starters):
        raise ForgetlessError(f"a vLLM server for {spec} is already being started; its progress is shown below")
    starters[:] = [starter for starter in starters if starter.process.poll() is None]
    root = engines_root(workspace)
    root.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "core.cli", "engine", "start", spec, "--workspace", str(workspace)]
    # Progress lines on: they are what start.log is for (the app's own environment may turn them off).
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "FORGETLESS_NO_PROGRESS": "0",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    with (root / STARTER_LOG).open("ab") as log:
        log.write(f"\n==> {time.strftime('%Y-%m-%d %H:%M:%S')} forgetless engine start {spec}\n".encode())
        log.flush()
        # Its own session: a closed tab does not stop it; the app stops it (and its server) when it exits.
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   cwd=REPO_ROOT, env=env, start_new_session=True)
    starters.append(_Starter(spec, process, time.time()))
    return f"Starting a vLLM server for {markdown_literal(spec)} in the background: the status line above follows it."


def stop_starters(workspace: Path) -> int:
    """End the background starts this app spawned for ``workspace`` (a server they launched is left for
    stop_servers); returns how many were still running."""
    stopped = 0
    for starter in _starters.pop(Path(workspace).resolve(), []):
        if starter.process.poll() is not None:
            continue
        stopped += 1
        try:
            os.killpg(starter.process.pid, signal.SIGTERM)
            starter.process.wait(timeout=STOP_GRACE_S)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(starter.process.pid, signal.SIGKILL)
            starter.process.wait(timeout=STOP_GRACE_S)
    return stopped


def stop_everything(workspace: Path) -> list[ManagedServer]:
    """Stop the background starts, then every managed server of the workspace (the panel's Stop servers and
    the app's exit); returns the servers stopped."""
    stop_starters(workspace)
    return stop_servers(Path(workspace))


def stopped_message(servers: list[ManagedServer]) -> str:
    if not servers:
        return "No managed vLLM server was running."
    names = ", ".join(f"{server.served} at {server.url}" for server in servers)
    return markdown_literal(f"Stopped {len(servers)} vLLM server{'s' if len(servers) != 1 else ''}: {names}.")
