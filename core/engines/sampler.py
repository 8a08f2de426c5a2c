"""A batched sampler for Hugging Face causal LMs, tuned for Magpie-style reconstruction on a CPU.

Reconstruction decodes many samples of one identical pre-query prompt, so the prompt is prefilled once
(batch 1) and its KV cache broadcast to every row. The decode loop is our own rather than
``model.generate`` because generate keeps finished rows in the batch (compute stays at the full batch
until the longest row ends), grows its KV cache with a ``torch.cat`` per layer and step (at batch 256
that copies up to ~2 GB per step), and samples with ``torch.multinomial``, which on CPU takes over half
as long as the forward pass itself. On a 2-core CPU a step is now ~80% matrix multiplies.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

# Nucleus sampling looks among this many most likely tokens, then 16x as many for the rows whose nucleus
# is wider, and sorts the whole vocabulary only for rows wider still: a 49k sort costs ~2 ms per row,
# and at temperature 1 a third of SmolLM2's rows need more than 256 tokens for top_p 0.95.
_TOP_P_CANDIDATES = 256
# A KV buffer moves to a new one of the live rows' size once they fall to this fraction of its rows, so
# stopped rows' memory is returned. Batch 256: peak RSS 1.84 GB without, 1.57 at 0.5 (+1% time), 1.43 at
# 0.9 (+8% time: every move faults in fresh pages for the whole live cache).
_SHRINK_AT = 0.5


@dataclass
class TokenSample:
    """One generated continuation, as tokens (the engine decodes it: `core.engines.in_process`)."""

    token_ids: list[int]  # generated tokens, stop token excluded
    stopped: bool  # True when it ended on a stop token, False when cut at max_new_tokens


class _BufferLayer(DynamicLayer):
    """A full-attention KV layer writing in place into a ``[capacity, batch, heads, dim]`` buffer.

    ``DynamicLayer`` concatenates every step (copying the whole cache each time); this layer hands
    attention a strided view of the filled part. Position-major with the live rows first, it commits
    memory (pages count once written) only for live rows' tokens, and once enough rows have stopped the
    live ones move to a smaller buffer and the old one's memory goes back. A batch-1 prefill broadcasts
    into all rows: that is how the shared prompt's cache reaches the batch.
    """

    def __init__(self, batch: int, capacity: int) -> None:
        super().__init__()
        self.batch, self.capacity, self.length = batch, capacity, 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device, heads = key_states.dtype, key_states.device, key_states.shape[1]
        self._k = _empty(key_states, self.capacity, self.batch, heads, key_states.shape[-1])
        self._v = _empty(value_states, self.capacity, self.batch, heads, value_states.shape[-1])
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start, end = self.length, self.length + key_states.shape[-2]
        self._k[start:end, : self.batch] = key_states.permute(2, 0, 1, 3)
        self._v[start:end, : self.batch] = value_states.permute(2, 0, 1, 3)
        self.length = end
        keys, values = self._expose()
        # prefill attends over the prompt itself (it may be batch 1 while the buffer is not)
        return (key_states, value_states) if start == 0 else (keys, values)

    def _expose(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.keys, self.values = (
            b[: self.length, : self.batch].permute(1, 2, 0, 3) for b in (self._k, self._v)
        )
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep rows ``indices`` (in that order) first. The sampler refills the slots of finished rows
        with the last live rows, so only those rows are copied, until the live rows move house."""
        n, length = len(indices), self.length
        if n <= self._k.shape[1] * _SHRINK_AT:
            for name in ("_k", "_v"):
                old = getattr(self, name)
                new = _empty(old, old.shape[0], n, *old.shape[2:])
                torch.index_select(old[:length], 1, indices, out=new[:length])
                setattr(self, name, new)
        else:
            moved = (indices != torch.arange(n, device=indices.device)).nonzero()[:, 0]
            for buffer in (self._k, self._v):
                buffer[:length, moved] = buffer[:length, indices[moved]]
        self.batch = n
        self._expose()


def _empty(like: torch.Tensor, *shape: int) -> torch.Tensor:
    """An uninitialised buffer; on CPU given at least 32 MiB of address space, so that glibc maps it on its
    own and freeing it returns its memory at once (smaller blocks may be recycled within the heap and stay
    resident). Pages never written cost no memory."""
    numel = math.prod(shape)
    floor = (32 << 20) // like.element_size() + 1024 if like.device.type == "cpu" else 0
    return like.new_empty(max(numel, floor))[:numel].view(shape)


