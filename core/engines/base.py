"""The inference engine seam: the one protocol through which every stage uses a model.

An engine serves one model. Stages render their prompts with the model's own tokenizer
(``engine.tokenizer``, a Hugging Face tokenizer, also where the model is served elsewhere) and pass
token ids, so a chat template's own BOS text is never doubled; continuation scoring takes text, because
how a context and its continuation are split into tokens is part of what is scored (see
`core.engines.loglik.encode_pairs`).

One call is one batch: an engine that batches in-process runs each call as one batch (a memory cap
aside), so callers chunk their work (as they do anyway, to commit, report progress and honour a cancel
between batches). An engine that batches itself (a serving engine) may ignore that.

Implementations: `core.engines.in_process.InProcessEngine` (transformers, the embedded default) and
`core.engines.vllm.VllmEngine` (a vLLM server); `core.engines.choice` opens the one a job asks for.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from core.engines.next_token import answer_token_groups


@dataclass(frozen=True)
class SampleSettings:
    """How to sample: the provenance a stage stores with every sampled row."""

    max_new_tokens: int = 128
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    n: int = 1  # samples per prompt
    stop: tuple[str, ...] = ()  # stop strings: a sample's text ends before the first one it contains
    stop_token_ids: tuple[int, ...] = ()  # decoding of a sample ends at any of these (not included)
    seed: int = 0  # the same prompts, settings and seed give the same samples on the same engine
    skip_special_tokens: bool = True  # False keeps template tokens in the text (to spot leaked ones)


@dataclass
class Sample:
    """One sampled continuation."""

    text: str  # decoded, cut before the first stop string
    token_ids: list[int]  # the generated tokens (stop token excluded); their count is what was generated
    stopped: bool  # True when it ended on a stop token or stop string, False when cut at max_new_tokens


class Engine(Protocol):
    """One model, served in-process or elsewhere. ``close()`` releases it; an engine is also a context manager."""

    name: str  # the model's name, stored as provenance
    tokenizer: Any  # the model's own Hugging Face tokenizer: prompts are rendered and tokenised with it
    served_by: str  # "transformers" or "vllm": stored with every batch the engine makes
    url: str | None  # the server's URL (None in-process): stored with every batch too

    def sample(self, prompts: Sequence[Sequence[int]], settings: SampleSettings, *,
               on_tokens: Callable[[int], None] | None = None) -> list[Sample]:
        """``settings.n`` samples of each prompt (token ids), prompt by prompt: ``len(prompts) * n`` in all.

        ``on_tokens(count)`` is called as tokens are generated (their count since the last call); it may
        raise (`core.progress.Cancelled`) to abandon the batch.
        """
        ...

    def next_token_logprobs(self, prompts: Sequence[Sequence[int]],
                            token_ids: Sequence[int]) -> list[list[float]]:
        """log P(next token = t | prompt) for each prompt (token ids) and each t in ``token_ids``.

        Exact for every token asked for (the vLLM engine asks the server for exactly these ids, and fails in
        one line rather than guess from a top-k list when a server cannot).
        """
        ...

    def continuation_logprobs(self, contexts: Sequence[str],
                              continuations: Sequence[str]) -> list[list[float]]:
        """log P(token | everything before it) for each token of each continuation after its context.

        Context and continuation are tokenised apart (`core.engines.loglik.encode_pairs`). Sum a result
        for a log-likelihood, average it for a per-token one. Adjacent pairs with the same context (the
        options of one multiple-choice item) may share that context's forward pass.
        """
        ...

    def close(self) -> None:
        """Release the model (the engine is not used after)."""
        ...

    def __enter__(self) -> Engine: ...

    def __exit__(self, *exc: object) -> None: ...


OpenEngine = Callable[[str], Engine]
"""Opens an engine for a MODEL spec: what every model-facing stage receives (as ``engines``)."""


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """Text up to the first stop string, and whether one was found."""
    cut = min((text.index(stop) for stop in stops if stop in text), default=None)
    return (text, False) if cut is None else (text[:cut], True)


def group_probabilities(logprobs: Sequence[float], token_ids: Sequence[int],
                        groups: Sequence[Sequence[int]]) -> list[float]:
    """P(next token) summed over each group of token ids (e.g. "4" and " 4"), from one prompt's
    `next_token_logprobs` over ``token_ids``."""
    by_id = dict(zip(token_ids, logprobs, strict=True))
    return [sum(math.exp(by_id[token]) for token in group) for group in groups]


def answer_probabilities(engine: Engine, prompts: Sequence[Sequence[int]],
                         answers: Sequence[str]) -> list[list[float]]:
    """P(the next token spells each answer) after each prompt, not renormalised: summed over the answer's
    single-token spellings with and without a leading space (e.g. "4" and " 4"), so a rating does not
    depend on how the tokenizer splits the space before it. ValueError when an answer has no single token."""
    groups = answer_token_groups(engine.tokenizer, answers)
    tokens = list(dict.fromkeys(token for group in groups for token in group))
    return [group_probabilities(row, tokens, groups) for row in engine.next_token_logprobs(prompts, tokens)]
