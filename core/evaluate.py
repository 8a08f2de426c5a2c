"""Measuring forgetting: general benchmarks, the domain test and drift, for a model or a training run.

A run folder (written by the train stage) holds ``config.yaml`` (its ``model`` is the base spec, its
``data`` the mix snapshot) and either ``adapter/`` (PEFT, applied on the base and merged) or ``model/``
(a full fine-tune). The domain suite scores MedMCQA's test split (``medmcqa``, letter accuracy) or, with a
user's ``domain`` data, its held-out rows: answer perplexity for every row (``domain_ppl``,
core/eval_domain_ppl.py) and letter accuracy for the multiple-choice ones (``domain_mcq``, core/eval_domain.py).
The optional ``ifeval`` suite generates a greedy reply to each IFEval prompt and checks its instructions by
rule (core/eval_ifeval.py); it is slow on a CPU, so it is never part of the default suites.
Every scored item is committed with its batch, keyed by the evaluation's job id
(model, base, limit, seed and sizes: not the suite or batch size), so a rerun resumes and a wider
suite reuses what is done. Each finished task's metrics go to ``eval_results``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from core.config import fingerprint, to_yaml
from core.domain import BUILTIN_MEDMCQA
from core.errors import ForgetlessError
from core.eval_tasks import GENERAL_TASKS, HELLASWAG_DEFAULT_N, length_buckets, subsample
from core.models import DEFAULT_MODEL
from core.progress import Cancelled, Progress
from core.store import Store
from core.store.evaluation import EvalItemRow, EvalResultRow

# The domain suite runs medmcqa for builtin:medmcqa; for a user's domain data, domain_mcq (when some held-out
# rows are multiple choice) and domain_ppl (EvalConfig.tasks).
SUITES: dict[str, tuple[str, ...]] = {"general": tuple(GENERAL_TASKS),
                                      "domain": ("medmcqa", "domain_mcq", "domain_ppl"), "drift": ("drift",),
                                      "ifeval": ("ifeval",)}
LETTER_TASKS = ("medmcqa", "domain_mcq")  # scored by answer-letter likelihood
TASK_SUITE = {task: suite for suite, tasks in SUITES.items() for task in tasks}


@dataclass
class EvalConfig:
    """Settings of one evaluation (the YAML in its job folder)."""

    model: str = DEFAULT_MODEL  # MODEL spec, or a training run folder (config.yaml + adapter/ or model/)
    suite: tuple[str, ...] = ("general", "domain")  # general, domain, drift, or single tasks (arc_easy, ...)
    limit: int | None = None  # items per task (a seeded subsample); None: all (HellaSwag: hellaswag_n)
    seed: int = 0  # picks the subsamples (HellaSwag's, --limit's, drift's held-out texts)
    batch_size: int = 16  # questions (or drift texts) per forward pass
    base: str | None = None  # drift's reference model; default: the run's base model
    hellaswag_n: int = HELLASWAG_DEFAULT_N  # HellaSwag's fixed subsample size (10,042 validation items in all)
    drift_n: int = 200  # held-out general texts for drift
    drift_max_tokens: int = 384  # each drift text (prompt + response) is cut to this many tokens
    job_id: str | None = None
    domain: str = BUILTIN_MEDMCQA  # the domain suite's data: builtin:medmcqa, or a user's FILE | DIR (domain_ppl)
    domain_test_fraction: float = 0.2  # user data: the held-out share (as `mix --domain-test-fraction`) scored
    ifeval_max_new_tokens: int = 512  # reply budget per IFEval prompt (part of each reply's item id)

    def __post_init__(self) -> None:
        self.model = _normalised_path(str(self.model or "").strip())
        self.base = _normalised_path(self.base.strip()) if self.base and self.base.strip() else None
        self.domain = _normalised_path(str(self.domain or "").strip()) or BUILTIN_MEDMCQA
        self.domain_test_fraction = float(self.domain_test_fraction)
        if isinstance(self.suite, str):
            self.suite = tuple(self.suite.split(","))
        self.suite = tuple(dict.fromkeys(part.strip().lower() for part in self.suite if part.strip()))
        known = (*SUITES, *TASK_SUITE)
        unknown = [part for part in self.suite if part not in known]
        checks = [
            (bool(self.model), "give a model or a training run folder"),
            (bool(self.suite), "give at least one suite"),
            (not unknown, f"unknown suite '{','.join(unknown)}'; choose from {', '.join(known)}"),
            (self.limit is None or self.limit >= 1, "limit must be at least 1"),
            (self.batch_size >= 1, "batch size must be at least 1"),
            (self.hellaswag_n >= 1, "hellaswag_n must be at least 1"),
            (self.drift_n >= 1, "drift_n must be at least 1"),
            (self.drift_max_tokens >= 8, "drift_max_tokens must be at least 8"),
            (self.ifeval_max_new_tokens >= 1, "ifeval max new tokens must be at least 1"),
            (0.0 <= self.domain_test_fraction < 1.0, "domain test fraction must be in [0, 1)"),
            (self.builtin_domain or self.domain_test_fraction > 0,
             "a user's domain data needs a domain test fraction above 0 (the held-out share to score)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ForgetlessError(message)
        for spec in (self.model, self.base):
            if spec and spec.startswith(("/", ".", "~")) and not Path(spec).expanduser().exists():
                raise ForgetlessError(f"no model or run folder at {spec}")

    def tasks(self) -> tuple[str, ...]:
        """The suite expanded into tasks, in a fixed order."""
        domain = ("medmcqa",) if self.builtin_domain else ("domain_mcq", "domain_ppl")
        chosen = {task for part in self.suite for task in (domain if part == "domain" else SUITES.get(part, (part,)))}
        return tuple(task for task in TASK_SUITE if task in chosen)

    @property
    def builtin_domain(self) -> bool:
        return self.domain == BUILTIN_MEDMCQA

    def resolved_job_id(self) -> str:
        # The domain fields count only for user data, so builtin:medmcqa jobs keep the ids they had before them;
        # the ifeval budget is part of each reply's item id instead.
        exclude = ("job_id", "batch_size", "suite", "ifeval_max_new_tokens",
                   *(("domain", "domain_test_fraction") if self.builtin_domain else ()))
        return self.job_id or "eval-" + fingerprint(self, exclude=exclude)


def _normalised_path(spec: str) -> str:
    """An existing path becomes absolute, so the same model gets the same job id from any directory."""
    path = Path(spec).expanduser()
    return str(path.resolve()) if spec and path.exists() else spec


@dataclass(frozen=True)
class EvalTarget:
    """What MODEL_OR_RUN names: a plain model, or a run's adapter/full model and its base."""

    model: str  # as configured (spec or absolute run folder)
    run_dir: str | None
    base: str | None  # drift's reference: --base, else the run's base model
    adapter_dir: str | None
    load_spec: str  # what the loader loads (for an adapter: the base it goes on)
    data_dir: str | None  # the run's mix snapshot


