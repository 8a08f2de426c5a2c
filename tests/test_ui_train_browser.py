"""The Train tab in a real browser: pick a frozen mix and the tiny model, train 2 steps in the background,
and a long run alongside it; cancel the long run, resume it, reload the page and find it running with its
settings, cancel it again; see both runs listed and the 2-step run done with its loss curve once its row is
clicked.

Runs `launch.py` as its own process and drives Debian's chromium through Playwright; the run itself is
the real `forgetless train` worker on the tiny 2-layer model from conftest.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from core.train.runs import runs_root
from tests.browser import (
    BROWSER_TESTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    choose,
    markdown_text,
    serve_app,
    set_number,
    start_training_run,
)
from tests.helpers import stop_runs, wait_until, write_snapshot

sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = BROWSER_TESTS
RUN_TIMEOUT_S = 75
SNAPSHOT = "tiny-mix"
LONG_STEPS = 100_000  # never finishes: it is cancelled, resumed and cancelled again


def _prepare_workspace(workspace: Path) -> Path:
    """A workspace holding one frozen mix: test_train's train.parquet plus the manifest keys the list reads."""
    folder = write_snapshot(workspace / "mixes" / SNAPSHOT)
    manifest = {"name": SNAPSHOT, "created": "2025-01-01T00:00:00+00:00", "ratio": 0.5, "ratio_achieved": 0.5,
                "by": "examples", "balance": "proportional", "seed": 0, "limited_by": None,
                "counts": {"general": 8, "domain": 8, "total": 16}, "domain": {"spec": "tests"}}
    (folder / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    return folder


def _step(page) -> int | None:
    found = re.search(r"step (\d+)/", markdown_text(page, "train-status"))
    return int(found.group(1)) if found else None


def _run_cells(page, column: int) -> list[str]:
    return page.locator(f"#train-runs [data-testid^='cell-'][data-testid$='-{column}']").all_inner_texts()


def test_train_tab_runs_a_tiny_training_in_the_browser(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny matrices: extra threads only wait on busy shared cores
    workspace = tmp_path / "workspace"
    snapshot = _prepare_workspace(workspace)
    with serve_app(workspace, tmp_path, [tiny_model_dir]) as url, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1100})
            page.goto(url)
            page.get_by_role("tab", name="5 · Train").click()
            wait_until(lambda: markdown_text(page, "train-status").startswith("No training run yet"), 30,
                       "the idle line")
            wait_until(lambda: SNAPSHOT in page.locator("#train-data input").input_value(), 15,
                       "the newest snapshot pre-selected")

            # Bad input is a visible message (and a toast), not a crash or a run.
            set_number(page, "train-max-steps", 0)
            page.click("#train-start")
            wait_until(lambda: "Not started" in markdown_text(page, "train-message"), 15, "the validation message")
            assert "max steps must be" in markdown_text(page, "train-message")
            assert page.locator(".toast-body").filter(has_text="max steps must be").count() >= 1
            assert not runs_root(workspace).exists()

            choose(page, "train-data", SNAPSHOT)
            choose(page, "train-model", str(tiny_model_dir))
            for elem_id, value in (("train-max-steps", 2), ("train-batch-size", 4), ("train-max-length", 64)):
                set_number(page, elem_id, value)
            page.click("#train-show-command")
            command = page.locator("#train-command")
            wait_until(lambda: command.is_visible() or "No command" in markdown_text(page, "train-message"), 15,
                       "the CLI command")
            assert command.is_visible(), markdown_text(page, "train-message")
            command = command.inner_text()
            assert "--max-steps 2" in command and f"--data {snapshot}" in command
            assert f"--model {tiny_model_dir}" in command

            name = start_training_run(page, "the 2-step run")

            # A long second run alongside (runs never share a folder); the tab follows the newest started.
            set_number(page, "train-max-steps", LONG_STEPS)
            second = start_training_run(page, "the long run")
            assert second != name
            wait_until(lambda: markdown_text(page, "train-status").startswith(f"running · {second} · step "),
                       RUN_TIMEOUT_S,
                        "the long run's first step")
            live = re.compile(r"step \d+/100000 · loss [\d.]+ · lr [\d.e-]+ · \d+ tok/s · ETA [\d:]+$")
            assert live.search(markdown_text(page, "train-status")), markdown_text(page, "train-status")

            # Cancel saves a checkpoint; Resume continues after it.
            page.click("#train-cancel")
            wait_until(lambda: markdown_text(page, "train-status").startswith(f"cancelled · {second}"), 30,
                       "the cancel")
            stopped = _step(page)
            assert f"Resume continues from step {stopped}" in markdown_text(page, "train-status")
            wait_until(lambda: page.locator("#train-resume").is_enabled(), 10, "Resume to be offered")
            page.click("#train-resume")
            wait_until(lambda: (_step(page) or 0) > stopped and markdown_text(page,
                       "train-status").startswith("running"),
                        RUN_TIMEOUT_S, "the resumed run to pass its checkpoint")

            # A reload forgets everything in the page; the run folders bring the active run and its settings back.
            page.reload()
            page.get_by_role("tab", name="5 · Train").click()
            wait_until(lambda: markdown_text(page, "train-status").startswith(f"running · {second}"), 20,
                       "the re-attached run")
            assert page.locator("#train-max-steps input").input_value() == str(LONG_STEPS)
            assert page.locator("#train-model input").input_value() == str(tiny_model_dir)
            wait_until(lambda: page.locator("#train-cancel").is_enabled(), 10, "Cancel to be offered")
            page.click("#train-cancel")
            wait_until(lambda: markdown_text(page, "train-status").startswith(f"cancelled · {second}"), 30,
                       "the 2nd cancel")
            lines = [json.loads(line) for line in (runs_root(workspace) / second / "progress.jsonl").open()]
            assert [line["resumed_from_step"] for line in lines if "resumed_from_step" in line] == [None, stopped]

            # The 2-step run finished meanwhile: listed, and a click on its row shows its line and curve.
            wait_until(lambda: _run_cells(page, 0) == [second, name] and _run_cells(page, 1) == ["cancelled", "done"],
                       RUN_TIMEOUT_S, "both runs listed, newest first", interval_s=0.5)
            assert _run_cells(page, 4)[1] == "2/2"
            page.locator("#train-runs [data-testid='cell-1-0']").click()
            wait_until(lambda: markdown_text(page, "train-status").startswith(f"done · {name} · step 2/2 · loss "), 15,
                       "the clicked run followed")
            assert "adapter saved" in markdown_text(page, "train-status")
            plot = page.locator("#train-loss-plot .js-plotly-plot")
            wait_until(lambda: f"{name}: loss and learning rate (2/2 steps)" in plot.inner_text(), 15,
                       "the loss curve of both steps")
            assert plot.locator(".scatterlayer .trace").count() == 2  # loss and learning rate
            assert not page.locator("#train-cancel").is_enabled() and not page.locator("#train-resume").is_enabled()
        finally:
            browser.close()
            stop_runs(workspace)
    assert (runs_root(workspace) / name / "adapter" / "adapter_config.json").exists()
