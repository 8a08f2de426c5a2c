"""Domain test: held-out multiple-choice questions answered by the likelihood of the answer letter.

The question goes through the model's chat template as the user turn (``core.mix.domain.mcq_prompt``: the
question with lettered options); the assistant turn then starts and the next-token probabilities of
"A".."D" (with or without a leading space) are compared. A user's own domain conversations are scored the
same way when they are multiple choice (``chat_mcq``: the user turn lists options "A. ...", "B. ...", and
the reply starts with the answer's letter), as the ``domain_mcq`` task. A small model tends to answer one letter
whatever the question, so the share of its most-predicted letter is reported next to accuracy: an
accuracy at that share's gold frequency is a majority-letter baseline, not knowledge.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from core.engines.base import Engine, group_probabilities
from core.engines.next_token import answer_token_groups
from core.errors import ForgetlessError
from core.eval.benchmarks.domain_ppl import DOMAIN_KEYS, held_out_rows, with_domain
from core.eval.task import TaskModels, TaskRun, accuracy_stats, in_order, metric_cell, register, seeded_pick
from core.mix.domain import McqItem, mcq_prompt, medmcqa_items
from core.progress import Progress
from core.store.evaluation import EvalItemRow

LETTERS = tuple("ABCDEFGHIJ")  # as core.mix.domain letters the options


@dataclass(frozen=True)
class LetterScore:
    item_id: str
    gold: int
    probs: tuple[float, ...]  # P(letter) for A..D as the assistant's first token

    @property
    def pred(self) -> int:
        return max(range(len(self.probs)), key=lambda i: self.probs[i])


_OPTION_LINE = re.compile(r"^[ \t]*([A-J])[.)][ \t]+\S", re.MULTILINE)
_ANSWER_LETTER = re.compile(r"^\s*\(?([A-J])(?:[.):,]|\s|$)")


@dataclass(frozen=True)
class ChatMcq:
    """A multiple-choice conversation of a user's domain data: the turns before the answer, and the key."""

    id: str
    turns: tuple[dict[str, str], ...]  # optional system turn(s) and the user turn with the options
    options: tuple[str, ...]  # the option letters (only their count matters for scoring)
    answer: int


def chat_mcq(item_id: str, messages: Sequence[dict[str, str]]) -> ChatMcq | None:
    """The conversation as a letter-scored question, or None when it is not one.

    It is one when its only exchange is a user turn listing options A., B., ... in order (at least two,
    one per line) and an assistant reply that starts with one of those letters ("C", "C.", "(C)", "C) ...").
    """
    exchange = [m for m in messages if m["role"] != "system"]
    if len(exchange) != 2 or exchange[0]["role"] != "user" or exchange[1]["role"] != "assistant":
        return None
    letters = _OPTION_LINE.findall(exchange[0]["content"])
    start = letters.index("A") if "A" in letters else -1
    count = 0
    while start >= 0 and start + count < len(letters) and letters[start + count] == LETTERS[count]:
        count += 1
    answer = _ANSWER_LETTER.match(exchange[1]["content"])
    if count < 2 or answer is None or LETTERS.index(answer.group(1)) >= count:
        return None
    return ChatMcq(item_id, tuple(dict(m) for m in messages[: messages.index(exchange[1])]), LETTERS[:count],
                   LETTERS.index(answer.group(1)))


def letter_prompt(tokenizer: Any, user: str | Sequence[dict[str, str]]) -> list[int]:
    """Token ids up to where the assistant's answer starts (a plain "Answer:" prompt without a template).

    ``user`` is the user turn's text, or the turns before the answer (system and user).
    """
    turns = [{"role": "user", "content": user}] if isinstance(user, str) else list(user)
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    text = "\n\n".join(turn["content"] for turn in turns)
    return tokenizer(text.rstrip() + "\nAnswer:", add_special_tokens=True)["input_ids"]


def score_letters(engine: Engine, items: Sequence[Any], prompt: Any) -> list[LetterScore]:
    """P("A".."D") after each item's prompt, each letter with or without a leading space; ``prompt(item)`` is the
    user text (``core.mix.domain.mcq_prompt``) or the turns before the answer (``ChatMcq.turns``)."""
    scores: dict[int, LetterScore] = {}
    for count in sorted({len(item.options) for item in items}):  # the letters to compare depend on the options
        group = [(index, item) for index, item in enumerate(items) if len(item.options) == count]
        letter_ids = answer_token_groups(engine.tokenizer, LETTERS[:count])
        token_ids = [token for letter in letter_ids for token in letter]
        prompts = [letter_prompt(engine.tokenizer, prompt(item)) for _, item in group]
        for (index, item), row in zip(group, engine.next_token_logprobs(prompts, token_ids), strict=True):
            scores[index] = LetterScore(str(item.id), int(item.answer),
                                        tuple(group_probabilities(row, token_ids, letter_ids)))
    return [scores[index] for index in range(len(items))]