def resolve_target(config: EvalConfig) -> EvalTarget:
    path = Path(config.model)
    if not (path.is_dir() and (path / "config.yaml").exists()):
        return EvalTarget(config.model, None, config.base, None, config.model, None)
    try:
        run = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ForgetlessError(f"cannot read {path / 'config.yaml'}: {str(error).splitlines()[0]}") from error
    base = run.get("model") if isinstance(run, dict) else None
    if not base:
        raise ForgetlessError(f"{path / 'config.yaml'} names no base model (field 'model')")
    data = run.get("data")
    if (path / "adapter").is_dir():
        return EvalTarget(config.model, str(path), config.base or base, str(path / "adapter"), base,
                          str(data) if data else None)
    if (path / "model" / "config.json").exists():
        return EvalTarget(config.model, str(path), config.base or base, None, str(path / "model"),
                          str(data) if data else None)
    raise ForgetlessError(f"run folder {path} has neither adapter/ nor model/ (did training finish?)")


def load_target(target: EvalTarget, load: Callable[[str], Any]) -> Any:
    """The model to evaluate: loaded by spec, or its base with the run's LoRA adapter merged in."""
    loaded = load(target.load_spec)
    if target.adapter_dir is None:
        return loaded
    from peft import PeftModel

    try:
        merged = PeftModel.from_pretrained(loaded.model, target.adapter_dir).merge_and_unload()
    except Exception as error:  # PEFT raises several types for a mismatched or broken adapter
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ForgetlessError(f"cannot apply adapter {target.adapter_dir}: {text}") from error
    merged.eval()
    return dataclasses.replace(loaded, model=merged, name=Path(target.run_dir or target.model).name)


