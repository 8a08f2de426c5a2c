"""Steered reconstruction (issue 15 item 2, ``reconstruct --steer coverage``): prompts show stored examples of the
profile's under-filled clusters, samples are placed by nearest centroid and kept while their cluster lacks rows;
every row keeps its cluster, example ids and prompt id; a rerun resumes to exactly N; the job stops when the
target spread is met; no profile is one line before any job folder; free sampling stays the default.

The stores are built by hand (profile rows, clusters, embeddings) and a stand-in embedder places a text by its
words, so where a row lands is checkable: the tiny random model writes words of the test vocabulary."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from core.engines.in_process import InProcessEngine
from core.engines.models import load_model
from core.errors import ForgetlessError
from core.reconstruct.reconstruction import ReconstructConfig, run_reconstruction
from core.reconstruct.steer import (
    CELL_TEMPLATE,
    CoverageSteering,
    cell_key,
    cell_prompt_id,
    cell_request,
    check_steerable,
    copies_an_example,
    pick_cells,
    render_cell_prompt,
)
from core.store import InstructionRow, Store, text_key
from tests.helpers import (
    STEER_PROFILE,
    assert_one_line_error,
    build_steerable_store,
    build_tiny_tokenizer,
    forgetless,
)

# A text's cluster by its words (words of the tiny model's vocabulary): 0 code and maths, 1 daily life, 2 writing.
TOPICS = ({"python", "code", "math", "list"}, {"cook", "recipe", "travel", "health", "money", "plan"},
          {"poem", "story", "email", "summary"})
CENTROIDS = np.eye(3)
EMBEDDER = "stand-in-embedder"
# cluster 2 is under-filled: 8, 8 and 1 representatives (plus one hidden duplicate in cluster 0)
PROFILE = STEER_PROFILE
UNDER_FILLED = 2


def embed_by_words(texts):
    """Stand-in embedder: how many words of each topic a text holds (a text with none sits at the origin)."""
    vectors = np.zeros((len(texts), 3))
    for row, text in enumerate(texts):
        words = text.lower().split()
        for topic, vocabulary in enumerate(TOPICS):
            vectors[row, topic] = sum(word in vocabulary for word in words)
    return vectors


def cluster_of(text: str) -> int:
    return int(np.argmin(((embed_by_words([text])[0] - CENTROIDS) ** 2).sum(1)))


def profiled_store(folder: Path, profile: list[tuple[str, int, bool]] = PROFILE) -> Store:
    """The hand-built profile with the stand-in embedder: each row's vector is its cluster's centroid."""
    return build_steerable_store(folder, profile, (EMBEDDER, np.stack([CENTROIDS[r[1]] for r in profile])))


def serving(lm):
    return lambda spec: InProcessEngine(lm)


def config_of(model: Path, **overrides) -> ReconstructConfig:
    values = {"model": str(model), "n": 6, "batch_size": 8, "max_new_tokens": 24, "seed": 3, "min_chars": 6,
              "steer": "coverage"}
    return ReconstructConfig(**{**values, **overrides})


# -- pure parts ---------------------------------------------------------------------------------------------
def test_the_cell_prompt_shows_the_examples_and_asks_for_one_new_request():
    asked = cell_request(["Sort a {list}", "  Reverse a string  "])
    assert "<message>\nSort a {list}\n</message>\n<message>\nReverse a string\n</message>" in asked
    assert "one new message of the same kind" in asked and "only" in asked and "{examples}" in CELL_TEMPLATE
    rendered = render_cell_prompt(build_tiny_tokenizer(), ["Sort a list"])
    assert rendered.startswith("<|im_start|>system\n") and rendered.endswith("<|im_start|>assistant\n")
    assert "Sort a list" in rendered
    plain = render_cell_prompt(build_tiny_tokenizer(chat_template=None), ["Sort a list"])
    assert plain.startswith("Here are some messages") and "<|im_start|>" not in plain
    assert (cell_prompt_id(True), cell_prompt_id(False), cell_key(4)) == ("cell-v1", "cell-v1-plain", "cluster:4")
    assert copies_an_example("sort a LIST of numbers now please", ["Sort a list of numbers now please."])
    assert not copies_an_example("How do I cook rice?", ["Sort a list of numbers now please."])


def test_cells_are_drawn_in_proportion_to_their_deficits():
    rng = np.random.default_rng(0)
    drawn = Counter(pick_cells({0: 0, 1: 1, 2: 3}, 4000, rng))
    assert set(drawn) == {1, 2}  # a filled cell is never aimed at
    assert drawn[2] / drawn[1] == pytest.approx(3, rel=0.15)
    assert pick_cells({0: 0, 1: 0}, 5, rng) == []
    assert pick_cells({1: 2, 2: 1}, 6, np.random.default_rng(9)) == pick_cells({2: 1, 1: 2}, 6,
                                                                                np.random.default_rng(9))


def test_config_defaults_to_free_sampling_and_checks_steering():
    assert ReconstructConfig(n=5).steer is None
    # free sampling keeps its job ids: the steer settings count only when steering
    assert ReconstructConfig(n=5, steer_examples=7).resolved_job_id() == "reconstruct-635ec13fa0"
    steered = ReconstructConfig(n=5, steer=" Coverage ")
    assert steered.steer == "coverage" and steered.resolved_job_id() != ReconstructConfig(n=5).resolved_job_id()
    assert steered.resolved_job_id() != ReconstructConfig(n=5, steer="coverage", steer_examples=2).resolved_job_id()
    with pytest.raises(ForgetlessError, match="steer must be one of coverage"):
        ReconstructConfig(steer="topics")
    with pytest.raises(ForgetlessError, match="drop --from-corpus and --prefix"):
        ReconstructConfig(steer="coverage", from_corpus="builtin:alpacaeval")
    with pytest.raises(ForgetlessError, match="steer examples"):
        ReconstructConfig(steer="coverage", steer_examples=0)


def test_steering_reads_the_profiles_deficits_and_examples(tmp_path: Path):
    store = profiled_store(tmp_path)
    steering = CoverageSteering(store, "job-x", build_tiny_tokenizer(), examples_per_prompt=2,
                                embed=embed_by_words)
    assert steering.base == {0: 8, 1: 8, 2: 1}  # representatives only
    assert steering.lacking() == {0: 0, 1: 0, 2: 5}  # uniform target at 17 rows: 5.67 each
    prompts = steering.prompts(steering.lacking(), batch_seed=11, count=5)
    assert {p.cell for p in prompts} == {2} and all(p.example_ids == (text_key(PROFILE[-1][0]),) for p in prompts)
    assert [p.text for p in prompts] == [p.text for p in steering.prompts(steering.lacking(), 11, 5)]
    assert steering.admit(["a poem", "a story", "python code", "an email", "a poem again"], {0: 0, 1: 0, 2: 3}) == [
        (True, 2), (True, 2), (False, 0), (True, 2), (False, 2)]


def test_no_profile_or_no_clusters_is_one_error(tmp_path: Path):
    with pytest.raises(ForgetlessError, match="no store yet"):
        check_steerable(SimpleNamespace(path=tmp_path / "none.duckdb"))
    bare = Store.for_workspace(tmp_path / "bare")
    with pytest.raises(ForgetlessError, match="needs a profile: run `forgetless profile` first"):
        check_steerable(bare)
    unclustered = profiled_store(tmp_path / "unclustered")
    unclustered.replace_profile(pd.DataFrame({"instruction_id": [text_key(PROFILE[0][0])], "cluster": [None],
                                              "is_representative": [True]}))
    with pytest.raises(ForgetlessError, match="needs clusters"):
        check_steerable(unclustered)


# -- runs with the tiny model ---------------------------------------------------------------------------------
def test_every_steered_row_keeps_its_cluster_examples_and_prompt(tiny_model_dir: Path, tmp_path: Path):
    lm = load_model(str(tiny_model_dir), tmp_path)
    store = profiled_store(tmp_path / "ws")
    config = config_of(tiny_model_dir, steer_examples=2, steer_keep_all=True, n=5)
    summary = run_reconstruction(config, store, serving(lm), embed=embed_by_words)
    assert summary["mode"] == "cell" and summary["stored"] == 5 and summary["steer"]["prompt_id"] == "cell-v1"
    assert summary["steer"]["deficits_before"] == {"0": 0, "1": 0, "2": 5}
    texts = {text_key(text): text for text, *_ in PROFILE}
    rows = store.instruction_steering(job_id=config.resolved_job_id())
    assert len(rows) == 5
    for row in rows:
        assert row["steer_mode"] == "cell" and row["steer_prompt"] == "cell-v1"
        assert row["steer_source"] == f"cluster:{UNDER_FILLED}"  # the only cluster lacking rows
        assert row["steer_seed_ids"] == [text_key(PROFILE[-1][0])]
        assert row["prefix"] == render_cell_prompt(lm.tokenizer, [texts[i] for i in row["steer_seed_ids"]])


def test_steering_raises_the_under_filled_clusters_share_over_free_sampling(tiny_model_dir: Path, tmp_path: Path):
    """The issue's test: the same model and seed, and free sampling given as many samples as the steered run drew
    (one batch of that size, keeping every usable row); the share of rows landing in the under-filled cluster is
    higher steered than free. On a random model the examples mean nothing: the rejection against the centroids
    does the work, so the steered run draws more samples per stored row."""
    lm = load_model(str(tiny_model_dir), tmp_path)
    free_store, steered_store = profiled_store(tmp_path / "free"), profiled_store(tmp_path / "steered")
    steered = config_of(tiny_model_dir)
    summary = run_reconstruction(steered, steered_store, serving(lm), embed=embed_by_words)
    assert summary["stored"] == 6 and summary["stopped_because"] == "n_reached"
    free = config_of(tiny_model_dir, steer=None, n=10_000, batch_size=summary["sampled"])
    committed = []  # stop after the one batch
    free_summary = run_reconstruction(free, free_store, serving(lm), should_stop=lambda: bool(committed),
                                      on_progress=lambda values: committed.append(1) if values.get("stored") else None)
    assert free_summary["sampled"] == summary["sampled"] and free_summary["stored"] >= 6

    def share(store: Store, job_id: str) -> float:
        rows = store.instruction_steering(job_id=job_id)
        return sum(cluster_of(row["text"]) == UNDER_FILLED for row in rows) / len(rows)

    free_share, steered_share = share(free_store, free.resolved_job_id()), share(steered_store,
                                                                                 steered.resolved_job_id())
    # Free sampling's share depends on what the random model happens to write on this CPU's kernels (0.17-0.67
    # seen); steering keeps only the under-filled cluster's rows, so it is all of them and more than free's.
    assert steered_share == 1.0 > free_share, (free_share, steered_share)
    assert summary["dropped"].get("off_cell", 0) > 0  # samples that landed elsewhere were rejected, and counted
    assert summary["steer"]["deficits_after"]["2"] < summary["steer"]["deficits_before"]["2"]


def test_progress_reports_carry_where_the_jobs_rows_landed(tiny_model_dir: Path, tmp_path: Path):
    """The live coverage chart's data: every report after a batch holds, per cluster, the profile's rows and this
    job's rows placed there, and the last one matches where the stored rows fall."""
    lm = load_model(str(tiny_model_dir), tmp_path)
    store = profiled_store(tmp_path / "ws")
    config = config_of(tiny_model_dir, steer_keep_all=True, n=5, batch_size=3)
    reports = []
    summary = run_reconstruction(config, store, serving(lm), embed=embed_by_words, on_progress=reports.append)
    after_batches = [r for r in reports if "clusters" in r and "stored" in r]
    assert after_batches and json.loads(json.dumps(after_batches[-1])) == after_batches[-1]  # a progress file holds it
    last = after_batches[-1]["clusters"]
    assert [(c["cluster"], c["profiled"]) for c in last] == [(0, 8), (1, 8), (2, 1)]  # representatives only
    landed = Counter(cluster_of(row["text"]) for row in store.instruction_steering(job_id=config.resolved_job_id()))
    assert {c["cluster"]: c["added"] for c in last} == {cell: landed.get(cell, 0) for cell in range(3)}
    assert sum(c["added"] for c in last) == summary["stored"] == 5
    assert summary["steer"]["clusters"] == last


