"""Run a pipeline: every stage in order, each as the job its tab or ``forgetless <stage>`` would run.

The pipeline is a job of its own (kind ``pipeline``, folder ``<workspace>/jobs/<id>``) whose process only drives:
reconstruct, respond, judge, profile and eval are started as their background jobs (``start_background``, the
eval as the Evaluate tab's plan), training as the Train tab's run (``start_training`` / ``resume_training``), and
the mix is frozen by ``freeze_mix`` as the Mix tab does. Every state change of a stage is a line of the pipeline's
``progress.jsonl`` (``{"stages": {name: {status, seconds, job_id, kind, folder}}, "current": name}``), so the app
shows it and re-attaches after a reload or a restart.

A rerun skips what finished: a store stage whose job ended "done" with the same settings *after* the stage before
it finished (make's rule: new instructions make the old responses stale), a mix or run whose folder is complete
(their names hash their settings and everything upstream, so a changed input is a new folder), an evaluation plan
whose targets were all evaluated. A stage cut short (cancelled, or killed with ``kill -9``) is started again as
the same job, and every stage resumes without duplicates; a stage still running elsewhere is waited for.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.config import fingerprint, load_yaml, to_dict
from core.errors import ForgetlessError
from core.eval.plan import EvalPlan, normalised_spec
from core.eval.queue import start_plan
from core.jobs import JobRecorder, job_folder, job_info, job_session, request_cancel, start_background
from core.mix.mixing import freeze_mix
from core.mix.snapshot import MANIFEST_FILE, mixes_dir
from core.pipeline.config import PipelineConfig
from core.store import Store
from core.train.runs import resume_training, runs_root, start_training
from core.train.training import last_checkpoint

KIND = "pipeline"
POLL_S = 0.5
STORE_STAGES = ("reconstruct", "respond", "judge", "profile")
# Which tab of the app shows each stage's result.
TABS = {"reconstruct": "1 · Reconstruct", "respond": "2 · Screen", "judge": "2 · Screen", "profile": "3 · Explore",
        "mix": "4 · Mix", "train": "5 · Train", "eval": "6 · Evaluate"}
_IGNORED = ("job_id", "serving")  # settings that do not change what a job computes


class _Stopped(Exception):
    """A cancel reached the pipeline: no further stage starts."""


def ratio_suffix(config: PipelineConfig, ratio: float) -> str:
    """How a sweep tells its mixes and runs apart in stage names ("" for a single ratio)."""
    return f"-r{ratio:g}" if len(config.ratios()) > 1 else ""


def stage_plan(config: PipelineConfig) -> list[tuple[str, str]]:
    """(name, kind) of every stage in run order: one mix and one training per ratio, then one evaluation."""
    stages = [(kind, kind) for kind in STORE_STAGES if kind != "profile" or config.profile_config() is not None]
    for ratio in config.ratios():
        stages += [(f"mix{ratio_suffix(config, ratio)}", "mix"), (f"train{ratio_suffix(config, ratio)}", "train")]
    return [*stages, ("eval", "eval")]


def read_status(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(folder) / "status.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def finished_at(folder: Path) -> float | None:
    """When the job in ``folder`` ended "done" (None when it has not)."""
    status = read_status(folder)
    return status.get("updated_at", 0.0) if status.get("state") == "done" else None


def same_settings(folder: Path, config: Any) -> bool:
    """Whether the job in ``folder`` ran with ``config`` (job id and engine aside)."""
    try:
        saved = to_dict(load_yaml(type(config), Path(folder) / "config.yaml"))
    except (ForgetlessError, TypeError):
        return False
    ours = to_dict(config)
    return all(saved.get(key) == value for key, value in ours.items() if key not in _IGNORED)


def run_finished(run_dir: Path) -> bool:
    """A training run that ended "done" with its adapter or model saved."""
    return finished_at(run_dir) is not None and ((run_dir / "adapter").is_dir() or (run_dir / "model").is_dir())


def _tag(*parts: Any) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _without(config: Any, *names: str) -> dict[str, Any]:
    return {key: value for key, value in to_dict(config).items() if key not in names}


def _log_size(folder: Path) -> int:
    try:
        return (folder / "log.txt").stat().st_size
    except OSError:
        return 0


def _log_error(folder: Path, start: int) -> str | None:
    """The last ``error: ...`` line the stage's command wrote to its log since byte ``start``."""
    try:
        with (folder / "log.txt").open("rb") as handle:
            handle.seek(start)
            lines = handle.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    errors = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
    return errors[-1] if errors else None


