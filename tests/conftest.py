"""Shared offline fixtures: a tiny chat tokenizer and a 2-layer random Llama saved as a model folder, the app
serving an empty workspace, one managed vLLM server for the session. The builders behind them live in
tests/helpers.py."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on the two cores: a second torch thread per worker would spin on a busy core
    os.environ.setdefault("OMP_NUM_THREADS", "1")

from core.engines.server import ManagedServer, ensure_server, stop_servers  # noqa: E402
from tests.browser import serve_app
from tests.helpers import build_tiny_model_folder, build_tiny_tokenizer, stop_jobs


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model_folder(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_base_model_dir(tmp_path_factory) -> Path:
    """A second tiny model without a chat template, like a base model (plain prompt formats)."""
    return build_tiny_model_folder(tmp_path_factory.mktemp("tiny-base"), seed=1, chat_template=None)


@pytest.fixture(scope="session")
def real_workspace(tmp_path_factory) -> Path:
    """One workspace per test session for the packaged models, so each GGUF converts once."""
    shared = os.environ.get("FORGETLESS_TEST_WORKSPACE")
    return Path(shared) if shared else tmp_path_factory.mktemp("real-workspace")


@pytest.fixture(scope="session")
def vllm_server(real_workspace: Path) -> Iterator[ManagedServer]:
    """The managed vLLM server (from .venv-vllm) on the packaged SmolLM2: ~100 s to start on 2 cores, so one
    serves the whole session; stopped at its end."""
    server = ensure_server(real_workspace, "smollm2-135m-instruct", timeout_s=600)
    try:
        yield server
    finally:
        stop_servers(real_workspace, server.key)


@pytest.fixture
def app_server(tmp_path: Path, tiny_model_dir: Path) -> Iterator[tuple[str, Path]]:
    """The app over an empty workspace, allowed to read the tiny model's folder; stopped (with any job it ran)
    afterwards."""
    workspace = tmp_path / "workspace"
    try:
        with serve_app(workspace, tmp_path, [tiny_model_dir]) as url:
            yield url, workspace
    finally:
        stop_jobs(workspace)


class _FilesWithOneVllmWorker:
    """Whole files per xdist worker (their module fixtures are built once), and every vLLM file on one worker (the
    session's vLLM server takes minutes to start; two at once would also halve the cores each gets)."""

    @staticmethod
    def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
        from xdist.scheduler import LoadScopeScheduling

        class Scheduler(LoadScopeScheduling):
            def _split_scope(self, nodeid: str) -> str:
                path = nodeid.split("::", 1)[0]
                return "vllm" if Path(path).name.startswith("test_vllm_") else path

        return Scheduler(config, log)


def pytest_configure(config: pytest.Config) -> None:
    if config.pluginmanager.hasplugin("xdist"):  # the hook is xdist's: unknown (an error) without it
        config.pluginmanager.register(_FilesWithOneVllmWorker(), "forgetless-xdist-scheduler")
