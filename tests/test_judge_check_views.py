"""The Screen tab's judge-check panel without a browser: the form, the table, the chart, the chance flags."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from core.errors import ForgetlessError
from core.settings import form_values
from core.store import Store
from core.store.judge_checks import CheckResult
from ui.views.judge_check import check_figure, check_note, check_table, judge_check_config, read_judge_check_view

FORM = ("judges", "methods", "kinds", "pairs_per_kind", "source")


def result(judge, kind, accuracy, pairs=40, method="probs"):
    return CheckResult(judge, method, kind, pairs, round(accuracy * pairs), 0, accuracy,
                       math.sqrt(accuracy * (1 - accuracy) / pairs))


RESULTS = [result("/models/judge-a", "all", 0.9, 80), result("/models/judge-a", "off_topic", 0.95),
           result("/models/judge-a", "truncated", 0.85), result("relevance:all-minilm-l6-v2", "all", 0.55, 80),
           result("relevance:all-minilm-l6-v2", "off_topic", 1.0), result("relevance:all-minilm-l6-v2", "truncated",
                                                                            0.1), result("consensus", "all", 0.8, 80),
           result("consensus", "off_topic", 0.9), result("consensus", "truncated", 0.7)]


@pytest.fixture
def frame(tmp_path):
    store = Store.for_workspace(tmp_path)
    store.replace_check_results("check-7", RESULTS)
    return store, store.judge_check_results()


def test_the_form_makes_a_check_and_shows_it_back():
    config = judge_check_config(dict(zip(FORM, (["a", "fluency:a"], ["probs", "generate"], ["truncated"], 12.0,
                                                "arenahard"), strict=True)))
    assert (config.judges, config.methods, config.kinds, config.pairs_per_kind, config.source) == (
        ("a", "fluency:a"), ("probs", "generate"), ("truncated",), 12, "arenahard")
    assert config.job_id.startswith("judge-check-")
    assert form_values(config, FORM)["methods"] == ["probs", "generate"]
    with pytest.raises(ForgetlessError, match="needs a model after the colon"):
        judge_check_config({"judges": ["relevance:"]})
    with pytest.raises(ForgetlessError, match="at least one kind"):
        judge_check_config({"judges": ["a"], "kinds": []})


def test_table_rows_per_judge_consensus_last_with_chance_marks(frame):
    _, results = frame
    headers, rows = check_table(results)
    assert headers == ["judge/method", "all (80 pairs)", "off_topic (40 pairs)", "truncated (40 pairs)"]
    assert [row[0] for row in rows] == ["judge-a/probs", "relevance:all-minilm-l6-v2/probs", "consensus/probs"]
    assert rows[0][1:] == ["0.90 ± 0.03", "0.95 ± 0.03", "0.85 ± 0.06"]
    assert rows[1][1].endswith("⚠") and rows[1][3].endswith("⚠") and not rows[1][2].endswith("⚠")
    assert check_table(pd.DataFrame(columns=results.columns)) == (["judge/method"], [])


def test_chart_has_a_bar_group_per_judge_and_the_chance_line(frame):
    _, results = frame
    figure = check_figure(results)
    assert [trace.name for trace in figure.data] == ["judge-a/probs", "relevance:all-minilm-l6-v2/probs",
                                                     "consensus/probs"]
    assert list(figure.data[0].x) == ["all", "off_topic", "truncated"]
    assert list(figure.data[1].y) == pytest.approx([0.55, 1.0, 0.1])
    assert any(shape.y0 == 0.5 for shape in figure.layout.shapes) and "check-7" in figure.layout.title.text
    assert "none yet" in check_figure(pd.DataFrame(columns=results.columns)).layout.title.text


def test_note_names_the_check_and_flags_judges_not_the_consensus(frame):
    store, results = frame
    note = check_note(results)
    assert "`check-7`" in note and "relevance:all-minilm-l6-v2/probs" in note and "judge-a" not in note
    view = read_judge_check_view(store)
    assert view.note == note and len(view.rows) == 3
    assert check_note(pd.DataFrame(columns=results.columns)) == "No judge check yet."
