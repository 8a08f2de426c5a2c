"""Signal judges: measured properties of an answer, put on the judges' 1-5 scale so they join the consensus.

A 135M or 270M model asked for a rating barely tells a reference answer from a degraded one (see
`forgetless judge-check`), but the same small models, and the packaged sentence embedder, measure
simpler things well. Each signal is named like a judge, ``SIGNAL:MODEL``, and scores every response:

- ``relevance:EMBEDDER`` — cosine similarity of the instruction's and the answer's sentence embeddings
  (an answer to another question scores low);
- ``completeness:MODEL`` — the model's probability that the turn ends right after the answer (an answer
  cut short does not end there);
- ``fluency:MODEL`` — the mean log-probability of the answer's tokens after the instruction in the model's
  chat template (text in scrambled order is improbable).

Each raw value goes through a fixed monotone map onto 1-5 (`to_rating`; its anchors below), so a score
depends on its own response only: batches commit and resume like a model judge's, and the raw value is
kept beside the score. What each scores in `forgetless judge-check`, alone and together: README.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from core.engines.base import Engine
from core.engines.embedder import DEFAULT_EMBEDDER, Embed, resolve_embedder

SIGNALS = ("relevance", "completeness", "fluency")
SIGNAL_FORMAT = "signal"  # the prompt_format stored with a signal's scores
EMBEDDER_SIGNALS = ("relevance",)
# The signals on the packaged models, offered next to the model aliases where judges are picked.
SIGNAL_EXAMPLES = (f"relevance:{DEFAULT_EMBEDDER}", "completeness:smollm2-135m-instruct",
                   "fluency:smollm2-135m-instruct")
# Each signal's value is mapped linearly onto 1..5 between two anchors (clipped outside): cosine for
# relevance (all-MiniLM-L6-v2 puts answers to another question near 0, on-topic ones at 0.4-0.8); log10 of
# the probability for completeness (it spans orders of magnitude: ~1e-6 mid-sentence, 0.1-0.9 at a real
# end); nats per token for fluency (the packaged models' answers fall between -4 and -1).
ANCHORS = {"relevance": (0.0, 0.8), "completeness": (-4.0, 0.0), "fluency": (-4.0, -1.0)}
_SENTINEL = "\u2063answer\u2063"



@dataclass(frozen=True)
class SignalJudge:
    signal: str  # one of SIGNALS
    model: str  # the embedder (relevance) or the language model that measures it

    @property
    def name(self) -> str:
        return f"{self.signal}:{self.model}"

    @property
    def needs_embedder(self) -> bool:
        return self.signal in EMBEDDER_SIGNALS


def parse_signal(spec: str) -> SignalJudge | None:
    """The signal a judge spec names (``SIGNAL:MODEL``), or None for a model judge."""
    signal, colon, model = spec.partition(":")
    if not colon or signal.strip() not in SIGNALS:
        return None
    return SignalJudge(signal.strip(), model.strip())


def to_rating(signal: str, raw: float) -> float:
    """A raw signal value on the judges' 1-5 scale (see ANCHORS); NaN stays NaN."""
    low, high = ANCHORS[signal]
    if math.isnan(raw):
        return float("nan")
    value = raw
    if signal == "completeness":  # a probability: compared on a log scale
        value = math.log10(raw) if raw > 0 else -math.inf
    return 1.0 + 4.0 * min(1.0, max(0.0, (value - low) / (high - low)))


def relevance(embed: Embed, items: Sequence[tuple[str, str]]) -> list[float]:
    """Cosine similarity of each instruction's and answer's embeddings (``embed`` returns unit vectors)."""
    if not items:
        return []
    instructions = embed([instruction for instruction, _ in items])
    answers = embed([answer for _, answer in items])
    return [float(value) for value in (instructions * answers).sum(axis=1)]


def answer_context(tokenizer: Any, instruction: str) -> str:
    """Where the answer begins: the instruction as the user's turn and the assistant's turn opened (chat
    template), or a plain "Instruction/Response" frame for a model without one."""
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template([{"role": "user", "content": instruction.strip()}], tokenize=False,
                                             add_generation_prompt=True)
    return f"Instruction: {instruction.strip()}\nResponse: "


