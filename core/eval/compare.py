"""Compare: one prompt answered by the base model and tuned runs side by side, each reply kept in the store.

Numbers say how much a run forgot; reading its replies next to the base's says what. The prompt is typed,
or drawn (seeded) from one of two sources no run trained on:

- ``held-out``: a general instruction the tuned runs' mixes set aside (``general.held_out_ids`` in each
  mix manifest; with several runs, one every mix held out), read from the workspace's store;
- ``domain``: a question of the domain test split: MedMCQA's fixed test split for ``builtin:medmcqa``, or
  the rows ``split_by_content`` held out of a user's data (the last user turn before the final answer).
  The data and its held-out share are the first tuned run's mix's, unless ``domain`` names them.

Each model answers through its own prompt format (its chat template; the plain format for a model without
one), as `core.screen.respond` samples responses; a LoRA run's adapter is merged into its base as in
evaluation (`core.eval.evaluation.open_target`). Every model samples with the same settings and seed,
stored with its reply. The job id derives from the settings, so a rerun skips the replies already stored.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config import fingerprint, to_yaml
from core.engines.base import OpenEngine
from core.engines.choice import serving_fields, serving_setting
from core.errors import ForgetlessError
from core.eval.benchmarks.domain_ppl import item_ids
from core.eval.benchmarks.drift import mix_held_out_ids
from core.eval.evaluation import EvalConfig, open_target, resolve_target
from core.eval.plan import normalised_spec, target_label
from core.eval.task import EvalTarget, seeded_pick
from core.mix.domain import BUILTIN_MEDMCQA, load_domain, mcq_prompt, medmcqa_items
from core.mix.snapshot import read_manifest
from core.progress import Cancelled, Progress
from core.screen.respond import sample_answers
from core.settings import setting
from core.store import Store
from core.store.compare import ComparisonRow

SOURCES = ("typed", "held-out", "domain")


@dataclass
class CompareConfig:
    """Settings of one comparison (the YAML in its job folder)."""

    models: tuple[str, ...] = setting((), list_form="comma", label="Models",
                                      help="comma-separated: the base MODEL first, then training run folders (a "
                                           "LoRA run's adapter is applied on its base)")
    prompt: str | None = setting(None, help="the prompt every model answers (source typed)")
    source: str = setting("typed", choices=SOURCES, label="Prompt source",
                          help="typed (--prompt), held-out (a random general instruction the tuned runs' mixes held "
                               "out: never trained on) or domain (a random question of the domain test split)")
    pick_seed: int = setting(0, label="Draw seed", help="which held-out instruction or domain question is drawn")
    domain: str | None = setting(None, label="Domain data",
                                 help="the domain source's data: builtin:medmcqa or a FILE/DIR (default: the first "
                                      "tuned run's mix's domain data and held-out share)")
    domain_test_fraction: float = setting(0.2, label="Held-out share", minimum=0.05, maximum=0.9, step=0.05,
                                          help="with --domain FILE: the held-out share its test questions come from")
    max_new_tokens: int = setting(256, label="Max new tokens", help="a reply still unfinished here is cut")
    temperature: float = setting(0.7, minimum=0.0, maximum=2.0, step=0.05, help="sampling temperature (0: greedy)")
    top_p: float = setting(0.9, label="Top-p", minimum=0.05, maximum=1.0, step=0.05,
                           help="nucleus sampling: the smallest set of tokens holding this much probability")
    seed: int = setting(0, help="sampling seed (every model samples with it)")
    job_id: str | None = setting(None, help="name the job (default: derived from the settings, so reruns resume)")
    serving: dict[str, Any] = serving_setting()

    def __post_init__(self) -> None:
        self.serving = serving_fields(self.serving)
        if isinstance(self.models, str):
            self.models = tuple(self.models.split(","))
        self.models = tuple(normalised_spec(str(spec)) for spec in self.models if str(spec).strip())
        self.prompt = (str(self.prompt).strip() or None) if self.prompt is not None else None
        self.source = str(self.source or "typed").strip().lower()
        domain = str(self.domain or "").strip()
        self.domain = normalised_spec(domain) if domain else None
        self.domain_test_fraction = float(self.domain_test_fraction)
        drawn = self.source != "typed"
        checks = [
            (bool(self.models), "give the models to compare: the base first, then tuned runs"),
            (len(set(self.models)) == len(self.models), "a model is listed twice"),
            (self.source in SOURCES, f"unknown prompt source '{self.source}': choose typed, held-out or domain"),
            (drawn or self.prompt is not None, "type a prompt (--prompt), or draw one with --source held-out|domain"),
            (not (drawn and self.prompt), f"give --prompt or --source {self.source}, not both"),
            (1 <= self.max_new_tokens <= 8192, "max new tokens must be between 1 and 8192"),
            (0.0 <= self.temperature <= 5.0, "temperature must be between 0 and 5"),
            (0.0 < self.top_p <= 1.0, "top-p must be in (0, 1]"),
            (0.0 < self.domain_test_fraction < 1.0, "domain test fraction must be in (0, 1)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ForgetlessError(message)
        for spec in (*self.models, self.domain):
            if spec and spec.startswith(("/", ".", "~")) and not Path(spec).expanduser().exists():
                raise ForgetlessError(f"no model, run folder or data at {spec}")

    def resolved_job_id(self) -> str:
        return self.job_id or "compare-" + fingerprint(self, exclude=("job_id",))

    def targets(self) -> list[EvalTarget]:
        """What each model names: a plain model, or a run's adapter/full model and its base (in order)."""
        return [resolve_target(EvalConfig(model=spec)) for spec in self.models]