def test_a_steered_run_stops_when_the_target_spread_is_met(tiny_model_dir: Path, tmp_path: Path):
    lm = load_model(str(tiny_model_dir), tmp_path)
    store = profiled_store(tmp_path / "ws", PROFILE[:2] + PROFILE[9:11] + PROFILE[-1:])
    config = config_of(tiny_model_dir, n=50)
    summary = run_reconstruction(config, store, serving(lm), embed=embed_by_words)
    # 2, 2, 1 + x: cluster 2 lacks round(5 / 3 - 1) = 1 row; with x = 1 all three hold 2
    assert summary["steer"]["deficits_before"] == {"0": 0, "1": 0, "2": 1}
    assert summary["stopped_because"] == "target_met" and summary["steer"]["target_met"]
    assert summary["stored"] == 1 and set(summary["steer"]["deficits_after"].values()) == {0}
    [row] = store.instruction_steering(job_id=config.resolved_job_id())
    assert cluster_of(row["text"]) == 2 and row["steer_source"] == "cluster:2"
    again = run_reconstruction(config, store, serving(lm), embed=embed_by_words)
    assert again["new"] == 0 and again["stopped_because"] == "target_met"


def test_a_cancelled_steered_run_resumes_to_exactly_n(tiny_model_dir: Path, tmp_path: Path):
    lm = load_model(str(tiny_model_dir), tmp_path)
    config = config_of(tiny_model_dir, n=6, batch_size=4, steer_keep_all=True)
    straight = profiled_store(tmp_path / "straight")
    run_reconstruction(config, straight, serving(lm), embed=embed_by_words)
    resumed = profiled_store(tmp_path / "resumed")
    committed = []
    first = run_reconstruction(config, resumed, serving(lm), embed=embed_by_words,
                               should_stop=lambda: bool(committed),
                               on_progress=lambda values: committed.append(1) if values.get("stored") else None)
    assert first["cancelled"] and 0 < first["stored"] < 6
    second = run_reconstruction(config, resumed, serving(lm), embed=embed_by_words)
    assert second["stored"] == 6 and second["new"] == 6 - first["stored"]
    key = ("text", "batch", "steer_source", "steer_seed_ids")

    def rows_of(store: Store) -> list[tuple[str, ...]]:
        rows = store.instruction_steering(job_id=config.resolved_job_id())
        return sorted(tuple(str(r[k]) for k in key) for r in rows)

    assert rows_of(resumed) == rows_of(straight) and len(rows_of(resumed)) == 6


