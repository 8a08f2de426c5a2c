"""Log-likelihood scoring with a Hugging Face causal LM: per-token log-probabilities of continuations.

The general scorer behind zero-shot categories and IFD (profiling) and log-likelihood multiple choice
(evaluation). Forward passes only, batched with padding; a loaded model and its tokenizer are passed in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Scored (continuation) tokens per forward pass: each costs one vocabulary-sized row of logits
# (SmolLM2: 49k floats = 192 KB), so 2048 keep a batch's logits under ~400 MB.
MAX_SCORED_TOKENS = 2048
PADDING_SIDES = ("right", "left")


def _special_prefix(tokenizer: Any) -> list[int]:
    """The ids the tokenizer puts before a text by itself (a BOS for Gemma/Llama; nothing for ChatML models)."""
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start])
    return []


def pack_continuations(pairs: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int,
                       padding_side: str = "right") -> tuple[Any, Any, Any, list[int]]:
    """One padded batch of (context ids, continuation ids): input ids, attention mask, the positions whose
    logits predict a continuation token (for ``logits_to_keep``), and those continuation tokens in order."""
    import torch

    sequences = [list(context) + list(continuation) for context, continuation in pairs]
    width = max(len(s) for s in sequences)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    keep = torch.zeros((len(pairs), width), dtype=torch.bool)
    targets: list[int] = []
    for row, ((context, continuation), sequence) in enumerate(zip(pairs, sequences, strict=True)):
        offset = width - len(sequence) if padding_side == "left" else 0
        ids[row, offset : offset + len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        mask[row, offset : offset + len(sequence)] = 1
        # The logit at position j predicts token j + 1: positions len(context)-1 .. len-2 predict the continuation.
        keep[row, offset + len(context) - 1 : offset + len(sequence) - 1] = True
        targets.extend(continuation)
    return ids, mask, keep, targets


def token_logprobs(
    model: Any, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], *, pad_id: int = 0, batch_size: int = 16,
    padding_side: str = "right", max_scored_tokens: int = MAX_SCORED_TOKENS,
) -> list[list[float]]:
    """log P(token | everything before it) for each continuation token of each (context ids, continuation ids).

    Items are sorted by length and packed into batches of at most ``batch_size`` items and
    ``max_scored_tokens`` continuation tokens, so padding stays small; results come back in input order.
    Padding on either side gives the same numbers as scoring each item alone (positions are counted from
    each item's first real token). Only the positions that predict a continuation token are projected onto
    the vocabulary. A context must hold at least one token; an empty continuation gives [].
    """
    import torch

    if padding_side not in PADDING_SIDES:
        raise ValueError(f"padding_side must be one of {PADDING_SIDES}")
    results: list[list[float]] = [[] for _ in pairs]
    for index, (context, _) in enumerate(pairs):
        if not context:
            raise ValueError(f"item {index} has an empty context: its first continuation token has no prediction")
    order = sorted((i for i, (_, cont) in enumerate(pairs) if cont),
                   key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    batches: list[list[int]] = []
    for i in order:
        scored = len(pairs[i][1])
        if batches and len(batches[-1]) < batch_size and \
                sum(len(pairs[j][1]) for j in batches[-1]) + scored <= max_scored_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    device = getattr(model, "device", "cpu")
    for batch in batches:
        ids, mask, keep, targets = pack_continuations([pairs[i] for i in batch], pad_id, padding_side)
        positions = (mask.cumsum(-1) - 1).clamp_(min=0)
        ids, mask, positions, keep = (t.to(device) for t in (ids, mask, positions, keep))
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep).logits
            if logits.dim() == 3:  # a model that ignores a boolean logits_to_keep returns every position
                logits = logits[keep]
            logits = logits.float()
            target = torch.tensor(targets, dtype=torch.long, device=logits.device)
            chosen = logits.gather(1, target[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)
        values = chosen.tolist()
        start = 0
        for i in batch:
            count = len(pairs[i][1])
            results[i] = values[start : start + count]
            start += count
    return results


def continuation_logprobs(
    model: Any, tokenizer: Any, contexts: Sequence[str], continuations: Sequence[str], *, batch_size: int = 16,
    padding_side: str = "right", max_scored_tokens: int = MAX_SCORED_TOKENS,
) -> list[list[float]]:
    """Per-token log-probabilities of each continuation string after its context string.

    Context and continuation are tokenised separately and concatenated, so the continuation's tokens are
    the same whatever precedes it; a leading space belongs to the continuation (" Paris" after
    "Answer:"). The context gets the tokenizer's own special prefix (e.g. Gemma's BOS) unless it already
    starts with it, as chat-template text does. Sum the result for a log-likelihood, average it for a
    per-token one.
    """
    pairs = encode_pairs(tokenizer, contexts, continuations)
    return token_logprobs(model, pairs, pad_id=_pad_id(tokenizer), batch_size=batch_size, padding_side=padding_side,
                          max_scored_tokens=max_scored_tokens)


def encode_pairs(tokenizer: Any, contexts: Sequence[str],
                 continuations: Sequence[str]) -> list[tuple[list[int], list[int]]]:
    """(context ids, continuation ids) as every engine scores them (see `continuation_logprobs`)."""
    if len(contexts) != len(continuations):
        raise ValueError("contexts and continuations differ in length")
    prefix = _special_prefix(tokenizer)
    return [
        (_encode_context(tokenizer, context, prefix), tokenizer(continuation, add_special_tokens=False)["input_ids"])
        for context, continuation in zip(contexts, continuations, strict=True)
    ]


def _encode_context(tokenizer: Any, context: str, prefix: list[int]) -> list[int]:
    ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    return prefix + ids if prefix and ids[: len(prefix)] != prefix else ids


def option_logprobs(
    model: Any, tokenizer: Any, contexts: Sequence[str], options: Sequence[Sequence[str]], *, batch_size: int = 16,
) -> list[list[list[float]]]:
    """Per-token log-probabilities of several continuations (options) of each context, sharing its forward pass.

    Same numbers as `continuation_logprobs` on every (context, option) pair, at about the cost of one pass
    per context: the contexts (``batch_size`` per pass, left-padded) are run once, their key/value cache is
    copied to each option, and only the option tokens are run on top of it. Made for zero-shot labels and
    multiple choice, where a long context has a few short options. Result: [context][option][token].
    Models whose cache cannot be shared (sliding-window attention shorter than the inputs) take the plain path.
    Memory: the copied cache holds batch_size x options rows of the context; lower batch_size for long ones.
    """
    import torch

    if len(contexts) != len(options):
        raise ValueError("contexts and options differ in length")
    prefix = _special_prefix(tokenizer)
    context_ids = [_encode_context(tokenizer, context, prefix) for context in contexts]
    option_ids = [[tokenizer(o, add_special_tokens=False)["input_ids"] for o in opts] for opts in options]
    for index, ids in enumerate(context_ids):
        if not ids:
            raise ValueError(f"item {index} has an empty context: its first option token has no prediction")
    window = getattr(getattr(model, "config", None), "sliding_window", None)
    longest = max((len(c) + max((len(o) for o in opts), default=0) for c, opts in zip(context_ids, option_ids,
                                                                                      strict=True)), default=0)
    if window and longest >= window:
        pairs = [(c, o) for c, opts in zip(context_ids, option_ids, strict=True) for o in opts]
        flat = iter(token_logprobs(model, pairs, pad_id=_pad_id(tokenizer), batch_size=batch_size))
        return [[next(flat) for _ in opts] for opts in option_ids]
    results: list[list[list[float]]] = [[[] for _ in opts] for opts in option_ids]
    order = sorted(range(len(contexts)), key=lambda i: -len(context_ids[i]))
    device = getattr(model, "device", "cpu")
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        ids, mask = _left_pad([context_ids[i] for i in batch], _pad_id(tokenizer))
        positions = (mask.cumsum(-1) - 1).clamp_(min=0)
        with torch.inference_mode():
            out = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                        use_cache=True, logits_to_keep=1)
            first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
            tails = []  # (row in batch, context, option) whose option has tokens after the first
            for row, i in enumerate(batch):
                for j, option in enumerate(option_ids[i]):
                    if option:
                        results[i][j] = [float(first[row, option[0]])]
                    if len(option) > 1:
                        tails.append((row, i, j))
            if not tails:
                continue
            cache = out.past_key_values
            if cache is None:  # a model that keeps no cache: score the remaining option tokens the plain way
                pairs = [(context_ids[i] + option_ids[i][j][:1], option_ids[i][j][1:]) for _, i, j in tails]
                rest = token_logprobs(model, pairs, pad_id=_pad_id(tokenizer), batch_size=batch_size)
                for (_, i, j), values in zip(tails, rest, strict=True):
                    results[i][j] += values
                continue
            cache.batch_select_indices(torch.tensor([row for row, _, _ in tails], device=device))
            width = max(len(option_ids[i][j]) - 1 for _, i, j in tails)
            feed = torch.full((len(tails), width), _pad_id(tokenizer), dtype=torch.long)
            feed_mask = torch.zeros((len(tails), width), dtype=torch.long)
            targets = []
            for r, (_, i, j) in enumerate(tails):
                option = option_ids[i][j]
                feed[r, : len(option) - 1] = torch.tensor(option[:-1], dtype=torch.long)
                feed_mask[r, : len(option) - 1] = 1
                targets.extend(option[1:])
            rows = torch.tensor([row for row, _, _ in tails])
            full_mask = torch.cat([mask[rows], feed_mask], dim=1)
            feed_positions = mask[rows].sum(-1, keepdim=True) + torch.arange(width)[None, :]
            keep = feed_mask.bool()
            logits = model(input_ids=feed.to(device), attention_mask=full_mask.to(device),
                           position_ids=feed_positions.to(device), past_key_values=cache,
                           logits_to_keep=keep.to(device)).logits
            if logits.dim() == 3:
                logits = logits[keep.to(logits.device)]
            logits = logits.float()
            target = torch.tensor(targets, dtype=torch.long, device=logits.device)
            values = (logits.gather(1, target[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)).tolist()
        at = 0
        for _, i, j in tails:
            count = len(option_ids[i][j]) - 1
            results[i][j] += values[at : at + count]
            at += count
    return results


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def _left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[Any, Any]:
    import torch

    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, width - len(sequence) :] = torch.tensor(list(sequence), dtype=torch.long)
        mask[row, width - len(sequence) :] = 1
    return ids, mask
