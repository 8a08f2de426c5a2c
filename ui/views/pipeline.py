"""The Pipeline tab's views: presets, the YAML and the few fields that matter most, the pipeline job and a table of
its stages. No Gradio here: ``ui/pipeline_tab.py`` wires these to widgets and a timer.

A pipeline is one background job (core/pipeline) whose progress lines record every stage's status; a stage in
flight is read from its own job folder (reconstruct's stored count, a run's step, the evaluation plan's target), so
a reloaded page, a second browser or a restarted app shows the same table.
"""

from __future__ import annotations

import dataclasses
import io
import time
from pathlib import Path
from typing import Any

import yaml

from core.config import to_yaml
from core.data_paths import ReadableRoots
from core.engines.choice import saved_choice
from core.engines.models import DEFAULT_MODEL
from core.errors import ForgetlessError
from core.jobs import JobInfo, job_info, last_progress, request_cancel, start_background
from core.mix.domain import BUILTIN_MEDMCQA
from core.pipeline.config import PipelineConfig, pipeline_from_text, preset_paths
from core.pipeline.runner import KIND, TABS, read_status, stage_plan
from core.reconstruct.reconstruction import ReconstructConfig
from core.train.progress import last_step
from ui.views.formatting import format_duration
from ui.views.jobs import StageJobs

IDLE = "No pipeline yet: pick a preset, adjust it, and press Run."
STAGE_HEADERS = ["Stage", "Status", "Progress", "Took", "Job / folder", "Result in"]
DEFAULT_PRESET = "quickstart"
ENDED = ("done", "failed", "cancelled", "interrupted")
# The fields most runs change, as (widget name, YAML section or None for the top level, key).
KEY_FIELDS = (("model", None, "model"), ("n", "reconstruct", "n"), ("domain", "mix", "domain"),
              ("ratio", "mix", "ratio"), ("max_steps", "train", "max_steps"), ("limit", "eval", "limit"))


def preset_choices(workspace: Path | None = None) -> list[str]:
    """The shipped presets, then the workspace's own (``<workspace>/pipelines/*.yaml``)."""
    return list(preset_paths(workspace))


def preset_text(name: str, workspace: Path | None = None) -> str:
    paths = preset_paths(workspace)
    if name not in paths:
        raise ForgetlessError(f"no preset named '{name}': choose {', '.join(paths)}")
    return paths[name].read_text(encoding="utf-8")


def _mapping(text: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text or "") or {}
    except yaml.YAMLError as error:
        raise ForgetlessError(f"cannot parse the YAML: {' '.join(str(error).split())}") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(s, {}) or {}, dict | bool) for s in
                                             ("reconstruct", "mix", "train", "eval")):
        raise ForgetlessError("the YAML must be a mapping of settings and stage sections")
    return data


def ratio_text(value: Any) -> str:
    """A ratio, or a sweep's ratios, as the ratio field shows them: ``0.5`` or ``0.25, 0.5``."""
    values = value if isinstance(value, list | tuple) else [value]
    return ", ".join(f"{float(item):g}" for item in values)


def parse_ratio(text: str) -> float | list[float]:
    try:
        values = [float(part) for part in str(text).replace(";", ",").split(",") if part.strip()]
    except ValueError:
        raise ForgetlessError(f"ratio must be a number or numbers separated by commas, got '{text}'") from None
    if not values:
        raise ForgetlessError("give a ratio (the share of general data), e.g. 0.5, or several for a sweep")
    return values[0] if len(values) == 1 else values


def key_fields(text: str) -> dict[str, Any]:
    """The key fields' values in a pipeline YAML (a missing key shows the value the pipeline would use)."""
    data = _mapping(text)
    defaults = {"model": DEFAULT_MODEL, "n": ReconstructConfig().n, "domain": BUILTIN_MEDMCQA, "ratio": 0.5,
                "max_steps": None, "limit": None}
    values = {}
    for name, section, key in KEY_FIELDS:
        holder = data if section is None else (data.get(section) or {})
        value = holder.get(key, defaults[name]) if isinstance(holder, dict) else defaults[name]
        values[name] = ratio_text(value) if name == "ratio" else value
    return values


def with_key_fields(text: str, values: dict[str, Any]) -> str:
    """The YAML with the key fields set to ``values`` (an emptied steps or limit field drops the key: the stage's
    default, train by epochs or score every item); its comments, key order and styles are kept."""
    from ruamel.yaml import YAML

    _mapping(text)  # one clear error for YAML that is not a pipeline
    round_trip = YAML()
    data = round_trip.load(text or "") or {}
    for name, section, key in KEY_FIELDS:
        if name not in values:
            continue
        value = values[name]
        if name == "ratio":
            value = parse_ratio(value)
        elif name in ("n", "max_steps", "limit") and value is not None:
            if float(value) != int(value):
                raise ForgetlessError(f"{name.replace('_', ' ')} must be a whole number, got {value:g}")
            value = int(value)
        elif isinstance(value, str):
            value = value.strip()
        holder = data if section is None else data.setdefault(section, {}) or {}
        if section is not None:
            data[section] = holder
        if value is None or value == "":
            holder.pop(key, None)
        else:
            holder[key] = value
    out = io.StringIO()
    round_trip.dump(data, out)
    return out.getvalue()