class PipelineRun:
    """One pass over the stages inside the pipeline's job folder (``recorder`` writes its progress)."""

    def __init__(self, config: PipelineConfig, workspace: Path, recorder: JobRecorder,
                 say: Callable[[str], None]) -> None:
        self.config, self.workspace, self.recorder, self.say = config, Path(workspace), recorder, say
        self.stages: dict[str, dict[str, Any]] = {
            name: {"status": "pending", "seconds": None, "job_id": None, "kind": kind, "folder": None}
            for name, kind in stage_plan(config)}
        self.current: str | None = None

    # -- the record the app reads --------------------------------------------------------------------------
    def mark(self, name: str, **values: Any) -> None:
        self.stages[name].update(values)
        status = self.stages[name]["status"]
        self.current = name if status == "running" else None
        self.recorder.progress({"stages": self.stages, "current": self.current})
        if "status" in values and status != "running":
            seconds = self.stages[name]["seconds"]
            self.say(f"{name}: {status}" + (f" in {seconds:.1f} s" if seconds else "")
                     + (f" ({self.stages[name]['job_id']})" if self.stages[name]["job_id"] else ""))
        elif status == "running" and "status" in values:
            self.say(f"{name}: running {self.stages[name]['job_id'] or ''}".rstrip())

    # -- waiting on a background job -------------------------------------------------------------------------
    def _wait(self, folder: Path, log_from: int) -> tuple[str, str | None]:
        """Wait for the job in ``folder`` to end, passing a cancel of the pipeline on; its end state and error."""
        asked = False
        try:
            while True:
                info = job_info(folder)
                if info.state == "interrupted":  # a job ending between the status read and the lock check
                    time.sleep(POLL_S)
                    info = job_info(folder)
                if not info.active:
                    return info.state, info.error or _log_error(folder, log_from)
                if info.state == "starting" and (early := _log_error(folder, log_from)):
                    return "failed", early  # the command stopped before it took its job folder
                if not asked and self.recorder.cancel_requested():
                    request_cancel(folder)
                    asked = True
                time.sleep(POLL_S)
        except KeyboardInterrupt:  # Ctrl+C on `forgetless pipeline`: the stage stops too (it runs detached)
            request_cancel(folder)
            raise

    def _job(self, name: str, folder: Path, finished: Callable[[], bool], start: Callable[[], None],
             explain: Callable[[], str | None] = lambda: None) -> None:
        """Skip the stage if ``finished()``, else join the job running in ``folder`` or ``start()`` it, and wait.
        ``explain()`` says why a job that ended "done" is not finished (an evaluation plan with a failed target)."""
        if finished():
            self.mark(name, status="skipped", seconds=0.0)
            return
        self._check_cancel(name)
        began = time.monotonic()
        self.mark(name, status="running")
        if (folder / "status.json").exists() and job_info(folder).active:  # still running from an earlier pass
            self._wait(folder, _log_size(folder))
        if not finished():
            self._check_cancel(name, began)
            log_from = _log_size(folder)
            start()
            state, error = self._wait(folder, log_from)
            if state == "cancelled" or (state != "done" and self.recorder.cancel_requested()):
                self.mark(name, status="cancelled", seconds=round(time.monotonic() - began, 1))
                raise _Stopped
            if state != "done" or not finished():
                self.mark(name, status="failed", seconds=round(time.monotonic() - began, 1))
                why = error or ("its process ended without finishing" if state != "done" else
                                explain() or "it did not finish")
                ended = "was interrupted" if state == "interrupted" else "failed"
                raise ForgetlessError(f"stage {name} {ended}: {why} (log: {folder / 'log.txt'})")
        self.mark(name, status="done", seconds=round(time.monotonic() - began, 1))

    def _check_cancel(self, name: str, began: float | None = None) -> None:
        if self.recorder.cancel_requested():
            seconds = round(time.monotonic() - began, 1) if began is not None else None
            self.mark(name, status="cancelled", seconds=seconds)
            raise _Stopped

    # -- the stages ----------------------------------------------------------------------------------------
    def store_stage(self, name: str, config: Any, after: float) -> tuple[str, float]:
        """A stage that adds to the store; fresh when it finished with these settings after ``after``. Returns
        its job id and when it finished."""
        job_id = config.resolved_job_id()
        config = dataclasses.replace(config, job_id=job_id)
        folder = job_folder(self.workspace, job_id)
        self.mark(name, job_id=job_id, folder=str(folder))

        def finished() -> bool:
            done = finished_at(folder)
            return done is not None and done >= after and same_settings(folder, config)

        self._job(name, folder, finished, lambda: start_background(self.workspace, name, config, job_id))
        return job_id, finished_at(folder) or 0.0

    def mix_stage(self, name: str, ratio: float, upstream: list[tuple[str, float]]) -> Path:
        """Freeze the mix (in this process, as the Mix tab does) unless its folder is complete."""
        draft = self.config.mix_config(ratio)
        out = mixes_dir(self.workspace) / f"{self.config.name}-r{ratio:g}-{_tag(_without(draft, 'out'), upstream)}"
        self.mark(name, job_id=out.name, folder=str(out))
        if (out / MANIFEST_FILE).exists():
            self.mark(name, status="skipped", seconds=0.0)
            return out
        self._check_cancel(name)
        began = time.monotonic()
        self.mark(name, status="running")
        try:
            freeze_mix(self.config.mix_config(ratio, out), Store.for_workspace(self.workspace), self.workspace)
        except ForgetlessError as error:
            self.mark(name, status="failed", seconds=round(time.monotonic() - began, 1))
            raise ForgetlessError(f"stage {name} failed: {error}") from None
        self.mark(name, status="done", seconds=round(time.monotonic() - began, 1))
        return out

    def train_stage(self, name: str, data: Path) -> Path:
        """Train on the mix (the Train tab's run); an interrupted or cancelled run resumes from its checkpoint."""
        draft = self.config.train_config(data)
        run_dir = runs_root(self.workspace) / f"{data.name}-{_tag(_without(draft, 'data', 'out'), data.name)}"
        config = self.config.train_config(data, run_dir)
        self.mark(name, job_id=run_dir.name, folder=str(run_dir))

        def start() -> None:
            if last_checkpoint(run_dir) is not None:
                resume_training(run_dir, self.workspace)
            else:
                start_training(config, self.workspace)

        self._job(name, run_dir, lambda: run_finished(run_dir), start)
        return run_dir

    def eval_stage(self, name: str, runs: list[Path]) -> EvalPlan:
        """The Evaluate tab's plan: the base, then every run, with one suite, limit and seed."""
        draft = self.config.eval_plan(tuple(str(run) for run in runs))
        plan = dataclasses.replace(draft, job_id=f"eval-queue-{fingerprint(draft, exclude=('job_id',))}")
        folder = job_folder(self.workspace, str(plan.job_id))
        self.mark(name, job_id=plan.job_id, folder=str(folder))

        def finished() -> bool:
            summary = read_status(folder).get("summary") or {}
            return (finished_at(folder) is not None and same_settings(folder, plan)
                    and summary.get("evaluated") == summary.get("total") == len(plan.configs()))

        def failures() -> str:
            targets = (read_status(folder).get("summary") or {}).get("targets", [])
            return "; ".join(f"{target['target']}: {target.get('error') or target.get('state')}"
                             for target in targets if target.get("state") != "done")

        self._job(name, folder, finished, lambda: start_plan(self.workspace, plan), failures)
        return plan

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        self.recorder.progress({"stages": self.stages, "current": None})
        runs: list[Path] = []
        plan = None
        cancelled = False
        try:
            after, upstream = 0.0, []
            for kind in STORE_STAGES:
                config = getattr(self.config, f"{kind}_config")()
                if config is not None:
                    job_id, after = self.store_stage(kind, config, after)
                    upstream.append((job_id, after))
            for ratio in self.config.ratios():
                suffix = ratio_suffix(self.config, ratio)
                data = self.mix_stage(f"mix{suffix}", ratio, upstream)
                runs.append(self.train_stage(f"train{suffix}", data))
            plan = self.eval_stage("eval", runs)
        except _Stopped:
            cancelled = True
        return {"pipeline": self.recorder.folder.name,
                "stages": {name: {key: stage[key] for key in ("status", "seconds", "job_id")}
                           for name, stage in self.stages.items()},
                "run": str(runs[0]) if runs else None, "runs": [str(run) for run in runs],
                "eval": eval_results(self.workspace, plan) if plan is not None else {},
                "seconds": round(time.monotonic() - started, 1), "cancelled": cancelled}


