"""Profiling: semantic steps with the real packaged MiniLM embedder, model measures on tiny random models."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.engines.in_process import InProcessEngine
from core.engines.loglik import continuation_logprobs, option_logprobs
from core.engines.models import load_model
from core.errors import ForgetlessError
from core.profile.profiling import (
    CATEGORIES,
    ProfileConfig,
    auto_clusters,
    calibrated_probs,
    categorise,
    cluster,
    cluster_labels,
    difficulty_prompt,
    embed,
    ifd_contexts,
    ifd_scores,
    judge_difficulty,
    near_duplicate_groups,
    project_2d,
    resolve_embedder,
    run_profile,
)
from core.store import Store
from core.store.instructions import InstructionRow
from core.store.profile import ProfileQueries
from core.store.screening import ResponseRow, response_id
from tests.helpers import WORDS, build_tiny_model_folder

# Store gains ProfileQueries when it is wired in; until then the test combines them itself.
ProfileStore = Store if issubclass(Store, ProfileQueries) else type("ProfileStore", (ProfileQueries, Store), {})

CODING = [
    "How do I reverse a list in Python?",
    "How can I reverse a list in Python?",  # near-duplicate of the first
    "Write a Python function that sorts a dictionary by its values.",
    "Explain the difference between a Python list and a tuple.",
    "How do I read a CSV file with Python pandas?",
    "Fix this Python error: TypeError: 'NoneType' object is not subscriptable.",
]
COOKING = [
    "Give me a recipe for chocolate chip cookies.",
    "Can you give me a recipe for chocolate chip cookies?",  # near-duplicate of the first
    "How long should I bake a whole chicken in the oven?",
    "What spices go well in a vegetable curry recipe?",
    "How do I make fluffy pancakes from scratch?",
    "What is the best way to cook rice on the stove?",
]
TEXTS = CODING + COOKING


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return embed(TEXTS, resolve_embedder("all-minilm-l6-v2"))


@pytest.fixture(scope="module")
def lm(tiny_model_dir: Path, tmp_path_factory):
    """The conftest's tiny Llama: its vocabulary has the rating digits 1-5, so it can rate difficulty."""
    return load_model(str(tiny_model_dir), tmp_path_factory.mktemp("ws"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Llama whose vocabulary lacks the rating digits."""
    words = [word for word in WORDS if word not in "12345"]
    folder = build_tiny_model_folder(tmp_path_factory.mktemp("tiny-no-digits"), words=words)
    return load_model(str(folder), tmp_path_factory.mktemp("ws"))


# --- semantic ------------------------------------------------------------------------------------------
def test_embeddings_are_unit_length(vectors: np.ndarray) -> None:
    assert vectors.shape == (12, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_clusters_separate_coding_from_cooking_and_are_labelled(vectors: np.ndarray) -> None:
    labels = cluster(vectors, 2, seed=0)
    assert len(set(labels[:6])) == 1 and len(set(labels[6:])) == 1 and labels[0] != labels[6]
    assert np.array_equal(labels, cluster(vectors, 2, seed=0))  # deterministic
    names = cluster_labels(TEXTS, labels)
    assert "python" in names[int(labels[0])].split(", ")
    assert {"recipe", "cookies", "chocolate"} & set(names[int(labels[6])].split(", "))
    assert cluster(vectors[:1], 5).tolist() == [0]  # k is capped by the data


def test_cluster_labels_fall_back_without_words() -> None:
    assert cluster_labels(["the", "a"], [0, 1]) == {0: "cluster 0", 1: "cluster 1"}


def test_auto_clusters_rule() -> None:
    assert [auto_clusters(n) for n in (0, 1, 2, 12, 200, 100_000)] == [0, 1, 2, 2, 10, 20]
    assert ProfileConfig(clusters="7").k_for(3) == 3


def test_near_duplicates_grouped_with_one_representative(vectors: np.ndarray) -> None:
    groups, keep = near_duplicate_groups(vectors, 0.92)
    assert groups[0] == groups[1] is not None and groups[6] == groups[7] is not None and groups[0] != groups[6]
    assert sum(g is not None for g in groups) == 4
    assert keep == [i not in (1, 7) for i in range(12)]  # the earliest member is kept
    _, keep = near_duplicate_groups(vectors, 0.92, priority=[1.0, 4.5] + [None] * 10)
    assert keep[1] and not keep[0]  # ... unless a later one has the better-scored response
    assert near_duplicate_groups(vectors, 1.0 + 1e-3) == ([None] * 12, [True] * 12)
    assert near_duplicate_groups(vectors * 3.0, 0.92)[0] == groups  # cosine, whatever the scale


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_projection_shapes(vectors: np.ndarray, method: str) -> None:
    xy = project_2d(vectors, method, seed=0)
    assert xy.shape == (12, 2) and np.isfinite(xy).all()
    assert np.allclose(xy, project_2d(vectors, method, seed=0))
    assert project_2d(vectors[:1], method).tolist() == [[0.0, 0.0]]
    assert project_2d(vectors[:2], method).shape == (2, 2)


# --- model measures ------------------------------------------------------------------------------------
def test_continuation_logprobs_batched_equals_unbatched(tiny) -> None:
    lm = tiny
    contexts = ["please write a", "how", "explain why the history of math is", "give me a short"]
    continuations = [" poem", " can you learn to cook", " simple", ""]
    alone = [continuation_logprobs(lm.model, lm.tokenizer, [c], [k], batch_size=1)[0]
             for c, k in zip(contexts, continuations, strict=True)]
    assert [len(a) for a in alone] == [1, 5, 1, 0]
    assert all(v < 0 for a in alone for v in a)
    for side in ("right", "left"):
        batched = continuation_logprobs(lm.model, lm.tokenizer, contexts, continuations, batch_size=3,
                                        padding_side=side)
        for got, want in zip(batched, alone, strict=True):
            assert np.allclose(got, want, atol=1e-4)
    with pytest.raises(ValueError):
        continuation_logprobs(lm.model, lm.tokenizer, [""], [" poem"])


@pytest.mark.parametrize("calibration", ["auto", "batch", "null", "none"])
def test_categorise_returns_probability_vectors(tiny, calibration: str) -> None:
    lm = InProcessEngine(tiny)
    labels, probs = categorise(lm, ["write a python code", "give me a recipe", "what is math"], batch_size=2,
                               calibration=calibration)
    assert probs.shape == (3, len(CATEGORIES)) and np.allclose(probs.sum(axis=1), 1.0) and (probs >= 0).all()
    assert all(label in CATEGORIES for label in labels)
    assert labels == [CATEGORIES[i] for i in probs.argmax(axis=1)]
    assert categorise(lm, [], calibration=calibration)[1].shape == (0, len(CATEGORIES))


def test_calibration_removes_the_label_prior() -> None:
    # Every instruction prefers category 0 by the same margin except the last: the prior goes, the signal stays.
    scores = np.array([[0.0, -2.0, -3.0]] * 5 + [[-1.0, 0.0, -3.0]])
    assert calibrated_probs(scores, "none").argmax(axis=1).tolist() == [0, 0, 0, 0, 0, 1]
    assert calibrated_probs(scores, "batch")[-1].argmax() == 1
    null = calibrated_probs(scores, "null", null_scores=np.array([0.0, -2.0, -3.0]))
    assert np.allclose(null[0], 1 / 3) and null[-1].argmax() == 1
    with pytest.raises(ValueError):
        calibrated_probs(scores, "null")


def test_judge_difficulty_returns_ratings(lm) -> None:
    prompt, fmt = difficulty_prompt(lm.tokenizer, "write a poem")
    assert fmt == "chat" and prompt.endswith("<|im_start|>assistant\nRating:")
    scores, probs = judge_difficulty(InProcessEngine(lm), ["write a poem", "explain math", "how to cook"], batch_size=2)
    assert len(scores) == 3 and all(1.0 <= s <= 5.0 for s in scores)
    assert all(len(p) == 5 and math.isclose(sum(p), 1.0, rel_tol=1e-6) for p in probs)


def test_judge_without_digit_tokens_is_a_clear_error(tiny) -> None:
    plain = tiny
    assert plain.tokenizer.unk_token_id in plain.tokenizer("1 2 3 4 5", add_special_tokens=False)["input_ids"]
    with pytest.raises(ForgetlessError, match="cannot rate"):
        judge_difficulty(InProcessEngine(plain), ["write a poem"])


def test_ifd_is_a_positive_ratio_and_none_without_response(tiny) -> None:
    lm = tiny
    with_instruction, without = ifd_contexts(lm.tokenizer, "write a poem")
    assert "write a poem" in with_instruction and "write a poem" not in without
    values = ifd_scores(InProcessEngine(lm), ["write a poem", "explain math", "how to cook"],
                        ["a short poem about the history of money", None, "   "], batch_size=2)
    assert values[1] is None and values[2] is None
    assert values[0] is not None and math.isfinite(values[0]) and values[0] > 0


# --- config and the whole stage ------------------------------------------------------------------------
def test_config_round_trips_through_yaml() -> None:
    import yaml

    from core.config import from_dict, to_yaml

    for config in (ProfileConfig(), ProfileConfig(clusters=5, projection="tsne", target_model=None)):
        assert from_dict(ProfileConfig, yaml.safe_load(to_yaml(config))) == config
    job = ProfileConfig().resolved_job_id()
    assert job == ProfileConfig().resolved_job_id() != ProfileConfig(seed=1).resolved_job_id()


def test_config_validation() -> None:
    assert ProfileConfig(difficulty_judge="none", target_model="").difficulty_judge is None
    for bad in ({"clusters": "many"}, {"clusters": 0}, {"dedup_threshold": 0.0}, {"batch_size": 0},
                {"projection": "umap"}, {"embedder": " "}):
        with pytest.raises(ForgetlessError):
            ProfileConfig(**bad)
    with pytest.raises(ForgetlessError):
        resolve_embedder("/nonexistent/embedder")


def _store_with_instructions(path: Path, texts: list[str]) -> ProfileQueries:
    store = ProfileStore(path / "forgetless.duckdb")
    rows = [InstructionRow(t, len(t.split()), "m", "", 1.0, 1.0, 64, 0, "job", 0) for t in texts]
    store.add_instruction_batch("job", 0, rows, limit=len(rows), sampled=len(rows), dropped={}, new_tokens=0,
                                seconds=0.0)
    return store


def test_run_profile_end_to_end(tiny_model_dir: Path, tmp_path: Path) -> None:
    texts = [CODING[0], CODING[1], CODING[2], COOKING[0], COOKING[1], COOKING[2]]
    store = _store_with_instructions(tmp_path, texts)
    ids = store.profile_inputs()["id"].tolist()
    config = ProfileConfig(difficulty_judge=str(tiny_model_dir), category_model=str(tiny_model_dir),
                           target_model=str(tiny_model_dir), clusters=2, batch_size=4)
    loads: list[str] = []
    opened: list[InProcessEngine] = []

    def load(spec: str):
        loads.append(spec)
        opened.append(InProcessEngine(load_model(spec, tmp_path)))
        return opened[-1]

    events: list[dict] = []
    summary = run_profile(config, store, load, on_progress=events.append)
    assert loads == [str(tiny_model_dir)]  # one spec, loaded once
    assert opened[0].lm is None  # and closed when done
    assert summary["instructions"] == 6 and summary["embedded"] == 6 and summary["clusters"] == 2
    assert summary["duplicate_groups"] == 2 and summary["hidden_duplicates"] == 2
    assert sum(summary["categories"].values()) == 6 and summary["with_ifd"] == 0 and not summary["cancelled"]
    assert events and events[-1]["done"] == events[-1]["total"] and "stage" in events[-1]
    profile = store.profile_frame()
    assert sorted(profile["instruction_id"]) == sorted(ids) and len(profile) == 6
    assert profile["ifd"].isna().all() and profile["difficulty"].between(1, 5).all()
    assert profile["category"].isin(CATEGORIES).all() and profile["is_representative"].sum() == 4
    assert all(len(p) == len(CATEGORIES) for p in profile["category_probs"])
    assert len(store.load_embeddings(config.embedder)) == 6

    # A best response for one instruction gives it an IFD; embeddings are reused, not recomputed.
    response = ResponseRow(response_id(ids[0], "m", 0), ids[0], "m", 0, "a simple list in python", 5, True,
                           "chat", 0.7, 0.9, 64, 0, "job")
    store.add_responses([response])
    best = pd.DataFrame([{"instruction_id": ids[0], "response_id": response.id, "mean": 4.0, "std": 0.0,
                          "margin": None}])
    store.replace_consensus("probs", pd.DataFrame(), best, pd.DataFrame())
    again = run_profile(ProfileConfig(difficulty_judge=None, category_model=None, target_model=str(tiny_model_dir),
                                      clusters=2), store, load)
    assert again["embedded"] == 0 and again["with_ifd"] == 1
    profile = store.profile_frame().set_index("instruction_id")
    assert profile.loc[ids[0], "ifd"] > 0 and profile["ifd"].notna().sum() == 1
    assert profile["difficulty"].isna().all() and len(profile) == 6


def test_run_profile_cancel_keeps_previous_profile(tmp_path: Path) -> None:
    store = _store_with_instructions(tmp_path, TEXTS[:3])
    config = ProfileConfig(difficulty_judge=None, category_model=None, target_model=None, clusters=2)
    flags = iter([False] + [True] * 10)  # stop right after the first (only) embedding batch
    summary = run_profile(config, store, lambda spec: None, embed_fn=lambda texts: np.eye(len(texts), 4),
                          should_stop=lambda: next(flags))
    assert summary["cancelled"] and len(store.profile_frame()) == 0
    assert run_profile(config, store, lambda spec: None)["embedded"] == 0  # embeddings were kept
    assert len(store.profile_frame()) == 3


def test_run_profile_with_one_instruction_and_no_models(tmp_path: Path) -> None:
    store = _store_with_instructions(tmp_path, TEXTS[:1])
    config = ProfileConfig(difficulty_judge=None, category_model=None, target_model=None, projection="tsne")
    summary = run_profile(config, store, lambda spec: None, embed_fn=lambda texts: np.ones((len(texts), 4)))
    assert summary["clusters"] == 1 and summary["duplicate_groups"] == 0 and summary["categories"] == {}
    row = store.profile_frame().iloc[0]
    assert row["cluster"] == 0 and row["x"] == 0.0 and row["is_representative"] and pd.isna(row["dup_group"])


def test_run_profile_on_empty_store_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ForgetlessError, match="no instructions"):
        run_profile(ProfileConfig(), ProfileStore(tmp_path / "forgetless.duckdb"), lambda spec: None)


def test_option_logprobs_share_the_context_and_match_separate_scoring(tiny) -> None:
    contexts = ["please write a", "explain why the history of math is", "how"]
    options = [[" poem", " short story", ""], [" simple", " a way to learn python"], [" can you cook"]]
    shared = option_logprobs(tiny.model, tiny.tokenizer, contexts, options, batch_size=2)
    for context, opts, got in zip(contexts, options, shared, strict=True):
        want = continuation_logprobs(tiny.model, tiny.tokenizer, [context] * len(opts), list(opts), batch_size=1)
        assert [len(g) for g in got] == [len(w) for w in want]
        for g, w in zip(got, want, strict=True):
            assert np.allclose(g, w, atol=1e-4)
