"""The Compare tab in a real browser: draw a held-out general instruction, have the tiny base model and a tiny LoRA
run of it answer it in a real background job, see the two replies side by side, reload and see them again.

Runs `launch.py` as its own process (the app_server fixture) and drives Debian's chromium through Playwright.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from core.store import InstructionRow, Store, text_key
from core.store.compare import ComparisonRow
from tests.browser import BROWSER_TESTS, CHROMIUM, CHROMIUM_ARGS, markdown_text, set_number, table_rows
from tests.helpers import build_finished_run, wait_until

sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = BROWSER_TESTS
JOB_TIMEOUT_S = 120
RUN = "20250101-000000-lora"
HELD_OUT = ["explain how to learn python", "give me a simple recipe to cook", "write a short poem about the sea"]
TRAINED = ["plan a trip for my money", "why is the math hard"]


def _lora_run(workspace: Path, base: Path) -> Path:
    """A finished LoRA run as the train stage leaves it (its adapter's B weights not zero, so it changes the base),
    trained on a mix whose manifest holds HELD_OUT out; all the instructions are in the workspace's store."""
    rows = [InstructionRow(text, 6, "tiny", "<p>", 1.0, 1.0, 32, 7, "job-r", 0) for text in [*TRAINED, *HELD_OUT]]
    Store.for_workspace(workspace).add_instruction_batch("job-r", 0, rows, limit=10, sampled=len(rows), dropped={},
                                                         new_tokens=0, seconds=0)
    mix = workspace / "mixes" / "tiny-mix"
    mix.mkdir(parents=True)
    manifest = {"ratio": 0.5, "general": {"instruction_ids": [text_key(t) for t in TRAINED], "holdout": 0.5,
                                          "held_out_ids": [text_key(t) for t in HELD_OUT]}}
    (mix / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    run = workspace / "runs" / RUN
    build_finished_run(run, base, mix, out=str(run), method="lora")
    (run / "status.json").write_text('{"state": "done", "kind": "train", "started_at": 1}')
    return run


def _past_comparison(workspace: Path) -> None:
    """A comparison stored before this session (its job folder gone): the list shows it, a click shows it whole."""
    Store.for_workspace(workspace).add_comparison(ComparisonRow(
        "compare-old", 0, "an old prompt about tides", "typed", None, "smollm2-135m-instruct", None, None,
        "the moon pulls the sea", 6, True, {"temperature": 0.2, "top_p": 1.0, "max_new_tokens": 32, "seed": 4,
                                           "prompt_format": "chat"}, 4, 0.5))


def _status(page) -> str:
    return markdown_text(page, "cmp-status")


def _prompt(page) -> str:
    return page.locator("#cmp-prompt textarea").input_value()


def _open_compare(page, url: str) -> None:
    page.goto(url)
    page.get_by_role("tab", name="7 · Compare").click()
    page.wait_for_selector("#cmp-start")
    wait_until(lambda: _status(page) not in ("", "Reading jobs…"), 30, "the first status line")


def _replies(page) -> list[tuple[str, str, str]]:
    """(model, settings line, reply) of each column shown."""
    cards = page.locator("#cmp-view .cmp-reply")
    return [(card.get_attribute("data-model"), card.locator(".cmp-settings").inner_text(),
             card.locator(".cmp-text").inner_text()) for card in cards.all() if card.locator(".cmp-text").count()]


def _two_replies(page, base: Path) -> list[tuple[str, str, str]]:
    wait_until(lambda: len(_replies(page)) == 2, 20, "both replies side by side")
    shown = _replies(page)
    assert [model for model, _, _ in shown] == [base.name, RUN]
    assert all("max 8 new tokens" in settings and "temperature 0.7" in settings for _, settings, _ in shown)
    assert "tuned from" in shown[1][1] and all(reply.strip() for _, _, reply in shown)
    assert "held-out general instruction" in page.inner_text("#cmp-view .cmp-prompt")
    return shown


def test_compare_a_drawn_held_out_instruction_in_the_browser(app_server, tiny_model_dir: Path):
    url, workspace = app_server
    _lora_run(workspace, tiny_model_dir)
    _past_comparison(workspace)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            _open_compare(page, url)
            assert _status(page).startswith("No comparison yet")

            # Nothing typed or drawn: a message, not a job.
            page.click("#cmp-start")
            wait_until(lambda: "Not started" in markdown_text(page, "cmp-message"), 15, "the validation message")
            assert "type a prompt" in markdown_text(page, "cmp-message")

            base = page.locator("#cmp-base input")
            base.fill(str(tiny_model_dir))
            base.press("Enter")
            # Held-out instructions come from a run's mix: without a run, drawing says so.
            page.locator("#cmp-source label").filter(has_text="held-out").click()
            wait_until(lambda: "pick at least one tuned run" in markdown_text(page, "cmp-message"), 15,
                       "the reason nothing was drawn")
            assert _prompt(page) == ""
            page.locator("#cmp-runs input").click()
            page.get_by_role("option", name=re.compile(RUN)).click()
            page.locator("body").click(position={"x": 5, "y": 5})  # close the option list
            wait_until(lambda: _prompt(page) in HELD_OUT, 15, "a held-out instruction in the prompt box")
            page.click("#cmp-draw")
            wait_until(lambda: page.locator("#cmp-pick-seed input").input_value() == "1", 15, "the next draw")
            assert _prompt(page) in HELD_OUT
            drawn = _prompt(page)
            set_number(page, "cmp-max-new-tokens", 8)
            page.click("#cmp-start")
            wait_until(lambda: re.match(r"(starting|queued|running|done) · compare-", _status(page)) is not None, 20,
                       "the comparison to start")
            job_id = re.search(r"compare-\w+", _status(page)).group(0)
            wait_until(lambda: _status(page).startswith(("done", "failed", "cancelled", "interrupted")),
                       JOB_TIMEOUT_S, "the comparison to finish")
            assert _status(page).startswith(f"done · {job_id} · 2/2 replies"), _status(page)
            replies = _two_replies(page, tiny_model_dir)
            assert drawn in page.inner_text("#cmp-view .cmp-prompt")
            wait_until(lambda: len(table_rows(page, "cmp-history")) == 3, 20, "the past comparisons")

            # A reload shows the same comparison, and the form it ran with.
            _open_compare(page, url)
            assert job_id in _status(page)
            assert _two_replies(page, tiny_model_dir) == replies
            wait_until(lambda: _prompt(page) == drawn, 15, "the drawn prompt back in its box")
            assert page.locator("#cmp-source input[value='held-out']").is_checked()
            assert page.locator("#cmp-max-new-tokens input").input_value() == "8"
            assert "forgetless compare --models" in page.inner_text("#cmp-command")

            # The past comparisons filter by model and by prompt; a click on one shows it whole.
            def filtered(elem_id: str, text: str, rows: int) -> None:
                box = page.locator(f"#{elem_id}").locator("textarea, input").first
                box.fill(text)
                box.press("Enter")
                wait_until(lambda: len(table_rows(page, "cmp-history")) == rows, 15, f"the list filtered by {text!r}")

            filtered("cmp-filter-model", RUN, 1)
            filtered("cmp-filter-model", "", 3)
            filtered("cmp-filter-prompt", "OLD PROMPT", 1)
            page.locator("#cmp-history [data-testid='cell-0-4']").click()
            wait_until(lambda: "an old prompt about tides" in page.inner_text("#cmp-view .cmp-prompt"), 15,
                       "the old comparison above")
            assert [model for model, _, _ in _replies(page)] == ["smollm2-135m-instruct"]
            assert "temperature 0.2" in _replies(page)[0][1] and _replies(page)[0][2] == "the moon pulls the sea"
        finally:
            browser.close()
