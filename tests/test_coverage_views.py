"""The Coverage panel's presenter: observed-vs-target bar charts and the imbalance summary of a coverage report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.profile.coverage import SHAREGPT, CoverageConfig, coverage_report
from core.store import InstructionRow, Store
from ui.views.coverage import coverage_figure, coverage_summary, coverage_views

# (text, cluster, label, category, difficulty): cluster 1's label has Markdown specials the summary must escape.
ROWS = [
    ("Sort a list in Python", 0, "python, sort", "coding", 1.0),
    ("Reverse a string in Python", 0, "python, sort", "coding", 2.0),
    ("Explain list comprehensions", 0, "python, sort", "coding", 2.0),
    ("Write a *bold* haiku", 1, "haiku_*bold*", "writing", 4.0),
]


def _store(folder: Path, with_categories: bool = True) -> Store:
    store = Store.for_workspace(folder)
    rows = [InstructionRow(text, 5, "tiny", "<p>", 1.0, 1.0, 32, 7, "job-r", 0) for text, *_ in ROWS]
    store.add_instruction_batch("job-r", 0, rows, limit=100, sampled=len(rows), dropped={}, new_tokens=0, seconds=0)
    ids = store.profile_inputs()["id"].tolist()  # oldest first: ROWS order
    store.replace_profile(pd.DataFrame({
        "instruction_id": ids, "cluster": [r[1] for r in ROWS], "cluster_label": [r[2] for r in ROWS],
        "category": [r[3] if with_categories else None for r in ROWS], "difficulty": [r[4] for r in ROWS],
        "is_representative": True,
    }))
    store.save_embeddings("all-minilm-l6-v2", ids, np.array([[1.0, 0.0]] * 3 + [[0.0, 1.0]], dtype=np.float32))
    return store


def test_figure_puts_observed_beside_target(tmp_path: Path) -> None:
    report = coverage_report(_store(tmp_path))
    figure = coverage_figure(report, "cluster")
    observed, target = figure.data
    assert (observed.name, target.name) == ("observed", "target")
    assert list(observed.x) == ["0 · python, sort", "1 · haiku_*bold*"]
    assert list(observed.y) == pytest.approx([0.75, 0.25]) and list(target.y) == pytest.approx([0.5, 0.5])
    assert [row[2] for row in observed.customdata] == [0, 1]  # deficits in the hover
    assert figure.layout.title.text == f"Clusters · KL {report['imbalance']['cluster_kl']:.3f} to uniform"
    levels = coverage_figure(report, "difficulty")
    assert list(levels.data[0].x) == ["1", "2", "3", "4", "5"] and list(levels.data[1].y) == [0.2] * 5


def test_summary_gives_the_imbalance_and_escapes_labels(tmp_path: Path) -> None:
    report = coverage_report(_store(tmp_path))
    text = coverage_summary(report)
    assert f"clusters **{report['imbalance']['cluster_kl']:.3f}**" in text
    assert "largest 10% of clusters (1) hold **75.0%** of rows (target 50.0%)" in text
    assert "4 rows counted (near-duplicate representatives)." in text
    assert r"1 · haiku\_\*bold\* (+1)" in text  # the under-filled cluster, its label shown literally
    assert "Target:" not in text  # uniform: no reference line


def test_unprofiled_dimension_shows_an_empty_chart_that_says_so(tmp_path: Path) -> None:
    report = coverage_report(_store(tmp_path, with_categories=False))
    figure = coverage_figure(report, "category")
    assert not figure.data and "not profiled" in figure.layout.title.text
    assert "categories –" in coverage_summary(report)


def test_reference_summary_says_what_stays_uniform(tmp_path: Path) -> None:
    store = _store(tmp_path)
    report = coverage_report(store, CoverageConfig(target=SHAREGPT, reference_size=20),
                             embed=lambda texts: np.array([[1.0, 0.0]] * len(texts)))
    text = coverage_summary(report)
    assert "Target: 20 texts of ShareGPT" in text and "stay uniform" in text
    # every reference text went to cluster 0, so cluster 1's target is the smoothing alone: 0.5 / 21
    clusters = coverage_figure(report, "cluster")
    assert list(clusters.data[1].y) == pytest.approx([20.5 / 21, 0.5 / 21], abs=1e-4)
    assert clusters.layout.title.text.endswith("to sharegpt")
    assert coverage_figure(report, "category").layout.title.text.endswith("to uniform")


def test_views_before_a_profile_explain_and_draw_empty_charts(tmp_path: Path) -> None:
    message, *figures = coverage_views(Store.for_workspace(tmp_path), "uniform")
    assert message.startswith("Coverage:") and "forgetless profile" in message
    assert len(figures) == 3 and all(not figure.data and "needs profiling" in figure.layout.title.text
                                     for figure in figures)


def test_views_draw_all_three_dimensions(tmp_path: Path) -> None:
    message, clusters, categories, levels = coverage_views(_store(tmp_path), "uniform")
    assert message.startswith("**Imbalance**")
    assert [len(figure.data) for figure in (clusters, categories, levels)] == [2, 2, 2]
    assert len(categories.data[0].x) == 8  # every category, empty ones too


def test_reconstruct_tab_chart_shows_the_profile_until_a_steered_job_reports(tmp_path: Path) -> None:
    """A free job (or none): the stored profile's clusters, with the rows not profiled yet said; a steered job:
    the clusters its reports carry, the profile's rows and its own stacked."""
    from core.jobs import JobInfo
    from ui.views.coverage import reconstruct_coverage

    store = _store(tmp_path)
    store.add_instruction_batch("job-new", 0, [InstructionRow("A brand new request", 4, "tiny", "<p>", 1.0, 1.0, 32,
                                                              7, "job-new", 0)],
                                limit=1, sampled=1, dropped={}, new_tokens=0, seconds=0)
    free = JobInfo("job-new", "reconstruct", "done", tmp_path, {"stored": 1}, None, {"stored": 1}, None)
    figure = reconstruct_coverage(free, store)
    assert [list(bar.y) for bar in figure.data] == [[3, 1], [0, 0]]
    assert "1 rows not profiled yet" in figure.layout.title.text
    assert list(figure.data[0].x) == ["0 · python, sort", "1 · haiku_*bold*"]

    clusters = [{"cluster": 0, "label": "python, sort", "profiled": 3, "added": 0},
                {"cluster": 1, "label": "haiku_*bold*", "profiled": 1, "added": 2}]
    steered = JobInfo("job-s", "reconstruct", "done", tmp_path, {}, None,
                      {"stored": 2, "steer": {"clusters": clusters}}, None)
    figure = reconstruct_coverage(steered, store)
    assert [list(bar.y) for bar in figure.data] == [[3, 1], [0, 2]]
    assert figure.layout.shapes[0].y0 == 3.0  # the uniform line: 6 rows over 2 clusters
    assert "KL 0.000 to uniform" in figure.layout.title.text  # 3 and 3: even
    assert "profile the instructions" in reconstruct_coverage(None, Store.for_workspace(tmp_path / "empty")
                                                              ).layout.title.text
