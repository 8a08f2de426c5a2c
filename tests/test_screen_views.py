"""The Screen tab's pure helpers: job configs from form values, the side-by-side table, the figures, and the
job status line and CLI command of the stages whose progress counts "done"."""

from __future__ import annotations

import shlex
from pathlib import Path

import pandas as pd
import pytest

from core.cli.flags import cli_command
from core.cli.main import build_parser
from core.errors import ForgetlessError
from core.jobs import JobInfo
from core.profile.profiling import ProfileConfig
from core.screen.judge import JudgeConfig
from core.screen.respond import RespondConfig
from core.settings import form_values
from tests.helpers import build_explore_store
from ui.views.jobs import StageJobs, job_marker, job_status_line
from ui.views.screen import (
    DISPUTED_HEADERS,
    agreement_figure,
    consensus_rows,
    disputed_rows,
    escape_markdown,
    judge_config,
    read_screen_views,
    respond_config,
    score_heatmap,
    short_model,
    short_names,
    shorten,
)


def job(state: str, progress: dict | None = None, summary: dict | None = None, kind: str = "respond") -> JobInfo:
    return JobInfo(f"{kind}-x", kind, state, Path("/nowhere"), progress or {}, None, summary, 1.0)


# -- forms ------------------------------------------------------------------------------------------------
RESPOND = ("models", "k", "temperature", "top_p", "max_new_tokens", "batch_size", "seed")


def respond_values(*values):
    return dict(zip(RESPOND, values, strict=True))


def test_respond_config_from_the_form_and_back():
    config = respond_config(respond_values(["smollm2-135m-instruct", " my/model "], 3, 0.5, 0.8, 64.0, 8, 7))
    assert config.models == ("smollm2-135m-instruct", "my/model") and config.k == 3
    assert (config.temperature, config.top_p, config.max_new_tokens, config.batch_size, config.seed) == (
        0.5, 0.8, 64, 8, 7)
    assert isinstance(config.max_new_tokens, int)  # gr.Number's float, as the field's type
    assert config.job_id.startswith("respond-")
    shown = form_values(config, RESPOND)
    assert shown["models"] == ["smollm2-135m-instruct", "my/model"]  # a multiselect's list
    assert respond_config(shown).models == config.models
    assert respond_config(respond_values("a, b", 1, 0.7, 0.9, 16, 4, 0)).models == ("a", "b")  # a typed comma list
    assert respond_config({"models": ["a"]}).k == RespondConfig().k  # a setting the form lacks keeps its default


@pytest.mark.parametrize(("form", "message"), [
    (([], 2, 0.7, 0.9, 64, 8, 0), "at least one model"),
    ((["a"], None, 0.7, 0.9, 64, 8, 0), r"Responses per model \(K\) is empty"),
    ((["a"], 0, 0.7, 0.9, 64, 8, 0), "k must be"),
    ((["a", "a"], 1, 0.7, 0.9, 64, 8, 0), "listed twice"),
    ((["a"], 1, 0.7, 0.9, None, 8, 0), "Max new tokens is empty"),
    ((["a"], 1.5, 0.7, 0.9, 64, 8, 0), "whole number"),
])
def test_respond_form_errors_are_one_line(form, message):
    with pytest.raises(ForgetlessError, match=message):
        respond_config(respond_values(*form))


def test_judge_config_from_the_form_and_back():
    names = ("judges", "method", "weighting", "exclude_self", "retry_failed", "batch_size")
    config = judge_config(dict(zip(names, (["j1", "fluency:j2"], "generate", "checked", True, True, 4), strict=True)))
    assert (config.judges, config.method, config.weighting, config.exclude_self, config.retry_failed,
            config.batch_size) == (("j1", "fluency:j2"), "generate", "checked", True, True, 4)
    assert config.job_id.startswith("judge-")
    assert form_values(config, names) == {"judges": ["j1", "fluency:j2"], "method": "generate",
                                          "weighting": "checked", "exclude_self": True, "retry_failed": True,
                                          "batch_size": 4}
    with pytest.raises(ForgetlessError, match="at least one judge"):
        judge_config({"judges": [], "method": "probs"})
    with pytest.raises(ForgetlessError, match="method"):
        judge_config({"judges": ["j1"], "method": "vote"})
    with pytest.raises(KeyError):  # a widget keyed by a name the config does not declare
        judge_config({"judge": ["j1"]})


