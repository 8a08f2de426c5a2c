"""The Pipeline tab in a real browser: a preset (the workspace's own, on the tiny model) picked and adjusted, run
through the app; the app restarted while the pipeline runs, the new page re-attaching to it and showing it finish
with the evaluation of the base and the tuned run; the links open the stages' tabs.

Runs `launch.py` as its own process (twice: the restart) and drives Debian's chromium through Playwright; every
stage is the real background job on the tiny 2-layer model from conftest.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from core.jobs import job_info, list_jobs
from tests.browser import BROWSER_TESTS, CHROMIUM, CHROMIUM_ARGS, choose, markdown_text, serve_app, set_number
from tests.helpers import stop_jobs, stop_runs, tiny_pipeline, wait_until

sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = BROWSER_TESTS
PIPELINE_TIMEOUT_S = 600
STAGES = ["reconstruct", "respond", "judge", "profile", "mix", "train", "eval"]


def _write_preset(workspace: Path, model: Path) -> None:
    """The workspace's own preset: the tests' tiny pipeline (general benchmarks only), four instructions."""
    preset = tiny_pipeline(model, reconstruct={"n": 4})
    (workspace / "pipelines").mkdir(parents=True)
    (workspace / "pipelines" / "tiny.yaml").write_text(yaml.safe_dump(preset, sort_keys=False))


def _editor(page) -> str:
    return page.locator("#pipe-yaml .cm-content").inner_text()


def _stage_cells(page, column: int) -> list[str]:
    return page.locator(f"#pipe-stages [data-testid^='cell-'][data-testid$='-{column}']").all_inner_texts()


def _open(browser, url: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    page.goto(url)
    page.wait_for_selector("#pipe-start")  # the first tab: no click needed
    wait_until(lambda: markdown_text(page, "pipe-status") not in ("", "Reading jobs…"), 30, "the first status line")
    return page


def test_preset_runs_through_the_app_and_survives_an_app_restart(tmp_path, tiny_model_dir):
    workspace = tmp_path / "workspace"
    _write_preset(workspace, tiny_model_dir)
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                with serve_app(workspace, tmp_path, [tiny_model_dir]) as url:
                    page = _open(browser, url)
                    assert markdown_text(page, "pipe-status").startswith("No pipeline yet")
                    assert "name: quickstart" in _editor(page)  # the shipped preset to start from

                    choose(page, "pipe-preset", "tiny")
                    wait_until(lambda: str(tiny_model_dir) in _editor(page), 15, "the tiny preset's YAML")
                    assert page.locator("#pipe-n input").input_value() == "4"
                    set_number(page, "pipe-n", 6)  # a key field edits the YAML
                    wait_until(lambda: re.search(r"\bn: 6\b", _editor(page)) is not None, 15, "the YAML to follow")

                    page.click("#pipe-start")
                    wait_until(lambda: "Started pipeline-tiny-" in markdown_text(page, "pipe-message"), 20,
                               "the pipeline to start")
                    job_id = re.search(r"pipeline-tiny-\w+", markdown_text(page, "pipe-message")).group(0)
                    wait_until(lambda: markdown_text(page, "pipe-status").startswith(f"running · {job_id} · stage"),
                               120, "a stage to run")

                    # Cancel stops it (and the stage in flight); Start again resumes the same pipeline.
                    page.click("#pipe-cancel")
                    wait_until(lambda: markdown_text(page, "pipe-status").startswith(f"cancelled · {job_id}"), 60,
                               "the cancel")
                    assert "cancelled" in _stage_cells(page, 1) and "done" not in _stage_cells(page, 1)[-3:]
                    wait_until(lambda: page.locator("#pipe-start").is_enabled(), 10, "Start to be offered")
                    page.click("#pipe-start")
                    wait_until(lambda: markdown_text(page, "pipe-status").startswith(f"running · {job_id} · stage"),
                               120, "the pipeline to run again")
                    assert _stage_cells(page, 0) == STAGES
                    assert page.locator("#pipe-cancel").is_enabled() and not page.locator("#pipe-start").is_enabled()

                # The app is gone; the pipeline (its own process) is not. A new app re-attaches to it.
                assert job_info(workspace / "jobs" / job_id).active, "the pipeline ended with the app"
                with serve_app(workspace, tmp_path, [tiny_model_dir]) as url:
                    page = _open(browser, url)
                    assert job_id in markdown_text(page, "pipe-status")
                    assert re.search(r"\bn: 6\b", _editor(page)), "the running pipeline's YAML is shown"
                    assert page.locator("#pipe-n input").input_value() == "6"
                    wait_until(lambda: not markdown_text(page, "pipe-status").startswith(("running", "starting")),
                               PIPELINE_TIMEOUT_S, "the pipeline to finish", interval_s=1.0)
                    # Stages the cancelled pass finished are skipped by the second (it resumed the cancelled one).
                    status = markdown_text(page, "pipe-status")
                    assert re.match(rf"done · {job_id} · \d stages ran, \d skipped", status), status
                    wait_until(lambda: set(_stage_cells(page, 1)) <= {"done", "skipped"}, 15, "every stage finished")
                    assert _stage_cells(page, 1)[-3:] == ["done"] * 3  # mix, train and eval ran after the restart
                    assert _stage_cells(page, 5) == ["1 · Reconstruct", "2 · Screen", "2 · Screen", "3 · Explore",
                                                     "4 · Mix", "5 · Train", "6 · Evaluate"]
                    results = markdown_text(page, "pipe-results")
                    run = _stage_cells(page, 4)[STAGES.index("train")]  # the run folder's name
                    assert "base" in results and run in results and "arc_easy" in results
                    assert page.locator("#pipe-start").is_enabled() and not page.locator("#pipe-cancel").is_enabled()
                    assert f"--config {workspace.resolve() / 'jobs' / job_id / 'config.yaml'}" in \
                        page.inner_text("#pipe-command")

                    # The links open the tab holding each result: the Evaluate tab shows the pipeline's plan.
                    page.click("#pipe-open-6")
                    wait_until(lambda: page.locator("#eval-status").is_visible(), 15, "the Evaluate tab")
                    wait_until(lambda: markdown_text(page, "eval-status").startswith("done · eval-queue-"), 30,
                               "the pipeline's evaluation in the Evaluate tab")
                    assert "2 of 2 evaluated" in markdown_text(page, "eval-status")
                    page.get_by_role("tab", name="0 · Pipeline").click()
                    page.click("#pipe-open-5")
                    wait_until(lambda: page.locator("#train-status").is_visible(), 15, "the Train tab")
            finally:
                browser.close()
    finally:
        stop_jobs(workspace)  # a failed test must not leave the pipeline (or its run) working in the background
        stop_runs(workspace)
    assert [job.state for job in list_jobs(workspace, "pipeline")] == ["done"]
