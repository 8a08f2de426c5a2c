"""Responses: K sampled answers per stored instruction from each of several models.

A chat model answers through its own template; a base model without one (e.g. ``gemma-3-270m``)
gets the plain ``### Instruction / ### Response`` format of :func:`core.judging.plain_response_prompt`.
Every batch is committed; a rerun finds exactly the (instruction, model, sample) rows still missing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from core.config import fingerprint, to_yaml
from core.errors import ForgetlessError
from core.progress import Cancelled, Progress
from core.store import Store
from core.store.screening import PendingResponse, ResponseRow, response_id


@dataclass
class RespondConfig:
    """Settings of one response job (the YAML in its job folder)."""

    models: tuple[str, ...] = ("smollm2-135m-instruct",)  # MODEL specs that answer
    k: int = 2  # responses per instruction and model
    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 256  # a response still unfinished here is kept, marked stopped=false
    batch_size: int = 16
    seed: int = 0
    job_id: str | None = None

    def __post_init__(self) -> None:
        self.models = tuple(m.strip() for m in self.models if m.strip())
        checks = [
            (bool(self.models), "give at least one model"),
            (len(set(self.models)) == len(self.models), "a model is listed twice"),
            (isinstance(self.k, int) and 1 <= self.k <= 64, "k must be a whole number from 1 to 64"),
            (0.0 <= self.temperature <= 5.0, "temperature must be between 0 and 5"),
            (0.0 < self.top_p <= 1.0, "top-p must be in (0, 1]"),
            (1 <= self.max_new_tokens <= 8192, "max new tokens must be between 1 and 8192"),
            (self.batch_size >= 1, "batch size must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ForgetlessError(message)

    def resolved_job_id(self) -> str:
        return self.job_id or "respond-" + fingerprint(self, exclude=("job_id",))


@dataclass(frozen=True)
class PromptFormat:
    """How one model is prompted: through its chat template, or the plain format for base models."""

    name: str  # chat | plain
    render: Callable[[str], str]
    stop: tuple[str, ...]

    @property
    def add_special_tokens(self) -> bool:
        """A chat template writes its own BOS text; a plain prompt needs the tokenizer's (Gemma degrades without)."""
        return self.name == "plain"


def prompt_format(tokenizer: Any) -> PromptFormat:
    from core.judging import plain_response_prompt
    from core.prequery import derive_prequery

    if tokenizer.chat_template:
        stops = derive_prequery(tokenizer).stop

        def render(instruction: str) -> str:
            messages = [{"role": "user", "content": instruction}]
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

        return PromptFormat("chat", render, stops)
    _, plain_stops = plain_response_prompt("")
    return PromptFormat("plain", lambda instruction: plain_response_prompt(instruction)[0], plain_stops)


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """Text up to the first stop string, and whether one was found."""
    cut = min((text.index(stop) for stop in stops if stop in text), default=None)
    return (text, False) if cut is None else (text[:cut], True)


def _batch_seed(seed: int, model: str, first_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{model}:{first_id}".encode()).digest()[:4], "little")


def respond_with_model(
    config: RespondConfig, store: Store, lm: Any, spec: str, job_id: str, progress: Progress,
) -> bool:
    """Answer every pending (instruction, sample) for one model; False when cancelled."""
    from core.backends.transformers_backend import sample
    from core.prequery import stop_token_ids

    fmt = prompt_format(lm.tokenizer)
    stop_ids = stop_token_ids(lm.tokenizer, fmt.stop)
    pending = store.pending_responses(spec, config.k)
    for start in range(0, len(pending), config.batch_size):
        if progress.stop_requested():
            return False
        batch: list[PendingResponse] = pending[start : start + config.batch_size]
        texts = [fmt.render(item.instruction) for item in batch]
        prompts = lm.tokenizer(texts, add_special_tokens=fmt.add_special_tokens)["input_ids"]
        ids = [response_id(item.instruction_id, spec, item.sample_index) for item in batch]
        seed = _batch_seed(config.seed, spec, ids[0])
        try:
            samples = sample(lm.model, prompts, temperature=config.temperature, top_p=config.top_p,
                             max_new_tokens=config.max_new_tokens, stop_token_ids=stop_ids, seed=seed,
                             on_token=progress.on_token)
        except Cancelled:
            return False
        rows = []
        for item, rid, result in zip(batch, ids, samples, strict=True):
            text, found_stop = cut_at_stop(lm.tokenizer.decode(result.token_ids, skip_special_tokens=True), fmt.stop)
            rows.append(ResponseRow(
                rid, item.instruction_id, spec, item.sample_index, text.strip(), len(result.token_ids),
                result.stopped or found_stop, fmt.name, config.temperature, config.top_p, config.max_new_tokens,
                seed, job_id,
            ))
        store.add_responses(rows)
        progress.batch_done(len(rows), sum(len(result.token_ids) for result in samples))
    return True


def run_responses(
    config: RespondConfig,
    store: Store,
    load: Callable[[str], Any],
    *,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> dict[str, Any]:
    """Sample the missing responses of every model in turn; ``load(spec)`` returns a loaded model."""
    job_id = config.resolved_job_id()
    store.register_job(job_id, "respond", to_yaml(config))
    total = sum(len(store.pending_responses(spec, config.k)) for spec in config.models)
    progress = Progress(job_id, total, on_progress=on_progress, should_stop=should_stop, unit="done")
    if total == 0 and store.count_instructions() == 0:
        raise ForgetlessError("no instructions in the store yet: run `forgetless reconstruct` first")
    cancelled = False
    for spec in config.models:
        if not store.pending_responses(spec, config.k):
            continue
        if not respond_with_model(config, store, load(spec), spec, job_id, progress):
            cancelled = True
            break
    return {
        "job_id": job_id, "models": list(config.models), "k": config.k, "responses": progress.done_now,
        "pending_before": total, "db": str(store.path), "tokens_per_s": round(progress.tokens / progress.elapsed, 2),
        "seconds": round(progress.elapsed, 2), "cancelled": cancelled,
    }
