"""The app's pure helpers: status lines, paging, table rows, the histogram and the CLI command."""

from __future__ import annotations

import re
import shlex
from datetime import UTC, datetime
from pathlib import Path

import pytest

from core.cli.flags import cli_command
from core.cli.main import build_parser
from core.config import to_yaml
from core.errors import ForgetlessError
from core.jobs import JobInfo, new_job_id
from core.reconstruct.reconstruction import ReconstructConfig
from core.store import InstructionRow, Store
from ui.views.formatting import PAGE_SIZE, clamp_page, format_duration, page_count, page_label
from ui.views.jobs import LazyStore, StageJobs, job_status_line
from ui.views.reconstruct import (
    TABLE_HEADERS,
    instruction_rows,
    length_histogram,
    read_instruction_view,
    reconstruct_config,
    reconstruct_form,
)


def job(state: str, progress: dict | None = None, error: str | None = None,
        summary: dict | None = None) -> JobInfo:
    return JobInfo("reconstruct-x", "reconstruct", state, Path("/nowhere"), progress or {}, error, summary,
                   1.0)


def test_new_job_ids_are_unique_and_sortable_by_time():
    first, second = new_job_id("reconstruct", now=0), new_job_id("reconstruct", now=0)
    assert first != second
    assert re.fullmatch(r"reconstruct-\d{8}-\d{6}-[0-9a-f]{6}", first)
    assert new_job_id("reconstruct", now=100_000) > new_job_id("reconstruct", now=0)


@pytest.mark.parametrize(("seconds", "text"), [
    (None, "—"), (-1, "—"), (float("inf"), "—"), (0, "0:00"), (59.6, "1:00"), (75, "1:15"), (3725, "1:02:05"),
])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_status_line_without_a_job_says_what_to_do():
    assert "Start" in job_status_line(None)


def test_status_line_while_loading_and_running():
    assert "starting…" in job_status_line(job("starting"))
    assert "starting…" in job_status_line(job("running"))  # no progress line written yet
    assert "loading model…" in job_status_line(job("running", {"phase": "loading model", "total": 9}))
    line = job_status_line(job("running", {"stored": 12, "total": 100, "tokens_per_s": 341.6, "eta_s": 75,
                                           "elapsed_s": 9}))
    assert line.startswith("running · reconstruct-x")
    for part in ("12/100 stored", "342 tokens/s", "ETA 1:15", "elapsed 0:09"):
        assert part in line


def test_status_line_running_with_unknown_eta():
    line = job_status_line(job("running", {"stored": 0, "total": 3, "tokens_per_s": 5.0, "eta_s": None}))
    assert "ETA —" in line


def test_status_line_when_done_prefers_the_final_summary():
    line = job_status_line(job("done", {"stored": 2, "total": 3, "tokens_per_s": 1.0},
                               summary={"stored": 3, "target": 3, "tokens_per_s": 47.4, "seconds": 4.9}))
    assert line.startswith("done · ")
    for part in ("3/3 stored", "47 tokens/s", "took 0:05"):
        assert part in line
    judged = job_status_line(job("done", {"done": 8, "total": 8, "elapsed_s": 4.0},
                                 summary={"tokens_read": 12345, "seconds": 4.0}), unit="done", noun="scores")
    for part in ("8/8 scores", "2.0 scores/s", "12,345 tokens read", "took 0:04"):
        assert part in judged
    assert "tokens read" not in line


def test_status_line_for_failures_and_stops():
    failed = job_status_line(job("failed", error="model file not found: x.gguf"))
    assert failed.startswith("failed") and "model file not found: x.gguf" in failed
    assert "log.txt" in job_status_line(job("failed"))
    cancelled = job_status_line(job("cancelled", {"stored": 4, "total": 10}))
    assert cancelled.startswith("cancelled") and "4/10 stored" in cancelled
    assert "without finishing" in job_status_line(job("interrupted"))