def eval_results(workspace: Path, plan: EvalPlan) -> dict[str, Any]:
    """Each target's headline numbers per task (``forgetless eval --json``'s), "base" first, then each run by name."""
    from core.eval.benchmarks import TASKS

    base = normalised_spec(plan.base)
    results: dict[str, Any] = {}
    for config in plan.configs():
        summary = read_status(job_folder(workspace, str(config.job_id))).get("summary") or {}
        label = "base" if config.model == base else Path(config.model).name
        results[label] = {"model": config.model, "job_id": config.job_id,
                          "results": {task: TASKS[task].headline(metrics)
                                      for task, metrics in (summary.get("results") or {}).items() if task in TASKS}}
    return results


def _stderr(message: str) -> None:
    if os.environ.get("FORGETLESS_NO_PROGRESS") != "1":
        print(f"[pipeline] {message}", file=sys.stderr, flush=True)


def run_pipeline(config: PipelineConfig, workspace: Path, say: Callable[[str], None] = _stderr) -> dict[str, Any]:
    """Run every stage of ``config`` in its pipeline job folder; return the summary (also in its status.json)."""
    workspace = Path(workspace).resolve()
    if config.threads:  # each stage's process inherits it (start_background passes this environment on)
        os.environ.update(OMP_NUM_THREADS=str(config.threads), MKL_NUM_THREADS=str(config.threads))
    folder = job_folder(workspace, config.resolved_job_id())
    with job_session(folder, KIND, config) as recorder:
        summary = PipelineRun(config, workspace, recorder, say).run()
        recorder.summary = summary
    return summary
