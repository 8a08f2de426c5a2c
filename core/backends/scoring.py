"""Forward-pass scoring with a Hugging Face causal LM: next-token probabilities of chosen tokens."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def left_padded(prompts: Sequence[Sequence[int]], pad_id: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Input ids and attention mask with every prompt right-aligned, so the last column is each prompt's end."""
    longest = max(len(prompt) for prompt in prompts)
    ids = torch.full((len(prompts), longest), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(prompts), longest), dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):
        ids[row, longest - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
        mask[row, longest - len(prompt) :] = 1
    return ids, mask


def next_token_probs(
    model: Any, prompts: Sequence[Sequence[int]], candidates: Sequence[Sequence[int]], pad_id: int = 0,
) -> torch.Tensor:
    """P(next token) summed over each candidate group, for every prompt: shape [prompts, groups].

    One forward pass per call; a group lists the token ids that spell one answer (e.g. "4" and " 4"), so
    a rating does not depend on how the tokenizer splits the space before it.
    """
    ids, mask = left_padded(prompts, pad_id, model.device)
    positions = (mask.cumsum(-1) - 1).clamp_(min=0)
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1).logits[:, -1]
        probs = logits.float().softmax(-1)
    return torch.stack([probs[:, list(group)].sum(-1) for group in candidates], dim=-1)


def answer_token_groups(tokenizer: Any, answers: Sequence[str]) -> list[list[int]]:
    """For each answer string, the single tokens that spell it with and without a leading space."""
    groups = []
    for answer in answers:
        group = []
        for variant in (answer, " " + answer):
            ids = tokenizer(variant, add_special_tokens=False)["input_ids"]
            if len(ids) == 1 and ids[0] not in group and ids[0] != tokenizer.unk_token_id:
                group.append(ids[0])
        if not group:
            raise ValueError(f"the tokenizer has no single token for {answer!r}")
        groups.append(group)
    return groups
