"""The app in a real browser: start a reconstruction on the tiny model, follow it, reload, browse the rows.

Runs `launch.py` as its own process (as a user would) and drives Debian's chromium through Playwright.
Set FORGETLESS_SCREENSHOT=1 to refresh assets/screenshot.png from the finished run.
"""

from __future__ import annotations

import os
import re

import pytest

from tests.browser import BROWSER_TESTS, CHROMIUM, CHROMIUM_ARGS, open_tab, set_number
from tests.helpers import ROOT, wait_until

sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = BROWSER_TESTS
JOB_TIMEOUT_S = 90


def _status(page) -> str:
    # The markdown body only: the component's hidden progress tracker also holds text such as "0.1s".
    return page.locator("#rec-status [data-testid='markdown']").inner_text().strip()


def _instruction_cells(page) -> list[str]:
    # The Dataframe renders cells as data-testid="cell-<row>-<column>"; column 0 is the instruction.
    return page.locator("#rec-table [data-testid^='cell-'][data-testid$='-0']").all_inner_texts()


def _open_app(browser, url: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(url)
    open_tab(page, "1 · Reconstruct", "#rec-start")
    wait_until(lambda: _status(page) not in ("", "Reading jobs…"), 30, "the first status line")
    return page


def test_reconstruct_in_the_browser(app_server, tiny_model_dir):
    url, workspace = app_server
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = _open_app(browser, url)
            assert "No reconstruction job yet" in _status(page)
            assert [tab.strip() for tab in page.get_by_role("tab").all_inner_texts()] == [
                "0 · Pipeline", "1 · Reconstruct", "2 · Screen", "3 · Explore", "4 · Mix", "5 · Train",
                "6 · Evaluate", "7 · Compare"]

            # Bad input is a visible message, not a crash or a job.
            set_number(page, "rec-n", 0)
            page.click("#rec-start")
            message = page.locator("#rec-message [data-testid='markdown']")
            wait_until(lambda: "Not started" in message.inner_text(), 15, "the validation message")
            assert "n must be at least 1" in message.inner_text()
            assert "No reconstruction job yet" in _status(page)
            assert page.locator(".toast-body").filter(has_text="n must be at least 1").count() >= 1

            # The README's screenshot shows the real packaged model; the test itself uses the tiny one.
            screenshot = os.environ.get("FORGETLESS_SCREENSHOT") == "1"
            model_spec = "smollm2-135m-instruct" if screenshot else str(tiny_model_dir)
            model = page.locator("#rec-model input")
            model.fill(model_spec)
            model.press("Enter")
            max_new_tokens = 128 if screenshot else 24
            for elem_id, value in (("rec-n", 3), ("rec-batch-size", 16), ("rec-max-new-tokens", max_new_tokens)):
                set_number(page, elem_id, value)
            page.click("#rec-start")
            started = re.compile(r"(starting|running|done) · reconstruct-")
            wait_until(lambda: started.match(_status(page)) is not None, 20, "the job to start")
            job_id = re.search(r"reconstruct-[\w-]+", _status(page)).group(0)
            was_running = not _status(page).startswith("done")

            # A reload forgets everything in the page; the job folder tells it what is going on.
            page.reload()
            open_tab(page, "1 · Reconstruct", "#rec-start")
            wait_until(lambda: job_id in _status(page), 20, "the reloaded page to re-attach to the job")
            assert model.input_value() == model_spec  # the form shows what the job runs with
            assert page.locator("#rec-n input").input_value() == "3"
            if was_running:
                # Status line and buttons are separate DOM reads; the tiny model's job may end between them.
                cancel, start = page.locator("#rec-cancel"), page.locator("#rec-start")
                wait_until(lambda: _status(page).startswith("done")
                           or (cancel.is_enabled() and not start.is_enabled()), 10, "Cancel offered while it runs")

            wait_until(lambda: _status(page).startswith("done") or _status(page).startswith("failed"),
                       JOB_TIMEOUT_S * (5 if screenshot else 1), "the job to finish")  # the real model is slower
            assert _status(page).startswith(f"done · {job_id} · 3/3 stored"), _status(page)
            wait_until(lambda: len(_instruction_cells(page)) == 3, 15, "three rows in the table")
            # The markdown body only: a tick in flight puts its timer text ("0.4s") in the hidden tracker.
            assert page.inner_text("#rec-page-info [data-testid='markdown']").strip().startswith("3 instructions")
            assert all(text.strip() for text in _instruction_cells(page))
            assert page.locator("#rec-histogram .js-plotly-plot").count() == 1
            assert f"--job-id {job_id}" in page.inner_text("#rec-command")
            assert page.locator("#rec-start").is_enabled() and not page.locator("#rec-cancel").is_enabled()

            # A second browser session reads the same store.
            other = _open_app(browser, url)
            wait_until(lambda: len(_instruction_cells(other)) == 3, 15, "the second session's rows")
            assert sorted(_instruction_cells(other)) == sorted(_instruction_cells(page))
            other.close()

            # Search narrows the table to matching rows.
            word = _instruction_cells(page)[0].split()[0]
            page.fill("#rec-search textarea, #rec-search input", word)
            page.locator("#rec-search textarea, #rec-search input").press("Enter")
            wait_until(lambda: "matching" in page.inner_text("#rec-page-info"), 15, "the search to apply")
            assert all(word.lower() in text.lower() for text in _instruction_cells(page))

            if screenshot:
                page.fill("#rec-search textarea, #rec-search input", "")
                page.locator("#rec-search textarea, #rec-search input").press("Enter")
                wait_until(lambda: len(_instruction_cells(page)) == 3, 15, "all rows again")
                page.screenshot(path=str(ROOT / "assets" / "screenshot.png"), full_page=True)
        finally:
            browser.close()
    assert (workspace / "jobs" / job_id / "status.json").exists()
