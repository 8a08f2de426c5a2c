"""Freeze an experiment arm whose general side does not come from ``forgetless mix``'s screened candidates: arm (b)
(public ShareGPT conversations, experiments/public_sft.py) and arm (d) (reconstructed instructions with a random
response each, no screening: experiments/unscreened.py).

The domain side is exactly what ``forgetless mix --ratio 0 --max-domain N`` picks for the same seed (``plan_mix``
itself), the general rows are added next to it, and ``write_snapshot`` freezes the result in the CLI's format
(train.parquet with ``messages``, manifest.yaml, card). ``held_out_ids`` are listed as the general rows set aside
for drift: the other arms' held-out rows, so every arm's drift scores the same texts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

_STREAM_GENERAL, _STREAM_SHUFFLE = 1, 2  # the stream numbers core.mix.mixing uses for these two decisions

Messages = list[dict[str, str]]


def general_rng(seed: int) -> Any:
    """The generator the general side's draws use (core.mix.mixing's stream for them)."""
    import numpy as np

    return np.random.default_rng((seed, _STREAM_GENERAL))


def freeze_arm_mix(workspace: Path, out: Path, general: Sequence[tuple[str, Messages]], *, domain: str,
                   ratio: float, domain_rows: int, seed: int, tokenizer_model: str, candidates: int,
                   note: str, domain_test_fraction: float = 0.0, general_holdout: float = 0.0,
                   held_out_ids: Sequence[str] = ()) -> dict[str, Any]:
    """Write the snapshot of ``domain_rows`` seeded domain rows plus the ``general`` (origin id, conversation)
    rows at ``out``; ``note`` says in the manifest where the general side came from."""
    import numpy as np
    import pandas as pd

    from core.mix.mixing import MIX_COLUMNS, MixConfig, MixPlan, load_counter, plan_mix
    from core.mix.snapshot import write_snapshot
    from core.store import Store
    from core.store.explore import ExploreFilters

    config = MixConfig(domain=domain, ratio=ratio, seed=seed, max_domain=domain_rows, out=str(out),
                       tokenizer_model=tokenizer_model, domain_test_fraction=domain_test_fraction,
                       general_holdout=general_holdout)
    counter = load_counter(config, workspace)
    domain_only = MixConfig(domain=domain, ratio=0.0, seed=seed, max_domain=domain_rows,
                            tokenizer_model=tokenizer_model, domain_test_fraction=domain_test_fraction,
                            general_holdout=0.0)
    domain_plan = plan_mix(domain_only, Store.for_workspace(workspace), workspace, counter=counter)
    conversations = [messages for _, messages in general]
    frame = pd.DataFrame({
        "source": "general", "origin_id": [origin for origin, _ in general],
        "side_index": np.arange(len(general)), "cluster": pd.array([None] * len(general), dtype="Int64"),
        "cluster_label": None, "category": None, "consensus": float("nan"), "difficulty": float("nan"),
        "n_tokens": counter.count(conversations),
    })
    rows = pd.concat([frame, domain_plan.rows], ignore_index=True)
    rows = rows.iloc[np.random.default_rng((seed, _STREAM_SHUFFLE)).permutation(len(rows))].reset_index(drop=True)
    rows["cluster"] = rows["cluster"].astype("Int64")
    for column in ("cluster_label", "category"):
        rows[column] = rows[column].astype(object).where(rows[column].notna(), None)
    plan = MixPlan(config, ExploreFilters(), rows[list(MIX_COLUMNS)], candidates, domain_plan.domain_available,
                   None, [*domain_plan.notes, note], counter.name, domain_plan.domain, conversations,
                   domain_plan.domain_rows, list(held_out_ids))
    return write_snapshot(plan, Path(out))
