"""The Mix tab in a real browser, over the hand-built judged store of test_mix: a bad path is refused
visibly, an upload is imported with its bad row reported, builtin:medmcqa loads with its report and
preview, the ratio changes the counts, and "Freeze mix" writes a snapshot that the table lists; the
Train tab then trains the tiny model on that snapshot for one step.

Runs `launch.py` as its own process and drives Debian's chromium through Playwright (no model is loaded:
the store is built directly; the tokenizer is the packaged default). FORGETLESS_SCREENSHOT=1 refreshes
assets/mix.png.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.jobs import job_info
from core.mix.mixing import MixConfig
from core.mix.order import held_out_general
from core.store import STORE_FILE, Store
from core.train.runs import runs_root
from tests.browser import (
    BROWSER_TESTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    choose,
    markdown_text,
    serve_app,
    set_number,
    set_slider,
    start_training_run,
    table_rows,
)
from tests.helpers import N_GENERAL, ROOT, build_mix_store, stop_runs, wait_until, write_domain

sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = BROWSER_TESTS
TRAIN_TIMEOUT_S = 120
PLAN_TIMEOUT_S = 60  # the first plan loads the tokenizer and tokenizes MedMCQA's train rows


@pytest.fixture
def mix_server(tmp_path: Path, tiny_model_dir: Path) -> Iterator[tuple[str, Path]]:
    """The app over a workspace holding 60 judged, profiled instructions (no profile embeddings of the
    packaged embedder, so the map must say it needs profiling)."""
    workspace = tmp_path / "workspace"
    build_mix_store(workspace / STORE_FILE)
    with serve_app(workspace, tmp_path, [tiny_model_dir]) as url:
        yield url, workspace


def _counts(page) -> str:
    return markdown_text(page, "mix-counts")


def _wait_counts(page, total: int, what: str, timeout_s: float = 20) -> None:
    wait_until(lambda: _counts(page).startswith(f"{total} examples"), timeout_s, f"{what}: {total} examples")


def test_mix_freeze_and_train_in_the_browser(mix_server, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny matrices: extra threads only wait on busy cores
    url, workspace = mix_server
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1200})
            page.goto(url)
            page.get_by_role("tab", name="4 · Mix").click()
            page.wait_for_selector("#mix-freeze")
            assert _counts(page).startswith("Pick domain data")

            # A path that is not there: a visible message, no crash, nothing planned.
            choose(page, "mix-domain", str(workspace / "missing.jsonl"))
            wait_until(lambda: "⚠️" in markdown_text(page, "mix-message"), 15, "the refusal of a missing file")
            assert "missing.jsonl" in markdown_text(page, "mix-message")
            assert "Import failed" in markdown_text(page, "mix-report")

            # A path out of the workspace (a link to /etc/passwd) is refused unread, its name shown as text.
            hostile = workspace.parent / "<img src=x id=injected>.csv"
            hostile.symlink_to("/etc/passwd")
            choose(page, "mix-domain", str(hostile))
            wait_until(lambda: "outside the folders" in markdown_text(page, "mix-message"), 15,
                       "the refusal of the link")
            assert "<img src=x id=injected>.csv" in markdown_text(page, "mix-message")
            assert page.locator("#injected").count() == 0 and "root:x:" not in page.content()

            # An upload is kept in the workspace and imported; its bad row is reported with its line.
            upload = write_domain(workspace.parent / "notes.jsonl", 5)
            upload.write_text(upload.read_text() + "{not json\n")
            page.set_input_files("#mix-upload input[type='file']", str(upload))
            wait_until(lambda: "notes.jsonl" in markdown_text(page, "mix-report"), 20, "the upload's import report")
            assert "6 rows read · 5 kept · 1 skipped" in markdown_text(page, "mix-report")
            assert "line 6: invalid JSON" in markdown_text(page, "mix-report")
            assert (workspace / "domain-data" / "notes.jsonl").is_file()

            started = time.monotonic()
            choose(page, "mix-domain", "builtin:medmcqa")
            wait_until(lambda: "medmcqa" in markdown_text(page, "mix-report"), 20, "the import report")
            assert "4183 rows read" in markdown_text(page, "mix-report").replace(",", "")
            wait_until(lambda: len(table_rows(page, "mix-preview")) > 0, 15, "the preview rows")  # rendered ones
            answers = page.locator("#mix-preview [data-testid^='cell-'][data-testid$='-1']").all_inner_texts()
            assert answers and all(re.match(r"[A-D]\. ", answer) for answer in answers)  # letter, option text
            # Ratio 0.5 with 60 general rows, the default holdout setting some aside for drift: general-limited.
            usable = N_GENERAL - len(Store.for_workspace(workspace).general_pairs().pipe(
                lambda pairs: pairs[held_out_general(pairs["id"], MixConfig.general_holdout)]))
            assert 0 < usable < N_GENERAL
            _wait_counts(page, 2 * usable, "the first plan", PLAN_TIMEOUT_S)
            assert f"{N_GENERAL - usable} more held out for drift" in _counts(page)
            print(f"first plan shown after {time.monotonic() - started:.1f} s")
            assert "general-limited" in _counts(page) and markdown_text(page, "mix-message") == ""
            assert page.locator("#mix-composition .js-plotly-plot").count() == 1
            wait_until(lambda: "needs profiling" in page.inner_text("#mix-map"), 20, "the map's profiling note")

            # Moving the ratio re-plans: 0.25 → every usable general row + three times as many domain rows.
            started = time.monotonic()
            set_slider(page, "mix-ratio", 0.25)
            _wait_counts(page, 4 * usable, "ratio 0.25")
            print(f"ratio update shown after {time.monotonic() - started:.2f} s")
            assert "general share 25.0%" in _counts(page)

            page.click("#mix-freeze")
            name = "medmcqa-r25-examples-proportional-s0"
            wait_until(lambda: name in table_rows(page, "mix-snapshots"), 30, "the snapshot listed")
            froze = markdown_text(page, "mix-message")
            assert froze.startswith(f"Froze {name}: {4 * usable} examples ({usable} general + {3 * usable} domain)")
            assert (workspace / "mixes" / name / "train.parquet").is_file()
            assert page.locator("#mix-name input, #mix-name textarea").first.get_attribute("placeholder") == \
                f"{name}-2"

            if os.environ.get("FORGETLESS_SCREENSHOT") == "1":  # the README's picture: no toasts over it
                for close in page.locator(".toast-close").all():
                    close.click()
                page.wait_for_timeout(800)  # let plotly finish drawing
                page.screenshot(path=str(ROOT / "assets" / "mix.png"), full_page=True)

            # The same name again is refused visibly; the table keeps one snapshot.
            page.locator("#mix-name input, #mix-name textarea").first.fill(name)
            page.click("#mix-freeze")
            wait_until(lambda: "already exists" in markdown_text(page, "mix-message"), 15,
                       "the refusal of a taken name")
            assert table_rows(page, "mix-snapshots") == [name]


            # The frozen snapshot is what the Train tab trains on: one LoRA step of the tiny model.
            page.get_by_role("tab", name="5 · Train").click()
            page.click("#train-data-refresh")
            choose(page, "train-data", name)
            choose(page, "train-model", str(tiny_model_dir))
            for elem_id, value in (("train-max-steps", 1), ("train-batch-size", 4), ("train-max-length", 64)):
                set_number(page, elem_id, value)
            run = start_training_run(page, "training on the frozen mix")
            wait_until(lambda: markdown_text(page, "train-status").startswith(f"done · {run} · step 1/1"),
                       TRAIN_TIMEOUT_S,
                        "the one-step run to finish")
            folder = runs_root(workspace) / run
            assert job_info(folder).state == "done" and (folder / "adapter" / "adapter_config.json").is_file()
            assert (workspace / "mixes" / name).resolve().as_posix() in (folder / "config.yaml").read_text()
        finally:
            browser.close()
            stop_runs(workspace)