def pipeline_config(text: str, workspace: Path) -> PipelineConfig:
    """The YAML as a validated pipeline; without an engine of its own it runs on the app's Engine panel choice."""
    config = pipeline_from_text(text)
    if config.engine is None and config.engine_url is None:
        choice = saved_choice(Path(workspace))
        config = dataclasses.replace(config, engine=choice.engine, engine_url=choice.engine_url)
    return config


def check_readable(config: PipelineConfig, roots: ReadableRoots) -> PipelineConfig:
    """``config`` when every model, embedder, corpus and domain path it names lies where the app may read
    (core/data_paths.py); a ForgetlessError naming the first that does not."""
    for spec in config.model_specs():
        roots.check_model(spec)
    for ratio in config.ratios():
        roots.check(config.mix_config(ratio).domain)
    roots.check(config.reconstruct_config().from_corpus)
    profile = config.profile_config()
    if profile is not None:
        roots.check_model(profile.embedder)
    return config


class PipelineJobs(StageJobs):
    """The pipeline jobs of a workspace, shaped like StageJobs so the shared job controls drive them."""

    def __init__(self, workspace: Path) -> None:
        super().__init__(workspace, KIND, PipelineConfig)

    def start(self, config: PipelineConfig) -> str:
        running = self.newest()
        if running is not None and running.active:
            raise ForgetlessError(f"pipeline {running.job_id} is still {running.state}; cancel it or wait for it")
        job_id = config.resolved_job_id()
        start_background(Path(self.workspace).resolve(), KIND, config, job_id)
        return f"Started {job_id}: {len(stage_plan(config))} stages, one after another."

    def cancel(self) -> str:
        job = self.newest()
        if job is None or not job.active:
            return "No pipeline is running."
        request_cancel(job.folder)  # the pipeline starts nothing more ...
        current = current_stage(job)
        if current is not None and current.get("folder") and current.get("kind") != "mix":
            request_cancel(Path(current["folder"]))  # ... and the stage in flight stops after its batch
        return f"Cancel requested for {job.job_id}: finished stages stay, a rerun resumes the rest."

    def command(self, job: JobInfo | None) -> str | None:
        if job is None or not (job.folder / "config.yaml").exists():
            return None
        return f"forgetless pipeline --config {job.folder / 'config.yaml'} --workspace {self.workspace}"

    def yaml(self, job: JobInfo | None) -> str | None:
        """The newest pipeline's YAML, to show in the editor after a reload (None without a readable one)."""
        config = self.config(job)
        return None if config is None else to_yaml(config)