def _domain_source() -> tuple[list[Any], Callable[[Any], str]]:
    """The held-out domain questions and their prompt builder (MedMCQA's test split)."""
    try:
        from core.domain import mcq_prompt, medmcqa_items
    except ImportError as error:
        raise ForgetlessError(f"the domain suite needs core.domain: {error}") from error
    return list(medmcqa_items("test")), mcq_prompt


def _domain_rows(config: EvalConfig) -> list[tuple[str, Any]]:
    """(item id, conversation) of a user's held-out domain rows: the split_by_content test side at the
    configured fraction (the rows a mix with that fraction left out)."""
    from core.domain import load_domain
    from core.eval_domain_ppl import item_ids

    data = load_domain(config.domain, test_fraction=config.domain_test_fraction)
    return list(zip(item_ids(data.test), data.test, strict=True))


def _domain_questions(conversations: Sequence[tuple[str, Any]]) -> list[Any]:
    """The held-out rows that are multiple-choice questions, as letter-scored items."""
    from core.eval_domain import chat_mcq

    return [q for q in (chat_mcq(item_id, messages) for item_id, messages in conversations) if q is not None]


def _seeded_pick(items: Sequence[Any], limit: int | None, seed: int) -> list[Any]:
    return [items[i] for i in subsample(len(items), limit, seed)]


def _held_out_texts(config: EvalConfig, store: Store, target: EvalTarget, tokenizer: Any) -> list[Any]:
    from core.eval_drift import drift_text, mix_general_ids

    pairs = store.general_pairs()
    used = mix_general_ids({"data": target.data_dir}) if target.data_dir else None
    if used:
        pairs = pairs[~pairs["id"].isin(used)]
    rows = _seeded_pick(list(pairs.itertuples(index=False)), config.drift_n, config.seed)
    texts = (drift_text(tokenizer, row.id, row.instruction, row.response, config.drift_max_tokens) for row in rows)
    return [text for text in texts if text is not None]


def _pending(todo: Sequence[Any], key: Callable[[Any], str], done: set[str]) -> list[Any]:
    return [item for item in todo if key(item) not in done]


