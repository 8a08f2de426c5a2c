"""The Reconstruct tab's modes in a real browser: free / steered / from a corpus show their own fields, a steered
job on the tiny model fills the coverage chart as its batches finish, and a reload restores the mode.

The workspace holds a profile built by hand with the packaged embedder (tests/helpers.py build_steerable_store):
cluster 2 lacks rows, so every steered batch aims there.
"""

from __future__ import annotations

import re

import pytest

from tests.browser import BROWSER_TESTS, CHROMIUM, CHROMIUM_ARGS, markdown_text, open_tab, set_number
from tests.helpers import build_steerable_store, wait_until

sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = BROWSER_TESTS
JOB_TIMEOUT_S = 120


def _chart_title(page) -> str:
    titles = page.locator("#rec-coverage .gtitle").all_text_contents()  # SVG: no innerText
    return (titles[0] or "") if titles else ""


def _shown(page, elem_id: str) -> bool:
    # Gradio keeps a hidden copy of a group that starts invisible: what counts is whether one is shown.
    return page.locator(f"#{elem_id}:visible").count() > 0


def test_steered_reconstruction_in_the_browser(app_server, tiny_model_dir):
    url, workspace = app_server
    build_steerable_store(workspace)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(url)
            open_tab(page, "1 · Reconstruct", "#rec-start")
            # Before any job: the stored profile's clusters, 17 rows of which 1 hidden duplicate.
            wait_until(lambda: _chart_title(page).startswith("Clusters of the profile"), 30, "the profile's chart")
            assert not _shown(page, "rec-steer") and not _shown(page, "rec-corpus") and _shown(page, "rec-override")

            page.get_by_label("From a corpus").check()
            wait_until(lambda: _shown(page, "rec-corpus"), 10, "the corpus fields")
            assert not _shown(page, "rec-steer") and not _shown(page, "rec-override")
            page.get_by_label("Steered to under-filled clusters").check()
            wait_until(lambda: _shown(page, "rec-steer"), 10, "the steering fields")
            assert not _shown(page, "rec-corpus") and not _shown(page, "rec-override")

            model = page.locator("#rec-model input")
            model.fill(str(tiny_model_dir))
            model.press("Enter")
            for elem_id, value in (("rec-n", 4), ("rec-batch-size", 2), ("rec-max-new-tokens", 24),
                                   ("rec-steer-examples", 2)):
                set_number(page, elem_id, value)
            page.locator("#rec-steer-keep-all input").check()
            page.click("#rec-start")
            status = re.compile(r"(starting|running|done) · (reconstruct-[\w-]+)")
            wait_until(lambda: status.match(markdown_text(page, "rec-status")) is not None, 20, "the job to start")
            job_id = status.match(markdown_text(page, "rec-status")).group(2)

            # The chart follows the job's batches: the rows it adds, counted per cluster as they are stored. The
            # tiny job may finish between two polls, so the titles are collected until the chart's final state.
            seen: list[str] = []

            def chart_shows(predicate) -> bool:
                seen.append(_chart_title(page))
                return predicate()

            wait_until(lambda: chart_shows(lambda: markdown_text(page, "rec-status").startswith(("done", "failed"))),
                       JOB_TIMEOUT_S, "the steered job to finish")
            assert markdown_text(page, "rec-status").startswith(f"done · {job_id} · 4/4 stored")
            wait_until(lambda: chart_shows(lambda: f"job {job_id}: +4 rows" in seen[-1]), 15, "the chart's final state")
            assert "KL" in _chart_title(page)
            steps = [int(m.group(1)) for title in seen if (m := re.search(r": \+(\d+) rows", title))]
            assert steps == sorted(steps) and steps[-1] == 4  # the rows only grow, to this job's four

            # A reload restores the mode and its fields from the job, and the chart from its summary.
            page.reload()
            open_tab(page, "1 · Reconstruct", "#rec-start")
            wait_until(lambda: "+4 rows" in _chart_title(page), 30, "the reloaded chart")
            wait_until(lambda: _shown(page, "rec-steer"), 10, "the restored steering fields")
            assert page.get_by_label("Steered to under-filled clusters").is_checked()
            assert page.locator("#rec-steer-examples input").input_value() == "2"
            assert not _shown(page, "rec-override")
        finally:
            browser.close()
