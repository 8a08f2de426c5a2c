"""Coverage report: the math on hand-made counts, the report over a hand-built profiled store (uniform target and
a reference target with a stand-in embedder over the real packaged ShareGPT turns), the reference cache, the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.errors import ForgetlessError
from core.profile.coverage import (
    SHAREGPT,
    SMOOTHING,
    UNIFORM_UNDER_REFERENCE,
    CoverageConfig,
    coverage_report,
    deficits,
    kl_divergence,
    nearest_centroid,
    reference_vectors,
    sharegpt_user_turns,
    shares,
    top_share,
    under_filled_cells,
    uniform_shares,
)
from core.profile.measures import CATEGORIES
from core.store import InstructionRow, Store
from tests.helpers import assert_one_line_error, forgetless

# instruction -> (cluster, category, difficulty, is_representative); cluster 0's last row is a hidden duplicate.
PROFILE = [
    ("How do I sort a list in Python?", 0, "coding", 1.2, True),
    ("Write a Python function to reverse a string.", 0, "coding", 1.5, True),
    ("Fix this TypeError in my Python script.", 0, "coding", 2.49, True),
    ("Explain Python decorators.", 0, "coding", 3.0, True),
    ("What is a Python generator?", 0, "coding", 3.6, True),
    ("How can I sort a list in Python?", 0, "coding", 1.3, False),
    ("Solve 2x + 3 = 7.", 1, "math", 2.0, True),
    ("What is the derivative of x^2?", 1, "math", 2.2, True),
    ("Integrate sin(x) from 0 to pi.", 1, "math", 4.6, True),
    ("Write a poem about the sea.", 2, "writing", 4.5, True),
]
CENTROIDS = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=np.float32)
LABELS = {0: "python, list, sort", 1: "math, solve", 2: "poem, sea"}


def _profiled_store(folder: Path, extra_unprofiled: int = 0) -> Store:
    """A real store whose profile rows, labels and 2-d embeddings (each cluster's rows at its centroid) are set
    by hand, plus ``extra_unprofiled`` instructions stored after the profile."""
    store = Store.for_workspace(folder)
    texts = [row[0] for row in PROFILE] + [f"Unprofiled instruction number {i}" for i in range(extra_unprofiled)]
    rows = [InstructionRow(text, 8, "tiny", "<p>", 1.0, 1.0, 32, 7, "job-r", 0) for text in texts]
    store.add_instruction_batch("job-r", 0, rows, limit=100, sampled=len(rows), dropped={}, new_tokens=0, seconds=0)
    ids = dict(zip(store.profile_inputs()["text"], store.profile_inputs()["id"], strict=True))
    profiled = [ids[text] for text, *_ in PROFILE]
    store.replace_profile(pd.DataFrame({
        "instruction_id": profiled, "cluster": [r[1] for r in PROFILE], "category": [r[2] for r in PROFILE],
        "difficulty": [r[3] for r in PROFILE], "is_representative": [r[4] for r in PROFILE],
        "cluster_label": [LABELS[r[1]] for r in PROFILE],
    }))
    store.save_embeddings("all-minilm-l6-v2", profiled, np.stack([CENTROIDS[r[1]] for r in PROFILE]))
    return store


def _cells(report: dict, dimension: str) -> dict:
    return {row["cell"]: row for row in report["dimensions"][dimension]["cells"]}


# -- the math -----------------------------------------------------------------------------------------------
def test_shares_with_and_without_smoothing() -> None:
    assert shares([2, 0, 2]).tolist() == [0.5, 0.0, 0.5]
    assert np.allclose(shares([2, 0, 2], 0.5), np.array([2.5, 0.5, 2.5]) / 5.5)
    assert shares([0, 0]).tolist() == [0.0, 0.0]
    assert uniform_shares(4).tolist() == [0.25] * 4 and uniform_shares(0).tolist() == []


def test_kl_divergence() -> None:
    assert kl_divergence([0.2, 0.8], [0.2, 0.8]) == 0.0
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert kl_divergence([0.5, 0.5], [0.25, 0.75]) == pytest.approx(expected)
    assert kl_divergence([0.0, 1.0], [0.5, 0.5]) == pytest.approx(math.log(2))  # 0 log 0 = 0
    assert kl_divergence([0.5, 0.5], [1.0, 0.0]) == math.inf
    with pytest.raises(ValueError):
        kl_divergence([1.0], [0.5, 0.5])


def test_top_share_takes_the_largest_tenth_of_cells_at_least_one() -> None:
    assert top_share([6, 3, 1]) == (0.6, 1)
    share, n = top_share([10] + [1] * 10)  # 11 cells: ceil(1.1) = 2 of them
    assert n == 2 and share == pytest.approx(11 / 20)
    assert top_share([1] * 10) == (pytest.approx(0.1), 1)
    assert top_share([]) == (0.0, 0) and top_share([0, 0]) == (0.0, 0)


def test_deficits_against_the_current_total() -> None:
    assert deficits([6, 3, 1], uniform_shares(3)) == [0, 0, 2]  # expected 3.33 each
    assert deficits([5, 5], [0.5, 0.5]) == [0, 0]
    assert deficits([0, 10], [0.25, 0.75]) == [3, 0]  # 2.5 rounds half up


def test_nearest_centroid() -> None:
    points = np.array([[0.9, 0.1], [0.1, 0.8], [-2.0, 0.3], [0.0, -1.0]])
    assert nearest_centroid(points, CENTROIDS).tolist() == [0, 1, 2, 0]  # a tie goes to the first centroid


def test_under_filled_cells_lists_deficits_largest_first() -> None:
    report = {"dimensions": {"cluster": {"cells": [
        {"cell": 0, "deficit": 0}, {"cell": 1, "deficit": 2}, {"cell": 2, "deficit": 5}, {"cell": 3, "deficit": 2}]}}}
    assert under_filled_cells(report, "cluster") == [(2, 5), (1, 2), (3, 2)]
    with pytest.raises(ForgetlessError, match="dimension"):
        under_filled_cells(report, "topic")


def test_config_validates() -> None:
    assert CoverageConfig(target=" Builtin:ShareGPT ").target == SHAREGPT
    with pytest.raises(ForgetlessError, match="target"):
        CoverageConfig(target="builtin:alpaca")
    with pytest.raises(ForgetlessError, match="reference size"):
        CoverageConfig(reference_size=3)


# -- the report over a store ----------------------------------------------------------------------------------
def test_uniform_report_over_a_hand_built_profile(tmp_path: Path) -> None:
    report = coverage_report(_profiled_store(tmp_path, extra_unprofiled=2))
    assert report["rows"] == 9 and report["profiled"] == 10 and report["unprofiled"] == 2
    clusters = _cells(report, "cluster")
    assert [clusters[c]["rows"] for c in (0, 1, 2)] == [5, 3, 1] and clusters[0]["label"] == LABELS[0]
    assert clusters[0]["share"] == pytest.approx(5 / 9, abs=1e-4)
    assert clusters[2]["target_share"] == pytest.approx(1 / 3, abs=1e-4)
    assert [clusters[c]["deficit"] for c in (0, 1, 2)] == [0, 0, 2]
    expected_kl = kl_divergence(shares([5, 3, 1], SMOOTHING), uniform_shares(3))
    assert report["imbalance"]["cluster_kl"] == pytest.approx(expected_kl, abs=1e-4)
    assert report["imbalance"]["largest_10pct_clusters_share"] == pytest.approx(5 / 9, abs=1e-4)
    assert report["imbalance"]["largest_10pct_clusters_target_share"] == pytest.approx(1 / 3, abs=1e-4)

    categories = _cells(report, "category")
    assert list(categories) == list(CATEGORIES)  # every category, empty ones too
    assert (categories["coding"]["rows"], categories["math"]["rows"], categories["writing"]["rows"]) == (5, 3, 1)
    assert categories["advice"]["deficit"] == 1  # 9/8 rows expected
    levels = _cells(report, "difficulty")
    assert {level: row["rows"] for level, row in levels.items()} == {1: 1, 2: 4, 3: 1, 4: 1, 5: 2}
    assert report["dimensions"]["difficulty"]["note"] is None and report["reference"] is None
    assert under_filled_cells(report, "cluster") == [(2, 2)]
    json.dumps(report, allow_nan=False)  # the --json output is plain JSON


def test_duplicates_count_when_asked(tmp_path: Path) -> None:
    report = coverage_report(_profiled_store(tmp_path), CoverageConfig(include_duplicates=True))
    assert report["rows"] == 10 and _cells(report, "cluster")[0]["rows"] == 6
    assert _cells(report, "difficulty")[1]["rows"] == 2  # the hidden duplicate's 1.3


def test_missing_measures_are_reported_not_guessed(tmp_path: Path) -> None:
    store = _profiled_store(tmp_path)
    frame = store.profile_frame().drop(columns=["text", "updated_at"])
    store.replace_profile(frame.assign(category=None, difficulty=None))
    report = coverage_report(store)
    for dimension in ("category", "difficulty"):
        part = report["dimensions"][dimension]
        assert part["cells"] == [] and part["kl"] is None and part["missing"] == 9 and "not profiled" in part["note"]
    assert report["imbalance"]["category_kl"] is None and report["imbalance"]["cluster_kl"] is not None


def test_no_profile_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ForgetlessError, match="run `forgetless profile` first"):
        coverage_report(Store.for_workspace(tmp_path))


def _stand_in_embed(texts: list[str]) -> np.ndarray:
    """Each text at one of the three centroids, by its length: the test can count where every text belongs."""
    return np.stack([CENTROIDS[len(text) % 3] for text in texts])


def test_reference_target_assigns_reference_texts_to_the_nearest_centroid(tmp_path: Path) -> None:
    store = _profiled_store(tmp_path)
    report = coverage_report(store, CoverageConfig(target=SHAREGPT, reference_size=50), embed=_stand_in_embed)
    texts = sharegpt_user_turns(50, 0)
    per_cluster = [sum(len(t) % 3 == c for t in texts) for c in (0, 1, 2)]
    reference = report["reference"]
    assert reference["texts"] == 50 and reference["per_cluster"] == {"0": per_cluster[0], "1": per_cluster[1],
                                                                     "2": per_cluster[2]}
    assert reference["embedder"] == "all-minilm-l6-v2" and not reference["cached"]
    target = shares(per_cluster, SMOOTHING)
    clusters = _cells(report, "cluster")
    assert [clusters[c]["target_share"] for c in (0, 1, 2)] == pytest.approx(target.tolist(), abs=1e-4)
    assert report["imbalance"]["cluster_kl"] == pytest.approx(
        kl_divergence(shares([5, 3, 1], SMOOTHING), target), abs=1e-4)
    assert [clusters[c]["deficit"] for c in (0, 1, 2)] == deficits([5, 3, 1], target)
    for dimension in ("category", "difficulty"):  # no model ran on the reference: these stay uniform, said plainly
        part = report["dimensions"][dimension]
        assert part["note"] == UNIFORM_UNDER_REFERENCE and "applies to clusters only" in part["target"]
        assert {row["target_share"] for row in part["cells"]} == {round(1 / len(part["cells"]), 4)}
    assert not (tmp_path / "references").exists()  # a stand-in embedder's vectors are never cached


def test_reference_without_embeddings_is_a_clear_error(tmp_path: Path) -> None:
    store = _profiled_store(tmp_path)
    with store.write() as con:
        con.execute("DELETE FROM embeddings")
    with pytest.raises(ForgetlessError, match="no stored embeddings"):
        coverage_report(store, SHAREGPT, embed=_stand_in_embed)


def test_sharegpt_user_turns_are_a_seeded_sample_of_distinct_first_turns() -> None:
    first = sharegpt_user_turns(40, seed=1)
    assert len(first) == 40 and len(set(first)) == 40 and all(t.strip() == t and t for t in first)
    assert sharegpt_user_turns(40, seed=1) == first and sharegpt_user_turns(40, seed=2) != first


def test_reference_vectors_are_cached_per_embedder(tmp_path: Path) -> None:
    calls: list[int] = []

    def counting(texts: list[str]) -> np.ndarray:
        calls.append(len(texts))
        return _stand_in_embed(texts)

    texts, vectors, cached = reference_vectors(SHAREGPT, "all-minilm-l6-v2", size=20, seed=0, embed=counting,
                                               cache_dir=tmp_path)
    again, vectors_again, cached_again = reference_vectors(SHAREGPT, "all-minilm-l6-v2", size=20, seed=0,
                                                           embed=counting, cache_dir=tmp_path)
    assert calls == [20] and not cached and cached_again
    assert again == texts and np.array_equal(vectors, vectors_again)
    reference_vectors(SHAREGPT, "/some/other-embedder", size=20, seed=0, embed=counting, cache_dir=tmp_path)
    assert calls == [20, 20] and not list(tmp_path.glob("*.partial"))


# -- the CLI ---------------------------------------------------------------------------------------------------
def test_cli_without_a_store_or_a_profile_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nothing-here"
    assert_one_line_error(forgetless("coverage", workspace=missing), "forgetless profile")
    assert not missing.exists()  # a read creates no store
    Store.for_workspace(tmp_path / "empty")
    assert_one_line_error(forgetless("coverage", workspace=tmp_path / "empty"), "run `forgetless profile` first")
    assert_one_line_error(forgetless("coverage", "--target", "builtin:nope", workspace=tmp_path), "--target")


def test_cli_tables_and_json(tmp_path: Path) -> None:
    _profiled_store(tmp_path)
    human = forgetless("coverage", workspace=tmp_path)
    assert human.returncode == 0, human.stderr
    for heading in ("cluster — target uniform, 9 rows", "category — target uniform", "difficulty — target uniform"):
        assert heading in human.stdout
    assert "0 · python, list, sort" in human.stdout and "imbalance: KL" in human.stdout
    result = forgetless("coverage", "--json", "--include-duplicates", workspace=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["rows"] == 10 and report["target"] == "uniform" and report["include_duplicates"]
    assert set(report["dimensions"]) == {"cluster", "category", "difficulty"}
    assert set(report["dimensions"]["cluster"]["cells"][0]) == {"cell", "label", "rows", "share", "target_share",
                                                                "expected", "deficit"}
    assert set(report["imbalance"]) >= {"cluster_kl", "largest_10pct_clusters_share"}
