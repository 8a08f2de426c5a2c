"""Forward-pass scoring with a Hugging Face causal LM: next-token probabilities of chosen tokens.

torch is imported inside the functions: judges and difficulty need `answer_token_groups` (tokenizer only)
whatever the engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def left_padded(prompts: Sequence[Sequence[int]], pad_id: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Input ids and attention mask with every prompt right-aligned, so the last column is each prompt's end."""
    import torch

    longest = max(len(prompt) for prompt in prompts)
    ids = torch.full((len(prompts), longest), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(prompts), longest), dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):
        ids[row, longest - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
        mask[row, longest - len(prompt) :] = 1
    return ids, mask


# Below this many shared leading tokens, a separate prefix pass costs more than it saves.
_MIN_SHARED_PREFIX = 16


def shared_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
    """Leading tokens common to every prompt, leaving at least one token of each prompt after it."""
    first, shortest = prompts[0], min(len(prompt) for prompt in prompts)
    length = 0
    while length < shortest - 1 and all(prompt[length] == first[length] for prompt in prompts):
        length += 1
    return length


def last_logits(model: Any, prompts: Sequence[Sequence[int]], pad_id: int = 0) -> torch.Tensor:
    """The logits of the token after each prompt, ``[prompts, vocab]`` in float32.

    Judge prompts share a long head (system prompt and rubric): it is run once and its KV cache repeated
    for the batch, so each row pays only for its own instruction and response.
    """
    import torch
    from transformers import DynamicCache

    shared = shared_prefix_length(prompts) if len(prompts) > 1 else 0
    if shared < _MIN_SHARED_PREFIX:
        shared = 0
    ids, mask = left_padded([prompt[shared:] for prompt in prompts], pad_id, model.device)
    positions = (mask.cumsum(-1) - 1).clamp_(min=0) + shared
    kwargs: dict[str, Any] = {}
    with torch.inference_mode():
        if shared:
            cache = DynamicCache(config=model.config)
            head = torch.tensor([list(prompts[0][:shared])], dtype=torch.long, device=model.device)
            model(input_ids=head, past_key_values=cache, use_cache=True, logits_to_keep=1)
            cache.batch_repeat_interleave(len(prompts))
            mask = torch.cat([torch.ones(len(prompts), shared, dtype=mask.dtype, device=mask.device), mask], dim=1)
            kwargs = {"past_key_values": cache, "use_cache": True}
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1, **kwargs).logits
        return logits[:, -1].float()


def next_token_probs(
    model: Any, prompts: Sequence[Sequence[int]], candidates: Sequence[Sequence[int]], pad_id: int = 0,
) -> torch.Tensor:
    """P(next token) summed over each candidate group, for every prompt: shape [prompts, groups].

    A group lists the token ids that spell one answer (e.g. "4" and " 4"), so a rating does not depend on
    how the tokenizer splits the space before it.
    """
    import torch

    probs = last_logits(model, prompts, pad_id).softmax(-1)
    return torch.stack([probs[:, list(group)].sum(-1) for group in candidates], dim=-1)


def next_token_logprobs(
    model: Any, prompts: Sequence[Sequence[int]], token_ids: Sequence[int], pad_id: int = 0,
) -> torch.Tensor:
    """log P(next token = t) for every prompt and every t in ``token_ids``: shape [prompts, tokens], float64
    (so that exp() of a value gives back the probability to float32 precision and beyond)."""
    return last_logits(model, prompts, pad_id).double().log_softmax(-1)[:, list(token_ids)]


def rating_lead(tokenizer: Any, lead: str) -> str:
    """``lead`` (e.g. "Rating: ") cut so that the next token is the digit itself, for this tokenizer.

    Where " 4" is one token, the space belongs to the digit and is cut from the lead. Where it is a lone
    space and then the digit (SmolLM2's and Gemma's tokenizers), a lead without its space makes the model
    put almost all its mass on that space (measured: 0.1-0.4% left on the digits, against 81-96% with the
    space kept), so the space stays.
    """
    spaced = tokenizer(" 4", add_special_tokens=False)["input_ids"]
    return lead.rstrip() if len(spaced) == 1 else lead


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
