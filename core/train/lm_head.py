"""The LM head's log-probabilities for training on a CPU, at a quarter of the time TRL's fused head takes there.

TRL's ``SFTTrainer`` patches the model with a fused LM head (``trl.trainer.utils.add_fused_lm_head``) that never
builds the ``[tokens, vocab]`` logits. With Triton (GPUs) it projects only the trained positions; on a CPU it
projects *every* position and folds each vocabulary tile with a dozen elementwise passes in torch. For SmolLM2-135M
(49,152-token vocabulary) that was half of a full fine-tuning step on a 2-core Xeon: 1,255 positions of which ~500
trained took 2.96 s per forward + backward, against 0.72 s for a plain cross-entropy over the trained positions' logits.

``project_trained_positions`` keeps TRL's contract (``model(..., fused_lm_head=True)`` returns a
``FusedCausalLMOutput`` with the loss, per-token log-probabilities, entropy and top-1 flags, zero where the label is
-100) and computes it from the trained positions' logits, a slice of tokens at a time under activation checkpointing,
so memory stays at one slice's logits whatever the batch (a batch of one slice is not recomputed).
"""

from __future__ import annotations

import functools
import types
from typing import Any

TOKENS_PER_SLICE = 1024  # 1,024 x 49,152 fp32 logits: 200 MB, and ~3x that for their gradient's temporaries


def project_trained_positions(model: Any) -> None:
    """Re-patch ``model`` (as TRL's fused head patched it: the base model under a PEFT wrapper) so that its
    ``fused_lm_head=True`` forward projects only the positions with a label; other calls go through unchanged."""
    from trl.trainer.utils import FusedCausalLMOutput

    trl_forward = model.forward

    @functools.wraps(type(model).forward)
    def forward(self: Any, *args: Any, fused_lm_head: bool = False, labels: Any = None, **kwargs: Any) -> Any:
        # pre-shifted labels (sequence parallelism) and MoE router losses: TRL's own head handles those
        if not fused_lm_head or "shift_labels" in kwargs or kwargs.get("output_router_logits"):
            return trl_forward(*args, fused_lm_head=fused_lm_head, labels=labels, **kwargs)
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        targets = labels[:, 1:]
        mask = targets != -100
        picked = _trained_log_probs(self.get_output_embeddings(), hidden[mask], targets[mask])
        log_probs, entropy, is_top1 = (hidden.new_zeros(mask.shape, dtype=value.dtype).masked_scatter(mask, value)
                                       for value in picked)
        count = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(loss=-log_probs.sum() / count, log_probs=log_probs, entropy=entropy,
                                   is_top1=is_top1, label_mask=mask)

    model.forward = types.MethodType(forward, model)


def _trained_log_probs(head: Any, hidden: Any, targets: Any) -> tuple[Any, Any, Any]:
    """(log-probability of each target, entropy, whether the target is the argmax) for ``hidden`` [n, H]; the
    log-probabilities carry gradients, the other two are metrics."""
    import torch
    from torch.utils.checkpoint import checkpoint

    starts = range(0, len(targets), TOKENS_PER_SLICE)
    if len(starts) <= 1:  # one slice (or none: a zero-length result keeps backward() working): nothing to recompute
        pieces = [_slice_log_probs(head, hidden, targets)]
    else:
        pieces = [checkpoint(_slice_log_probs, head, hidden[start:start + TOKENS_PER_SLICE],
                             targets[start:start + TOKENS_PER_SLICE], use_reentrant=False) for start in starts]
    return tuple(torch.cat(parts) for parts in zip(*pieces, strict=True))  # type: ignore[return-value]


def _slice_log_probs(head: Any, hidden: Any, targets: Any) -> tuple[Any, Any, Any]:
    import torch

    logits = head(hidden).float()
    log_z = logits.logsumexp(-1)
    log_probs = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - log_z
    with torch.no_grad():
        probs = torch.softmax(logits, -1)
        entropy = log_z - (probs * logits).sum(-1)
        # a tie counts for the first maximum, as in TRL's head
        is_top1 = logits.argmax(-1) == targets
    return log_probs, entropy, is_top1
