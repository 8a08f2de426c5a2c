"""Instruction reconstruction: sample user turns from the pre-query prefix, clean them, store them.

Prompted with only the part of its chat template that precedes a user's message, an aligned model
writes a user instruction like those it was tuned on (the Magpie trick). Every batch is committed
with its bookkeeping row, so a killed run resumes at the next batch and stops at exactly ``n``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from core.config import fingerprint, to_yaml
from core.engines.base import Engine, OpenEngine, SampleSettings
from core.engines.choice import serving_fields, serving_setting
from core.errors import ForgetlessError
from core.progress import Cancelled, Progress
from core.reconstruct.prequery import derive_prequery, stop_token_ids
from core.settings import setting
from core.store import InstructionRow, Store

# Give up when this many batches in a row add nothing: the model or prefix is not producing instructions.
_MAX_BARREN_BATCHES = 20


@dataclass
class ReconstructConfig:
    """Settings of one reconstruction job (the YAML in its job folder)."""

    model: str = setting("smollm2-135m-instruct", help="alias, local model folder, .gguf file or hub id",
                         label="Model")
    n: int = setting(100, help="instructions to store for this job", label="Instructions to store (N)")
    batch_size: int = setting(64, help="prompts decoded together; larger is faster until memory runs out")
    temperature: float = setting(1.0, help="sampling temperature; Magpie samples the model's own distribution, "
                                           "so no sharpening", minimum=0.0, maximum=2.0, step=0.05)
    top_p: float = setting(1.0, help="nucleus sampling: the smallest set of tokens holding this much probability",
                           label="Top-p", minimum=0.05, maximum=1.0, step=0.05)
    max_new_tokens: int = setting(128, help="an instruction still unfinished here is dropped as a fragment")
    seed: int = setting(0, help="sampling seed")
    prefix: str | None = setting(None, help="override the derived pre-query prefix")
    stop: tuple[str, ...] | None = setting(None, help="override the derived end-of-turn stop strings (repeatable)",
                                           list_form="repeat", label="Stop strings, one per line")
    min_chars: int = setting(12, help="shorter instructions are dropped", flag=None)
    max_chars: int = setting(2000, help="longer instructions are dropped", flag=None)
    job_id: str | None = setting(None, help="name the job (default: derived from the settings, so reruns resume)")
    serving: dict[str, Any] = serving_setting()
    extra: dict[str, Any] = setting(help="free-form notes kept with the job", default_factory=dict, flag=None)

    def __post_init__(self) -> None:
        self.serving = serving_fields(self.serving)
        whole = all(isinstance(getattr(self, name), int) and not isinstance(getattr(self, name), bool)
                    for name in ("n", "batch_size", "max_new_tokens", "seed", "min_chars", "max_chars"))
        if not whole:
            raise ForgetlessError("n, batch size, max new tokens, seed, min/max chars must be whole numbers")
        checks = [
            (bool(self.model.strip()), "model must be given: an alias, a model folder or a .gguf file"),
            (self.n >= 1, "n must be at least 1"),
            (self.batch_size >= 1, "batch size must be at least 1"),
            (0.0 <= self.temperature <= 5.0, "temperature must be between 0 and 5"),
            (0.0 < self.top_p <= 1.0, "top-p must be in (0, 1]"),
            (1 <= self.max_new_tokens <= 8192, "max new tokens must be between 1 and 8192"),
            (0 < self.min_chars <= self.max_chars, "min chars must be positive and at most max chars"),
            (self.stop is None or all(self.stop), "stop strings must not be empty"),
        ]
        for ok, message in checks:
            if not ok:
                raise ForgetlessError(message)
        if self.stop is not None:
            self.stop = tuple(self.stop)

    def resolved_job_id(self) -> str:
        return self.job_id or "reconstruct-" + fingerprint(self, exclude=("job_id", "extra"))


def clean_instruction(
    text: str, stopped: bool, stop: Sequence[str], markers: Sequence[str], min_chars: int, max_chars: int
) -> tuple[str | None, str | None]:
    """Return (instruction, None) for a usable sample, or (None, reason) for one to drop."""
    for marker in stop:
        if marker in text:
            text, stopped = text.split(marker, 1)[0], True
    text = text.strip()
    if not text:
        return None, "empty"
    if not stopped:
        return None, "fragment"
    if any(marker in text for marker in markers):
        return None, "template_token"
    if len(text) < min_chars or len(text.split()) < 3:
        return None, "too_short"
    if len(text) > max_chars:
        return None, "too_long"
    return text, None


def batch_seed(seed: int, job_id: str, batch: int) -> int:
    """Distinct per batch and per job (two jobs with seed 0 must not sample the same texts)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{job_id}:{batch}".encode()).digest()[:4], "little")


