"""Domain perplexity: how likely the model finds the reference answers of held-out domain conversations.

For a user's own domain data there is no answer key to grade, so the ``domain_ppl`` task scores the
held-out rows (``core.domain.split_by_content`` at the evaluation's ``domain_test_fraction``: the same rows
a mix made with the same fraction never trained on) by the negative log-likelihood of each conversation's
final assistant turn, given every turn before it in the chat template of the model under evaluation (the
tokens training would have taught: the answer and its end-of-turn marker). Lower is better.

Each item is identified by its content (the sha1 ``split_by_content`` ranks by, plus an occurrence number
for repeated rows), so a rerun resumes and an edited row is scored afresh. Scoring reuses drift's batched
forward pass with the model as its own base (so only the NLL sums matter).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from core.domain import Messages
from core.domain_rows import row_digests
from core.eval_drift import DriftText

MAX_TOKENS = 1024  # a longer conversation keeps its answer's first tokens and the context's last ones


def item_ids(rows: Sequence[Messages]) -> list[str]:
    """Stable ids of conversations: their digest, and ``-k`` for the k-th repeat of the same content."""
    seen: dict[str, int] = {}
    ids = []
    for digest in row_digests(rows):  # spooled rows: read from their index, not re-serialised
        ids.append(digest if digest not in seen else f"{digest}-{seen[digest]}")
        seen[digest] = seen.get(digest, 0) + 1
    return ids


def conversation_text(tokenizer: Any, item_id: str, messages: Messages, max_tokens: int = MAX_TOKENS) -> DriftText:
    """Token ids of the context (every turn before the last) and of the final assistant turn."""
    context, answer = messages[:-1], messages[-1]["content"]
    if tokenizer.chat_template:
        prompt = tokenizer.apply_chat_template(context, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        if full_ids[: len(prompt_ids)] == prompt_ids and len(full_ids) > len(prompt_ids):
            response_ids = full_ids[len(prompt_ids) :]
        else:  # a template that rewrites earlier turns: score the answer's own tokens after the prompt
            response_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    else:
        text = "\n\n".join(message["content"] for message in context)
        prompt_ids = tokenizer(text.rstrip() + "\n\n", add_special_tokens=True)["input_ids"]
        response_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    response_ids = response_ids[: max_tokens - 1]
    prompt_ids = prompt_ids[-(max_tokens - len(response_ids)) :] or [tokenizer.pad_token_id or 0]
    return DriftText(item_id, tuple(prompt_ids), tuple(response_ids))


def ppl_metrics(scores: Sequence[Any]) -> dict[str, Any]:
    """nll (per token, token-weighted), ppl = exp(nll), nll_stderr over items, n and tokens.

    ``scores`` are drift scores of the model against itself (``nll_tuned`` sums). The standard error is the
    token-weighted mean's, with items as the units (the ratio estimator's delta-method error).
    """
    tokens = sum(s.tokens for s in scores)
    n = len(scores)
    if not tokens:
        return {"nll": None, "ppl": None, "nll_stderr": None, "n": n, "tokens": 0}
    nll = sum(s.nll_tuned for s in scores) / tokens
    stderr = (math.sqrt(n / (n - 1) * sum((s.nll_tuned - nll * s.tokens) ** 2 for s in scores)) / tokens
              if n > 1 else None)
    return {"nll": nll, "ppl": math.exp(nll), "nll_stderr": stderr, "n": n, "tokens": tokens}
