"""The Screen tab's judge check in a real browser: run a check on the tiny model and the packaged embedder's
relevance signal, reload while it runs, then read the accuracy table and chart.
Reuses the app fixture and helpers of tests/test_ui_browser.py (launch.py on a free port, Debian chromium).
"""

from __future__ import annotations

import re

import pytest

from tests.browser import BROWSER_TESTS, CHROMIUM, CHROMIUM_ARGS, set_number
from tests.helpers import wait_until

sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = BROWSER_TESTS
JOB_TIMEOUT_S = 120


def _status(page) -> str:
    return page.locator("#scr-check-status [data-testid='markdown']").inner_text().strip()


def _note(page) -> str:
    return page.locator("#scr-check-note [data-testid='markdown']").inner_text().strip()


def _open_screen(browser, url: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(url)
    page.get_by_role("tab", name="2 · Screen").click()
    page.wait_for_selector("#scr-check-start")
    wait_until(lambda: _status(page) not in ("", "Reading jobs…"), 30, "the first status line")
    return page


def test_a_judge_check_in_the_browser(app_server, tiny_model_dir):
    url, workspace = app_server
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = _open_screen(browser, url)
            assert _status(page).startswith("No judge check yet")
            # The note follows the status through a chained event: wait for it rather than read it at once.
            wait_until(lambda: "No judge check yet" in _note(page), 20, "the note under the check")

            page.locator("#scr-check-judges .remove-all").click()
            judges = page.locator("#scr-check-judges input")
            for spec in (str(tiny_model_dir), "relevance:all-minilm-l6-v2"):
                judges.fill(spec)
                judges.press("Enter")
            set_number(page, "scr-check-pairs", 2)
            page.click("#scr-check-start")
            wait_until(lambda: re.match(r"(starting|running|done) · judge-check-", _status(page)) is not None, 20,
                       "the check to start")
            job_id = re.search(r"judge-check-[\w-]+", _status(page)).group(0)

            page.reload()
            page.get_by_role("tab", name="2 · Screen").click()
            wait_until(lambda: job_id in _status(page), 20, "the reloaded page to re-attach")
            wait_until(lambda: _status(page).startswith(("done", "failed", "cancelled")), JOB_TIMEOUT_S,
                       "the check to finish")
            assert _status(page).startswith(f"done · {job_id}"), _status(page)

            table = page.locator("#scr-check-table")
            wait_until(lambda: "relevance:all-minilm-l6-v2/probs" in table.inner_text(), 20, "the accuracy table")
            assert "consensus/probs" in table.inner_text() and "off_topic (2 pairs)" in table.inner_text()
            assert page.locator("#scr-check-chart .js-plotly-plot").count() == 1
            wait_until(lambda: job_id in _note(page), 20, "the note naming the check")
        finally:
            browser.close()
