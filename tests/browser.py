"""The app served and driven in a real browser: Debian's chromium for Playwright, `python launch.py` on a free
port, and the page helpers the browser tests share (Playwright pages are passed in)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers import ROOT, free_port, stop_process, wait_until

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
BROWSER_TESTS = [  # a browser test module's pytestmark
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed (make browser)"),
]


def serving(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextmanager
def serve_app(workspace: Path, tmp_path: Path, data_dirs: Sequence[Path] = ()) -> Iterator[str]:
    """`python launch.py` on a free port over ``workspace`` (prepared by the caller, or empty) with ``data_dirs``
    as --data-dir folders (the app reads typed paths only there and in the workspace); yields its URL.

    Stops the server afterwards; background jobs it started are the caller's to stop (they outlive the app).
    """
    port, log_path = free_port(), tmp_path / "server.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRADIO_ANALYTICS_ENABLED": "False",
           "FORGETLESS_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1"}
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, str(ROOT / "launch.py"), "--workspace", str(workspace), "--port", str(port),
             *(arg for folder in data_dirs for arg in ("--data-dir", str(folder)))],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until(lambda: serving(url) or server.poll() is not None, 90, "the app to serve")
        assert server.poll() is None, f"launch.py exited:\n{log_path.read_text()}"
        yield url
    finally:
        stop_process(server, timeout_s=15)
        if server.returncode not in (0, -15, None):
            print(log_path.read_text())


def open_tab(page, name: str, element: str) -> None:
    """Show a tab of the app (the Pipeline tab is the one open at first) and wait for one of its elements."""
    page.get_by_role("tab", name=name).click()
    page.wait_for_selector(element)


def set_number(page, elem_id: str, value: int) -> None:
    page.fill(f"#{elem_id} input", str(value))
    page.locator(f"#{elem_id} input").press("Tab")  # commit the value, as leaving the field does


def markdown_text(page, elem_id: str) -> str:
    """The text of a Markdown component: its body only (its hidden progress tracker holds text such as "0.1s")."""
    return page.locator(f"#{elem_id} [data-testid='markdown']").inner_text().strip()


def table_rows(page, elem_id: str = "exp-table") -> list[str]:
    """The first column of a Dataframe (it renders cells as data-testid="cell-<row>-<column>")."""
    return page.locator(f"#{elem_id} [data-testid^='cell-'][data-testid$='-0']").all_inner_texts()


def set_slider(page, elem_id: str, value: float) -> None:
    """Type into a slider's number box; leaving the box commits it (the slider's release event)."""
    field = page.locator(f"#{elem_id} input[type='number']")
    field.fill(str(value))
    field.press("Tab")


def choose(page, elem_id: str, option: str) -> None:
    """Pick one option of a dropdown (multiselect or not) by typing it and pressing Enter."""
    field = page.locator(f"#{elem_id} input").first
    field.click()
    field.fill(option)
    field.press("Enter")
    page.locator("body").click(position={"x": 5, "y": 5})  # close the option list


def start_training_run(page, what: str) -> str:
    """Press Start and return the new run's name from the message."""
    before = markdown_text(page, "train-message")
    page.click("#train-start")  # waits while Start is disabled (the followed run is still starting)
    wait_until(lambda: markdown_text(page, "train-message") != before
               and "Started" in markdown_text(page, "train-message"), 20, f"{what} to start")
    return re.search(r"Started (\S+) in the background", markdown_text(page, "train-message")).group(1)