def stage_records(job: JobInfo) -> dict[str, dict[str, Any]]:
    """Every stage's record from the pipeline's newest progress line (all pending before its first line)."""
    found = last_progress(job.folder, keys=("stages",), tail_bytes=65536).get("stages")
    if found:
        return found
    try:
        config = pipeline_from_text((job.folder / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, ForgetlessError):
        return {}
    return {name: {"status": "pending", "seconds": None, "job_id": None, "kind": kind, "folder": None}
            for name, kind in stage_plan(config)}


def current_stage(job: JobInfo) -> dict[str, Any] | None:
    running = [record for record in stage_records(job).values() if record.get("status") == "running"]
    return running[0] if running else None


def _counts(progress: dict[str, Any], key: str, noun: str) -> str:
    if progress.get(key) is None or progress.get("total") is None:
        return f"{progress.get('phase', 'starting')}…"
    return f"{progress[key]}/{progress['total']} {noun}"


def live_progress(record: dict[str, Any]) -> str:
    """What a running stage is doing, read from its own folder: counts, a step, or the target being evaluated."""
    folder, kind = record.get("folder"), record.get("kind")
    if not folder:
        return "starting…"
    folder = Path(folder)
    if kind == "mix":
        return "freezing the mix…"
    if kind == "train":
        step = last_step(folder)
        if step is None:
            return f"{last_progress(folder).get('phase', 'starting')}…"
        return f"step {step['step']}/{step['total_steps']} · loss {step['loss']:.3f}"
    info = job_info(folder) if (folder / "status.json").exists() else None
    if info is None or info.state == "starting":
        return "starting…"
    if info.state == "queued":
        return "queued: waiting for another job to finish"
    if kind == "eval":
        progress = info.progress or {}
        if "total" not in progress:
            return "starting…"
        target = f"target {min(progress.get('done', 0) + 1, progress['total'])} of {progress['total']}"
        return f"{target}: {progress.get('target', '?')}"
    nouns = {"reconstruct": ("stored", "instructions"), "respond": ("done", "responses"),
             "judge": ("done", "scores"), "profile": ("done", "measures")}
    key, noun = nouns.get(kind, ("done", "done"))
    return _counts(info.progress or {}, key, noun)


def _number(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "?"


def outcome(record: dict[str, Any]) -> str:
    """What a finished stage left, from its own folder (its job summary, or a mix's manifest)."""
    folder, kind = record.get("folder"), record.get("kind")
    if not folder:
        return ""
    folder = Path(folder)
    if kind == "mix":
        try:
            counts = (yaml.safe_load((folder / "manifest.yaml").read_text(encoding="utf-8")) or {}).get("counts", {})
        except (OSError, yaml.YAMLError):
            return ""
        return f"{counts.get('general', '?')} general + {counts.get('domain', '?')} domain rows"
    summary = read_status(folder).get("summary") or {}
    if not summary:
        return ""
    texts = {
        "reconstruct": lambda: f"{summary['stored']} instructions",
        "respond": lambda: f"{summary['responses']} responses",
        "judge": lambda: f"{summary['scores']} scores · best answer for {summary['instructions_with_best']}",
        "profile": lambda: f"{summary['instructions']} profiled · {summary['clusters']} clusters",
        "train": lambda: f"{summary['steps']} steps · loss {_number(summary.get('final_loss'))}",
        "eval": lambda: f"{summary['evaluated']} of {summary['total']} evaluated",
    }
    try:
        return texts[kind]() if kind in texts else ""
    except KeyError:  # a summary of another shape (an older version): nothing to say
        return ""


def stage_rows(job: JobInfo | None) -> list[list[Any]]:
    """One row per stage: name, status, progress, time taken, job id (or folder), and the tab showing its result."""
    if job is None:
        return []
    rows = []
    for name, record in stage_records(job).items():
        status = record.get("status", "pending")
        if status == "running" and not job.active:  # the pipeline's process ended while this stage ran
            status = job.state
        if status == "running":
            progress = live_progress(record)
        elif status in ("done", "skipped"):
            left = outcome(record)
            progress = (f"before, same settings: {left}" if left else "finished before, same settings") \
                if status == "skipped" else left or "finished"
        else:
            progress = ""
        took = format_duration(record.get("seconds")) if record.get("seconds") is not None else ""
        rows.append([name, status, progress, took, record.get("job_id") or "", TABS.get(record.get("kind"), "")])
    return rows


def pipeline_status_line(job: JobInfo | None) -> str:
    """One line for the newest pipeline: the stage it is on, or how it ended."""
    if job is None:
        return IDLE
    head = f"{job.state} · {job.job_id}"
    records = stage_records(job)
    names = list(records)
    if job.state in ("starting", "queued") or (job.active and not records):
        return f"{head} · starting…"
    if job.active:
        running = [name for name, record in records.items() if record.get("status") == "running"]
        elapsed = f"elapsed {format_duration(time.time() - job.started_at)}" if job.started_at else ""
        if not running:
            return " · ".join(part for part in (head, "between stages…", elapsed) if part)
        step = f"stage {names.index(running[0]) + 1} of {len(names)}: {running[0]}"
        return " · ".join(part for part in (head, step, elapsed) if part)
    summary = job.summary or {}
    ran = sum(record.get("status") == "done" for record in records.values())
    skipped = sum(record.get("status") == "skipped" for record in records.values())
    if job.state == "done":
        return f"{head} · {ran} stages ran, {skipped} skipped (finished before) · took " \
               f"{format_duration(summary.get('seconds'))}"
    if job.state == "cancelled":
        return f"{head} · stopped on request after {ran + skipped} of {len(names)} stages; Run resumes it"
    if job.state == "failed":
        return f"{head} · {job.error or 'see log.txt in its job folder'}"
    return f"{head} · its process ended without finishing; Run resumes it"


def _headline(values: dict[str, Any]) -> str:
    for key in ("acc", "acc_norm", "kl"):
        if isinstance(values.get(key), int | float):
            return f"{values[key]:.3f}" + (" (KL)" if key == "kl" else "")
    return "—"


def results_markdown(job: JobInfo | None) -> str:
    """The finished pipeline's evaluation: each task's score for the base and every tuned run (the Evaluate tab
    holds the rest: standard errors, per-item results, the trade-off chart)."""
    summary = (job.summary or {}) if job is not None else {}
    targets = summary.get("eval") or {}
    if not targets:
        return ""
    tasks = list(dict.fromkeys(task for target in targets.values() for task in target.get("results", {})))
    labels = list(targets)
    lines = ["| task | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for task in tasks:
        cells = [_headline(targets[label]["results"].get(task, {})) for label in labels]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    run = summary.get("run")
    tail = f"\n\nTuned run: `{run}`. More in the **6 · Evaluate** tab." if run else ""
    return "**Evaluation** (accuracy; drift as KL)\n\n" + "\n".join(lines) + tail


def pipeline_marker(job: JobInfo | None, rows: list[list[Any]]) -> str:
    """Changes when the page has something new to draw."""
    return "no-job" if job is None else f"{job.job_id}|{job.state}|{rows}"