@dataclass(frozen=True)
class PickedPrompt:
    """The prompt a comparison asks, and where it came from."""

    text: str
    source: str  # typed | held-out | domain
    source_id: str | None  # held-out: the instruction id; domain: the test row's id (medmcqa:<id> for MedMCQA)


def pick_prompt(config: CompareConfig, store: Store) -> PickedPrompt:
    """The typed prompt, or one drawn with ``pick_seed`` from the source (a ForgetlessError says what is missing).

    Reads only manifests, the store and the domain data, never a model: the app draws with it to show the prompt.
    """
    if config.source == "typed":
        return PickedPrompt(str(config.prompt), "typed", None)
    runs = [target for target in config.targets() if target.run_dir is not None]
    found = held_out_instructions(runs, store) if config.source == "held-out" else domain_questions(config, runs)
    if not found:
        raise ForgetlessError(f"no {config.source} prompt to draw from")
    source_id, text = seeded_pick(found, 1, config.pick_seed)[0]
    return PickedPrompt(text, config.source, source_id)


def held_out_instructions(runs: Sequence[EvalTarget], store: Store) -> list[tuple[str, str]]:
    """(id, text) of the stored general instructions every run's mix held out, by id."""
    if not runs:
        raise ForgetlessError("held-out instructions come from a tuned run's mix: pick at least one tuned run")
    common: set[str] | None = None
    for run in runs:
        held = mix_held_out_ids({"data": run.data_dir}) if run.data_dir else None
        if not held:
            raise ForgetlessError(f"the mix of run {target_label(str(run.run_dir))} lists no held-out instructions "
                                  "(make the mix with --general-holdout above 0)")
        common = held if common is None else common & held
    if not common:
        raise ForgetlessError("the tuned runs' mixes hold out no instruction in common: compare runs of one mix")
    texts = store.general_texts(sorted(common))
    if texts.empty:
        raise ForgetlessError(f"none of the {len(common)} held-out instructions is in this workspace's store")
    return list(zip(texts["instruction_id"].astype(str), texts["instruction"].astype(str), strict=True))


def _mix_domain(runs: Sequence[EvalTarget]) -> tuple[str, float | None]:
    """The first run's mix's domain data and held-out share (None: it held none out)."""
    run = next((run for run in runs if run.data_dir), None)
    if run is None:
        raise ForgetlessError("domain test questions come from a tuned run's mix or --domain: pick a tuned run, "
                              f"or give the domain data ({BUILTIN_MEDMCQA} or a file)")
    domain = read_manifest(Path(str(run.data_dir))).get("domain") or {}
    if not domain.get("spec"):
        raise ForgetlessError(f"the mix of run {target_label(str(run.run_dir))} names no domain data: give --domain")
    fraction = domain.get("test_fraction")
    return str(domain["spec"]), float(fraction) if fraction else None


