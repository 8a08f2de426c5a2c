"""Responses: K sampled answers per stored instruction from each of several models.

A chat model answers through its own template; a base model without one (e.g. ``gemma-3-270m``)
gets the plain ``### Instruction / ### Response`` format of :func:`core.screen.prompts.plain_response_prompt`.
Every batch is committed; a rerun finds exactly the (instruction, model, sample) rows still missing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from core.config import fingerprint, to_yaml
from core.engines.base import Engine, OpenEngine, Sample, SampleSettings
from core.engines.choice import serving_fields, serving_setting
from core.errors import ForgetlessError
from core.progress import Progress
from core.reconstruct.prequery import derive_prequery, stop_token_ids
from core.screen.model_batches import model_by_model
from core.screen.prompts import plain_response_prompt
from core.settings import setting
from core.store import Store
from core.store.screening import PendingResponse, ResponseRow, response_id


@dataclass
class RespondConfig:
    """Settings of one response job (the YAML in its job folder)."""

    models: tuple[str, ...] = setting(("smollm2-135m-instruct",), list_form="comma", label="Models that answer",
                                      help="comma-separated MODEL specs, e.g. smollm2-135m-instruct,gemma-3-270m")
    k: int = setting(2, help="responses per instruction and model", label="Responses per model (K)")
    temperature: float = setting(0.7, help="sampling temperature", minimum=0.0, maximum=2.0, step=0.05)
    top_p: float = setting(0.9, help="nucleus sampling: the smallest set of tokens holding this much probability",
                           label="Top-p", minimum=0.05, maximum=1.0, step=0.05)
    max_new_tokens: int = setting(256, help="a response still unfinished here is kept, marked stopped=false")
    batch_size: int = setting(16, help="prompts decoded together")
    seed: int = setting(0, help="sampling seed")
    job_id: str | None = setting(None, help="name the job (default: derived from the settings, so reruns resume)")
    serving: dict[str, Any] = serving_setting()

    def __post_init__(self) -> None:
        self.serving = serving_fields(self.serving)
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
    if tokenizer.chat_template:
        stops = derive_prequery(tokenizer).stop

        def render(instruction: str) -> str:
            messages = [{"role": "user", "content": instruction}]
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

        return PromptFormat("chat", render, stops)
    _, plain_stops = plain_response_prompt("")
    return PromptFormat("plain", lambda instruction: plain_response_prompt(instruction)[0], plain_stops)


def _batch_seed(seed: int, model: str, first_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{model}:{first_id}".encode()).digest()[:4], "little")


def sample_answers(engine: Engine, instructions: Sequence[str], *, max_new_tokens: int, temperature: float,
                   top_p: float, seed: int, on_tokens: Callable[[int], None]) -> tuple[PromptFormat, list[Sample]]:
    """One answer per instruction in the model's own prompt format (its chat template, or the plain one-shot
    prompt), cut at its end of turn; the format is returned with them."""
    fmt = prompt_format(engine.tokenizer)
    prompts = engine.tokenizer([fmt.render(instruction) for instruction in instructions],
                               add_special_tokens=fmt.add_special_tokens)["input_ids"]
    settings = SampleSettings(
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, stop=fmt.stop,
        stop_token_ids=tuple(stop_token_ids(engine.tokenizer, fmt.stop)), seed=seed,
    )
    return fmt, engine.sample(prompts, settings, on_tokens=on_tokens)


def _respond_batch(config: RespondConfig, engine: Engine, spec: str, batch: Sequence[PendingResponse], job_id: str,
                   progress: Progress) -> list[ResponseRow]:
    """Sample one response for each pending (instruction, sample) of ``batch``."""
    ids = [response_id(item.instruction_id, spec, item.sample_index) for item in batch]
    seed = _batch_seed(config.seed, spec, ids[0])
    fmt, samples = sample_answers(engine, [item.instruction for item in batch], max_new_tokens=config.max_new_tokens,
                                  temperature=config.temperature, top_p=config.top_p, seed=seed,
                                  on_tokens=progress.on_token)
    return [
        ResponseRow(rid, item.instruction_id, spec, item.sample_index, result.text.strip(), len(result.token_ids),
                    result.stopped, fmt.name, config.temperature, config.top_p, config.max_new_tokens, seed, job_id,
                    engine.served_by, engine.url)
        for item, rid, result in zip(batch, ids, samples, strict=True)
    ]


def run_responses(
    config: RespondConfig,
    store: Store,
    engines: OpenEngine,
    *,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> dict[str, Any]:
    """Sample the missing responses of every model in turn; ``engines(spec)`` opens a model."""
    job_id = config.resolved_job_id()
    store.register_job(job_id, "respond", to_yaml(config))
    total = sum(len(store.pending_responses(spec, config.k)) for spec in config.models)
    progress = Progress(job_id, total, on_progress=on_progress, should_stop=should_stop, unit="done")
    if total == 0 and store.count_instructions() == 0:
        raise ForgetlessError("no instructions in the store yet: run `forgetless reconstruct` first")

    def respond(engine: Engine, spec: str, batch: Sequence[PendingResponse]) -> tuple[int, int]:
        rows = _respond_batch(config, engine, spec, batch, job_id, progress)
        store.add_responses(rows)
        return len(rows), sum(row.n_tokens for row in rows)

    finished = model_by_model(config.models, engines, lambda spec: store.pending_responses(spec, config.k),
                              config.batch_size, progress, respond)
    return {
        "job_id": job_id, "models": list(config.models), "k": config.k, "responses": progress.done_now,
        "pending_before": total, "stored": store.count_responses(config.models, config.k), "new": progress.done_now,
        "db": str(store.path), "tokens_per_s": round(progress.tokens / progress.elapsed, 2),
        "seconds": round(progress.elapsed, 2), "cancelled": not finished,
    }