def end_of_turn(tokenizer: Any) -> str:
    """The text that closes an assistant turn in the model's template (e.g. "<|im_end|>"); the EOS token's
    text without a template."""
    if tokenizer.chat_template:
        messages = [{"role": "user", "content": "?"}, {"role": "assistant", "content": _SENTINEL}]
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        after = text[text.index(_SENTINEL) + len(_SENTINEL):]
        first = tokenizer(after, add_special_tokens=False)["input_ids"][:1]
        if first:
            return tokenizer.decode(first)
    return tokenizer.eos_token or ""


def answer_texts(tokenizer: Any, items: Sequence[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """What a language-model signal scores for each (instruction, answer): the context where the answer begins,
    and the answer with the text that closes the turn."""
    closing = end_of_turn(tokenizer)
    return ([answer_context(tokenizer, instruction) for instruction, _ in items],
            [answer.strip() + closing for _, answer in items])


def answer_logprobs(engine: Engine, items: Sequence[tuple[str, str]]) -> list[tuple[list[float], float]]:
    """Per answer, in one forward pass: its tokens' log-probabilities after the instruction, and the log
    probability that the turn ends right after it."""
    rows = engine.continuation_logprobs(*answer_texts(engine.tokenizer, items))
    return [(row[:-1], row[-1]) if row else ([], float("-inf")) for row in rows]


def measure(judge: SignalJudge, scorer: Engine | Embed, items: Sequence[tuple[str, str]]) -> list[float]:
    """The raw signal of each (instruction, answer), by the embedder or engine ``scorer``."""
    if judge.needs_embedder:
        return relevance(scorer, items)  # type: ignore[arg-type]
    measured = answer_logprobs(scorer, items)  # type: ignore[arg-type]
    if judge.signal == "completeness":
        return [math.exp(closing) for _, closing in measured]
    return [sum(tokens) / len(tokens) if tokens else float("nan") for tokens, _ in measured]


def signal_tokens_read(judge: SignalJudge, scorer: Any, items: Sequence[tuple[str, str]]) -> int:
    """The tokens measuring ``items`` reads: the embedder's for each instruction and answer (``scorer.count_tokens``),
    or the language model's for each context and answer, encoded as every engine scores them."""
    from core.engines.loglik import encode_pairs

    if judge.needs_embedder:
        return scorer.count_tokens([instruction for instruction, _ in items]) + scorer.count_tokens(
            [answer for _, answer in items])
    pairs = encode_pairs(scorer.tokenizer, *answer_texts(scorer.tokenizer, items))
    return sum(len(context) + len(answer) for context, answer in pairs)


def scorer_opener(engines: Callable[[str], Any], embedders: Callable[[str], Embed]) -> Callable[[str], Any]:
    """Opens what scores for a judge spec: the model's engine for a model judge and for a signal measured by
    a language model (on the job's engine), the embedder (always in-process) for relevance."""
    from contextlib import nullcontext

    def open_scorer(spec: str) -> Any:
        judge = parse_signal(spec)
        if judge is None:
            return engines(spec)
        return nullcontext(embedders(judge.model)) if judge.needs_embedder else engines(judge.model)

    return open_scorer


def loaded_models(judges: Sequence[str]) -> list[str]:
    """The language models a list of judges loads (a signal's measuring model; embedders apart)."""
    models = []
    for spec in judges:
        judge = parse_signal(spec)
        if judge is None:
            models.append(spec)
        elif not judge.needs_embedder:
            models.append(judge.model)
    return list(dict.fromkeys(models))


def check_embedders(judges: Sequence[str]) -> None:
    """Fail in one line (ForgetlessError) when a relevance judge names no embedder that can be found."""
    for spec in judges:
        judge = parse_signal(spec)
        if judge is not None and judge.needs_embedder:
            resolve_embedder(judge.model)
