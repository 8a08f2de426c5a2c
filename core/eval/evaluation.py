"""Measuring forgetting: general benchmarks, the domain test and drift, for a model or a training run.

A run folder (written by the train stage) holds ``config.yaml`` (its ``model`` is the base spec, its
``data`` the mix snapshot) and either ``adapter/`` (PEFT, applied on the base and merged) or ``model/``
(a full fine-tune). The domain suite scores MedMCQA's test split (``medmcqa``, letter accuracy) or, with a
user's ``domain`` data, its held-out rows: answer perplexity for every row (``domain_ppl``,
core/eval/benchmarks/domain_ppl.py) and letter accuracy for the multiple-choice ones (``domain_mcq``,
core/eval/benchmarks/domain_mcq.py). The optional ``ifeval`` suite generates a greedy reply to each IFEval
prompt and checks its instructions by rule (core/eval/benchmarks/ifeval.py); it is slow on a CPU, so it is never
part of the default suites. Each benchmark is one task object (core/eval/task.py) that run_evaluation drives.
Every scored item is committed with its batch, keyed by the evaluation's job id
(model, base, limit, seed and sizes: not the suite or batch size), so a rerun resumes and a wider
suite reuses what is done. Each finished task's metrics go to ``eval_results``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from core.config import fingerprint, to_yaml
from core.engines.base import Engine, OpenEngine
from core.engines.choice import serving_fields, serving_setting
from core.engines.in_process import InProcessEngine
from core.engines.models import DEFAULT_MODEL, DTYPES, dtype_name
from core.errors import ForgetlessError
from core.eval.benchmarks import TASKS
from core.eval.benchmarks.general import HELLASWAG_DEFAULT_N
from core.eval.task import EvalTarget, EvalTask, TaskModels, TaskRun
from core.mix.domain import BUILTIN_MEDMCQA
from core.progress import Cancelled, Progress
from core.settings import setting
from core.store import Store
from core.store.evaluation import EvalResultRow

# Each suite's tasks, in run order. Naming the domain suite runs medmcqa and domain_ppl (the answer fit) for
# builtin:medmcqa; for a user's domain data, domain_mcq (when some held-out rows are multiple choice) and
# domain_ppl (each task's in_suite).
SUITES: dict[str, tuple[str, ...]] = {}
for _task in TASKS.values():
    SUITES[_task.suite] = (*SUITES.get(_task.suite, ()), _task.name)
TASK_SUITE = {name: task.suite for name, task in TASKS.items()}


@dataclass
class EvalConfig:
    """Settings of one evaluation (the YAML in its job folder)."""

    model: str = setting(DEFAULT_MODEL,
                         help="MODEL spec, or a training run folder (config.yaml + adapter/ or model/)")
    suite: tuple[str, ...] = setting(("general", "domain"), list_form="comma", label="Suites",
                                     help="comma-separated: general, domain, drift (or tasks: arc_easy, piqa, "
                                          "hellaswag, sciq, medmcqa, domain_mcq, domain_ppl) and ifeval (slow: it "
                                          "generates a reply per prompt)")
    limit: int | None = setting(None, label="Items per task",
                                help="items per task, a seeded subsample (default: all; HellaSwag its hellaswag n)")
    seed: int = setting(0, help="picks the subsamples (HellaSwag's, --limit's, drift's held-out texts)")
    batch_size: int = setting(16, help="questions or drift texts per forward pass; IFEval prompts per generation batch")
    base: str | None = setting(None, help="drift's reference MODEL (default: the run's base model)")
    hellaswag_n: int = setting(HELLASWAG_DEFAULT_N,
                               help="HellaSwag's fixed subsample size (10,042 validation items in all)")
    drift_n: int = setting(200, help="held-out general texts for drift")
    drift_max_tokens: int = setting(384, help="each drift text (prompt + response) is cut to this many tokens",
                                    flag=None)
    job_id: str | None = setting(None, help="name the job (default: derived from the settings, so reruns resume)")
    dtype: str = setting("auto", choices=DTYPES, label="Model dtype",
                         help="the in-process models' dtype, scoring and generation: auto = bf16 where the CPU or GPU "
                              "runs it natively and faster, else fp32; another value pins it (and is part of the "
                              "job id)")
    serving: dict[str, Any] = serving_setting()
    domain: str = setting(BUILTIN_MEDMCQA, label="Domain data",
                          help="the domain suite's data: builtin:medmcqa (its test split) or a user's FILE/DIR (its "
                               "held-out rows), scored by answer perplexity (domain_ppl) and letter accuracy "
                               "(medmcqa; domain_mcq where a user's rows are multiple choice)")
    domain_test_fraction: float = setting(0.2, label="Held-out share", minimum=0.0, maximum=0.9, step=0.05,
                                          help="user domain data: the held-out share to score, the same rows as "
                                               "`mix --domain-test-fraction` with this value leaves out")
    ifeval_max_new_tokens: int = setting(512, help="ifeval: reply budget per prompt (fewer is faster, long essays "
                                                   "get cut; part of each reply's item id)")

    def __post_init__(self) -> None:
        self.serving = serving_fields(self.serving)
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
            (self.dtype in DTYPES, f"dtype must be one of {', '.join(DTYPES)}"),
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
        """The suite expanded into tasks, in a fixed order (a suite runs those of its tasks that are in_suite for
        this config; a task named by itself always runs)."""
        chosen: set[str] = set()
        for part in self.suite:
            chosen.update([name for name in SUITES[part] if TASKS[name].in_suite(self)] if part in SUITES else [part])
        return tuple(name for name in TASKS if name in chosen)

    @property
    def builtin_domain(self) -> bool:
        return self.domain == BUILTIN_MEDMCQA

    def resolved_job_id(self) -> str:
        # The domain fields count only for user data, so builtin:medmcqa jobs keep the ids they had before them;
        # the ifeval budget is part of each reply's item id instead; dtype counts when pinned (auto: the ids of before).
        exclude = ("job_id", "batch_size", "suite", "ifeval_max_new_tokens",
                   *(("domain", "domain_test_fraction") if self.builtin_domain else ()),
                   *(("dtype",) if self.dtype == "auto" else ()))
        return self.job_id or "eval-" + fingerprint(self, exclude=exclude)


def _normalised_path(spec: str) -> str:
    """An existing path becomes absolute, so the same model gets the same job id from any directory."""
    path = Path(spec).expanduser()
    return str(path.resolve()) if spec and path.exists() else spec


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


def open_target(target: EvalTarget, engines: OpenEngine, local: OpenEngine | None = None) -> Engine:
    """The engine of the model to evaluate: opened by spec, or its base's with the run's LoRA adapter merged in
    (in this process: through ``local`` when the engines serve elsewhere)."""
    engine = (local or engines)(target.load_spec) if target.adapter_dir else engines(target.load_spec)
    if target.adapter_dir is None:
        return engine
    loaded = getattr(engine, "lm", None)
    if loaded is None:
        engine.close()
        raise ForgetlessError(f"{target.run_dir} holds a LoRA adapter, merged into its base in this process: "
                              "evaluate it with the in-process engine")
    from peft import PeftModel

    try:
        merged = PeftModel.from_pretrained(loaded.model, target.adapter_dir).merge_and_unload()
    except Exception as error:  # PEFT raises several types for a mismatched or broken adapter
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ForgetlessError(f"cannot apply adapter {target.adapter_dir}: {text}") from error
    merged.eval()
    return InProcessEngine(dataclasses.replace(loaded, model=merged, name=Path(target.run_dir or target.model).name))


class TargetModels:
    """The engines a run's tasks use, opened on first need: through ``engines``, and in this process (``local``)
    for the tasks that need the model itself when ``engines`` serve elsewhere. All are closed by ``close()``."""

    def __init__(self, target: EvalTarget, engines: OpenEngine, local: OpenEngine | None) -> None:
        self.target, self.engines, self.local = target, engines, local
        self.served = TaskModels(open_target(target, engines, local))
        self.in_process: TaskModels | None = None

    def for_task(self, task: EvalTask) -> TaskModels:
        """The models ``task`` is scored with (its base opened, if it needs one)."""
        models, opener = self.served, self.engines
        if task.in_process and self.local is not None and self.served.model.served_by != "transformers":
            if self.in_process is None:
                self.in_process = TaskModels(open_target(self.target, self.local))
            models, opener = self.in_process, self.local
        if task.needs_base and models.base is None:
            models.base = models.model if self.target.base == self.target.model else opener(str(self.target.base))
        return models

    def close(self) -> None:
        engines = [engine for models in (self.served, self.in_process) if models is not None
                   for engine in (models.model, models.base) if engine is not None]
        for engine in {id(engine): engine for engine in engines}.values():
            engine.close()


def run_evaluation(
    config: EvalConfig, store: Store, engines: OpenEngine, *, local: OpenEngine | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None, should_stop: Callable[[], bool] = lambda: False,
) -> dict[str, Any]:
    """Score every task of the suite (resuming what is stored) and record each finished task's metrics.

    ``engines(spec)`` opens the model under evaluation and drift's base; the tasks reach them through the engine
    protocol (`core.engines.base.Engine`), and the engines opened here are closed when it returns. Where
    ``engines`` serve elsewhere (vLLM), ``local`` opens in-process ones for the tasks that need the model
    itself (drift, held-out perplexity) and for a LoRA run's merged adapter.
    """
    job_id = config.resolved_job_id()
    target = resolve_target(config)
    run = TaskRun(config, store, target)
    tasks = [TASKS[name] for name in config.tasks()]
    for task in tasks:
        if task.needs_base and not target.base:
            raise ForgetlessError(f"{task.name} needs a base model: give --base or a training run folder")
    tasks = [task for task in tasks if task.check(run)]  # bad data fails before the model loads
    store.register_job(job_id, "eval", to_yaml(config))
    models = TargetModels(target, engines, local)
    try:
        return _score_tasks(run, tasks, models, job_id, on_progress, should_stop)
    finally:
        models.close()


def _score_tasks(run: TaskRun, tasks: list[EvalTask], target_models: TargetModels, job_id: str,
                 on_progress: Callable[[dict[str, Any]], None] | None,
                 should_stop: Callable[[], bool]) -> dict[str, Any]:
    config, store, target = run.config, run.store, run.target
    todo = {task.name: task.items(run, target_models.served.model.tokenizer) for task in tasks}
    pending = {}
    for task in tasks:
        done = {row.item_id for row in store.eval_items(job_id, task.name)}
        pending[task.name] = [item for item in todo[task.name] if task.item_id(item) not in done]
    progress = Progress(job_id, sum(len(items) for items in todo.values()),
                        sum(len(todo[name]) - len(pending[name]) for name in todo),
                        on_progress=on_progress, should_stop=should_stop, unit="done")
    progress.report(force=True)
    results: dict[str, dict[str, Any]] = {}
    cancelled = False
    for task in tasks:
        models = target_models.for_task(task) if pending[task.name] else target_models.served
        for batch in task.batches(pending[task.name], config.batch_size):
            if progress.stop_requested():
                cancelled = True
                break
            try:
                rows, tokens = task.score(batch, models, progress)
            except Cancelled:  # raised mid-generation by progress.on_token
                cancelled = True
                break
            store.add_eval_items(job_id, task.name, rows)
            progress.batch_done(len(rows), tokens)
        if cancelled:
            break
        wanted = {task.item_id(item) for item in todo[task.name]}
        metrics = task.metrics([row for row in store.eval_items(job_id, task.name) if row.item_id in wanted], run)
        store.save_eval_result(EvalResultRow(
            job_id, task.name, task.suite, target.model, target.run_dir, target.base, metrics.get("acc"),
            metrics.get("acc_norm"), metrics.get("stderr"), metrics["n"],
            {k: v for k, v in metrics.items() if k not in ("acc", "acc_norm", "stderr", "n")},
            config.limit, config.seed))
        results[task.name] = metrics
    return {
        "job_id": job_id, "model": target.model, "run_dir": target.run_dir, "base": target.base,
        "tasks": [task.name for task in tasks], "results": results, "items_scored": progress.done_now,
        "db": str(store.path), "seconds": round(progress.elapsed, 2), "cancelled": cancelled,
        "dtype": loaded_dtype(target_models.served.model),
    }


def loaded_dtype(engine: Engine) -> str | None:
    """The dtype the model was scored in when it was loaded here (``auto`` resolves per machine); None when a
    server holds it."""
    lm = getattr(engine, "lm", None)
    return dtype_name(lm.dtype) if lm is not None else None