def letter_metrics(scores: Sequence[LetterScore]) -> dict[str, Any]:
    """acc, stderr, n, plus the most-predicted letter, its share, and the gold share of that letter."""
    acc, stderr = accuracy_stats([s.pred == s.gold for s in scores])
    predicted = Counter(s.pred for s in scores)
    gold = Counter(s.gold for s in scores)
    top, top_count = predicted.most_common(1)[0] if scores else (None, 0)
    majority_gold, majority_gold_count = gold.most_common(1)[0] if scores else (None, 0)
    n = len(scores)
    return {
        "acc": acc, "acc_norm": None, "stderr": stderr, "n": n,
        "top_letter": LETTERS[top] if top is not None else None,
        "top_letter_share": top_count / n if n else None,
        # What always answering the most-predicted letter scores, and the best single-letter baseline.
        "top_letter_gold_share": gold[top] / n if n else None,
        "majority_letter_baseline": majority_gold_count / n if n else None,
        "majority_gold_letter": LETTERS[majority_gold] if majority_gold is not None else None,
    }


def medmcqa_source() -> tuple[list[McqItem], Callable[[McqItem], str]]:
    """MedMCQA's test split and its user turn (the question with lettered options)."""
    return list(medmcqa_items("test")), mcq_prompt


def held_out_questions(run: TaskRun) -> list[ChatMcq]:
    """The held-out rows of a user's domain data that are multiple-choice questions."""
    def parse() -> list[ChatMcq]:
        questions = (chat_mcq(item_id, messages) for item_id, messages in held_out_rows(run))
        return [question for question in questions if question is not None]

    return run.shared("domain_questions", parse)


LETTER_KEYS = ("acc", "stderr", "n", "top_letter", "top_letter_share", "majority_letter_baseline")


class LetterTask:
    """Multiple choice answered by the likelihood of the answer letter (items: ChatMcq)."""

    name: str
    suite = "domain"
    needs_base = False
    in_process = False

    def item_id(self, item: ChatMcq) -> str:
        return str(item.id)

    def batches(self, items: Sequence[ChatMcq], batch_size: int) -> list[list[ChatMcq]]:
        return in_order(items, batch_size)

    def score(self, batch: list[ChatMcq], models: TaskModels, progress: Progress) -> tuple[list[EvalItemRow], int]:
        engine = models.model
        letters = score_letters(engine, batch, lambda item: item.turns)
        tokens = sum(len(letter_prompt(engine.tokenizer, item.turns)) for item in batch)
        return [EvalItemRow(s.item_id, s.gold, s.pred, None, list(s.probs)) for s in letters], tokens

    def stored_metrics(self, rows: Sequence[EvalItemRow]) -> dict[str, Any]:
        return letter_metrics([LetterScore(r.item_id, r.gold, tuple(r.scores or ())) for r in rows])

    def table_cells(self, metrics: dict[str, Any]) -> tuple[Any, Any, Any, str]:
        notes = (f"top letter {metrics['top_letter']} {metric_cell(metrics['top_letter_share'])}, majority-letter "
                 f"baseline {metric_cell(metrics['majority_letter_baseline'])}")
        return metrics.get("acc"), metrics.get("acc_norm"), metrics.get("stderr"), notes


class MedMcqaTask(LetterTask):
    """MedMCQA's test split: the domain suite of the builtin:medmcqa domain."""

    name = "medmcqa"

    def in_suite(self, config: Any) -> bool:
        return config.builtin_domain

    def check(self, run: TaskRun) -> bool:
        return True

    def items(self, run: TaskRun, tokenizer: Any) -> list[ChatMcq]:
        items, prompt = medmcqa_source()
        return [ChatMcq(str(item.id), ({"role": "user", "content": prompt(item)},), LETTERS[: len(item.options)],
                        int(item.answer)) for item in seeded_pick(items, run.config.limit, run.config.seed)]

    def metrics(self, rows: Sequence[EvalItemRow], run: TaskRun) -> dict[str, Any]:
        return self.stored_metrics(rows)

    def headline(self, metrics: dict[str, Any]) -> dict[str, Any]:
        return {key: metrics.get(key) for key in LETTER_KEYS}


class DomainMcqTask(LetterTask):
    """The multiple-choice rows among a user's held-out domain data."""

    name = "domain_mcq"

    def in_suite(self, config: Any) -> bool:
        return not config.builtin_domain

    def check(self, run: TaskRun) -> bool:
        if held_out_questions(run):
            return True
        if self.name in run.config.suite:
            raise ForgetlessError(f"none of the held-out rows of {run.config.domain} is multiple choice (a user turn "
                                  "listing options 'A. ...', 'B. ...' and a reply starting with the letter)")
        return False  # asked for as part of the domain suite: perplexity still measures the domain

    def items(self, run: TaskRun, tokenizer: Any) -> list[ChatMcq]:
        return seeded_pick(held_out_questions(run), run.config.limit, run.config.seed)

    def metrics(self, rows: Sequence[EvalItemRow], run: TaskRun) -> dict[str, Any]:
        return with_domain(self.stored_metrics(rows), run)

    def headline(self, metrics: dict[str, Any]) -> dict[str, Any]:
        return {key: metrics.get(key) for key in (*LETTER_KEYS, *DOMAIN_KEYS)}


register(MedMcqaTask())
register(DomainMcqTask())
