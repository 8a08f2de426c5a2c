"""Model-based profile measures: zero-shot task categories, judge-rated difficulty, and IFD.

All are forward passes only (no sampling), batched, through an engine (`core.engines.base`): difficulty
reads next-token log-probabilities, categories and IFD continuation log-probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from core.engines.base import Engine, answer_probabilities
from core.engines.next_token import answer_token_groups, rating_lead
from core.errors import ForgetlessError
from core.screen.prompts import (
    RATING_LEAD,
    RATING_TOKENS,
    difficulty_messages,
    expected_rating,
    plain_difficulty_prompt,
    plain_response_prompt,
    renormalise,
)

CATEGORIES = ("coding", "math", "writing", "advice", "information seeking", "reasoning", "role-play", "other")
CALIBRATIONS = ("auto", "batch", "null", "none")
# Batch calibration needs enough instructions for their mean to stand for the collection.
MIN_BATCH_CALIBRATION = 2 * len(CATEGORIES)
NULL_INSTRUCTION = "N/A"  # the content-free instruction of null calibration


# --- zero-shot categories ---------------------------------------------------------------------------------
def category_prompt(instruction: str) -> str:
    """The context whose continuation is scored with each category name (" coding", " math", ...)."""
    return (f"Task categories: {', '.join(CATEGORIES)}.\n\nInstruction: {instruction.strip()}\n"
            "The task category of this instruction is:")


def category_scores(engine: Engine, texts: Sequence[str], batch_size: int = 16) -> np.ndarray:
    """Raw scores [len(texts), len(CATEGORIES)]: the summed log-probability of each category name
    (" coding", ...) as the continuation of `category_prompt`. ``batch_size`` instructions go to the
    engine at a time; an instruction's names share its forward pass."""
    names = [" " + name for name in CATEGORIES]
    scores = []
    for start in range(0, len(texts), batch_size):
        batch = texts[start : start + batch_size]
        contexts = [category_prompt(text) for text in batch for _ in names]
        logprobs = engine.continuation_logprobs(contexts, names * len(batch))
        scores += [[sum(logprobs[row * len(names) + j]) for j in range(len(names))] for row in range(len(batch))]
    return np.array(scores, dtype=np.float64).reshape(len(texts), len(CATEGORIES))


def calibrated_probs(scores: np.ndarray, calibration: str = "auto",
                     null_scores: np.ndarray | None = None) -> np.ndarray:
    """Category probabilities from raw scores: softmax over calibrated scores, in CATEGORIES order.

    Raw log-likelihoods mostly reflect how likely each *name* is (short, frequent names win), not the
    instruction. Calibration removes that prior:
    - ``batch``: subtract each category's mean score over all the given instructions (Batch Calibration,
      Zhou et al. 2023): an instruction gets the category it favours more than the collection does. Best
      on a real collection (on SmolLM2-135M it separated coding / cooking / math / role-play / writing /
      advice, where raw scores called nearly everything "role-play"); it assumes no one category dominates.
    - ``null``: subtract the scores of a content-free instruction ("N/A"; Zhao et al. 2021), given as
      ``null_scores``; works for a single instruction, but is biased by what "N/A" suggests.
    - ``none``: raw scores.
    - ``auto``: batch with at least MIN_BATCH_CALIBRATION (16) instructions, else null.
    """
    if calibration not in CALIBRATIONS:
        raise ValueError(f"calibration must be one of {CALIBRATIONS}")
    scores = np.asarray(scores, dtype=np.float64)
    if calibration == "auto":
        calibration = "batch" if len(scores) >= MIN_BATCH_CALIBRATION else "null"
    if calibration == "batch" and len(scores):
        scores = scores - scores.mean(axis=0, keepdims=True)
    elif calibration == "null":
        if null_scores is None:
            raise ValueError("null calibration needs the scores of the null instruction")
        scores = scores - np.asarray(null_scores, dtype=np.float64).reshape(1, -1)
    shifted = scores - scores.max(axis=1, keepdims=True) if len(scores) else scores
    weights = np.exp(shifted)
    return weights / weights.sum(axis=1, keepdims=True) if len(scores) else weights


def needs_null_scores(n: int, calibration: str) -> bool:
    return calibration == "null" or (calibration == "auto" and n < MIN_BATCH_CALIBRATION)


