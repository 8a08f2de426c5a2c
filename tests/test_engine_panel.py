"""The app's Engine panel: the status line of each choice, a managed server started in the background, jobs
started from the tabs on the saved choice, and the panel in a real browser.

A stdlib HTTP server answering GET /v1/models stands in for a vLLM server; a shell script that prints a few
lines and sleeps stands in for .venv-vllm's Python (FORGETLESS_VLLM_PYTHON), so nothing here needs vLLM.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from core.cli.flags import cli_command
from core.config import load_yaml, to_yaml
from core.engines.choice import EngineChoice, save_choice, saved_choice
from core.engines.server import engines_root, record_server, running_servers, stop_servers
from core.errors import ForgetlessError
from core.eval.plan import EvalPlan
from core.reconstruct.reconstruction import ReconstructConfig
from tests.browser import CHROMIUM, CHROMIUM_ARGS, markdown_text, serve_app
from tests.helpers import free_port, stop_process, wait_until
from ui.views import engine as views
from ui.views import jobs as job_views
from ui.views.engine import (
    IDLE_MANAGED,
    choice_from_form,
    choice_key,
    engine_status_line,
    last_log_line,
    start_server_in_background,
    stop_everything,
)
from ui.views.jobs import EvalJobs, StageJobs
from ui.views.screen import markdown_literal

FAKE_LAST_LINE = "fake vllm: still warming up"
FAKE_VLLM = f"""#!/bin/sh
echo "fake vllm: loading weights"
echo "fake vllm: compiling graphs"
echo "(APIServer pid=1) INFO 01-02 03:04:05 [fake.py:1] {FAKE_LAST_LINE}"
exec sleep 300
"""


class _Models(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        if self.path != "/v1/models":
            self.send_error(404)
            return
        body = json.dumps({"data": [{"id": "m"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def stand_in() -> Iterator[str]:
    """The URL (http://127.0.0.1:PORT/v1) of a server that serves the model "m"."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Models)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen]:
    """A live process to record as a server."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
    try:
        yield process
    finally:
        stop_process(process, timeout_s=10)


@pytest.fixture
def fake_vllm(tmp_path: Path, monkeypatch) -> Path:
    script = tmp_path / "fake-vllm-python"
    script.write_text(FAKE_VLLM)
    script.chmod(0o755)
    monkeypatch.setenv("FORGETLESS_VLLM_PYTHON", str(script))
    return script


@dataclass
class _NoModels:
    job_id: str = "plain-1"


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


# -- the choice ------------------------------------------------------------------------------------------------
def test_the_radio_options_round_trip_to_choices(stand_in):
    for choice in (EngineChoice(), EngineChoice(engine="vllm"), EngineChoice(engine_url=stand_in)):
        assert choice_from_form(choice_key(choice), choice.engine_url) == choice
    with pytest.raises(ForgetlessError, match="type the vLLM server's URL"):
        choice_from_form(views.URL, "  ")
    with pytest.raises(ForgetlessError, match="engine URL must look like http://HOST:PORT/v1"):
        choice_from_form(views.URL, "localhost:8000")


# -- the status line -------------------------------------------------------------------------------------------
def test_in_process_says_where_models_load_and_counts_servers_left_running(tmp_path, sleeper):
    line = engine_status_line(tmp_path, EngineChoice())
    assert line.startswith("in-process") and "own process" in line and "still running" not in line
    record_server(tmp_path, "k1", pid=sleeper.pid, port=free_port(), served="s", settings={})
    assert "1 managed vLLM server still running" in engine_status_line(tmp_path, EngineChoice())


def test_a_server_url_shows_what_it_serves_or_why_not(tmp_path, stand_in):
    assert engine_status_line(tmp_path, EngineChoice(engine_url=stand_in)) == \
        markdown_literal(f"ready · {stand_in} · serves m")
    silent = f"http://127.0.0.1:{free_port()}/v1"
    line = engine_status_line(tmp_path, EngineChoice(engine_url=silent))
    assert "does not answer" in line and silent in line and "\n" not in line


def test_a_managed_server_is_starting_then_warming_up_then_ready(tmp_path, stand_in, sleeper):
    managed = EngineChoice(engine="vllm")
    assert engine_status_line(tmp_path, managed) == IDLE_MANAGED
    # Recorded on a port nothing listens on: alive but not answering, so starting; its log's last line shows.
    server = record_server(tmp_path, "k1", pid=sleeper.pid, port=free_port(), served="m", settings={})
    server.log.write_text("loading\n(APIServer pid=7) INFO 01-02 03:04:05 [api_server.py:9] Loading weights "
                          "took 3.2 s\n\n  \n")
    line = engine_status_line(tmp_path, managed)
    assert line.startswith(markdown_literal(f"starting · {server.url} · m · up ")), line
    assert line.endswith("log: Loading weights took 3.2 s")
    # The same record on the stand-in's port: it lists "m" but has not answered the warm-up yet; then it has.
    listing = record_server(tmp_path, "k1", pid=sleeper.pid, port=_port(stand_in), served="m", settings={})
    assert engine_status_line(tmp_path, managed).startswith(markdown_literal(f"warming up · {listing.url} · m · up "))
    ready = record_server(tmp_path, "k1", pid=sleeper.pid, port=_port(stand_in), served="m", settings={}, warmed=True)
    assert engine_status_line(tmp_path, managed).startswith(markdown_literal(f"ready · {ready.url} · m · up "))
    # A dead process is no server.
    stop_process(sleeper, timeout_s=10)
    assert engine_status_line(tmp_path, managed) == IDLE_MANAGED


def test_the_last_log_line_is_short_and_keeps_warnings(tmp_path):
    log = tmp_path / "log.txt"
    assert last_log_line(log) == ""  # none yet
    log.write_text("x" * 20000 + "\n(EngineCore pid=3) WARNING 01-02 03:04:05 [cpu.py:1] " + "slow " * 100 + "\n")
    line = last_log_line(log)
    assert line.startswith("WARNING: slow slow") and line.endswith("…") and len(line) <= views.LOG_LINE_CHARS


# -- starting a server in the background ---------------------------------------------------------------------
def test_starting_without_vllm_is_one_line_and_spawns_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("FORGETLESS_VLLM_PYTHON", str(tmp_path / "no-such-python"))
    with pytest.raises(ForgetlessError, match="vLLM is not installed: run `make vllm`"):
        start_server_in_background(tmp_path, "smollm2-135m-instruct")
    with pytest.raises(ForgetlessError, match="name the model"):
        start_server_in_background(tmp_path, " ")
    assert not engines_root(tmp_path).exists()


def test_a_background_start_shows_starting_and_the_servers_log_then_stops(tmp_path, fake_vllm, tiny_model_dir):
    workspace = tmp_path / "ws"
    managed = EngineChoice(engine="vllm")
    try:
        message = start_server_in_background(workspace, str(tiny_model_dir))
        assert message.startswith("Starting a vLLM server for")
        with pytest.raises(ForgetlessError, match="already being started"):
            start_server_in_background(workspace, str(tiny_model_dir))
        wait_until(lambda: FAKE_LAST_LINE in engine_status_line(workspace, managed), 60,
                   "the fake server's log in the status line")
        line = engine_status_line(workspace, managed)
        assert line.startswith("starting · http") and markdown_literal(tiny_model_dir.name) in line, line
        assert "engine start" in (engines_root(workspace) / views.STARTER_LOG).read_text()
        (starter,) = views._starters[workspace.resolve()]
        assert starter.process.poll() is None  # still waiting for a server that never answers
    finally:
        stopped = stop_everything(workspace)
    assert [server.served for server in stopped] == [tiny_model_dir.name]
    assert running_servers(workspace) == [] and starter.process.poll() is not None
    assert engine_status_line(workspace, managed) == IDLE_MANAGED


# -- jobs run on the saved choice -------------------------------------------------------------------------------
def test_stage_jobs_start_on_the_saved_choice(tmp_path, stand_in, monkeypatch):
    started = []
    monkeypatch.setattr(job_views, "start_background", lambda workspace, kind, config, job_id: started.append(config))
    jobs = StageJobs(tmp_path, "reconstruct", ReconstructConfig)
    jobs.start(ReconstructConfig(n=3, serving={"engine": "vllm"}))
    assert started[-1].serving == {}  # nothing saved: in-process, whatever the form's config said
    save_choice(tmp_path, EngineChoice(engine_url=stand_in))
    jobs.start(ReconstructConfig(n=3))
    config = started[-1]
    assert config.serving == {"engine_url": stand_in}
    assert config.resolved_job_id() == ReconstructConfig(n=3).resolved_job_id()  # the engine is not in the id
    path = tmp_path / "config.yaml"
    path.write_text(to_yaml(config))
    assert load_yaml(ReconstructConfig, path).serving == {"engine_url": stand_in}
    assert f"--engine-url {stand_in}" in cli_command("reconstruct", config, tmp_path)
    # A config without a serving field starts as it was.
    plain = _NoModels()
    StageJobs(tmp_path, "plain", _NoModels).start(plain)
    assert started[-1] is plain


def test_eval_jobs_start_their_plan_on_the_saved_choice(tmp_path, monkeypatch):
    plans = []
    monkeypatch.setattr(job_views, "start_plan", lambda workspace, plan: plans.append(plan))
    save_choice(tmp_path, EngineChoice(engine="vllm"))
    message = EvalJobs(tmp_path).start(EvalPlan(suite=("general",)))
    assert message.startswith("Started eval-queue")
    assert plans[-1].serving == {"engine": "vllm"}
    assert [config.serving for config in plans[-1].configs()] == [{"engine": "vllm"}]


def test_an_eval_plan_gives_its_serving_to_every_target(tmp_path):
    url = "http://10.0.0.2:8000/v1"
    served = EvalPlan(suite=("general", "domain"), serving={"engine_url": url})
    plain = EvalPlan(suite=("general", "domain"))
    assert [config.serving for config in served.configs()] == [{"engine_url": url}]
    assert [config.job_id for config in served.configs()] == [config.job_id for config in plain.configs()]
    path = tmp_path / "plan.yaml"
    path.write_text(to_yaml(served))
    assert load_yaml(EvalPlan, path).serving == {"engine_url": url}
    with pytest.raises(ForgetlessError, match="serving has no settings"):
        EvalPlan(serving={"engine": "vllm", "port": 1})


def test_the_saved_choice_survives_an_unreadable_file(tmp_path):
    (tmp_path / "engine.json").write_text("{not json")
    assert saved_choice(tmp_path) == EngineChoice()


# -- the panel in a real browser -------------------------------------------------------------------------------
@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed (make browser)")
def test_the_engine_panel_in_the_browser(tmp_path, stand_in, fake_vllm, tiny_model_dir):
    sync_api = pytest.importorskip("playwright.sync_api")
    workspace = tmp_path / "workspace"

    def status(page) -> str:
        return markdown_text(page, "engine-status")

    def pick(page, option: str) -> None:
        page.locator("#engine-choice label").filter(has_text=option).click()

    try:
        # The app's environment carries FORGETLESS_VLLM_PYTHON (serve_app passes os.environ on), so its
        # background starts run the fake script.
        with serve_app(workspace, tmp_path, [tiny_model_dir]) as url, sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1100})
                page.goto(url)
                page.locator("#engine-panel").get_by_text("Engine · in-process transformers").click()
                page.wait_for_selector("#engine-status")
                wait_until(lambda: status(page).startswith("in-process"), 30, "the in-process status line")
                assert not page.locator("#engine-url").is_visible()

                pick(page, "vLLM server URL")
                page.wait_for_selector("#engine-url textarea, #engine-url input")
                field = page.locator("#engine-url textarea, #engine-url input").first
                field.fill("localhost:8000")
                field.press("Enter")
                wait_until(lambda: "Not changed" in markdown_text(page, "engine-message"), 15, "the bad URL's message")
                assert "engine URL must look like" in markdown_text(page, "engine-message")
                assert saved_choice(workspace) == EngineChoice()  # the old choice kept
                field.fill(stand_in)
                field.press("Enter")
                wait_until(lambda: "serves m" in status(page), 15, "the stand-in server in the status line")
                assert status(page) == f"ready · {stand_in} · serves m"
                assert saved_choice(workspace) == EngineChoice(engine_url=stand_in)

                pick(page, "Managed vLLM server")
                wait_until(lambda: status(page) == IDLE_MANAGED, 15, "the managed status line")
                assert not page.locator("#engine-url").is_visible()
                model = page.locator("#engine-model textarea, #engine-model input").first
                model.fill(str(tiny_model_dir))
                page.click("#engine-start")
                wait_until(lambda: "Starting a vLLM server" in markdown_text(page, "engine-message"), 15,
                           "the start's message")
                # The click came back while the server is still starting: the timer shows it start.
                wait_until(lambda: FAKE_LAST_LINE in status(page), 60, "the fake server's log line")
                assert status(page).startswith("starting · http://127.0.0.1:"), status(page)
                assert page.locator("#engine-start").is_enabled()
                page.get_by_role("tab", name="2 · Screen").click()  # the page still answers
                page.wait_for_selector("#scr-respond-start")

                page.reload()
                page.wait_for_selector("#engine-panel")
                wait_until(lambda: page.locator("#engine-panel").get_by_text("Engine · managed vLLM").count() == 1,
                           30, "the saved choice in the panel's title")
                page.locator("#engine-panel").get_by_text("Engine · managed vLLM").click()
                checked = page.locator("#engine-choice input[type='radio']:checked")
                wait_until(lambda: checked.count() == 1 and checked.input_value() == "managed", 15, "the radio")
                wait_until(lambda: FAKE_LAST_LINE in status(page), 30, "the status line after the reload")
            finally:
                browser.close()
        # The app stopped its managed server when it exited.
        assert running_servers(workspace) == []
        assert "Stopped 1 managed vLLM server" in (tmp_path / "server.log").read_text()
    finally:
        stop_servers(workspace)
