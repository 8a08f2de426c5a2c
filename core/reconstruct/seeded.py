"""Corpus-seeded prompts: the model writes, in its own words, one request a user might send an assistant about a
seed row of a corpus (core/reconstruct/corpus.py), so the topics come from the corpus and the phrasing from the
model. Free Magpie sampling (no seed) stays reconstruction's default.

The prompt is a user turn rendered with the model's own chat template (``add_generation_prompt``): the model's
reply is the request. A model without a chat template gets the same words as a plain completion prompt. Prompt
building and output parsing are pure; :class:`CorpusSeeds` picks each batch's seed rows from a seeded order, so a
rerun of a batch uses the same rows and a resumed job continues where it stopped.

Each template has an id with a version (``corpus-request-v1``, ``-plain`` for the plain format), stored with every
row: change a template's words and bump :data:`PROMPT_VERSION`, never reuse an id for other words.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core.reconstruct.corpus import PASSAGE, REQUEST, Corpus, CorpusRow

PROMPT_VERSION = 1
# Curly braces are the only placeholder syntax, so a seed text holding braces is inserted by replace(), not format().
TEMPLATES = {
    REQUEST: (
        "Here is a message that a user once sent to an AI assistant:\n\n"
        "<message>\n{seed}\n</message>\n\n"
        "Write one new message that a user might send to an AI assistant on the same topic. Write it in your own "
        "words, as the user would type it; do not copy the message above. Reply with the new message only, "
        "nothing else."
    ),
    PASSAGE: (
        "Here is a passage of text:\n\n"
        "<passage>\n{seed}\n</passage>\n\n"
        "Write one request or question that a user might send to an AI assistant about this passage or its topic. "
        "Write it in your own words, as the user would type it. Reply with the request only, nothing else."
    ),
}
PLAIN_LEAD = "\n\nThe new message:\n"  # a model without a chat template continues after this
PLAIN_STOPS = ("\n\n",)  # ... and its request ends at a blank line
# A first line like "Sure! Here is a new message:" before the request itself.
_PREAMBLE = re.compile(r"^(sure|certainly|okay|ok|here(?:'s| is| are)|the new|new (?:message|request)|a new|"
                       r"a user might (?:send|ask|write)|rewritten|revised)\b.{0,80}:\s*$", re.IGNORECASE)
_LABEL = re.compile(r"^\s*(?:\*\*)?(?:new message|message|request|question|user|prompt)\s*:\s*(?:\*\*)?\s*",
                    re.IGNORECASE)
_TAG = re.compile(r"</?(?:message|passage|request)>", re.IGNORECASE)
_ORDER_STREAM = 15  # the seed rows' order gets its own random stream (the number is arbitrary, fixed)
_QUOTES = (('"', '"'), ("\u201c", "\u201d"), ("'", "'"))


def prompt_id(kind: str, chat: bool) -> str:
    """The stored id of a template: kind, version and format (``corpus-passage-v1-plain``)."""
    return f"corpus-{kind}-v{PROMPT_VERSION}" + ("" if chat else "-plain")


def seed_request(seed_text: str, kind: str) -> str:
    """The user turn that asks for one request about (``passage``) or like (``request``) ``seed_text``."""
    return TEMPLATES[kind].replace("{seed}", seed_text.strip())


def seed_messages(seed_text: str, kind: str) -> list[dict[str, str]]:
    """The chat the model's template renders: one user turn."""
    return [{"role": "user", "content": seed_request(seed_text, kind)}]


def render_seed_prompt(tokenizer: Any, seed_text: str, kind: str) -> str:
    """The prompt text: through the model's chat template with the assistant's turn opened, or the plain format
    when the model has none (tokenize a chat one without added special tokens: the template writes its own)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(seed_messages(seed_text, kind), tokenize=False,
                                             add_generation_prompt=True)
    return seed_request(seed_text, kind) + PLAIN_LEAD


def unwrap_request(text: str) -> str:
    """The request without what models wrap it in: a preamble line, a label, the template's tags, quotes.
    Never raises; what is left is checked like any sampled instruction (clean_instruction)."""
    text = _TAG.sub("", text).strip()
    lines = text.splitlines()
    if len(lines) > 1 and _PREAMBLE.match(lines[0].strip()):
        text = "\n".join(lines[1:]).strip()
    text = _LABEL.sub("", text, count=1).strip()
    for opening, closing in _QUOTES:
        if len(text) > 2 and text.startswith(opening) and text.endswith(closing):
            inner = text[1:-1]
            if opening not in inner and closing not in inner:  # one quoted request, not two quoted phrases
                text = inner.strip()
            break
    return text


def _normalised(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def copies_seed(request: str, seed_text: str, min_words: int = 5) -> bool:
    """True when the request is the seed's own wording (all of it, or a run of at least ``min_words`` words of it
    that is the whole request): the phrasing would be the corpus's, not the model's."""
    mine, theirs = _normalised(request), _normalised(seed_text)
    if not mine:
        return False
    return mine == theirs or (len(mine.split()) >= min_words and f" {mine} " in f" {theirs} ")


@dataclass(frozen=True)
class SeededPrompt:
    row: CorpusRow
    text: str  # the rendered prompt


class CorpusSeeds:
    """Which corpus rows each batch asks about: a seeded order of the rows (at most ``limit`` of them; 0: all),
    walked ``batch_size`` rows per batch and begun again when it runs out. Batch ``b`` always gets the same rows."""

    def __init__(self, corpus: Corpus, tokenizer: Any, *, seed: int, limit: int = 0) -> None:
        import numpy as np

        self.corpus = corpus
        self.tokenizer = tokenizer
        self.chat = bool(getattr(tokenizer, "chat_template", None))
        self.prompt_id = prompt_id(corpus.kind, self.chat)
        order = np.random.default_rng((seed, _ORDER_STREAM)).permutation(len(corpus.rows))
        self.order: Sequence[int] = [int(i) for i in order[: limit or len(order)]]

    def rows(self, batch: int, batch_size: int) -> list[CorpusRow]:
        first = batch * batch_size
        return [self.corpus.rows[self.order[(first + i) % len(self.order)]] for i in range(batch_size)]

    def prompts(self, batch: int, batch_size: int) -> list[SeededPrompt]:
        return [SeededPrompt(row, render_seed_prompt(self.tokenizer, row.text, self.corpus.kind))
                for row in self.rows(batch, batch_size)]

    def describe(self) -> dict[str, Any]:
        """What a job records about its corpus and prompt (the summary in its job folder)."""
        return {**self.corpus.describe(), "rows_used": len(self.order), "prompt_id": self.prompt_id,
                "prompt_format": "chat" if self.chat else "plain", "prompt": TEMPLATES[self.corpus.kind]}