def categorise(engine: Engine, texts: Sequence[str], batch_size: int = 16,
               calibration: str = "auto") -> tuple[list[str], np.ndarray]:
    """Zero-shot task category per instruction by label likelihood; probabilities [n, len(CATEGORIES)].

    See `category_scores` (the likelihoods) and `calibrated_probs` (why and how they are calibrated).
    Batch calibration is relative to ``texts``: pass the whole collection, not one small batch.
    """
    scores = category_scores(engine, texts, batch_size)
    null = category_scores(engine, [NULL_INSTRUCTION])[0] if needs_null_scores(len(texts), calibration) else None
    probs = calibrated_probs(scores, calibration, null)
    return [CATEGORIES[i] for i in probs.argmax(axis=1)], probs


# --- difficulty -------------------------------------------------------------------------------------------
def difficulty_prompt(tokenizer: Any, instruction: str) -> tuple[str, str]:
    """The difficulty prompt (ending where the rating digit comes) and its format (as judge_prompt)."""
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(difficulty_messages(instruction), tokenize=False,
                                             add_generation_prompt=True)
        return text + rating_lead(tokenizer, RATING_LEAD), "chat"
    return rating_lead(tokenizer, plain_difficulty_prompt(instruction)), "plain"


def judge_difficulty(engine: Engine, instructions: Sequence[str],
                     batch_size: int = 16) -> tuple[list[float], list[list[float]]]:
    """Difficulty 1-5 per instruction: the expected rating under the judge's renormalised P("1".."5").

    Read exactly as response judging reads its ratings (one forward pass, no sampling), so both scales
    behave alike. Returns the scores and the renormalised five probabilities per instruction.
    """
    tokenizer = engine.tokenizer
    try:
        groups = answer_token_groups(tokenizer, RATING_TOKENS)
    except ValueError as error:
        raise ForgetlessError(f"difficulty judge '{engine.name}' cannot rate: {error}") from error
    flat = [token for group in groups for token in group]
    if len(set(flat)) < len(flat) or tokenizer.unk_token_id in flat:
        raise ForgetlessError(f"difficulty judge '{engine.name}' cannot rate: its vocabulary lacks the digits 1-5")
    scores, probs = [], []
    for start in range(0, len(instructions), batch_size):
        prompts = [tokenizer(difficulty_prompt(tokenizer, text)[0], add_special_tokens=False)["input_ids"]
                   for text in instructions[start : start + batch_size]]
        for row in answer_probabilities(engine, prompts, RATING_TOKENS):
            scores.append(expected_rating(row))
            probs.append(renormalise(row))
    return scores, probs


# --- instruction-following difficulty (IFD) ---------------------------------------------------------------
def ifd_contexts(tokenizer: Any, instruction: str) -> tuple[str, str]:
    """The two contexts a response is scored after: with the instruction, and with an empty one.

    Chat models: their template with the instruction as the user turn, and with an empty user turn, both
    ending at the assistant's turn. Base models: the plain "### Instruction / ### Response" layout used for
    their responses, likewise with and without the instruction. Keeping the template in both isolates what
    the instruction itself adds, and every response token is scored in both.
    """
    if tokenizer.chat_template:
        def render(text: str) -> str:
            return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                 add_generation_prompt=True)

        return render(instruction), render("")
    return plain_response_prompt(instruction)[0], plain_response_prompt("")[0]


def ifd_scores(engine: Engine, instructions: Sequence[str], responses: Sequence[str | None],
               batch_size: int = 8) -> list[float | None]:
    """IFD (Li et al. 2024, "From Quantity to Quality") per instruction, None where there is no response.

    IFD = mean token loss of the response given the instruction / mean token loss of the response without
    it (see `ifd_contexts`). Near or above 1, the instruction barely helps the target model produce the
    response (hard to follow, or a mismatched pair); well below 1, the response follows easily from it.
    The response is scored without the end-of-turn token. An empty response also gives None.
    """
    if len(instructions) != len(responses):
        raise ValueError("instructions and responses differ in length")
    todo = [i for i, response in enumerate(responses) if response and response.strip()]
    logprobs: list[list[float]] = []
    for start in range(0, len(todo), batch_size):  # batch_size instructions: 2 x batch_size scored pairs
        contexts, continuations = [], []
        for i in todo[start : start + batch_size]:
            with_instruction, without = ifd_contexts(engine.tokenizer, instructions[i])
            contexts += [with_instruction, without]
            continuations += [responses[i], responses[i]]
        logprobs += engine.continuation_logprobs(contexts, continuations)
    out: list[float | None] = [None] * len(instructions)
    for n, i in enumerate(todo):
        conditioned, alone = logprobs[2 * n], logprobs[2 * n + 1]
        if not conditioned:
            continue
        loss_alone = -float(np.mean(alone))
        out[i] = -float(np.mean(conditioned)) / loss_alone if loss_alone > 0 else None
    return out