def domain_questions(config: CompareConfig, runs: Sequence[EvalTarget]) -> list[tuple[str, str]]:
    """(id, question) of the domain test split: MedMCQA's test items, or a user's held-out rows' last user turn."""
    spec, fraction = (config.domain, config.domain_test_fraction) if config.domain else _mix_domain(runs)
    if spec == BUILTIN_MEDMCQA:
        return [(f"medmcqa:{item.id}", mcq_prompt(item)) for item in medmcqa_items("test")]
    if fraction is None:
        raise ForgetlessError(f"the tuned run's mix held out no rows of {spec} (--domain-test-fraction 0): give "
                              "--domain with --domain-test-fraction")
    if not Path(spec).expanduser().exists():
        raise ForgetlessError(f"the domain data {spec} is not there any more: give --domain")
    test = load_domain(spec, test_fraction=fraction).test
    return [(row_id, _last_user_turn(messages)) for row_id, messages in zip(item_ids(test), test, strict=True)]


def _last_user_turn(messages: Sequence[dict[str, str]]) -> str:
    return next(message["content"] for message in reversed(messages) if message["role"] == "user")


def run_comparison(
    config: CompareConfig, store: Store, engines: OpenEngine, *, local: OpenEngine | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None, should_stop: Callable[[], bool] = lambda: False,
) -> dict[str, Any]:
    """Each model's reply to the prompt, one model at a time, each stored as it is generated (a rerun of the job
    generates only the replies missing). ``engines(spec)`` opens a model; ``local`` opens in-process ones for a
    LoRA run's merged adapter when ``engines`` serve elsewhere."""
    job_id = config.resolved_job_id()
    picked = pick_prompt(config, store)
    targets = config.targets()
    store.register_job(job_id, "compare", to_yaml(config))
    stored = store.compared_models(job_id)
    progress = Progress(job_id, len(targets), sum(target.model in stored for target in targets),
                        on_progress=on_progress, should_stop=should_stop, unit="done")
    progress.report(force=True)
    cancelled = False
    for position, target in enumerate(targets):
        if target.model in stored:
            continue
        if progress.stop_requested():
            cancelled = True
            break
        progress.details = {"model": target_label(target.model)}
        try:
            _answer(config, store, job_id, picked, position, target, open_target(target, engines, local), progress)
        except Cancelled:  # raised mid-generation by progress.on_token
            cancelled = True
            break
    rows = store.comparisons(job_id=job_id, limit=None)
    replies = [{"model": row.model, "label": target_label(row.model), "run_dir": row.run_dir, "reply": row.reply,
                "tokens": int(row.n_tokens), "stopped": bool(row.stopped), "seconds": float(row.seconds)}
               for row in rows.itertuples(index=False)]
    return {"job_id": job_id, "prompt": picked.text, "source": picked.source, "source_id": picked.source_id,
            "sampling": sampling_settings(config), "replies": replies, "generated": progress.done_now,
            "db": str(store.path), "seconds": round(progress.elapsed, 2), "cancelled": cancelled}


def sampling_settings(config: CompareConfig) -> dict[str, Any]:
    """How every model of the comparison samples (stored with each reply, with its prompt format)."""
    return {"temperature": config.temperature, "top_p": config.top_p, "max_new_tokens": config.max_new_tokens,
            "seed": config.seed}


def _answer(config: CompareConfig, store: Store, job_id: str, picked: PickedPrompt, position: int,
            target: EvalTarget, engine: Any, progress: Progress) -> None:
    """One model's reply, stored; the engine is closed after it."""
    try:
        started = time.monotonic()
        fmt, (sample,) = sample_answers(engine, [picked.text], max_new_tokens=config.max_new_tokens,
                                        temperature=config.temperature, top_p=config.top_p, seed=config.seed,
                                        on_tokens=progress.on_token)
        seconds = time.monotonic() - started
        store.add_comparison(ComparisonRow(
            job_id, position, picked.text, picked.source, picked.source_id, target.model, target.run_dir,
            target.base if target.run_dir else None, sample.text.strip(), len(sample.token_ids), sample.stopped,
            {**sampling_settings(config), "prompt_format": fmt.name}, config.seed, round(seconds, 3),
            engine.served_by, engine.url))
    finally:
        engine.close()
    progress.batch_done(1, len(sample.token_ids))
