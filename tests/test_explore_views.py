"""The Explore tab's pure helpers: filters from widget values and back, lines, rows and the Plotly charts."""

from __future__ import annotations

from datetime import datetime

import pandas as pd
import pytest

from core.errors import ForgetlessError
from core.store import ExploreFilters
from tests.helpers import build_explore_store
from ui.views.explore import (
    SELECTION_HEADERS,
    STD_LIMIT,
    TABLE_HEADERS,
    category_bars,
    clamp_page,
    cluster_choices,
    count_line,
    describe_filters,
    difficulty_scatter,
    filters_from_form,
    form_from_filters,
    judge_histogram_figure,
    page_label,
    profile_config,
    profile_form,
    read_clusters,
    selection_rows,
    semantic_map_figure,
    table_rows,
)

# The filter form untouched, by field name: sliders at their ends, empty boxes.
NEUTRAL = {"consensus_min": 1.0, "consensus_max": 5.0, "max_std": STD_LIMIT, "difficulty_min": 1.0,
           "difficulty_max": 5.0, "clusters": [], "categories": [], "length_min": 0, "length_max": 0,
           "hide_duplicates": False, "search": "", "where": ""}


def form(**changes):
    return {**NEUTRAL, **changes}


# -- filters <-> widgets -----------------------------------------------------------------------------------
def test_an_untouched_form_filters_nothing():
    # Sliders at their ends set no bound, so unjudged and unprofiled rows (NULL scores) still pass.
    assert filters_from_form(NEUTRAL).is_empty()
    assert filters_from_form({**dict.fromkeys(NEUTRAL), "hide_duplicates": False}).is_empty()  # emptied widgets
    assert filters_from_form({}).is_empty()


def test_form_values_become_filters():
    filters = filters_from_form(form(consensus_min=3.5, max_std=0.4, difficulty_max=4.0, clusters=[2, 0],
                                     categories=["math"], length_min=5.0, hide_duplicates=True,
                                     search=" rivers ", where="margin > 0.5"))
    assert filters == ExploreFilters(consensus_min=3.5, max_std=0.4, difficulty_max=4.0, clusters=(0, 2),
                                     categories=("math",), length_min=5, hide_duplicates=True, search="rivers",
                                     where="margin > 0.5")
    assert isinstance(filters.length_min, int)


@pytest.mark.parametrize("changes", [
    {"consensus_min": 4.0, "consensus_max": 3.0},
    {"where": "1=1; DROP TABLE instructions"},
    {"where": "instruction_id IN (SELECT * FROM read_csv('/etc/passwd'))"},
    {"length_min": -3},
    {"length_min": 2.5},
])
def test_bad_form_values_raise_one_line_errors(changes):
    with pytest.raises(ForgetlessError) as caught:
        filters_from_form(form(**changes))
    assert "\n" not in str(caught.value)


def test_saved_filters_round_trip_through_the_form():
    saved = ExploreFilters(consensus_min=3, difficulty_min=2, clusters=[1], categories=["coding", "math"],
                           length_max=40, hide_duplicates=True, search="python", where="n_responses > 1")
    assert filters_from_form(form_from_filters(saved)) == saved
    assert form_from_filters(ExploreFilters()) == NEUTRAL


def test_describe_filters_and_count_line():
    assert describe_filters(ExploreFilters()) == "everything"
    text = describe_filters(ExploreFilters(consensus_min=3, consensus_max=4.5, length_min=5, max_std=0.5,
                                           categories=["coding"], hide_duplicates=True, search="py",
                                           where="margin > 1"))
    assert text == ("3 ≤ consensus ≤ 4.5 · tokens ≥ 5 · std ≤ 0.5 · categories coding · no near-duplicates · "
                    "search “py” · WHERE margin > 1")
    assert count_line(1, ExploreFilters()) == "**1** instruction match · everything"
    assert "judge the responses" in count_line(0, ExploreFilters())
    assert count_line(0, ExploreFilters(search="x")) == "**0** instructions match · search “x”"
    assert count_line(12345, ExploreFilters(clusters=[3])).startswith("**12,345** instructions match · clusters 3")


def test_paging_helpers():
    assert page_label(2, 45) == "page 2 of 3" and page_label(1, 0) == "page 1 of 1"
    assert clamp_page(None, 45) == 1 and clamp_page(0, 45) == 1 and clamp_page(9, 45) == 3


def test_profile_config_from_the_form_and_back():
    names = ("difficulty_judge", "category_model", "target_model", "clusters", "dedup_threshold", "projection",
             "batch_size")
    config = profile_config(dict(zip(names, ("none", "smollm2-135m-instruct", "", "6", 0.9, "tsne", 4.0),
                                     strict=True)))
    assert config.difficulty_judge is None and config.target_model is None and config.clusters == 6
    assert config.batch_size == 4 and isinstance(config.batch_size, int)
    assert config.job_id.startswith("profile-")
    assert profile_form(config, names) == {"difficulty_judge": "none", "category_model": "smollm2-135m-instruct",
                                           "target_model": "none", "clusters": "6", "dedup_threshold": 0.9,
                                           "projection": "tsne", "batch_size": 4}
    assert profile_config({"clusters": ""}).clusters == "auto"  # an emptied box
    with pytest.raises(ForgetlessError, match="clusters"):
        profile_config({"clusters": "many"})
    with pytest.raises(ForgetlessError, match="Batch size is empty"):
        profile_config({"clusters": "auto", "batch_size": None})