# -- status lines and CLI commands of the later stages ----------------------------------------------------------
def test_done_unit_status_lines():
    assert job_status_line(None, unit="done", idle="No response job yet") == "No response job yet"
    assert "loading model…" in job_status_line(job("running", {"phase": "loading model"}), unit="done")
    running = job_status_line(job("running", {"done": 12, "total": 40, "tokens_per_s": 250.4, "eta_s": 30,
                                              "elapsed_s": 6}), unit="done", noun="responses")
    for part in ("running · respond-x", "12/40 responses", "250 tokens/s", "ETA 0:30", "elapsed 0:06"):
        assert part in running
    judging = job_status_line(job("running", {"done": 30, "total": 90, "tokens_per_s": 0.0, "eta_s": 20,
                                              "elapsed_s": 10, "stage": "difficulty"}), unit="done", noun="scores")
    assert "3.0 scores/s" in judging and "tokens/s" not in judging and "stage difficulty" in judging
    done = job_status_line(job("done", {"done": 40, "total": 40, "elapsed_s": 9},
                               {"responses": 40, "tokens_per_s": 99.6, "seconds": 9.2}), unit="done", noun="responses")
    assert done.startswith("done · respond-x · 40/40 responses") and "100 tokens/s" in done and "took 0:09" in done
    nothing = job_status_line(job("done", {"phase": "loading model"}, {"pending_before": 0, "seconds": 0.4}),
                              unit="done")
    assert "nothing was pending" in nothing
    assert "5/9 scores" in job_status_line(job("cancelled", {"done": 5, "total": 9}), unit="done", noun="scores")


def test_job_marker_changes_with_job_and_state():
    assert job_marker(None) == "no-job"
    assert job_marker(job("running", {"done": 1})) != job_marker(job("done", {"done": 1}))
    assert job_marker(job("running", {"done": 1})) == job_marker(job("running", {"done": 2}))
    assert job_marker(job("running", {"done": 1}), "done") != job_marker(job("running", {"done": 2}), "done")


@pytest.mark.parametrize(("kind", "config"), [
    ("respond", RespondConfig(models=("smollm2-135m-instruct", "my dir/m"), k=3, job_id="respond-1")),
    ("judge", JudgeConfig(judges=("a", "b"), method="generate", exclude_self=True, job_id="judge-1")),
    ("profile", ProfileConfig(difficulty_judge="none", clusters=4, projection="tsne", job_id="profile-1")),
])
def test_cli_commands_of_the_later_stages_parse_back(kind, config, tmp_path):
    words = shlex.split(cli_command(kind, config, tmp_path))
    args = build_parser().parse_args(words[1:])
    assert args.stage == kind and args.job_id == config.job_id and args.workspace == tmp_path
    if kind == "respond":
        assert args.models == "smollm2-135m-instruct,my dir/m" and args.k == 3
    elif kind == "judge":
        assert args.judges == "a,b" and args.method == "generate" and args.exclude_self and not args.retry_failed
    else:  # switched off (None, default a model) is spelled "none"; the CLI turns it back into None
        assert args.difficulty_judge == "none" and args.clusters == "4" and args.projection == "tsne"


def test_stage_jobs_start_refuses_a_second_running_job(tmp_path, monkeypatch):
    jobs = StageJobs(tmp_path, "respond", RespondConfig)
    assert jobs.newest() is None and jobs.config(None) is None and jobs.cancel() == "No job is running."
    running = job("running")
    monkeypatch.setattr(jobs, "newest", lambda: running)
    with pytest.raises(ForgetlessError, match="still running"):
        jobs.start(RespondConfig(job_id="respond-2"))


# -- cells and tables -----------------------------------------------------------------------------------------
def test_model_specs_are_shown_by_their_last_part():
    assert short_model("/tmp/models/tiny/") == "tiny"
    assert short_model("smollm2-135m-instruct") == "smollm2-135m-instruct"
    assert short_model("completeness:/tmp/models/tiny") == "completeness:tiny"  # a signal keeps its name
    assert short_names(["/a/tiny", "/b/other"]) == ["tiny", "other"]
    assert short_names(["/a/tiny", "/b/tiny"]) == ["/a/tiny", "/b/tiny"]  # shortening would merge them


def test_shorten_and_escape():
    assert shorten("  a\n\n b  ") == "a b"
    assert shorten("x" * 50, 10) == "x" * 9 + "…"
    assert shorten(None) == "" and shorten(float("nan")) == ""
    assert escape_markdown("# Title *bold* | x") == r"\# Title \*bold\* \| x"


