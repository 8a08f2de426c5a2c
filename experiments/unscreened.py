"""Arm (d) of the evidence experiment: reconstructed data *without* screening — does the screening step matter?

The same number of general rows as arm (c), drawn at random from every reconstructed instruction that has a
response (no judge score, no min-score filter), each with one of its responses drawn at random instead of the
consensus best; the rows every arm holds out for drift stay out. Frozen with the domain rows of the other arms
(experiments/arm_mix.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experiments.arm_mix import freeze_arm_mix, general_rng


def unscreened_rows(pairs: Any, count: int, seed: int, held_out_ids: Sequence[str]) -> list[tuple[str, Any]]:
    """``count`` (instruction id, conversation) rows from ``pairs`` (``Store.response_pairs``): instructions drawn
    without replacement, outside ``held_out_ids``, one response each, all at random (seeded)."""
    rng = general_rng(seed)
    pairs = pairs[~pairs["id"].isin(set(held_out_ids))]
    groups = {iid: group for iid, group in pairs.groupby("id", sort=True)}
    if len(groups) < count:
        raise RuntimeError(f"only {len(groups)} instructions with a response outside the held-out rows, {count} "
                           "needed for the unscreened arm")
    ids = sorted(groups)
    rows = []
    for index in rng.permutation(len(ids))[:count]:
        group = groups[ids[int(index)]]
        pick = group.iloc[int(rng.integers(len(group)))]
        rows.append((str(pick["id"]), [{"role": "user", "content": pick["instruction"]},
                                       {"role": "assistant", "content": pick["response"]}]))
    return rows


def build_unscreened_mix(workspace: Path, out: Path, *, domain: str, ratio: float, domain_rows: int,
                         general_rows: int, seed: int, tokenizer_model: str, general_holdout: float,
                         held_out_ids: Sequence[str], domain_test_fraction: float = 0.0) -> dict[str, Any]:
    """Freeze arm (d) at ``out``: ``general_rows`` unscreened reconstructed rows plus the arms' domain rows."""
    from core.store import Store

    pairs = Store.for_workspace(workspace).response_pairs()
    general = unscreened_rows(pairs, general_rows, seed, held_out_ids)
    note = (f"general side: {len(general)} reconstructed instructions drawn at random with a random one of their "
            "responses each, NOT screened (no judge, no min-score); built by experiments/unscreened.py")
    return freeze_arm_mix(workspace, out, general, domain=domain, ratio=ratio, domain_rows=domain_rows, seed=seed,
                          tokenizer_model=tokenizer_model, candidates=pairs["id"].nunique(), note=note,
                          domain_test_fraction=domain_test_fraction, general_holdout=general_holdout,
                          held_out_ids=held_out_ids)
