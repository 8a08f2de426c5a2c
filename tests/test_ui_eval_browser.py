"""The Evaluate tab in a real browser: evaluate the tiny model and a run of it, reload, compare them; the
trade-off chart of a stored, crowded sweep keeps its labels apart.

Reuses the app fixture and helpers of tests/test_ui_browser.py (launch.py on a free port, Debian chromium).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from core.store import Store
from core.store.evaluation import EvalResultRow
from tests.browser import BROWSER_TESTS, CHROMIUM, CHROMIUM_ARGS, set_number
from tests.helpers import wait_until

sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = BROWSER_TESTS
JOB_TIMEOUT_S = 120


def _status(page) -> str:
    return page.locator("#eval-status [data-testid='markdown']").inner_text().strip()


def _message(page) -> str:
    return page.locator("#eval-message [data-testid='markdown']").inner_text().strip()


def _tuned_run(workspace: Path, base: Path) -> Path:
    """A finished full fine-tune as the train stage leaves it (its model is a copy of the base)."""
    run = workspace / "runs" / "20250101-000000-tuned"
    mix = workspace / "mix-snapshot"
    mix.mkdir(parents=True)
    (mix / "manifest.yaml").write_text(yaml.safe_dump({"ratio": 0.5}))
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"data": str(mix), "out": str(run), "model": str(base),
                                                     "method": "full"}))
    (run / "status.json").write_text('{"state": "done", "kind": "train", "started_at": 1}')
    shutil.copytree(base, run / "model")
    return run


def _stored_sweep(workspace: Path) -> list[str]:
    """Results of nine runs at ratio 0.5 with near-identical scores and of four more ratios, against an evaluated
    base of their own; the runs' folders hold just what the chart reads (config.yaml and the mix's manifest)."""
    store, base = Store.for_workspace(workspace), "sweep-base"
    runs = [(f"20250102-000000-arm-c-s{i}", 0.5, 0.58 + 0.0002 * i, 0.40 + 0.0002 * i) for i in range(9)]
    runs += [(f"20250103-000000-sweep-r{round(100 * r)}", r, 0.55 + 0.05 * r, 0.42 - 0.04 * r)
             for r in (0.1, 0.25, 0.5, 0.75)]

    def save(model: str, run_dir: str | None, task: str, value: float) -> None:
        general = task == "arc_easy"
        store.save_eval_result(EvalResultRow(
            f"seed-{model.rsplit('/', 1)[-1]}-{task}", task, "general" if general else "domain", model, run_dir,
            base if run_dir else None, value, value if general else None, 0.01, 200,
            {"acc_norm_stderr": 0.01} if general else {}, None, 0))

    save(base, None, "arc_easy", 0.60)
    save(base, None, "medmcqa", 0.30)
    for name, ratio, general, domain in runs:
        run, mix = workspace / "sweep" / name, workspace / "sweep" / f"{name}-mix"
        mix.mkdir(parents=True)
        (mix / "manifest.yaml").write_text(yaml.safe_dump({"ratio": ratio}))
        run.mkdir()
        (run / "config.yaml").write_text(yaml.safe_dump({"data": str(mix), "out": str(run), "model": base}))
        save(str(run), str(run), "arc_easy", general)
        save(str(run), str(run), "medmcqa", domain)
    return [name for name, *_ in runs]


def _intersect(a: dict, b: dict) -> bool:
    return a["x"] < b["x"] + b["width"] and b["x"] < a["x"] + a["width"] and \
        a["y"] < b["y"] + b["height"] and b["y"] < a["y"] + a["height"]


def _open_evaluate(browser, url: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(url)
    page.get_by_role("tab", name="6 · Evaluate").click()
    page.wait_for_selector("#eval-start")
    wait_until(lambda: _status(page) not in ("", "Reading jobs…"), 30, "the first status line")
    return page


def test_evaluate_base_and_run_in_the_browser(app_server, tiny_model_dir):
    url, workspace = app_server
    _tuned_run(workspace, tiny_model_dir)
    sweep = _stored_sweep(workspace)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = _open_evaluate(browser, url)
            assert _status(page).startswith("No evaluation yet")

            # Bad input is a visible message and a toast, not a job.
            for suite in ("general", "domain"):
                page.locator("#eval-suites label").filter(has_text=suite).click()
            page.click("#eval-start")
            wait_until(lambda: "Not started" in _message(page), 15, "the validation message")
            assert "at least one suite" in _message(page)
            assert page.locator(".toast-body").filter(has_text="at least one suite").count() >= 1
            assert _status(page).startswith("No evaluation yet")

            base = page.locator("#eval-base input")
            base.fill(str(tiny_model_dir))
            base.press("Enter")
            page.locator("#eval-runs input").click()
            page.get_by_role("option", name=re.compile("20250101-000000-tuned")).click()
            page.locator("#eval-suites label").filter(has_text="general").click()
            set_number(page, "eval-limit", 3)
            page.click("#eval-start")
            wait_until(lambda: re.match(r"(starting|running|done) · eval-queue-", _status(page)) is not None, 20,
                       "the plan to start")
            job_id = re.search(r"eval-queue-[\w-]+", _status(page)).group(0)

            # A reload re-attaches to the plan and shows its settings.
            page.reload()
            page.get_by_role("tab", name="6 · Evaluate").click()
            wait_until(lambda: job_id in _status(page), 20, "the reloaded page to re-attach")
            assert page.locator("#eval-limit input").input_value() == "3"
            assert base.input_value() == str(tiny_model_dir)

            wait_until(lambda: _status(page).startswith(("done", "failed", "cancelled", "interrupted")),
                       JOB_TIMEOUT_S, "the plan to finish")
            assert _status(page).startswith(f"done · {job_id} · 2 of 2 evaluated"), _status(page)
            headers = page.locator("#eval-table thead th")
            wait_until(lambda: "20250101-000000-tuned" in " ".join(headers.all_inner_texts()), 20, "the table")
            assert page.locator("#eval-table").get_by_text("arc_easy").count() >= 1
            assert page.locator("#eval-deltas .js-plotly-plot").count() == 1
            assert page.locator("#eval-history .js-plotly-plot").count() == 1
            _check_trade_off_chart(page, sweep)
            assert page.inner_text("#eval-command").count("forgetless eval") == 2
            assert page.locator("#eval-start").is_enabled() and not page.locator("#eval-cancel").is_enabled()
        finally:
            browser.close()


def _check_trade_off_chart(page, sweep: list[str]) -> None:
    """The history chart as drawn: label texts apart from each other, the crowded rest on hover."""
    chart = page.locator("#eval-history")
    shown: list[tuple[str, dict]] = []

    def drawn() -> bool:  # the chart is redrawn as each view event lands: read it once every label has a box
        labels = [(text.text_content(), text.bounding_box()) for text in chart.locator("g.textpoint text").all()]
        shown[:] = [(label, box) for label, box in labels if label]
        return "hover-only" in (chart.locator(".gtitle").text_content() or "") and bool(shown) and \
            all(box and box["width"] > 0 for _, box in shown)

    wait_until(drawn, 20, "the trade-off chart's labels")
    assert "base" in [label for label, _ in shown] and "sweep-r10 r=0.1" in [label for label, _ in shown]
    hidden = len(sweep) + 1 - len(shown)
    assert hidden >= 1 and f"{hidden} labels hover-only" in chart.locator(".gtitle").text_content()
    clashes = [(a, b) for i, (a, box_a) in enumerate(shown) for b, box_b in shown[i + 1:] if _intersect(box_a, box_b)]
    assert not clashes, clashes
    # Hover names the whole run; the runs' trace lists them by ratio, so its first point is the 0.1 run.
    # (force: Plotly's drag layer above the markers takes the pointer, and it is what raises the hover)
    chart.locator("g.scatterlayer g.trace").nth(1).locator("path.point").first.hover(force=True)
    wait_until(lambda: "20250103-000000-sweep-r10" in (chart.locator(".hoverlayer").text_content() or ""), 10,
               "the hover label")
    assert "sweep-base" in chart.locator(".hoverlayer").text_content()
