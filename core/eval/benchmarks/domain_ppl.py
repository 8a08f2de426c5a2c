"""Domain perplexity (the answer fit): how likely the model finds the reference answers of held-out domain
conversations.

A user's own domain data has no answer key to grade, and a small model's MedMCQA letter accuracy mostly tracks
which letter it prefers (docs/results.md), so the ``domain_ppl`` task scores every domain's held-out rows — a
user's (``core.mix.domain.split_by_content`` at the evaluation's ``domain_test_fraction``: the same rows a mix
made with the same fraction never trained on) or MedMCQA's test split with its explanations — by the negative
log-likelihood of each conversation's final assistant turn, given every turn before it in the chat template of
the model under evaluation (the tokens training would have taught: the answer and its end-of-turn marker). Lower
is better.

Each item is identified by its content (the sha1 ``split_by_content`` ranks by, plus an occurrence number
for repeated rows), so a rerun resumes and an edited row is scored afresh. Scoring reuses drift's batched
forward pass with the model as its own base (so only the NLL sums matter).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core.eval.benchmarks.drift import (
    DriftScore,
    DriftText,
    drift_scores,
    in_process_model,
    text_batches,
    text_tokens,
)
from core.eval.task import TaskModels, TaskRun, metric_cell, register, seeded_pick
from core.mix.domain import Messages, load_domain
from core.mix.rows import row_digests
from core.progress import Progress
from core.store.evaluation import EvalItemRow

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


def held_out_rows(run: TaskRun) -> list[tuple[str, Messages]]:
    """(item id, conversation) of the held-out domain rows: MedMCQA's test split, or a user's split_by_content
    test side at the configured fraction (the rows a mix with that fraction left out). Loaded once per run."""
    def load() -> list[tuple[str, Messages]]:
        data = load_domain(run.config.domain, test_fraction=run.config.domain_test_fraction)
        return list(zip(item_ids(data.test), data.test, strict=True))

    return run.shared("domain_rows", load)


def with_domain(metrics: dict[str, Any], run: TaskRun) -> dict[str, Any]:
    """A user-domain task's metrics name the data and the held-out share they were measured on."""
    return {**metrics, "domain": run.config.domain, "domain_test_fraction": run.config.domain_test_fraction}


DOMAIN_KEYS = ("domain", "domain_test_fraction")


@dataclass(frozen=True)
class DomainPerplexityTask:
    """The domain's held-out conversations: the NLL of each final answer (lower is better)."""

    name: str = "domain_ppl"
    suite: str = "domain"
    needs_base: bool = False
    in_process: bool = True

    def in_suite(self, config: Any) -> bool:
        return True  # any domain: the built-in one's letter accuracy alone would mostly show a letter preference

    def check(self, run: TaskRun) -> bool:
        held_out_rows(run)  # bad domain data fails before the model loads
        return True

    def items(self, run: TaskRun, tokenizer: Any) -> list[DriftText]:
        picked = seeded_pick(held_out_rows(run), run.config.limit, run.config.seed)
        return [conversation_text(tokenizer, item_id, messages) for item_id, messages in picked]

    def item_id(self, item: DriftText) -> str:
        return str(item.item_id)

    def batches(self, items: Sequence[DriftText], batch_size: int) -> list[list[DriftText]]:
        return text_batches(items, batch_size)

    def score(self, batch: list[DriftText], models: TaskModels,
              progress: Progress) -> tuple[list[EvalItemRow], int]:
        model = in_process_model(models.model, self.name)
        own = drift_scores(model, model, batch, pad_id=models.model.tokenizer.pad_token_id or 0)  # NLL sums kept
        return ([EvalItemRow(s.item_id, None, None, None, None, {"tokens": s.tokens, "nll": s.nll_tuned}) for s in own],
                text_tokens(batch))

    def metrics(self, rows: Sequence[EvalItemRow], run: TaskRun) -> dict[str, Any]:
        return with_domain(ppl_metrics([DriftScore(r.item_id, (r.extra or {})["tokens"], 0.0, 0.0,
                                                   (r.extra or {})["nll"]) for r in rows]), run)

    def headline(self, metrics: dict[str, Any]) -> dict[str, Any]:
        return {key: metrics.get(key) for key in ("nll", "ppl", "nll_stderr", "n", "tokens", *DOMAIN_KEYS)}

    def table_cells(self, metrics: dict[str, Any]) -> tuple[Any, Any, Any, str]:
        notes = f"nll/token={metric_cell(metrics.get('nll'))} ppl={metric_cell(metrics.get('ppl'))} (lower is better)"
        return None, None, metrics.get("nll_stderr"), notes


register(DomainPerplexityTask())