def _long_table() -> pd.DataFrame:
    rows = [  # instruction, response, model, sample, text, mean, std, best, judge, score
            ("i1", "Say hi", "r1", "m-a", 0, "hello", 4.5, 0.5, True, "j1", 5.0),
        ("i1", "Say hi", "r1", "m-a", 0, "hello", 4.5, 0.5, True, "j2", 4.0),
        ("i1", "Say hi", "r2", "m-b", 0, "# hey", 2.0, 0.0, False, "j1", 2.0),
        ("i1", "Say hi", "r2", "m-b", 0, "# hey", 2.0, 0.0, False, "j2", 2.0),
        ("i2", "Count", "r3", "m-a", 0, "1 2 3", None, None, False, None, None),
    ]
    columns = ["instruction_id", "instruction", "response_id", "model", "sample_index", "response", "mean", "std",
               "is_best", "judge", "score"]
    return pd.DataFrame(rows, columns=columns).assign(method="probs", n_judges=2)


def test_consensus_rows_put_responses_side_by_side():
    table = consensus_rows(_long_table())
    assert table.headers == ["instruction", "m-a #1", "m-b #1"]
    assert len(table.rows) == 2
    kept, other = table.rows[0][1], table.rows[0][2]
    assert kept.startswith("★ kept · mean **4.50** ± 0.50") and "j1 5.0 · j2 4.0" in kept and kept.endswith("hello")
    assert other.startswith("mean **2.00**") and other.endswith(r"\# hey")  # model text cannot make a heading
    assert table.rows[1][1].startswith("not judged yet") and table.rows[1][2] == ""  # i2 has no m-b response
    assert table.column_widths == ["22%", "39.00%", "39.00%"]
    empty = consensus_rows(_long_table().iloc[0:0])
    assert empty.headers == ["instruction"] and empty.rows == [] and empty.column_widths == ["100%"]


def test_disputed_rows_follow_the_headers():
    frame = pd.DataFrame([{"instruction": "Explain", "model": "m", "response": "because", "mean": 3.0,
                           "std": 1.23456, "min": 2.0, "max": 4.0, "n_judges": 2}])
    (row,) = disputed_rows(frame)
    assert len(row) == len(DISPUTED_HEADERS) and row == ["Explain", "m", "because", 3.0, 1.23, 2.0, 4.0, 2]
    assert disputed_rows(frame.assign(std=0.0)) == []  # judges that agree exactly are not a dispute


# -- figures -------------------------------------------------------------------------------------------------
def test_score_heatmap():
    matrix = pd.DataFrame({"response_id": ["aaaaaaaa", "bbbbbbbb"], "model": ["m-a", "m-b"], "mean": [4.5, 2.0],
                           "j1": [5.0, 2.0], "j2": [4.0, None]})
    (trace,) = score_heatmap(matrix).data
    assert trace.type == "heatmap" and list(trace.x) == ["j1", "j2"] and len(trace.y) == 2
    assert (trace.zmin, trace.zmax) == (1, 5) and trace.y[0].startswith("m-a · aaaaaa · 4.50")
    empty = score_heatmap(pd.DataFrame({"response_id": [], "model": [], "mean": []}))
    assert not empty.data and "no judged responses" in empty.layout.title.text


def test_agreement_figure_has_spearman_and_kendall():
    pairs = pd.DataFrame([("j1", "j2", "probs", 9, 0.5, 0.4), ("j1", "j3", "probs", 9, -0.2, -0.1),
                          ("j2", "j3", "probs", 9, float("nan"), float("nan"))],
                         columns=["judge_a", "judge_b", "method", "n", "spearman", "kendall"])
    figure = agreement_figure(pairs)
    spearman, kendall = figure.data
    assert spearman.type == kendall.type == "heatmap"
    assert list(spearman.x) == ["j1", "j2", "j3"] and spearman.z[0][1] == 0.5 and kendall.z[0][1] == 0.4
    assert spearman.z[0][0] == 1.0 and (spearman.zmin, spearman.zmax) == (-1, 1)
    assert [a.text for a in figure.layout.annotations] == ["Spearman ρ", "Kendall τ"]
    assert "probs" in figure.layout.title.text
    empty = agreement_figure(pairs.iloc[0:0])
    assert not empty.data and "two judges" in empty.layout.title.text


def test_read_screen_views_on_a_real_store(tmp_path):
    store = build_explore_store(tmp_path / "forgetless.duckdb")
    views = read_screen_views(store, 99)
    assert views.page == 1 and views.page_label == "5 instructions with responses · page 1 of 1"
    assert views.consensus.headers == ["instruction", "model-a #1", "model-b #1"] and len(views.consensus.rows) == 5
    assert [row[4] for row in views.disputed] == [1.0, 0.5, 0.25, 0.1]  # highest std first; std 0 is no dispute
    assert len(views.heatmap.data) == 1 and len(views.agreement.data) == 2