def test_paging_is_clamped_to_existing_pages():
    assert page_count(0) == 1 and page_count(PAGE_SIZE) == 1 and page_count(PAGE_SIZE + 1) == 2
    assert clamp_page(None, 100) == 1
    assert clamp_page(0, 100) == 1
    assert clamp_page(3.0, 100, page_size=20) == 3
    assert clamp_page(99, 100, page_size=20) == 5


def test_page_label_mentions_count_search_and_pages():
    assert page_label(1, 1) == "1 instruction · page 1 of 1"
    assert page_label(2, 45, "  poem ", page_size=20) == "45 instructions matching “poem” · page 2 of 3"


def test_instruction_rows_follow_the_headers():
    created = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    record = {"text": "write a poem", "n_tokens": 4, "model": "m", "temperature": 0.7000001, "seed": 9,
              "job_id": "j", "created_at": created}
    (row,) = instruction_rows([record])
    assert len(row) == len(TABLE_HEADERS)
    assert row[:6] == ["write a poem", 4, "m", 0.7, 9, "j"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", row[6])
    assert instruction_rows([{"text": "t"}])[0][1:] == ["", "", "", "", "", ""]


def test_length_histogram_counts_every_length():
    figure = length_histogram([5, 5, 8, 12])
    (trace,) = figure.data
    assert trace.type == "histogram" and list(trace.x) == [5, 5, 8, 12]
    assert trace.xbins.size == 1
    assert "4 instructions" in figure.layout.title.text and "median 8" in figure.layout.title.text
    assert figure.layout.xaxis.title.text == "tokens"


def test_length_histogram_bins_and_ticks_are_whole_tokens():
    figure = length_histogram([6, 7, 9])
    assert (figure.data[0].xbins.start, figure.data[0].xbins.end, figure.data[0].xbins.size) == (5.5, 9.5, 1)
    assert figure.layout.xaxis.dtick == 1
    wide = length_histogram(list(range(1, 301)))
    assert wide.data[0].xbins.size == 8 and wide.layout.xaxis.dtick == 50


def test_length_histogram_of_an_empty_store_is_labelled():
    figure = length_histogram([])
    assert not figure.data and "no instructions yet" in figure.layout.title.text


def test_cli_command_round_trips_through_the_real_parser(tmp_path):
    config = ReconstructConfig(model="my models/tiny", n=3, batch_size=16, max_new_tokens=24,
                               stop=("<a>", "<b>"), job_id="reconstruct-1", min_chars=5)
    command = cli_command("reconstruct", config, tmp_path)
    words = shlex.split(command)
    assert words[:2] == ["forgetless", "reconstruct"]
    assert "--min-chars" not in words  # no such flag: the command must still parse
    args = build_parser().parse_args(words[1:])
    assert (args.model, args.n, args.batch_size, args.max_new_tokens, args.job_id) == (
        "my models/tiny", 3, 16, 24, "reconstruct-1")
    assert args.stop == ["<a>", "<b>"] and args.workspace == tmp_path and args.prefix is None


def test_read_instruction_view_pages_and_searches_a_real_store(tmp_path):
    store = Store.for_workspace(tmp_path)
    texts = [f"write poem number {i}" if i % 2 else f"explain topic {i} please" for i in range(PAGE_SIZE + 5)]
    rows = [InstructionRow(text, 3 + i, "m", "p", 1.0, 1.0, 24, 0, "job-a", 0)
            for i, text in enumerate(texts)]
    store.add_instruction_batch("job-a", 0, rows, limit=len(rows), sampled=len(rows), dropped={},
                                new_tokens=0, seconds=0.1)
    first = read_instruction_view(store, "", None)
    assert (first.page, first.total, len(first.rows)) == (1, PAGE_SIZE + 5, PAGE_SIZE)
    assert sorted(first.lengths) == [3 + i for i in range(PAGE_SIZE + 5)]
    last = read_instruction_view(store, "", 99)
    assert (last.page, len(last.rows)) == (2, 5)
    poems = read_instruction_view(store, "POEM", 1)
    assert poems.total == (PAGE_SIZE + 5) // 2 and all("poem" in row[0] for row in poems.rows)
    assert "matching “POEM”" in poems.label


def test_reconstruct_form_becomes_a_config_by_field_name_and_comes_back():
    values = {"model": " my models/tiny ", "n": 3.0, "batch_size": 16, "temperature": 0.7, "top_p": 0.9,
              "max_new_tokens": 24.0, "seed": 5, "prefix": "  ", "stop": "<a>\n\n <b>"}
    config = reconstruct_config(values)
    assert (config.model, config.n, config.max_new_tokens, config.prefix) == ("my models/tiny", 3, 24, None)
    assert config.stop == ("<a>", " <b>")  # one per line, as typed; blank lines dropped
    assert isinstance(config.n, int) and re.fullmatch(r"reconstruct-\d{8}-\d{6}-[0-9a-f]{6}", config.job_id)
    assert reconstruct_config({**values, "stop": ""}).stop is None  # empty: the template's own markers
    restored = reconstruct_form(config)
    assert restored == {"model": "my models/tiny", "n": 3, "batch_size": 16, "temperature": 0.7, "top_p": 0.9,
                        "max_new_tokens": 24, "seed": 5, "prefix": "", "stop": "<a>\n <b>",
                        "from_corpus": "", "corpus_rows": 0, "passage_max_words": 120, "steer_examples": 3,
                        "steer_keep_all": False, "mode": "free"}
    assert reconstruct_config(restored).stop == config.stop
    for changes, fragment in [({"n": 0}, "n must be at least 1"), ({"n": 2.5}, "whole number"),
                              ({"n": None}, "is empty"), ({"model": " "}, "model must be given")]:
        with pytest.raises(ForgetlessError, match=fragment):
            reconstruct_config({**values, **changes})


def test_reconstruct_tab_follows_its_newest_job_through_the_shared_job_controls(tmp_path):
    gr = pytest.importorskip("gradio")
    from ui.job_controls import job_controls
    from ui.reconstruct_tab import IDLE, refresh

    with gr.Blocks():
        controls = job_controls("rec", StageJobs(tmp_path, "reconstruct", ReconstructConfig), "stored", IDLE,
                                unit="stored", follow_rows=True)
    store = LazyStore(tmp_path)
    status, start, cancel, command, *views, seen = refresh(store, controls, "", 1, "")
    assert status == IDLE and seen == "no-job" and command == gr.skip()
    assert (start["interactive"], cancel["interactive"]) == (True, False)

    folder = tmp_path / "jobs" / "reconstruct-x"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(to_yaml(ReconstructConfig(model="tiny", n=3, job_id="reconstruct-x")))
    (folder / "status.json").write_text('{"state": "cancelled", "kind": "reconstruct", "started_at": 1.0}')
    (folder / "progress.jsonl").write_text('{"stored": 1, "total": 3}\n')
    status, start, cancel, command, table, page, label, histogram, coverage, seen = refresh(store, controls, "", 1,
                                                                                          seen)
    assert status == "cancelled · reconstruct-x · 1/3 stored · stopped on request"
    assert seen == "reconstruct-x|cancelled|1"
    assert "--job-id reconstruct-x" in command["value"] and command["visible"]
    assert table["headers"] == TABLE_HEADERS and page == 1 and histogram.layout.title.text
    assert "profile the instructions" in coverage.layout.title.text and not coverage.data  # no profile yet
    assert refresh(store, controls, "", 1, seen)[4:9] == (gr.skip(),) * 5  # nothing moved: no redraw
    with (folder / "progress.jsonl").open("a") as progress:  # a steered batch arrived: the chart follows it
        progress.write('{"stored": 2, "total": 3, "clusters": [{"cluster": 0, "label": "code", "profiled": 5, '
                       '"added": 0}, {"cluster": 1, "label": null, "profiled": 1, "added": 2}]}\n')
    *_, coverage, seen = refresh(store, controls, "", 1, seen)
    assert seen == "reconstruct-x|cancelled|2"
    assert [list(bar.y) for bar in coverage.data] == [[5, 1], [0, 2]]  # profiled, then this job's rows, stacked
    assert "job reconstruct-x: +2 rows" in coverage.layout.title.text and "KL" in coverage.layout.title.text
