"""The Explore tab in a real browser, on a small hand-built store: filters change the count, selections
are saved and listed, an unsafe SQL WHERE is refused visibly while the table keeps its rows.

Runs `launch.py` as its own process and drives Debian's chromium through Playwright (no model is loaded:
the store is built directly). Set FORGETLESS_SCREENSHOT=1 to refresh assets/explore.png.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.store import STORE_FILE
from tests.test_explore import build_store
from tests.test_ui_browser import CHROMIUM, CHROMIUM_ARGS, REPO, _free_port, _serving, _wait_until

sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed (make browser)"),
]


@pytest.fixture
def explore_server(tmp_path: Path) -> Iterator[str]:
    """`python launch.py` on a free port, over a workspace holding the six-instruction store of test_explore."""
    workspace, port = tmp_path / "workspace", _free_port()
    build_store(workspace / STORE_FILE)  # judged and profiled, explore rows refreshed
    log_path = tmp_path / "server.log"
    env = {**os.environ, "PYTHONPATH": str(REPO), "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, str(REPO / "launch.py"), "--workspace", str(workspace), "--port", str(port)],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_until(lambda: _serving(url) or server.poll() is not None, 90, "the app to serve")
        assert server.poll() is None, f"launch.py exited:\n{log_path.read_text()}"
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()


def _text(page, elem_id: str) -> str:
    # The markdown body only: a component's hidden progress tracker also holds text such as "0.1s".
    return page.locator(f"#{elem_id} [data-testid='markdown']").inner_text().strip()


def _count(page) -> str:
    return _text(page, "exp-count")


def _wait_count(page, expected: int, what: str) -> None:
    noun = "instruction" if expected == 1 else "instructions"
    _wait_until(lambda: _count(page).startswith(f"{expected} {noun} match"), 15, f"{what}: count {expected}")


def _table_rows(page, elem_id: str = "exp-table") -> list[str]:
    # The Dataframe renders cells as data-testid="cell-<row>-<column>"; column 0 is the instruction.
    return page.locator(f"#{elem_id} [data-testid^='cell-'][data-testid$='-0']").all_inner_texts()


def _submit(page, elem_id: str, value: str) -> None:
    field = page.locator(f"#{elem_id} textarea, #{elem_id} input").first
    field.fill(value)
    field.press("Enter")


def _set_slider(page, elem_id: str, value: float) -> None:
    """Type into a slider's number box; leaving the box commits it (the slider's release event)."""
    field = page.locator(f"#{elem_id} input[type='number']")
    field.fill(str(value))
    field.press("Tab")


def _choose(page, elem_id: str, option: str) -> None:
    """Pick one option of a dropdown (multiselect or not) by typing it and pressing Enter."""
    field = page.locator(f"#{elem_id} input").first
    field.click()
    field.fill(option)
    field.press("Enter")
    page.locator("body").click(position={"x": 5, "y": 5})  # close the option list


def test_explore_filters_in_the_browser(explore_server):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1100})
            page.goto(explore_server)
            page.get_by_role("tab", name="3 · Explore").click()
            _wait_count(page, 6, "the first load")
            _wait_until(lambda: len(_table_rows(page)) == 6, 15, "six rows in the table")
            assert _text(page, "exp-profile-status").startswith("No profile job yet")
            assert page.locator("#exp-map .js-plotly-plot").count() == 1

            _submit(page, "exp-search", "PYTHON function")
            _wait_count(page, 2, "a text search")
            assert all("python" in row.lower() for row in _table_rows(page))
            _submit(page, "exp-search", "")
            _wait_count(page, 6, "the search cleared")

            _choose(page, "exp-categories", "coding")
            _wait_count(page, 2, "the coding category")
            _set_slider(page, "exp-consensus-min", 4.8)
            _wait_count(page, 1, "consensus ≥ 4.8 within coding")
            assert "consensus ≥ 4.8" in _count(page) and "categories coding" in _count(page)

            _submit(page, "exp-selection-name", "top coding")
            page.click("#exp-save")
            _wait_until(lambda: "top coding" in _table_rows(page, "exp-selections"), 15, "the saved selection listed")

            # Unsafe SQL is refused visibly; the count and the table keep their last good state.
            _submit(page, "exp-where", "1=1; DROP TABLE instructions")
            _wait_until(lambda: "Not applied" in _text(page, "exp-message"), 15, "the refusal message")
            assert "SQL WHERE refused" in _text(page, "exp-message")
            assert _count(page).startswith("1 instruction match") and len(_table_rows(page)) == 1

            # Reset shows everything; loading the saved selection brings its filters back.
            _submit(page, "exp-where", "")
            page.click("#exp-reset")
            _wait_count(page, 6, "the reset")
            _choose(page, "exp-saved", "top coding")
            page.click("#exp-load")
            _wait_count(page, 1, "the loaded selection")
            assert page.locator("#exp-consensus-min input[type='number']").input_value() == "4.8"

            if os.environ.get("FORGETLESS_SCREENSHOT") == "1":  # a fresh page: no filters, no toasts
                page.reload()
                page.get_by_role("tab", name="3 · Explore").click()
                _wait_count(page, 6, "the reloaded page")
                _wait_until(lambda: "top coding" in _table_rows(page, "exp-selections"), 15, "the selections")
                page.wait_for_timeout(500)  # let plotly finish drawing
                page.screenshot(path=str(REPO / "assets" / "explore.png"), full_page=True)
        finally:
            browser.close()