def template_markers(tokenizer: Any) -> list[str]:
    """Special tokens such as <|im_start|>: an instruction that contains one leaked template text."""
    specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for token in getattr(tokenizer, "added_tokens_decoder", {}).values():
        if getattr(token, "special", False):
            specials.add(str(token))
    return sorted(marker for marker in specials if marker.strip())


def run_reconstruction(
    config: ReconstructConfig,
    store: Store,
    engines: OpenEngine,
    *,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> dict[str, Any]:
    """Sample, clean and store instructions until the job holds ``config.n`` of them (or is cancelled)."""
    with engines(config.model) as engine:
        return _reconstruct(config, store, engine, on_progress, should_stop)


def _reconstruct(config: ReconstructConfig, store: Store, engine: Engine,
                 on_progress: Callable[[dict[str, Any]], None] | None,
                 should_stop: Callable[[], bool]) -> dict[str, Any]:
    job_id = config.resolved_job_id()
    tokenizer = engine.tokenizer
    derived = derive_prequery(tokenizer) if config.prefix is None or config.stop is None else None
    prefix = config.prefix if config.prefix is not None else derived.prefix
    stop = tuple(config.stop) if config.stop is not None else derived.stop
    prompt = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    stop_ids = tuple(stop_token_ids(tokenizer, stop))
    markers = template_markers(tokenizer)
    store.register_job(job_id, "reconstruct", to_yaml(config))

    state = store.job_progress(job_id)
    progress = Progress(job_id, config.n, state["stored"], on_progress=on_progress, should_stop=should_stop)
    barren, cancelled = 0, False

    batch = state["next_batch"]
    while progress.done < config.n:
        if progress.stop_requested():
            cancelled = True
            break
        seed = batch_seed(config.seed, job_id, batch)
        began = time.monotonic()
        # Special tokens stay in the text: an instruction holding one is a leak of the template.
        settings = SampleSettings(
            max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p,
            n=config.batch_size, stop=stop, stop_token_ids=stop_ids, seed=seed, skip_special_tokens=False,
        )
        try:
            samples = engine.sample([prompt], settings, on_tokens=progress.on_token)
        except Cancelled:
            cancelled = True
            break
        rows, dropped = [], {}
        for item in samples:
            cleaned, reason = clean_instruction(item.text, item.stopped, stop, markers, config.min_chars,
                                                config.max_chars)
            if cleaned is None:
                dropped[reason] = dropped.get(reason, 0) + 1
                continue
            rows.append(InstructionRow(
                cleaned, len(item.token_ids), engine.name, prefix, config.temperature, config.top_p,
                config.max_new_tokens, seed, job_id, batch,
            ))
        batch_tokens = sum(len(item.token_ids) for item in samples)
        result = store.add_instruction_batch(
            job_id, batch, rows, limit=config.n - progress.done, sampled=len(samples),
            dropped=dropped, new_tokens=batch_tokens, seconds=time.monotonic() - began,
            engine=engine.served_by, engine_url=engine.url,
        )
        progress.batch_done(result.stored, batch_tokens)
        batch += 1
        barren = 0 if result.stored else barren + 1
        if barren >= _MAX_BARREN_BATCHES:
            raise ForgetlessError(
                f"{barren} batches in a row gave no new instruction; check the prefix, stop strings and sampling"
            )

    seconds = progress.elapsed
    final = store.job_progress(job_id)
    return {
        "job_id": job_id, "model": engine.name, "stored": final["stored"], "new": progress.done_now,
        "target": config.n, "dropped": final["dropped"], "sampled": final["sampled"], "batches": final["batches"],
        "db": str(store.path), "tokens_per_s": round(progress.tokens / seconds, 2),
        "seconds": round(seconds, 2), "cancelled": cancelled, "prefix": prefix, "stop": list(stop),
    }