def run_evaluation(
    config: EvalConfig, store: Store, load: Callable[[str], Any], *,
    on_progress: Callable[[dict[str, Any]], None] | None = None, should_stop: Callable[[], bool] = lambda: False,
) -> dict[str, Any]:
    """Score every task of the suite (resuming what is stored) and record each finished task's metrics."""
    from core.eval_tasks import load_general_items

    job_id = config.resolved_job_id()
    target = resolve_target(config)
    tasks = config.tasks()
    if "drift" in tasks and not target.base:
        raise ForgetlessError("drift needs a base model: give --base or a training run folder")
    # Bad domain data fails before the model loads.
    conversations = _domain_rows(config) if {"domain_ppl", "domain_mcq"} & set(tasks) else []
    questions = _domain_questions(conversations) if "domain_mcq" in tasks else []
    if "domain_mcq" in tasks and not questions:
        if "domain_mcq" in config.suite:
            raise ForgetlessError(f"none of the held-out rows of {config.domain} is multiple choice (a user turn "
                                  "listing options 'A. ...', 'B. ...' and a reply starting with the letter)")
        tasks = tuple(task for task in tasks if task != "domain_mcq")  # perplexity still measures the domain
    if "ifeval" in tasks:
        from core.eval_ifeval import checker

        checker()  # a missing checker dependency fails before the model loads
    store.register_job(job_id, "eval", to_yaml(config))
    lm = load_target(target, load)
    todo: dict[str, list[Any]] = {}
    prompts: dict[str, Callable[[Any], Any]] = {}
    for task in tasks:
        if task in GENERAL_TASKS:
            todo[task] = load_general_items(task, config.limit, config.seed, config.hellaswag_n)
        elif task == "medmcqa":
            items, prompts[task] = _domain_source()
            todo[task] = _seeded_pick(items, config.limit, config.seed)
        elif task == "domain_mcq":
            todo[task], prompts[task] = _seeded_pick(questions, config.limit, config.seed), lambda item: item.turns
        elif task == "domain_ppl":
            from core.eval_domain_ppl import conversation_text

            todo[task] = [conversation_text(lm.tokenizer, item_id, messages)
                          for item_id, messages in _seeded_pick(conversations, config.limit, config.seed)]
        elif task == "ifeval":
            from core.eval_ifeval import load_ifeval_items

            todo[task] = load_ifeval_items(config.limit, config.seed, config.ifeval_max_new_tokens)
        else:
            todo[task] = _held_out_texts(config, store, target, lm.tokenizer)
    key = {task: (lambda item: str(item.item_id)) if task not in LETTER_TASKS else (lambda item: str(item.id))
           for task in tasks}
    pending = {task: _pending(todo[task], key[task], {r.item_id for r in store.eval_items(job_id, task)})
               for task in tasks}
    progress = Progress(job_id, sum(len(v) for v in todo.values()), sum(len(todo[t]) - len(pending[t]) for t in tasks),
                        on_progress=on_progress, should_stop=should_stop, unit="done")
    progress.report(force=True)
    base_lm = None
    results: dict[str, dict[str, Any]] = {}
    cancelled = False
    for task in tasks:
        if pending[task] and task == "drift" and base_lm is None:
            base_lm = lm if target.base == target.model else load(target.base)
        for batch in _batches(task, pending[task], config.batch_size):
            if progress.stop_requested():
                cancelled = True
                break
            try:
                rows, tokens = _score_batch(task, batch, lm, base_lm, prompts.get(task), progress)
            except Cancelled:  # raised mid-generation by progress.on_token
                cancelled = True
                break
            store.add_eval_items(job_id, task, rows)
            progress.batch_done(len(rows), tokens)
        if cancelled:
            break
        wanted = {key[task](item) for item in todo[task]}
        stored = [row for row in store.eval_items(job_id, task) if row.item_id in wanted]
        metrics = task_metrics(task, stored)
        if task in ("domain_ppl", "domain_mcq"):
            metrics.update(domain=config.domain, domain_test_fraction=config.domain_test_fraction)
        store.save_eval_result(EvalResultRow(
            job_id, task, TASK_SUITE[task], target.model, target.run_dir, target.base, metrics.get("acc"),
            metrics.get("acc_norm"), metrics.get("stderr"), metrics["n"],
            {k: v for k, v in metrics.items() if k not in ("acc", "acc_norm", "stderr", "n")},
            config.limit, config.seed))
        results[task] = metrics
    return {
        "job_id": job_id, "model": target.model, "run_dir": target.run_dir, "base": target.base,
        "tasks": list(tasks), "results": results, "items_scored": progress.done_now, "db": str(store.path),
        "seconds": round(progress.elapsed, 2), "cancelled": cancelled,
    }