# -- rows ----------------------------------------------------------------------------------------------------
def test_table_rows_from_a_real_page(tmp_path):
    store = build_explore_store(tmp_path / "forgetless.duckdb")
    result = store.explore(ExploreFilters(), 1, 20, "consensus DESC")
    rows = table_rows(result.page)
    assert len(rows) == 6 and all(len(row) == len(TABLE_HEADERS) for row in rows)
    top = dict(zip(TABLE_HEADERS, rows[0], strict=True))
    assert top["instruction"] == "Write a python function that sorts a list" and top["model"] == "model-b"
    assert (top["consensus"], top["std"], top["difficulty"], top["category"]) == (5.0, 0.0, 2.5, "coding")
    assert top["cluster"] == "0 · label 0" and top["dup"] == "#1 (hidden)" and top["tokens"] == 8
    unjudged = dict(zip(TABLE_HEADERS, rows[-1], strict=True))
    assert unjudged["best response"] == unjudged["model"] == unjudged["consensus"] == unjudged["cluster"] == ""


def test_selection_rows_and_cluster_choices():
    selections = pd.DataFrame({"name": ["good", "broken"],
                               "filters_json": ['{"consensus_min": 4}', '{"colour": 1}'],
                               "created_at": [datetime(2025, 1, 2, 3, 4), None]})
    good, broken = selection_rows(selections)
    assert good == ["good", "consensus ≥ 4"] and len(good) == len(SELECTION_HEADERS)
    assert broken[0] == "broken" and broken[1].startswith("(unreadable:")
    clusters = pd.DataFrame({"cluster": [0, 3], "label": ["python, list", "travel"], "n": [40, 2]})
    assert cluster_choices(clusters) == [("0 · python, list (40)", 0), ("3 · travel (2)", 3)]


def test_read_clusters_from_the_store(tmp_path):
    store = build_explore_store(tmp_path / "forgetless.duckdb")
    clusters = read_clusters(store)
    assert clusters["cluster"].tolist() == [0, 1] and clusters["n"].tolist() == [2, 2]
    assert clusters["label"].tolist() == ["label 0", "label 1"]
    unrefreshed = build_explore_store(tmp_path / "other.duckdb", refresh=False)
    assert read_clusters(unrefreshed).empty  # no explore rows yet: no choices, no error


# -- charts ----------------------------------------------------------------------------------------------------
def test_judge_histogram_has_one_bar_trace_per_judge():
    histogram = pd.DataFrame({"judge": ["j1", "j1", "j2", "j2"], "bin_start": [1.0, 4.5, 1.0, 4.5],
                              "bin_end": [1.5, 5.0, 1.5, 5.0], "count": [2, 3, 0, 5]})
    figure = judge_histogram_figure(histogram)
    assert [trace.name for trace in figure.data] == ["j1", "j2"]
    assert all(trace.type == "bar" for trace in figure.data)
    assert list(figure.data[0].x) == [1.25, 4.75] and list(figure.data[1].y) == [0, 5]
    assert figure.layout.barmode == "group"
    assert not judge_histogram_figure(histogram.assign(count=0)).data
    assert "no judged" in judge_histogram_figure(histogram.iloc[0:0]).layout.title.text


def test_difficulty_scatter_colours_by_category():
    points = pd.DataFrame({"instruction_id": ["a", "b", "c"], "difficulty": [1.0, 2.0, 3.0],
                           "consensus": [4.0, 3.0, 2.0], "category": ["coding", None, "coding"], "cluster": [0, 1, 0]})
    figure = difficulty_scatter(points)
    assert sorted(trace.name for trace in figure.data) == ["(none)", "coding"]
    coding = next(trace for trace in figure.data if trace.name == "coding")
    assert list(coding.x) == [1.0, 3.0] and list(coding.y) == [4.0, 2.0] and coding.mode == "markers"
    assert "3 shown" in figure.layout.title.text
    assert not difficulty_scatter(points.iloc[0:0]).data


def _map_points() -> pd.DataFrame:
    return pd.DataFrame({"instruction_id": ["a", "b", "c"], "x": [0.0, 1.0, 2.0], "y": [0.0, 1.0, 0.5],
                         "cluster": [0, 1, 0], "cluster_label": ["python, code", "travel", "python, code"],
                         "consensus": [4.5, None, 2.0], "instruction": ["Sort a list", "Plan a trip", "Fix a bug"]})


def test_semantic_map_by_cluster_has_a_trace_per_cluster_with_hover_text():
    figure = semantic_map_figure(_map_points(), "cluster")
    assert [trace.name for trace in figure.data] == ["0 · python, code", "1 · travel"]
    first = figure.data[0]
    assert list(first.x) == [0.0, 2.0] and first.hoverinfo == "text"
    assert first.text[0].startswith("Sort a list<br>cluster 0 · python, code · consensus 4.50")
    assert "not judged" in figure.data[1].text[0]


def test_semantic_map_by_score_uses_one_coloured_trace():
    (trace,) = semantic_map_figure(_map_points(), "score").data
    assert trace.marker.colorscale is not None and (trace.marker.cmin, trace.marker.cmax) == (1, 5)
    assert list(trace.marker.color)[0] == 4.5 and trace.marker.showscale
    with pytest.raises(ValueError):
        semantic_map_figure(_map_points(), "size")
    assert "needs profiling" in semantic_map_figure(_map_points().iloc[0:0]).layout.title.text


def test_category_bars_largest_on_top():
    figure = category_bars(pd.DataFrame({"category": ["coding", "math", "(unprofiled)"], "count": [5, 1, 2]}))
    (trace,) = figure.data
    assert trace.orientation == "h" and list(trace.y) == ["math", "(unprofiled)", "coding"]
    assert not category_bars(pd.DataFrame({"category": [], "count": []})).data
