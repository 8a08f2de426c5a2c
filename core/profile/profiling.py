"""Profiling the reconstructed instructions: what they are about, how hard, how redundant.

For every stored instruction the profile holds a judge-rated difficulty, its IFD on the target model
(once it has a best response), a zero-shot task category, a k-means topic with a readable label, a
point on a 2-D semantic map, and its near-duplicate group. The app plots these and filters on them;
near-duplicates that are not their group's representative can be left out of the mix.

The pieces live in two modules: `core.profile.semantic` (embeddings, clusters, map, duplicates: pure
numpy/sklearn) and `core.profile.measures` (forward-pass measures through an engine). This module holds
the stage's config and `run_profile`, which wires them to the store.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.config import fingerprint, to_yaml
from core.engines.base import Engine, OpenEngine
from core.engines.choice import serving_fields, serving_setting
from core.engines.embedder import DEFAULT_EMBEDDER, embed, load_embedder, resolve_embedder
from core.errors import ForgetlessError
from core.profile.measures import (
    CALIBRATIONS,
    CATEGORIES,
    NULL_INSTRUCTION,
    calibrated_probs,
    categorise,
    category_prompt,
    category_scores,
    difficulty_prompt,
    ifd_contexts,
    ifd_scores,
    judge_difficulty,
    needs_null_scores,
)
from core.profile.semantic import PROJECTIONS, auto_clusters, cluster, cluster_labels, near_duplicate_groups, project_2d
from core.progress import Cancelled, Progress
from core.settings import setting

__all__ = [
    "CALIBRATIONS", "CATEGORIES", "DEFAULT_EMBEDDER", "PROJECTIONS", "ProfileConfig", "auto_clusters",
    "calibrated_probs", "categorise", "category_prompt", "category_scores", "cluster", "cluster_labels",
    "difficulty_prompt", "embed", "ifd_contexts", "ifd_scores", "judge_difficulty", "load_embedder",
    "near_duplicate_groups", "project_2d", "resolve_embedder", "run_profile",
]
_SKIP = ("", "none", "off")
_EMBED_BATCH = 256  # instructions embedded (and saved) per step


def _optional_model(spec: str | None) -> str | None:
    return None if spec is None or spec.strip().lower() in _SKIP else spec.strip()


@dataclass
class ProfileConfig:
    """Settings of one profiling job (the YAML in its job folder)."""

    difficulty_judge: str | None = setting("smollm2-135m-instruct", label="Difficulty judge",
                                           help="MODEL spec rating difficulty 1-5, or 'none' to skip")
    category_model: str | None = setting("smollm2-135m-instruct", label="Category model",
                                         help="MODEL spec for zero-shot task categories, or 'none' to skip")
    category_calibration: str = setting("auto", choices=CALIBRATIONS,
                                        help="batch | null | none | auto (batch from 16 instructions, else null)")
    target_model: str | None = setting("smollm2-135m-instruct", label="Target model (IFD)",
                                       help="MODEL spec whose losses give IFD (the model to tune), or 'none'")
    embedder: str = setting(DEFAULT_EMBEDDER,
                            help="all-minilm-l6-v2 (packaged) or a sentence-transformers folder")
    clusters: int | str = setting("auto", label="Clusters (k or auto)",
                                  help="k-means k, or 'auto': round(sqrt(n/2)) clamped to [2, 20], at most n")
    dedup_threshold: float = setting(0.92, label="Near-duplicate cosine", minimum=0.5, maximum=1.0, step=0.01,
                                     help="cosine similarity at or above which two instructions are near-duplicates")
    batch_size: int = setting(8, help="instructions per forward pass (IFD: 2 sequences each; category names "
                                      "share theirs)")
    seed: int = setting(0, help="k-means and projection seed")
    projection: str = setting("pca", choices=PROJECTIONS, label="Map projection",
                              help="2-D map: pca (fast, deterministic) | tsne (local neighbourhoods, slower)")
    job_id: str | None = setting(None, help="name the job (default: derived from the settings, so reruns resume)")
    serving: dict[str, Any] = serving_setting()

    def __post_init__(self) -> None:
        self.serving = serving_fields(self.serving)
        self.difficulty_judge = _optional_model(self.difficulty_judge)
        self.category_model = _optional_model(self.category_model)
        self.target_model = _optional_model(self.target_model)
        self.embedder = (self.embedder or "").strip()
        if isinstance(self.clusters, str):
            text = self.clusters.strip().lower()
            if text != "auto" and not text.isdigit():
                raise ForgetlessError("clusters must be a whole number or 'auto'")
            self.clusters = "auto" if text == "auto" else int(text)
        checks = [
            (bool(self.embedder), "give an embedder"),
            (self.clusters == "auto" or (isinstance(self.clusters, int) and self.clusters >= 1),
             "clusters must be at least 1"),
            (0.0 < self.dedup_threshold <= 1.0, "dedup threshold must be a cosine similarity in (0, 1]"),
            (isinstance(self.batch_size, int) and self.batch_size >= 1, "batch size must be at least 1"),
            (self.projection in PROJECTIONS, f"projection must be one of {', '.join(PROJECTIONS)}"),
            (self.category_calibration in CALIBRATIONS,
             f"category calibration must be one of {', '.join(CALIBRATIONS)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ForgetlessError(message)

    def resolved_job_id(self) -> str:
        return self.job_id or "profile-" + fingerprint(self, exclude=("job_id",))

    def k_for(self, n: int) -> int:
        """The number of clusters for n instructions (never more than n)."""
        return auto_clusters(n) if self.clusters == "auto" else min(int(self.clusters), n)


def _embeddings(config: ProfileConfig, store: Any, ids: list[str], texts: list[str], progress: Progress,
                embed_fn: Callable[[list[str]], np.ndarray] | None) -> tuple[np.ndarray, int]:
    """Embeddings for all instructions: stored ones are reused; new ones are embedded and saved per batch,
    so a cancelled or crashed run keeps what it embedded. ``embed_fn``'s vectors are stored under
    ``config.embedder``."""
    stored = store.load_embeddings(config.embedder, ids)
    progress.batch_done(len(stored), 0)
    missing = [i for i, key in enumerate(ids) if key not in stored]
    if missing:
        encode = embed_fn or load_embedder(resolve_embedder(config.embedder))

        def work(batch: Sequence[int]) -> list[int]:
            fresh = np.asarray(encode([texts[i] for i in batch]), dtype=np.float32)
            store.save_embeddings(config.embedder, [ids[i] for i in batch], fresh)
            stored.update({ids[i]: vector for i, vector in zip(batch, fresh, strict=True)})
            return list(batch)

        _in_batches(progress, missing, _EMBED_BATCH, work)
    dims = {len(vector) for vector in stored.values()}
    if len(dims) != 1:
        raise ForgetlessError(f"stored embeddings of '{config.embedder}' have mixed sizes {sorted(dims)}")
    return np.stack([stored[key] for key in ids]), len(missing)


def _in_batches(progress: Progress, items: Sequence[Any], size: int,
                work: Callable[[Sequence[Any]], list[Any]]) -> list[Any]:
    """Run ``work`` batch by batch, reporting progress and honouring a cancel request between batches."""
    out: list[Any] = []
    for start in range(0, len(items), size):
        if progress.stop_requested():
            raise Cancelled
        done = work(items[start : start + size])
        out.extend(done)
        progress.batch_done(len(done), 0)
    return out


def run_profile(
    config: ProfileConfig,
    store: Any,
    engines: OpenEngine,
    *,
    embed_fn: Callable[[list[str]], np.ndarray] | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> dict[str, Any]:
    """Profile every stored instruction and replace the ``instruction_profile`` table with the result.

    ``store`` is a Store with the ProfileQueries; ``engines(spec)`` opens a model (each distinct spec is
    opened once, and all are closed once measured); ``embed_fn(texts)`` overrides the sentence-transformers
    embedder. Embeddings are saved as soon as they are computed and reused by later runs; the model-based
    measures are recomputed each run (a judge or best response may have changed). Before responding/judging,
    IFD is NULL. A cancel between batches leaves the previous profile in place and returns with ``cancelled``
    true.
    """
    started = time.monotonic()
    job_id = config.resolved_job_id()
    store.register_job(job_id, "profile", to_yaml(config))
    inputs = store.profile_inputs()
    if not len(inputs):
        raise ForgetlessError("no instructions to profile: run `forgetless reconstruct` first")
    ids, texts = inputs["id"].tolist(), inputs["text"].tolist()
    responses = [r if isinstance(r, str) and r.strip() else None for r in inputs["response"]]
    with_response = sum(1 for r in responses if r)
    n = len(ids)
    total = n + n * bool(config.difficulty_judge) + n * bool(config.category_model) + \
        with_response * bool(config.target_model)
    stage = ["embeddings"]

    def report(values: dict[str, Any]) -> None:
        if on_progress is not None:
            on_progress({**values, "stage": stage[0]})

    progress = Progress(job_id, total, on_progress=report, should_stop=should_stop, unit="done")
    summary: dict[str, Any] = {  # every key present even when cancelled, so callers can format it
        "job_id": job_id, "instructions": n, "db": str(store.path), "cancelled": False, "embedded": 0,
        "clusters": 0, "cluster_labels": {}, "duplicate_groups": 0, "hidden_duplicates": 0, "categories": {},
        "mean_difficulty": None, "with_ifd": 0, "median_ifd": None, "seconds": 0.0,
    }
    opened: dict[str, Engine] = {}
    closing = ExitStack()  # every engine opened below is closed when profiling ends, however it ends

    def model(spec: str) -> Engine:
        if spec not in opened:
            opened[spec] = closing.enter_context(engines(spec))
        return opened[spec]

    try:
        vectors, embedded = _embeddings(config, store, ids, texts, progress, embed_fn)
        if progress.stop_requested():
            raise Cancelled
        stage[0] = "clusters"
        labels = cluster(vectors, config.k_for(n), config.seed)
        names = cluster_labels(texts, labels)
        xy = project_2d(vectors, config.projection, config.seed)
        scores = [float(s) if s is not None and np.isfinite(s) else None for s in inputs["response_score"]]
        groups, representative = near_duplicate_groups(vectors, config.dedup_threshold, priority=scores)

        difficulty: list[Any] = [None] * n
        difficulty_probs: list[Any] = [None] * n
        if config.difficulty_judge:
            stage[0] = "difficulty"
            judge = model(config.difficulty_judge)
            rated = _in_batches(progress, texts, config.batch_size,
                                lambda batch: list(zip(*judge_difficulty(judge, batch, len(batch)), strict=True)))
            difficulty, difficulty_probs = [s for s, _ in rated], [p for _, p in rated]
        category: list[Any] = [None] * n
        category_probs: list[Any] = [None] * n
        if config.category_model:
            stage[0] = "categories"
            categoriser = model(config.category_model)
            raw = _in_batches(progress, texts, config.batch_size,
                              lambda batch: list(category_scores(categoriser, batch, len(batch))))
            null = None
            if needs_null_scores(n, config.category_calibration):
                null = category_scores(categoriser, [NULL_INSTRUCTION])[0]
            probs = calibrated_probs(np.stack(raw), config.category_calibration, null)  # over all instructions
            category = [CATEGORIES[i] for i in probs.argmax(axis=1)]
            category_probs = probs.tolist()
        ifd: list[Any] = [None] * n
        if config.target_model and with_response:
            stage[0] = "ifd"
            target = model(config.target_model)
            todo = [i for i in range(n) if responses[i]]
            values = _in_batches(progress, todo, config.batch_size, lambda batch: ifd_scores(
                target, [texts[i] for i in batch], [responses[i] for i in batch], len(batch)))
            for i, value in zip(todo, values, strict=True):
                ifd[i] = value
    except Cancelled:
        summary.update(cancelled=True, seconds=round(time.monotonic() - started, 2))
        return summary
    finally:
        closing.close()

    import pandas as pd

    stage[0] = "saving"
    frame = pd.DataFrame({
        "instruction_id": ids, "difficulty": difficulty, "difficulty_probs": difficulty_probs, "ifd": ifd,
        "cluster": labels.tolist(), "cluster_label": [names[int(c)] for c in labels], "x": xy[:, 0].tolist(),
        "y": xy[:, 1].tolist(), "dup_group": groups, "is_representative": representative, "category": category,
        "category_probs": category_probs,
    })
    store.replace_profile(frame)
    store.refresh_explore_rows()
    in_groups = sum(1 for g in groups if g is not None)
    group_count = len({g for g in groups if g is not None})
    rated_difficulty = [d for d in difficulty if d is not None]
    rated_ifd = [v for v in ifd if v is not None]
    summary.update({
        "embedded": embedded, "clusters": len(names), "cluster_labels": {str(c): names[c] for c in sorted(names)},
        "duplicate_groups": group_count, "hidden_duplicates": in_groups - group_count,
        "categories": dict(Counter(c for c in category if c is not None).most_common()),
        "mean_difficulty": round(float(np.mean(rated_difficulty)), 3) if rated_difficulty else None,
        "with_ifd": len(rated_ifd), "median_ifd": round(float(np.median(rated_ifd)), 3) if rated_ifd else None,
        "seconds": round(time.monotonic() - started, 2),
    })
    return summary
