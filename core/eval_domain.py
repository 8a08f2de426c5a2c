"""Domain test: held-out multiple-choice questions answered by the likelihood of the answer letter.

The question goes through the model's chat template as the user turn (``core.domain.mcq_prompt``: the
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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core.eval_tasks import accuracy_stats

LETTERS = tuple("ABCDEFGHIJ")  # as core.domain letters the options


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


def score_letters(model: Any, tokenizer: Any, items: Sequence[Any], prompt: Any) -> list[LetterScore]:
    """P("A".."D") after each item's prompt; ``prompt(item)`` is the user text (``core.domain.mcq_prompt``) or
    the turns before the answer (``ChatMcq.turns``)."""
    from core.backends.scoring import answer_token_groups, next_token_probs

    scores: dict[int, LetterScore] = {}
    for count in sorted({len(item.options) for item in items}):  # the letters to compare depend on the options
        group = [(index, item) for index, item in enumerate(items) if len(item.options) == count]
        letter_ids = answer_token_groups(tokenizer, LETTERS[:count])
        prompts = [letter_prompt(tokenizer, prompt(item)) for _, item in group]
        probs = next_token_probs(model, prompts, letter_ids, pad_id=tokenizer.pad_token_id or 0)
        for (index, item), row in zip(group, probs.tolist(), strict=True):
            scores[index] = LetterScore(str(item.id), int(item.answer), tuple(float(p) for p in row))
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
