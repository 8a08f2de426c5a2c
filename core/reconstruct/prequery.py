"""Derive the Magpie "pre-query" text of a chat model from its own chat template.

Magpie reconstructs an aligned model's instruction distribution by feeding it only the part of its chat
template that comes before a user's message and sampling: the model then writes a plausible user
instruction. Two things are needed for that, and both are read off the tokenizer's chat template rather
than a table of known model families (tables go stale and miss fine-tunes with edited templates):

* ``prefix`` -- everything the template renders before the user's text, including a default system
  prompt and a BOS token string if the template inserts them. Because the BOS string is already in the
  prefix, the sampler must tokenize it with ``add_special_tokens=False`` (the same convention
  ``apply_chat_template(tokenize=True)`` follows), or the model would see two BOS tokens.
* ``stop`` -- the end-of-user-turn marker(s) the model emits once the instruction is finished.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jinja2 import TemplateError

from core.errors import ForgetlessError

# No whitespace, so templates that ``trim`` the content leave it intact; unlikely in any template text.
SENTINEL = "FORGETLESSSENTINEL7f3a"
_REPLY = "FORGETLESSREPLY9c1e"
# What a template that rejects a conversation shape raises: jinja's raise_exception gives TemplateError,
# transformers raises ValueError, and templates indexing missing fields give the lookup errors.
_RENDER_ERRORS = (TemplateError, ValueError, TypeError, KeyError, IndexError, AttributeError)


@dataclass(frozen=True)
class PreQuery:
    """The pre-query prompt and the strings at which the sampled instruction ends."""

    prefix: str
    stop: tuple[str, ...]

    def to_json(self) -> dict:
        """A JSON-ready form, e.g. for recording in a run manifest."""
        return {"prefix": self.prefix, "stop": list(self.stop)}


def _model_name(tokenizer: Any) -> str:
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


def _special_strings(tokenizer: Any) -> list[str]:
    """Special and added token strings, longest first so ``<|im_end|>`` wins over a shorter overlap."""
    found = set(getattr(tokenizer, "all_special_tokens", None) or [])
    with contextlib.suppress(AttributeError, NotImplementedError):
        found.update(tokenizer.get_added_vocab())
    return sorted((s for s in found if s and s.strip()), key=len, reverse=True)


def _renderings(tokenizer: Any) -> list[tuple[str, str]]:
    """Render the sentinel conversation in the ways a template may accept, most natural first.

    Templates may raise (jinja ``raise_exception``) on ``add_generation_prompt`` or on a conversation
    that does not end with an assistant turn, and some only write the end-of-turn marker in front of the
    *next* message; so each shape is tried and every rendering that succeeds is returned with the text
    that follows the sentinel up to the assistant's reply (``(prefix, suffix)``). If every shape raises,
    the last error is reported.
    """
    user = {"role": "user", "content": SENTINEL}
    attempts = [([user], True), ([user], False), ([user, {"role": "assistant", "content": _REPLY}], False)]
    results: list[tuple[str, str]] = []
    last_error: Exception | None = None
    rendered = False
    for messages, add_generation_prompt in attempts:
        try:
            text = tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        except _RENDER_ERRORS as exc:  # raise_exception, missing keys, ... -- try the next shape
            last_error = exc
            continue
        rendered = True
        if isinstance(text, str) and SENTINEL in text:
            prefix, _, suffix = text.partition(SENTINEL)
            results.append((prefix, suffix.partition(_REPLY)[0]))
    if not rendered and last_error is not None:
        first_line = (str(last_error).strip().splitlines() or [type(last_error).__name__])[0]
        raise ForgetlessError(
            f"the chat template of model {_model_name(tokenizer)} failed to render a user message "
            f"({first_line}); pass --prefix and --stop to give the pre-query text yourself"
        )
    return results


def _end_of_turn(suffix: str, specials: Sequence[str]) -> str:
    """The end-of-user-turn marker at the start of ``suffix`` (text after the user's content), or ''.

    A special/added token there (``<|im_end|>``, ``<|eot_id|>``, ``[/INST]`` as a control token) is the
    marker. Otherwise the template uses plain text (``" [/INST]"``, ``"\\n\\nAssistant:"``) and the
    leading non-whitespace run is taken, cut before any special token glued to it.
    """
    rest = suffix.lstrip()
    for token in specials:
        if rest.startswith(token):
            return token
    run = rest.split(maxsplit=1)[0] if rest else ""
    for token in specials:
        cut = run.find(token)
        if cut > 0:
            run = run[:cut]
    return run


def derive_prequery(tokenizer: Any) -> PreQuery:
    """Read the pre-query prefix and the end-of-turn stop strings off ``tokenizer``'s chat template.

    A one-message conversation whose content is :data:`SENTINEL` is rendered; the text before the
    sentinel is the prefix (default system prompt and BOS string kept -- tokenize it with
    ``add_special_tokens=False``) and the start of the text after it is the end-of-turn marker. The
    tokenizer's EOS string is appended as a fallback stop when it differs from the marker.

    Raises:
        ForgetlessError: the tokenizer has no chat template, the template cannot render a user
            message, does not echo it, or shows no end-of-turn marker and there is no EOS token.
    """
    name = _model_name(tokenizer)
    if not getattr(tokenizer, "chat_template", None):
        raise ForgetlessError(
            f"model {name} has no chat template; pass --prefix and --stop to give the pre-query text yourself"
        )
    renderings = _renderings(tokenizer)
    if not renderings:
        raise ForgetlessError(
            f"the chat template of model {name} does not include the user's message text; "
            "pass --prefix and --stop to give the pre-query text yourself"
        )
    specials = _special_strings(tokenizer)
    marker = next((m for _, suffix in renderings if (m := _end_of_turn(suffix, specials))), "")
    eos = getattr(tokenizer, "eos_token", None) or ""
    stop = tuple(dict.fromkeys(s for s in (marker, eos) if s.strip()))
    if not stop:
        raise ForgetlessError(
            f"cannot tell where a user turn ends in the chat template of model {name} and it has no "
            "EOS token; pass --stop to give the end-of-turn text yourself"
        )
    return PreQuery(prefix=renderings[0][0], stop=stop)


def stop_token_ids(tokenizer: Any, stop: Sequence[str]) -> list[int]:
    """Token ids at which the sampler stops: each stop string that is one vocabulary token, then EOS.

    Multi-token stop strings (e.g. a plain-text ``[/INST]``) cannot be caught by id and are left to
    string matching on the decoded text; only exact single tokens are returned, never the unknown token.
    """
    vocab = tokenizer.get_vocab()
    unk = getattr(tokenizer, "unk_token_id", None)
    ids: list[int] = []
    for text in stop:
        token_id = vocab.get(text)
        if token_id is None:
            encoded = tokenizer.encode(text, add_special_tokens=False)
            if len(encoded) == 1 and tokenizer.decode(encoded) == text:
                token_id = encoded[0]
        if token_id is not None and token_id != unk:
            ids.append(token_id)
    eos_id = getattr(tokenizer, "eos_token_id", None)
    if eos_id is not None:
        ids.append(eos_id)
    return list(dict.fromkeys(ids))