def _make_cache(model: Any, batch: int, capacity: int) -> DynamicCache:
    """The model's cache with plain full-attention layers swapped for buffer layers; sliding-window
    (Gemma 3), linear or shared layers keep their transformers classes and behaviour."""
    cache = DynamicCache(config=model.config)
    cache.layers = [_BufferLayer(batch, capacity) if type(x) is DynamicLayer else x for x in cache.layers]
    return cache


# Model families whose causal-LM logits are exactly ``lm_head(base_model(...).last_hidden_state)`` (no
# soft-capping or scaling), so the sampler may apply the head itself; others go through ``model(...)``.
_PLAIN_HEAD_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})
# Vocabulary slice per lm_head matmul: MKL runs a [batch, 576] x [576, 49152] product 15-25% faster as
# 2048-wide slices (the output slice stays in cache), and writing into one reused buffer spares the
# page faults of a fresh 50 MB logits tensor per step at batch 256.
_HEAD_CHUNK = 2048


class _LastLogits:
    """Runs the model for the logits of the last position only, ``[batch, vocab]``: the prefill needs no
    others (transformers' ``logits_to_keep``). Plain heads are applied here, in chunks into one buffer."""

    def __init__(self, model: Any, batch: int) -> None:
        self.model, self.head, self.out = model, model.get_output_embeddings(), None
        linear = isinstance(self.head, torch.nn.Linear) and self.head.bias is None
        if linear and model.config.model_type in _PLAIN_HEAD_TYPES and self.head.weight.device.type == "cpu":
            self.out = self.head.weight.new_empty(batch, self.head.weight.shape[0])

    def __call__(self, input_ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if self.out is None:
            return self.model(input_ids=input_ids, use_cache=True, logits_to_keep=1, **kwargs).logits[:, -1]
        hidden = self.model.base_model(input_ids=input_ids, use_cache=True, **kwargs).last_hidden_state[:, -1]
        out, weight = self.out[: hidden.shape[0]], self.head.weight
        for start in range(0, weight.shape[0], _HEAD_CHUNK):
            torch.mm(hidden, weight[start : start + _HEAD_CHUNK].t(), out=out[:, start : start + _HEAD_CHUNK])
        return out


def _refill_order(keep: list[int]) -> list[int]:
    """Row order after dropping: live rows stay put and the last live rows move into the freed slots."""
    kept, movers = set(keep), iter(j for j in keep if j >= len(keep))
    return [j if j in kept else next(movers) for j in range(len(keep))]


def _pick(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator, rows: int
) -> torch.Tensor:
    """Draw one token for each of ``rows`` rows from softmax(logits / temperature) cut to the top-p nucleus.

    ``logits`` has one row per sequence, or a single row shared by all (the shared prompt's prefill).
    Inverse-CDF sampling (one uniform per row, cumulative sum, binary search) draws from exactly that
    distribution and is ~20x cheaper on CPU than ``torch.multinomial``. The nucleus follows transformers'
    ``TopPLogitsWarper``: a token is kept when the probability mass of more likely tokens is < top_p.
    The logits are overwritten: at batch 256 each [batch, vocab] temporary is 50 MB of fresh pages.
    """
    if temperature <= 0:
        return logits.argmax(-1).expand(rows)
    logits = logits.float() if temperature == 1.0 else logits.float().div_(temperature)
    # one uniform per row, as [logit rows, rows per logit row]: a shared row is searched with all of them
    u = torch.rand(rows, generator=generator, device=logits.device).view(logits.shape[0], -1)
    if top_p >= 1.0:
        return _inverse_cdf(logits.sub_(logits.amax(-1, keepdim=True)).exp_(), u).view(-1)
    probs, wide = logits.softmax(-1), torch.arange(logits.shape[0], device=logits.device)
    choice = torch.empty_like(u, dtype=torch.long)
    for k in (_TOP_P_CANDIDATES, 16 * _TOP_P_CANDIDATES, probs.shape[-1]):  # more for wider nuclei
        k = min(k, probs.shape[-1])
        top, ids = (probs if len(wide) == len(probs) else probs[wide]).topk(k, -1)
        fits = (top.sum(-1) >= top_p) | (k == probs.shape[-1])
        top, ids, done, wide = top[fits], ids[fits], wide[fits], wide[~fits]
        drop = top.cumsum(-1).sub_(top) >= top_p  # mass of more likely tokens reaches top_p
        drop[:, 0] = False  # the most likely token always stays
        choice[done] = _inverse_cdf(top.masked_fill_(drop, 0.0), u[done], ids)
        if not len(wide):
            break
    return choice.view(-1)


def _inverse_cdf(weights: torch.Tensor, u: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
    """Column index (or ``ids`` entry) where each row's cumulative weight first exceeds ``u`` x its total."""
    cdf = weights.cumsum_(-1)
    choice = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_(max=cdf.shape[-1] - 1)
    return choice if ids is None else ids.gather(-1, choice)


def sample(
    model: Any,
    prompts: list[list[int]],
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 128,
    stop_token_ids: Sequence[int] = (),
    seed: int = 0,
    on_token: Callable[[int], None] | None = None,
) -> list[TokenSample]:
    """Sample one continuation per prompt, decoding all prompts together as one batch.

    Identical prompts (the Magpie case) are prefilled once; different prompts are left-padded. Rows leave
    the batch (with their cache) as soon as they stop, so compute follows the number of live rows.
    ``on_token(n)`` is called after each step with the number of tokens kept in that step (stop tokens are
    not counted, so the calls add up to the total length of the returned ``token_ids``). A fixed ``seed``
    gives the same samples for the same prompts, batch and torch thread count (the thread count changes
    float summation order, and so rarely a draw).
    """
    if not prompts:
        return []
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    results = [TokenSample([], False) for _ in prompts]
    if max_new_tokens <= 0:
        return results
    device = model.device
    stops = set(stop_token_ids)
    generator = torch.Generator(device=device).manual_seed(seed)
    batch, longest = len(prompts), max(len(p) for p in prompts)
    shared = all(p == prompts[0] for p in prompts)
    cache = _make_cache(model, batch, longest + max_new_tokens)
    forward = _LastLogits(model, batch)
    with torch.inference_mode():
        if shared:
            logits = forward(torch.tensor([prompts[0]], device=device), past_key_values=cache)
            for layer in cache.layers:  # buffer layers broadcast the prompt already; others copy it now
                if batch > 1 and not isinstance(layer, _BufferLayer):
                    layer.batch_repeat_interleave(batch)
            mask = positions = None
        else:  # left padding, so every row's next token lands in the same column
            pads = [longest - len(p) for p in prompts]
            ids = torch.tensor([[0] * pad + p for pad, p in zip(pads, prompts, strict=True)], device=device)
            mask = torch.tensor(
                [[0] * pad + [1] * (longest + max_new_tokens - pad) for pad in pads], device=device
            )
            positions = (mask[:, :longest].cumsum(-1) - 1).clamp_(min=0)
            logits = forward(
                ids, attention_mask=mask[:, :longest], position_ids=positions, past_key_values=cache
            )
            positions = positions[:, -1:]
        tokens = _pick(logits, temperature, top_p, generator, batch)
        live = list(range(batch))
        for step in range(max_new_tokens):
            keep = []
            for j, token in enumerate(tokens.tolist()):
                if token in stops:
                    results[live[j]].stopped = True
                else:
                    results[live[j]].token_ids.append(token)
                    keep.append(j)
            if on_token is not None:
                on_token(len(keep))
            if not keep or step == max_new_tokens - 1:
                break
            if len(keep) < len(live):
                order = _refill_order(keep)
                index = torch.tensor(order, device=device)
                cache.batch_select_indices(index)
                tokens = tokens[index]
                live = [live[j] for j in order]
                if mask is not None:
                    mask, positions = mask[index], positions[index]
            length = longest + step + 1
            if mask is None:  # one shared position and no padding: no mask at all
                kwargs = {"position_ids": torch.full((1, 1), length - 1, device=device)}
            else:
                positions = positions + 1
                kwargs = {"position_ids": positions, "attention_mask": mask[:, :length]}
            logits = forward(tokens[:, None], past_key_values=cache, **kwargs)
            tokens = _pick(logits, temperature, top_p, generator, len(live))
    return results
