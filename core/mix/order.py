"""Which rows a mix takes first: seeded orders, balanced interleaving, and the general rows held out.

All randomness comes from ``numpy.random.default_rng((seed, stream))`` with one stream per decision, so changing
the balance does not reshuffle the domain sample. ``proportional`` is a seeded random order (a sample that follows
the selection's own composition); ``clusters`` and ``difficulty`` interleave groups round-robin (profiled clusters,
or five equal-width bins of the 1-5 difficulty scale; rows without a value form one more group), so every prefix
holds equal shares per group and a group that runs out leaves its quota to the others.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Iterable, Sequence

import numpy as np
import pandas as pd

DIFFICULTY_BINS = 5  # equal-width bins of the 1-5 difficulty scale for balance=difficulty
STREAM_DOMAIN, STREAM_GENERAL, STREAM_SHUFFLE = 0, 1, 2


def seeded_rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng((seed, stream))


def balanced_order(keys: Sequence[Hashable], rng: np.random.Generator) -> np.ndarray:
    """Row indices ordered round-robin over the groups of ``keys`` (each group shuffled, the order of groups
    shuffled once): every prefix holds equal shares per group, ±1, and an exhausted group drops out."""
    groups: dict[Hashable, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    names = sorted(groups, key=lambda key: (key is None, str(key)))
    visit = rng.permutation(len(names))
    rows, rounds, positions = [], [], []
    for name, position in zip(names, visit, strict=True):
        members = rng.permutation(groups[name])
        rows.append(members)
        rounds.append(np.arange(len(members)))
        positions.append(np.full(len(members), position))
    if not rows:
        return np.zeros(0, dtype=np.int64)
    rows_all, rounds_all, positions_all = (np.concatenate(parts) for parts in (rows, rounds, positions))
    return rows_all[np.lexsort((positions_all, rounds_all))].astype(np.int64)


def _group_keys(general: pd.DataFrame, balance: str) -> list[Hashable]:
    if balance == "clusters":
        return [None if pd.isna(c) else int(c) for c in general["cluster"]]
    width = 4.0 / DIFFICULTY_BINS
    return [None if pd.isna(d) else int(min(DIFFICULTY_BINS - 1, max(0.0, (float(d) - 1.0) // width)))
            for d in general["difficulty"]]


def general_order(general: pd.DataFrame, balance: str, seed: int) -> np.ndarray:
    """The seeded order in which general rows (sorted by instruction id) are taken."""
    rng = seeded_rng(seed, STREAM_GENERAL)
    if balance == "proportional":
        return rng.permutation(len(general)).astype(np.int64)
    return balanced_order(_group_keys(general, balance), rng)


def prefix_reaching(tokens: np.ndarray, budget: int) -> int:
    """The length of the shortest prefix whose total reaches ``budget`` (all of it when none does)."""
    if budget <= 0:
        return 0
    return int(min(len(tokens), np.searchsorted(np.cumsum(tokens), budget, side="left") + 1))


def held_out_general(instruction_ids: Iterable[str], share: float) -> np.ndarray:
    """Which instructions are held out at ``share``: the first 8 bytes of sha256 of the id, read as a number in
    [0, 1), below ``share`` (so a larger share holds out a superset)."""
    ids = [str(i) for i in instruction_ids]
    if share <= 0:
        return np.zeros(len(ids), dtype=bool)
    draws = [int.from_bytes(hashlib.sha256(i.encode()).digest()[:8], "big") / 2 ** 64 for i in ids]
    return np.asarray(draws, dtype=np.float64) < share
