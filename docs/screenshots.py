"""Refresh the README's Quick start screenshots by walking the Quick start in the app, for real.

    python docs/screenshots.py --workspace WS      # WS: an empty folder, or one where this ran before

Opens the app on WS in Debian's chromium and, like a user would: starts the quickstart preset in the Pipeline
tab and waits for it (skipped when a pipeline already finished there), has the base and the tuned run answer a
held-out instruction in the Compare tab, and presses "Export selected run" in the Train tab. Writes
assets/pipeline.png, assets/compare.png and assets/export.png (the packaged SmolLM2; minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import CHROMIUM, CHROMIUM_ARGS, markdown_text, serve_app, set_number, wait_until  # noqa: E402

FINISHED = ("done", "failed", "cancelled", "interrupted")


def shoot(page, elem_ids: list[str], path: Path) -> None:
    """One picture spanning the given elements (top of the first to bottom of the last)."""
    scrolled = page.evaluate("window.scrollY")  # boxes are relative to the viewport, the clip to the page
    boxes = [page.locator(f"#{elem_id}").bounding_box() for elem_id in elem_ids]
    top, bottom = min(box["y"] for box in boxes) + scrolled, max(box["y"] + box["height"] for box in boxes) + scrolled
    page.screenshot(path=str(path), clip={"x": 0, "y": max(0, top - 16), "width": page.viewport_size["width"],
                                          "height": bottom - top + 32}, full_page=True)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, required=True)
    workspace = parser.parse_args().workspace.resolve()
    from playwright import sync_api

    with tempfile.TemporaryDirectory() as scratch, serve_app(workspace, Path(scratch)) as url, \
            sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            shoot_views(browser.new_page(viewport={"width": 1400, "height": 1000}), url)
        finally:
            browser.close()


def shoot_views(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("#pipe-stages")
    status = lambda: markdown_text(page, "pipe-status")  # noqa: E731
    wait_until(lambda: status() not in ("", "Reading jobs…"), 60, "the pipeline's status")
    if not status().startswith("done"):
        page.click("#pipe-start")
        wait_until(lambda: status().startswith(("running", "queued", "starting")), 60, "the pipeline to start")
        wait_until(lambda: status().startswith(FINISHED), 3600, "the pipeline to finish")
    wait_until(lambda: "arc_easy" in markdown_text(page, "pipe-results"), 60, "the evaluation table")
    shoot(page, ["pipe-preset", "pipe-results"], ROOT / "assets" / "pipeline.png")

    page.get_by_role("tab", name="7 · Compare").click()
    page.wait_for_selector("#cmp-start")
    page.click("#cmp-refresh-runs")  # the run list as of now: the pipeline's run is newer than the page
    page.locator("#cmp-runs input").click()
    page.get_by_role("option", name=re.compile("quickstart")).first.click()
    page.locator("body").click(position={"x": 5, "y": 5})  # close the option list
    page.locator("#cmp-source label").filter(has_text="held-out").click()
    wait_until(lambda: bool(page.locator("#cmp-prompt textarea").input_value()), 30, "a held-out instruction")
    set_number(page, "cmp-max-new-tokens", 96)
    page.click("#cmp-start")
    wait_until(lambda: markdown_text(page, "cmp-status").startswith(FINISHED), 1800, "the comparison")
    wait_until(lambda: page.locator("#cmp-view .cmp-reply .cmp-text").count() >= 2, 60, "the replies")
    shoot(page, ["cmp-base", "cmp-view"], ROOT / "assets" / "compare.png")

    page.get_by_role("tab", name="5 · Train").click()
    wait_until(lambda: bool(page.locator("#train-run input").input_value()), 60, "the newest run")
    page.click("#train-export")
    ended = re.compile(r"(Exported|Export .* failed|Not exported)")
    wait_until(lambda: ended.match(markdown_text(page, "train-export-line")) is not None, 600, "the export")
    print(markdown_text(page, "train-export-line"))
    page.locator("#train-export-line").scroll_into_view_if_needed()
    shoot(page, ["train-runs", "train-export-line"], ROOT / "assets" / "export.png")

if __name__ == "__main__":
    main()
