"""The vLLM engine: the Engine protocol over a vLLM server's OpenAI-compatible ``/v1/completions``.

Prompts go as token ids (rendered client-side with the model's own tokenizer, so a chat template is applied
exactly as in-process); samples come back with their token ids (``return_token_ids``); rating tokens are
scored with ``logprob_token_ids`` (the log-probabilities of exactly those ids, so none falls outside a
top-k); continuations with ``echo`` + ``max_tokens: 0`` (the prompt's own per-token log-probabilities).

Seeds: a per-request ``seed`` crashes vLLM's CPU build ("CPU Generator does not use offset"), so none is
sent; the server's own ``--seed`` makes its sampling repeatable instead.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from core.engines.base import Sample, SampleSettings
from core.engines.loglik import encode_pairs
from core.engines.models import load_tokenizer, resolve_model
from core.errors import ForgetlessError

TIMEOUT_S = 600.0  # one batch of long samples on a CPU server can take minutes


def served_models(url: str, timeout_s: float = 10.0) -> list[str]:
    """The model names a server at ``url`` (``http://HOST:PORT/v1``) serves."""
    return [model["id"] for model in _request(url, "/models", None, timeout_s)["data"]]


def _request(url: str, path: str, body: dict[str, Any] | None, timeout_s: float) -> dict[str, Any]:
    """One call to the server; any failure is one ForgetlessError line naming the server."""
    data = None if body is None else json.dumps(body).encode("utf-8")
    request = urllib.request.Request(url.rstrip("/") + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:
        try:
            message = json.load(error).get("error", {}).get("message") or error.reason
        except (ValueError, AttributeError):
            message = error.reason
        first = str(message).strip().splitlines()[0] if str(message).strip() else f"HTTP {error.code}"
        raise ForgetlessError(f"the vLLM server at {url} refused the request: {first}") from error
    except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
        reason = getattr(error, "reason", error)
        raise ForgetlessError(f"the vLLM server at {url} does not answer ({reason})") from error
    except ValueError as error:
        raise ForgetlessError(f"the server at {url} did not answer with JSON: is it a vLLM server?") from error


class VllmEngine:
    """One model served by vLLM at ``url``, under the name ``served`` (see :class:`core.engines.base.Engine`)."""

    def __init__(self, url: str, name: str, tokenizer: Any, served: str | None = None,
                 timeout_s: float = TIMEOUT_S) -> None:
        self.url, self.name, self.tokenizer = url, name, tokenizer
        self.served_by = "vllm"
        self.served, self.timeout_s = served or name, timeout_s
        self._closed = False

    def _completions(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        if self._closed:
            raise RuntimeError("the engine is closed")
        choices = _request(self.url, "/completions", {"model": self.served, **body}, self.timeout_s)["choices"]
        return sorted(choices, key=lambda choice: choice["index"])

    def sample(self, prompts: Sequence[Sequence[int]], settings: SampleSettings, *,
               on_tokens: Callable[[int], None] | None = None) -> list[Sample]:
        if not prompts:
            return []
        choices = self._completions({
            "prompt": [list(prompt) for prompt in prompts], "n": settings.n, "max_tokens": settings.max_new_tokens,
            "temperature": settings.temperature, "top_p": settings.top_p, "stop": list(settings.stop),
            "stop_token_ids": list(settings.stop_token_ids), "skip_special_tokens": settings.skip_special_tokens,
            "add_special_tokens": False, "return_token_ids": True,
        })
        if len(choices) != len(prompts) * settings.n:
            raise ForgetlessError(f"the vLLM server at {self.url} returned {len(choices)} samples for "
                                  f"{len(prompts)} prompts x {settings.n}")
        for position, choice in enumerate(choices):  # grouped prompt by prompt, as the protocol promises
            expected = list(prompts[position // settings.n])
            if choice.get("prompt_token_ids") not in (None, expected):
                raise ForgetlessError(f"the vLLM server at {self.url} returned samples out of prompt order")
        samples = [Sample(choice["text"], list(choice.get("token_ids") or []), choice["finish_reason"] == "stop")
                   for choice in choices]
        if on_tokens is not None:
            on_tokens(sum(len(sample.token_ids) for sample in samples))
        return samples

    def next_token_logprobs(self, prompts: Sequence[Sequence[int]],
                            token_ids: Sequence[int]) -> list[list[float]]:
        if not prompts:
            return []
        choices = self._completions({
            "prompt": [list(prompt) for prompt in prompts], "max_tokens": 1, "temperature": 0.0, "logprobs": 1,
            "logprob_token_ids": list(token_ids), "return_tokens_as_token_ids": True, "add_special_tokens": False,
        })
        rows = []
        for choice in choices:
            found = choice["logprobs"]["top_logprobs"][0]
            missing = [token for token in token_ids if f"token_id:{token}" not in found]
            if missing:  # a server that ignores logprob_token_ids answers with its top-k: never guess from that
                raise ForgetlessError(f"the vLLM server at {self.url} did not return the log-probabilities of "
                                      f"tokens {missing[:5]}: it needs a vLLM with logprob_token_ids (0.32 has it)")
            rows.append([found[f"token_id:{token}"] for token in token_ids])
        return rows

    def continuation_logprobs(self, contexts: Sequence[str],
                              continuations: Sequence[str]) -> list[list[float]]:
        pairs = encode_pairs(self.tokenizer, contexts, continuations)
        if not pairs:
            return []
        choices = self._completions({
            "prompt": [context + continuation for context, continuation in pairs], "max_tokens": 0, "echo": True,
            "logprobs": 0, "add_special_tokens": False,
        })
        rows = []
        for (_, continuation), choice in zip(pairs, choices, strict=True):
            values = choice["logprobs"]["token_logprobs"]
            rows.append([float(value) for value in values[len(values) - len(continuation):]] if continuation else [])
        return rows

    def close(self) -> None:
        self._closed = True  # the server is not ours to stop

    def __enter__(self) -> VllmEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_served(url: str, specs: Sequence[str | None], workspace: Path) -> None:
    """Each MODEL spec must be what the server at ``url`` serves (its resolved name): one line when it is not."""
    names = [resolve_model(spec, workspace).name for spec in specs if spec]
    served = served_models(url) if names else []
    for name in names:
        if name not in served:
            raise ForgetlessError(f"the vLLM server at {url} serves {', '.join(served) or 'no model'}, not {name}")


def vllm_engines(url: str, workspace: Path) -> Callable[[str], VllmEngine]:
    """Opens engines on a running server (``--engine-url``): the MODEL spec must be what it serves."""

    def open_engine(spec: str) -> VllmEngine:
        check_served(url, [spec], workspace)
        return VllmEngine(url, resolve_model(spec, workspace).name, load_tokenizer(spec, workspace))

    return open_engine