# -- the CLI ---------------------------------------------------------------------------------------------------
def test_steering_without_a_profile_is_one_line_and_no_job_folder(tiny_model_dir: Path, tmp_path: Path):
    args = ("reconstruct", "--model", str(tiny_model_dir), "--n", "2", "--steer", "coverage")
    result = forgetless(*args, workspace=tmp_path / "empty")
    assert_one_line_error(result, "--steer coverage needs a profile")
    assert not (tmp_path / "empty" / "jobs").exists()
    Store.for_workspace(tmp_path / "unprofiled").add_instruction_batch(
        "j", 0, [InstructionRow("write a poem about the sea", 5, "tiny", "<p>", 1.0, 1.0, 32, 7, "j", 0)], limit=5,
        sampled=1, dropped={}, new_tokens=5, seconds=0.1)
    result = forgetless(*args, workspace=tmp_path / "unprofiled")
    assert_one_line_error(result, "--steer coverage needs a profile: run `forgetless profile` first")
    assert not (tmp_path / "unprofiled" / "jobs").exists()
    assert Store.for_workspace(tmp_path / "unprofiled").count_instructions() == 1
    bad = forgetless("reconstruct", "--model", str(tiny_model_dir), "--n", "2", "--steer", "topics",
                     workspace=tmp_path / "empty")
    assert bad.returncode != 0 and "invalid choice" in bad.stderr


def test_the_cli_steers_with_the_profiles_embedder(tiny_model_dir: Path, tmp_path: Path):
    """A profile embedded by the packaged embedder: the CLI opens it by the name stored with the embeddings."""
    from core.engines.embedder import DEFAULT_EMBEDDER

    store = build_steerable_store(tmp_path / "ws")
    result = forgetless("reconstruct", "--model", str(tiny_model_dir), "--n", "3", "--batch-size", "8",
                        "--max-new-tokens", "24", "--steer", "coverage", "--steer-keep-all", "--json",
                        workspace=tmp_path / "ws")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["stored"] == 3 and summary["steer"]["embedder"] == DEFAULT_EMBEDDER
    steered = store.instruction_steering(job_id=summary["job_id"])
    assert len(steered) == 3 and all(row["steer_source"] == "cluster:2" for row in steered)
