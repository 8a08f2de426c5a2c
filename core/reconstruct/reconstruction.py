"""Instruction reconstruction: sample user turns from the pre-query prefix, clean them, store them.

Prompted with only the part of its chat template that precedes a user's message, an aligned model
writes a user instruction like those it was tuned on (the Magpie trick). Every batch is committed
with its bookkeeping row, so a killed run resumes at the next batch and stops at exactly ``n``.

With ``from_corpus`` the model instead writes, in its own words, one request about each of a batch's seed
rows from a corpus (core/reconstruct/seeded.py); each row records its corpus, seed row id and prompt id.
With ``steer="coverage"`` it writes requests like stored examples of the profile's under-filled clusters
(core/reconstruct/steer.py); each row records its cluster, example ids and prompt id.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from core.config import fingerprint, to_yaml
from core.engines.base import Engine, OpenEngine, SampleSettings, cut_at_stop
from core.engines.choice import serving_fields, serving_setting
from core.errors import ForgetlessError
from core.progress import Cancelled, Progress
from core.reconstruct.corpus import Corpus, check_corpus_spec, load_corpus
from core.reconstruct.prequery import derive_prequery, stop_token_ids
from core.reconstruct.seeded import PLAIN_STOPS, CorpusSeeds, unwrap_request
from core.reconstruct.steer import STEER_MODES, CoverageSteering, Embed, cell_key, copies_an_example
from core.settings import setting
from core.store import InstructionRow, Store
from core.store.instructions import CELL, CORPUS, PLAIN

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
    from_corpus: str | None = setting(
        None, help="steer by a corpus: FILE (.jsonl/.json/.csv/.parquet with a text, instruction, prompt, messages or "
                   "conversations column; .txt paragraphs or lines), builtin:sharegpt or builtin:alpacaeval; the "
                   "model writes one request in its own words about each seed row (default: free Magpie sampling)",
        label="Seed corpus (empty: free sampling)")
    corpus_rows: int = setting(0, help="with --from-corpus: seed from a seeded sample of at most this many of the "
                                       "corpus's rows (0: all of them)", minimum=0)
    passage_max_words: int = setting(120, help="with --from-corpus: a seed text is cut to this many words before "
                                               "it goes into the prompt", minimum=1)
    steer: str | None = setting(
        None, choices=STEER_MODES,
        help="coverage: aim new samples at the clusters of the stored profile that lack rows against a uniform "
             "spread (each prompt shows stored examples of one such cluster; a sample is kept while its nearest "
             "centroid's cluster still lacks rows); stops when none lacks rows or at --n (default: free sampling)",
        label="Steer (empty: free sampling)")
    steer_examples: int = setting(3, help="with --steer coverage: stored instructions of the cluster shown in each "
                                          "prompt", minimum=1, maximum=20)
    steer_keep_all: bool = setting(False, help="with --steer coverage: keep samples that land in a cluster that "
                                               "already has its share too (default: reject them)")
    job_id: str | None = setting(None, help="name the job (default: derived from the settings, so reruns resume)")
    serving: dict[str, Any] = serving_setting()
    extra: dict[str, Any] = setting(help="free-form notes kept with the job", default_factory=dict, flag=None)

    def __post_init__(self) -> None:
        self.serving = serving_fields(self.serving)
        whole = all(isinstance(getattr(self, name), int) and not isinstance(getattr(self, name), bool)
                    for name in ("n", "batch_size", "max_new_tokens", "seed", "min_chars", "max_chars",
                                 "corpus_rows", "passage_max_words", "steer_examples"))
        if not whole:
            raise ForgetlessError("n, batch size, max new tokens, seed, min/max chars, corpus rows, passage max "
                                  "words and steer examples must be whole numbers")
        self.from_corpus = (self.from_corpus or "").strip() or None
        if self.from_corpus is not None:
            check_corpus_spec(self.from_corpus)
        self.steer = (self.steer or "").strip().lower() or None
        checks = [
            (bool(self.model.strip()), "model must be given: an alias, a model folder or a .gguf file"),
            (self.n >= 1, "n must be at least 1"),
            (self.batch_size >= 1, "batch size must be at least 1"),
            (0.0 <= self.temperature <= 5.0, "temperature must be between 0 and 5"),
            (0.0 < self.top_p <= 1.0, "top-p must be in (0, 1]"),
            (1 <= self.max_new_tokens <= 8192, "max new tokens must be between 1 and 8192"),
            (0 < self.min_chars <= self.max_chars, "min chars must be positive and at most max chars"),
            (self.stop is None or all(self.stop), "stop strings must not be empty"),
            (self.corpus_rows >= 0, "corpus rows must be 0 (all) or more"),
            (self.passage_max_words >= 1, "passage max words must be at least 1"),
            (self.from_corpus is None or self.prefix is None,
             "--prefix sets the pre-query text of free sampling; a corpus-seeded run prompts through the chat "
             "template: drop --prefix or --from-corpus"),
            (self.steer is None or self.steer in STEER_MODES, f"steer must be one of {', '.join(STEER_MODES)}"),
            (1 <= self.steer_examples <= 20, "steer examples must be between 1 and 20"),
            (self.steer is None or (self.from_corpus is None and self.prefix is None),
             "--steer prompts with stored examples through the chat template: drop --from-corpus and --prefix"),
        ]
        for ok, message in checks:
            if not ok:
                raise ForgetlessError(message)
        if self.stop is not None:
            self.stop = tuple(self.stop)

    def resolved_job_id(self) -> str:
        # Corpus and steer settings count only when used: free sampling keeps the ids it had before them.
        unused = () if self.from_corpus else ("from_corpus", "corpus_rows", "passage_max_words")
        unused += () if self.steer else ("steer", "steer_examples", "steer_keep_all")
        return self.job_id or "reconstruct-" + fingerprint(self, exclude=("job_id", "extra", *unused))


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
    corpus: Corpus | None = None,
    embed: Embed | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> dict[str, Any]:
    """Sample, clean and store instructions until the job holds ``config.n`` of them (or is cancelled).

    ``corpus``: ``config.from_corpus`` already read (the CLI reads it before it writes a job folder, so a bad file
    leaves no trace); read here when not given. ``embed``: with ``steer``, embeds texts in place of the profile's
    embedder (tests).
    """
    if config.from_corpus is None and corpus is not None:
        raise ValueError("a corpus was given for a job without from_corpus")
    if config.from_corpus is not None and corpus is None:
        corpus = load_corpus(config.from_corpus, config.passage_max_words)
    with engines(config.model) as engine:
        return _reconstruct(config, store, engine, corpus, embed, on_progress, should_stop)


@dataclass(frozen=True)
class _Prompt:
    """One prompt of a batch and what to store about it with each sample it gives."""

    text: str
    seed_texts: tuple[str, ...] = ()  # a corpus row's text, or a cell's examples (none: free sampling)
    seed_ids: tuple[str, ...] = ()
    cell: int | None = None  # steered: the cluster aimed at


class _Prompter:
    """The prompts of each batch: the pre-query prefix sampled ``batch_size`` times (free sampling), or one
    rendered prompt per seed row of the corpus, or per cluster drawn by the steering, each sampled once."""

    def __init__(self, config: ReconstructConfig, tokenizer: Any, corpus: Corpus | None,
                 steering: CoverageSteering | None = None) -> None:
        self.config, self.tokenizer, self.steering = config, tokenizer, steering
        self.seeds = None if corpus is None else CorpusSeeds(corpus, tokenizer, seed=config.seed,
                                                             limit=config.corpus_rows)
        if steering is not None:
            self.prefix = None
            derived_stop = derive_prequery(tokenizer).stop if steering.chat else PLAIN_STOPS
            self.stop = tuple(config.stop) if config.stop is not None else derived_stop
        elif self.seeds is None:
            derived = derive_prequery(tokenizer) if config.prefix is None or config.stop is None else None
            self.prefix = config.prefix if config.prefix is not None else derived.prefix
            self.stop = tuple(config.stop) if config.stop is not None else derived.stop
        else:
            self.prefix = None
            derived_stop = derive_prequery(tokenizer).stop if self.seeds.chat else PLAIN_STOPS
            self.stop = tuple(config.stop) if config.stop is not None else derived_stop

    @property
    def per_prompt(self) -> int:
        return self.config.batch_size if self.seeds is None and self.steering is None else 1

    @property
    def mode(self) -> str:
        return CELL if self.steering is not None else CORPUS if self.seeds is not None else PLAIN

    def batch(self, batch: int, seed: int, lacking: dict[int, int]) -> list[_Prompt]:
        if self.steering is not None:
            return [_Prompt(p.text, p.examples, p.example_ids, p.cell)
                    for p in self.steering.prompts(lacking, seed, self.config.batch_size)]
        if self.seeds is None:
            return [_Prompt(self.prefix)]
        return [_Prompt(p.text, (p.row.text,), (p.row.row_id,))
                for p in self.seeds.prompts(batch, self.config.batch_size)]

    def token_ids(self, prompts: list[_Prompt]) -> list[list[int]]:
        # A chat template (and the pre-query prefix read off it) writes its own BOS text; a plain prompt needs
        # the tokenizer's.
        plain_format = (self.seeds is not None and not self.seeds.chat) or (
            self.steering is not None and not self.steering.chat)
        return self.tokenizer([p.text for p in prompts], add_special_tokens=plain_format)["input_ids"]

    def provenance(self, prompt: _Prompt) -> dict[str, Any]:
        if self.steering is not None:
            return {"steer_mode": CELL, "steer_source": cell_key(prompt.cell), "steer_seed_ids": prompt.seed_ids,
                    "steer_prompt": self.steering.prompt_id}
        if self.seeds is None:
            return {}
        return {"steer_mode": CORPUS, "steer_source": self.seeds.corpus.name, "steer_seed_ids": prompt.seed_ids,
                "steer_prompt": self.seeds.prompt_id}

    def clean(self, text: str, stopped: bool, prompt: _Prompt, markers: list[str]) -> tuple[str | None, str | None]:
        config = self.config
        if self.steering is None and self.seeds is None:
            return clean_instruction(text, stopped, self.stop, markers, config.min_chars, config.max_chars)
        text, found = cut_at_stop(text, self.stop)
        cleaned, reason = clean_instruction(unwrap_request(text), stopped or found, (), markers, config.min_chars,
                                            config.max_chars)
        if cleaned is not None and copies_an_example(cleaned, prompt.seed_texts):
            return None, "copied_seed" if self.seeds is not None else "copied_example"
        return cleaned, reason


def _reconstruct(config: ReconstructConfig, store: Store, engine: Engine, corpus: Corpus | None,
                 embed: Embed | None, on_progress: Callable[[dict[str, Any]], None] | None,
                 should_stop: Callable[[], bool]) -> dict[str, Any]:
    job_id = config.resolved_job_id()
    tokenizer = engine.tokenizer
    steering = None if config.steer is None else CoverageSteering(
        store, job_id, tokenizer, examples_per_prompt=config.steer_examples,
        keep_all=config.steer_keep_all, embed=embed)
    prompter = _Prompter(config, tokenizer, corpus, steering)
    stop = prompter.stop
    stop_ids = tuple(stop_token_ids(tokenizer, stop))
    markers = template_markers(tokenizer)
    store.register_job(job_id, "reconstruct", to_yaml(config))

    state = store.job_progress(job_id)
    progress = Progress(job_id, config.n, state["stored"], on_progress=on_progress, should_stop=should_stop)
    barren, cancelled, stopped_because = 0, False, "n_reached"

    batch = state["next_batch"]
    lacking = steering.lacking() if steering is not None else {}
    if steering is not None:
        progress.details["clusters"] = steering.cluster_rows()
    while progress.done < config.n:
        if progress.stop_requested():
            cancelled, stopped_because = True, "cancelled"
            break
        if steering is not None and not any(lacking.values()):
            stopped_because = "target_met"
            break
        seed = batch_seed(config.seed, job_id, batch)
        began = time.monotonic()
        prompts = prompter.batch(batch, seed, lacking)
        # Special tokens stay in the text: an instruction holding one is a leak of the template.
        settings = SampleSettings(
            max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p,
            n=prompter.per_prompt, stop=stop, stop_token_ids=stop_ids, seed=seed, skip_special_tokens=False,
        )
        try:
            samples = engine.sample(prompter.token_ids(prompts), settings, on_tokens=progress.on_token)
        except Cancelled:
            cancelled, stopped_because = True, "cancelled"
            break
        rows, dropped = [], {}
        for index, item in enumerate(samples):
            prompt = prompts[index // prompter.per_prompt]
            cleaned, reason = prompter.clean(item.text, item.stopped, prompt, markers)
            if cleaned is None:
                dropped[reason] = dropped.get(reason, 0) + 1
                continue
            rows.append(InstructionRow(
                cleaned, len(item.token_ids), engine.name, prompt.text, config.temperature, config.top_p,
                config.max_new_tokens, seed, job_id, batch, **prompter.provenance(prompt),
            ))
        if steering is not None:
            verdicts = steering.admit([row.text for row in rows], lacking)
            kept = [(row, cell) for row, (keep, cell) in zip(rows, verdicts, strict=True) if keep]
            if len(kept) < len(rows):
                dropped["off_cell"] = len(rows) - len(kept)
            rows = [row for row, _ in kept]
            steering.remember([row.text for row in rows], [cell for _, cell in kept])
        batch_tokens = sum(len(item.token_ids) for item in samples)
        result = store.add_instruction_batch(
            job_id, batch, rows, limit=config.n - progress.done, sampled=len(samples),
            dropped=dropped, new_tokens=batch_tokens, seconds=time.monotonic() - began,
            engine=engine.served_by, engine_url=engine.url,
        )
        if steering is not None:  # counted before the report, so the live chart shows this batch's rows
            lacking = steering.lacking()
            progress.details["clusters"] = steering.cluster_rows()
        progress.batch_done(result.stored, batch_tokens)
        batch += 1
        barren = 0 if result.stored else barren + 1
        if barren >= _MAX_BARREN_BATCHES and steering is not None:
            # Steered samples kept landing in filled clusters (or failing the checks): stop, say where it stands.
            stopped_because = "no_progress"
            break
        if barren >= _MAX_BARREN_BATCHES:
            raise ForgetlessError(
                f"{barren} batches in a row gave no new instruction; check the prefix, stop strings and sampling"
            )

    seconds = progress.elapsed
    final = store.job_progress(job_id)
    summary = {
        "job_id": job_id, "model": engine.name, "stored": final["stored"], "new": progress.done_now,
        "target": config.n, "dropped": final["dropped"], "sampled": final["sampled"], "batches": final["batches"],
        "db": str(store.path), "tokens_per_s": round(progress.tokens / seconds, 2),
        "seconds": round(seconds, 2), "cancelled": cancelled, "prefix": prompter.prefix, "stop": list(stop),
        "mode": prompter.mode, "stopped_because": stopped_because,
    }
    if steering is not None:
        summary["steer"] = steering.describe(lacking)
    if prompter.seeds is not None:
        summary["corpus"] = prompter.seeds.describe()
    return summary
