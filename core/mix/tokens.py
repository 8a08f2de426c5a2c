"""Token counts per conversation with the target model's tokenizer (the mix's "by tokens" rule and the Mix tab)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sized
from typing import Any

import numpy as np

from core.mix.rows import Messages, canonical_json

_TOKENIZE_CHUNK = 512


class TokenCounter:
    """Tokens per conversation with the target tokenizer: its chat template's text tokenized without added
    special tokens (what training sees; without a template, the turns' contents joined by blank lines).
    Counts are cached by content, so the Mix tab can recount on every slider move for free."""

    def __init__(self, tokenizer: Any, name: str) -> None:
        self.tokenizer, self.name = tokenizer, name
        self._cache: dict[bytes, int] = {}

    def _text(self, messages: Messages) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        return "\n\n".join(message["content"] for message in messages)

    def count(self, conversations: Iterable[Messages],
              on_progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Token count per conversation, in one pass over ``conversations`` (spooled rows are read once);
        ``on_progress(done, total)`` after each chunk tokenized."""
        total = len(conversations) if isinstance(conversations, Sized) else 0
        keys: list[bytes] = []
        pending: dict[bytes, str] = {}
        for messages in conversations:
            key = hashlib.blake2b(canonical_json(messages).encode(), digest_size=16).digest()
            keys.append(key)
            if key not in self._cache and key not in pending:
                pending[key] = self._text(messages)
                if len(pending) >= _TOKENIZE_CHUNK:
                    self._encode(pending)
                    if on_progress is not None:
                        on_progress(len(keys), max(total, len(keys)))
        if pending:
            self._encode(pending)
            if on_progress is not None:
                on_progress(len(keys), max(total, len(keys)))
        return np.array([self._cache[key] for key in keys], dtype=np.int64)

    def _encode(self, pending: dict[bytes, str]) -> None:
        encoded = self.tokenizer(list(pending.values()), add_special_tokens=False)
        for key, ids in zip(pending, encoded["input_ids"], strict=True):
            self._cache[key] = len(ids)
        pending.clear()