def _batches(task: str, items: Sequence[Any], batch_size: int) -> list[list[Any]]:
    if task in GENERAL_TASKS:  # similar context lengths together: little padding
        return length_buckets(items, lambda item: len(item.context), batch_size)
    if task in ("drift", "domain_ppl"):
        return length_buckets(items, lambda text: len(text.prompt_ids) + len(text.response_ids), batch_size)
    if task == "ifeval":
        return length_buckets(items, lambda item: len(item.prompt), batch_size)
    return [list(items[start : start + batch_size]) for start in range(0, len(items), batch_size)]


def _score_batch(task: str, batch: list[Any], lm: Any, base_lm: Any,
                 domain_prompt: Callable[[Any], Any] | None, progress: Progress) -> tuple[list[EvalItemRow], int]:
    """Score one batch; the rows to store and roughly how many tokens went through the model."""
    if task == "ifeval":
        from core.eval_ifeval import check_reply, generate_replies

        replies = generate_replies(lm, batch, on_token=progress.on_token)
        rows = []
        for item, (reply, generated) in zip(batch, replies, strict=True):
            checks = check_reply(item, reply)
            rows.append(EvalItemRow(item.item_id, None, int(all(checks["strict"])), None, None,
                                    {"reply": reply, "tokens": generated, **checks}))
        return rows, sum(generated for _, generated in replies)
    if task in GENERAL_TASKS:
        from core.eval_tasks import score_multiple_choice

        scores = score_multiple_choice(lm.model, lm.tokenizer, batch, batch_size=len(batch))
        rows = [EvalItemRow(s.item_id, s.gold, s.pred, s.pred_norm, list(s.logprobs), {"lengths": list(s.lengths)})
                for s in scores]
        return rows, sum(len(lm.tokenizer(item.context + "".join(item.options))["input_ids"]) for item in batch)
    if task in LETTER_TASKS:
        from core.eval_domain import letter_prompt, score_letters

        letters = score_letters(lm.model, lm.tokenizer, batch, domain_prompt)
        tokens = sum(len(letter_prompt(lm.tokenizer, domain_prompt(item))) for item in batch)
        return [EvalItemRow(s.item_id, s.gold, s.pred, None, list(s.probs)) for s in letters], tokens
    from core.eval_drift import drift_scores

    pad = lm.tokenizer.pad_token_id or 0
    if task == "domain_ppl":  # the model against itself: only its own NLL sums are kept
        own = drift_scores(lm.model, lm.model, batch, pad_id=pad)
        rows = [EvalItemRow(s.item_id, None, None, None, None, {"tokens": s.tokens, "nll": s.nll_tuned}) for s in own]
        return rows, sum(len(t.prompt_ids) + len(t.response_ids) for t in batch)
    drift = drift_scores(base_lm.model, lm.model, batch, pad_id=pad)
    rows = [EvalItemRow(s.item_id, None, None, None, None, dataclasses.asdict(s)) for s in drift]
    return rows, sum(len(t.prompt_ids) + len(t.response_ids) for t in batch)


def task_metrics(task: str, rows: Sequence[EvalItemRow]) -> dict[str, Any]:
    """A task's metrics from its stored item rows."""
    from core.eval_domain import LetterScore, letter_metrics
    from core.eval_drift import DriftScore, drift_metrics
    from core.eval_tasks import McScore, mc_metrics

    if task in GENERAL_TASKS:
        return mc_metrics([McScore(r.item_id, r.gold, tuple(r.scores or ()), tuple((r.extra or {})["lengths"]))
                           for r in rows])
    if task == "ifeval":
        from core.eval_ifeval import ifeval_metrics

        return ifeval_metrics([r.extra or {} for r in rows])
    if task in LETTER_TASKS:
        return letter_metrics([LetterScore(r.item_id, r.gold, tuple(r.scores or ())) for r in rows])
    if task == "domain_ppl":
        from core.eval_domain_ppl import ppl_metrics

        return ppl_metrics([DriftScore(r.item_id, (r.extra or {})["tokens"], 0.0, 0.0, (r.extra or {})["nll"])
                            for r in rows])
    return drift_metrics([DriftScore(**(r.extra or {})) for r in rows])
