"""Instruction reconstruction: sample user turns from the pre-query prefix, clean them, store them.

Prompted with only the part of its chat template that precedes a user's message, an aligned model
writes a user instruction like those it was tuned on (the Magpie trick). Every batch is committed
with its bookkeeping row, so a killed run resumes at the next batch and stops at exactly ``n``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.config import fingerprint, to_yaml
from core.errors import ForgetlessError
from core.progress import Cancelled, Progress
from core.store import InstructionRow, Store

# Give up when this many batches in a row add nothing: the model or prefix is not producing instructions.
_MAX_BARREN_BATCHES = 20


@dataclass
class ReconstructConfig:
    """Settings of one reconstruction job (the YAML in its job folder)."""

    model: str = "smollm2-135m-instruct"  # MODEL spec: alias, local folder, .gguf file or hub id
    n: int = 100  # instructions to store for this job
    batch_size: int = 64  # prompts decoded together; larger is faster until memory runs out
    temperature: float = 1.0  # Magpie samples the model's own distribution: no sharpening
    top_p: float = 1.0
    max_new_tokens: int = 128  # an instruction still unfinished here is dropped as a fragment
    seed: int = 0
    prefix: str | None = None  # override the derived pre-query text
    stop: tuple[str, ...] | None = None  # override the derived end-of-turn strings
    min_chars: int = 12
    max_chars: int = 2000
    job_id: str | None = None  # default: derived from the fields above, so a rerun resumes
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes kept with the job

    def __post_init__(self) -> None:
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
    lm: Any,
    *,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> dict[str, Any]:
    """Sample, clean and store instructions until the job holds ``config.n`` of them (or is cancelled)."""
    from core.backends.transformers_backend import sample
    from core.prequery import derive_prequery, stop_token_ids

    job_id = config.resolved_job_id()
    derived = derive_prequery(lm.tokenizer) if config.prefix is None or config.stop is None else None
    prefix = config.prefix if config.prefix is not None else derived.prefix
    stop = tuple(config.stop) if config.stop is not None else derived.stop
    prompt = lm.tokenizer(prefix, add_special_tokens=False)["input_ids"]
    stop_ids = stop_token_ids(lm.tokenizer, stop)
    markers = template_markers(lm.tokenizer)
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
        try:
            samples = sample(
                lm.model, [prompt] * config.batch_size, temperature=config.temperature, top_p=config.top_p,
                max_new_tokens=config.max_new_tokens, stop_token_ids=stop_ids, seed=seed,
                on_token=progress.on_token,
            )
        except Cancelled:
            cancelled = True
            break
        rows, dropped = [], {}
        for item in samples:
            text = lm.tokenizer.decode(item.token_ids, skip_special_tokens=False)
            cleaned, reason = clean_instruction(text, item.stopped, stop, markers, config.min_chars, config.max_chars)
            if cleaned is None:
                dropped[reason] = dropped.get(reason, 0) + 1
                continue
            rows.append(InstructionRow(
                cleaned, len(item.token_ids), lm.name, prefix, config.temperature, config.top_p,
                config.max_new_tokens, seed, job_id, batch,
            ))
        batch_tokens = sum(len(item.token_ids) for item in samples)
        result = store.add_instruction_batch(
            job_id, batch, rows, limit=config.n - progress.done, sampled=len(samples),
            dropped=dropped, new_tokens=batch_tokens, seconds=time.monotonic() - began,
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
        "job_id": job_id, "model": lm.name, "stored": final["stored"], "new": progress.done_now, "target": config.n,
        "dropped": final["dropped"], "sampled": final["sampled"], "batches": final["batches"],
        "db": str(store.path), "tokens_per_s": round(progress.tokens / seconds, 2),
        "seconds": round(seconds, 2), "cancelled": cancelled, "prefix": prefix, "stop": list(stop),
    }
