"""The Explore tab in a real browser, on a small hand-built store: filters change the count, selections
are saved and listed, an unsafe SQL WHERE is refused visibly while the table keeps its rows.

Runs `launch.py` as its own process and drives Debian's chromium through Playwright (no model is loaded:
the store is built directly). Set FORGETLESS_SCREENSHOT=1 to refresh assets/explore.png.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.store import STORE_FILE
from tests.browser import (
    BROWSER_TESTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    choose,
    markdown_text,
    serve_app,
    set_slider,
    table_rows,
)
from tests.helpers import ROOT, build_explore_store, wait_until

sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = BROWSER_TESTS


@pytest.fixture
def explore_server(tmp_path: Path) -> Iterator[str]:
    """`python launch.py` over a workspace holding the six-instruction explore store (tests/helpers.py)."""
    workspace = tmp_path / "workspace"
    build_explore_store(workspace / STORE_FILE)  # judged and profiled, explore rows refreshed
    with serve_app(workspace, tmp_path) as url:
        yield url


def _count(page) -> str:
    return markdown_text(page, "exp-count")


def _wait_count(page, expected: int, what: str) -> None:
    noun = "instruction" if expected == 1 else "instructions"
    wait_until(lambda: _count(page).startswith(f"{expected} {noun} match"), 15, f"{what}: count {expected}")


def _submit(page, elem_id: str, value: str) -> None:
    field = page.locator(f"#{elem_id} textarea, #{elem_id} input").first
    field.fill(value)
    field.press("Enter")


def test_explore_filters_in_the_browser(explore_server):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1100})
            page.goto(explore_server)
            page.get_by_role("tab", name="3 · Explore").click()
            _wait_count(page, 6, "the first load")
            wait_until(lambda: len(table_rows(page)) == 6, 15, "six rows in the table")
            wait_until(lambda: markdown_text(page, "exp-profile-status").startswith("No profile job yet"), 15,
                       "the profile job's status line")  # polled on its own timer, not with the table
            assert page.locator("#exp-map .js-plotly-plot").count() == 1

            _submit(page, "exp-search", "PYTHON function")
            _wait_count(page, 2, "a text search")
            assert all("python" in row.lower() for row in table_rows(page))
            _submit(page, "exp-search", "")
            _wait_count(page, 6, "the search cleared")

            choose(page, "exp-categories", "coding")
            _wait_count(page, 2, "the coding category")
            set_slider(page, "exp-consensus-min", 4.8)
            _wait_count(page, 1, "consensus ≥ 4.8 within coding")
            assert "consensus ≥ 4.8" in _count(page) and "categories coding" in _count(page)

            _submit(page, "exp-selection-name", "top coding")
            page.click("#exp-save")
            wait_until(lambda: "top coding" in table_rows(page, "exp-selections"), 15, "the saved selection listed")

            # Unsafe SQL is refused visibly; the count and the table keep their last good state.
            _submit(page, "exp-where", "1=1; DROP TABLE instructions")
            wait_until(lambda: "Not applied" in markdown_text(page, "exp-message"), 15, "the refusal message")
            assert "SQL WHERE refused" in markdown_text(page, "exp-message")
            assert _count(page).startswith("1 instruction match") and len(table_rows(page)) == 1

            # Reset shows everything; loading the saved selection brings its filters back.
            _submit(page, "exp-where", "")
            page.click("#exp-reset")
            _wait_count(page, 6, "the reset")
            choose(page, "exp-saved", "top coding")
            page.click("#exp-load")
            _wait_count(page, 1, "the loaded selection")
            assert page.locator("#exp-consensus-min input[type='number']").input_value() == "4.8"

            if os.environ.get("FORGETLESS_SCREENSHOT") == "1":  # a fresh page: no filters, no toasts
                page.reload()
                page.get_by_role("tab", name="3 · Explore").click()
                _wait_count(page, 6, "the reloaded page")
                wait_until(lambda: "top coding" in table_rows(page, "exp-selections"), 15, "the selections")
                page.wait_for_timeout(500)  # let plotly finish drawing
                page.screenshot(path=str(ROOT / "assets" / "explore.png"), full_page=True)
        finally:
            browser.close()
