"""Export a finished training run as one model folder that transformers loads and vLLM serves, with a model card.

A LoRA run is merged: its base is loaded in fp32 (so adding the low-rank update rounds once, not twice), the
adapter applied and ``merge_and_unload()``-ed, and the result saved as safetensors in the base model's own
dtype (``--dtype`` overrides), with the base's tokenizer (and chat template) and generation config. A full run's
``model/`` folder is copied as saved, without trainer state (or loaded and saved again when ``--dtype`` asks for
another dtype). Beside the weights go ``README.md`` (a Hugging Face model card: base model, training settings,
the mix snapshot and its manifest, evaluation results vs the base when the workspace stores them) and
``forgetless_export.json`` (the same, for scripts).

The folder is written into a hidden sibling and renamed into place, so a crash leaves no half folder at
``--out``; an ``--out`` that exists and is not empty is refused, never overwritten.
"""

from __future__ import annotations

import json
import math
import shlex
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from core import __version__
from core.config import fingerprint, load_yaml
from core.engines.models import ALIASES, local_folder
from core.errors import ForgetlessError
from core.eval.plan import normalised_spec, target_label
from core.jobs import job_info
from core.settings import setting
from core.store.base import STORE_FILE
from core.train.training import DTYPES, TrainConfig

EXPORT_JSON = "forgetless_export.json"
CARD_FILE = "README.md"
# Trainer state a full run's model/ may hold: no use to a user of the model (training_args.bin is a pickle).
TRAINER_FILES = ("training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state*.pth", "trainer_state.json",
                 "checkpoint-*")
PHASES = ("checking", "loading", "merging", "saving", "model card")
# Per task, (metric, its standard error's key) in the card's order; tasks not listed report acc and acc_norm.
CARD_METRICS: dict[str, tuple[tuple[str, str | None], ...]] = {
    "ifeval": (("prompt_strict", "prompt_strict_stderr"), ("instruction_strict", None)),
    "domain_ppl": (("nll", "nll_stderr"),),
    "drift": (("kl", "kl_stderr"),),  # already a difference from the base: the base's own is 0
}
# The hub model each packaged alias was quantised from: the card's base_model, which the Hub links to.
HUB_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct", "gemma-3-270m": "google/gemma-3-270m"}
RATE_METRICS = frozenset({"acc", "acc_norm", "prompt_strict", "instruction_strict"})


@dataclass
class ExportConfig:
    """Settings of one export (the YAML of its job)."""

    run: str = setting("", flag=None, help="the finished training run folder to export (config.yaml + adapter/ or "
                                           "model/)")
    out: str = setting("", help="the folder to write (it must not exist, or be empty: nothing is overwritten)")
    dtype: str = setting("auto", choices=DTYPES,
                         help="dtype of the saved weights; auto: the base model's own (a full run: as it was "
                              "saved)")
    job_id: str | None = setting(None, help="name the job (default: derived from the run and --out)")

    def __post_init__(self) -> None:
        self.run, self.out = str(self.run or "").strip(), str(self.out or "").strip()
        if not self.run:
            raise ForgetlessError("export needs RUN: a training run folder")
        if not self.out:
            raise ForgetlessError("export needs --out: the folder to write the model to")
        if self.dtype not in DTYPES:
            raise ForgetlessError(f"dtype must be one of {', '.join(DTYPES)}")
        # Absolute, so the job id and the card name the same folders from any working directory.
        self.run = str(Path(self.run).expanduser().absolute())
        self.out = str(Path(self.out).expanduser().absolute())

    def resolved_job_id(self) -> str:
        return self.job_id or "export-" + fingerprint(self, exclude=("job_id",))


@dataclass(frozen=True)
class FinishedRun:
    """A run folder that trained to the end: its settings, summary and saved weights."""

    folder: Path
    config: TrainConfig
    summary: dict[str, Any]
    weights: Path  # adapter/ (LoRA) or model/ (full)


def finished_run(run: Path) -> FinishedRun:
    """The run at ``run``, or a one-line ForgetlessError saying why it cannot be exported."""
    folder = Path(run).expanduser()
    if not (folder / "config.yaml").is_file():
        raise ForgetlessError(f"{folder} is not a training run folder (no config.yaml)")
    try:
        config = load_yaml(TrainConfig, folder / "config.yaml")
    except ForgetlessError as error:
        raise ForgetlessError(f"{folder} is not a training run folder: {error}") from error
    info = job_info(folder)
    if info.state != "done":
        raise ForgetlessError(f"{folder} is not a finished run (it is {info.state}): export needs a run that "
                              "trained to the end")
    weights = folder / ("adapter" if config.method == "lora" else "model")
    marker = weights / ("adapter_config.json" if config.method == "lora" else "config.json")
    if not marker.is_file():
        raise ForgetlessError(f"{folder} finished but has no {marker.relative_to(folder)}: nothing to export")
    try:
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        summary = info.summary or {}
    return FinishedRun(folder, config, summary if isinstance(summary, dict) else {}, weights)


def check_out_free(out: Path) -> None:
    """Refuse an ``--out`` that is a file, or a folder with anything in it (an export never overwrites)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ForgetlessError(f"{out} is a file: export into a folder")
    if out.is_dir() and any(out.iterdir()):
        raise ForgetlessError(f"{out} already exists and is not empty: choose another folder (an export never "
                              "overwrites one)")


def _folder_dtype(folder: Path) -> str | None:
    """The dtype a model folder's config.json declares (``dtype``, or ``torch_dtype`` before transformers 5)."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = config.get("dtype") or config.get("torch_dtype")
    return value if value in DTYPES else None


def _save_model(model: Any, tokenizer: Any, dtype: str, staging: Path) -> None:
    import torch

    model = model.to(getattr(torch, dtype))
    model.config.dtype = dtype  # written to config.json: transformers and vLLM load it in this dtype
    model.save_pretrained(staging)  # safetensors, with generation_config.json
    tokenizer.save_pretrained(staging)  # with the chat template (chat_template.jinja)


def _write_merged(run: FinishedRun, workspace: Path, dtype: str, staging: Path,
                  phase: Callable[[str], None]) -> tuple[str, str]:
    """base + adapter merged into ``staging``; returns (the dtype saved, the base folder loaded)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    phase("loading")
    _, base_folder = local_folder(run.config.model, workspace)  # a GGUF base is converted once, as for training
    saved = dtype if dtype != "auto" else _folder_dtype(Path(base_folder)) or "float32"
    try:
        base = AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(base_folder)  # what evaluation pairs the tuned weights with
        model = PeftModel.from_pretrained(base, str(run.weights))
    except Exception as error:  # transformers/PEFT raise many types for a missing or mismatched file
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ForgetlessError(f"cannot load {run.weights} onto its base {run.config.model}: {text}") from error
    phase("merging")
    merged = model.merge_and_unload()
    phase("saving")
    _save_model(merged, tokenizer, saved, staging)
    return saved, base_folder


def _write_full(run: FinishedRun, dtype: str, staging: Path, phase: Callable[[str], None]) -> str:
    """A full run's model/ into ``staging``: copied as saved, or re-saved in another dtype; returns the dtype."""
    saved = _folder_dtype(run.weights) or "float32"
    if dtype in ("auto", saved):
        phase("saving")
        shutil.copytree(run.weights, staging, ignore=shutil.ignore_patterns(*TRAINER_FILES), dirs_exist_ok=True)
        return saved
    from transformers import AutoModelForCausalLM, AutoTokenizer

    phase("loading")
    model = AutoModelForCausalLM.from_pretrained(run.weights, dtype=dtype)
    phase("saving")
    _save_model(model, AutoTokenizer.from_pretrained(run.weights), dtype, staging)
    return dtype


def export_run(config: ExportConfig, workspace: Path,
               on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Write ``config.run`` as a model folder at ``config.out`` with its model card; return the summary.

    ``on_progress`` gets ``{"phase", "done", "total"}`` as each phase (PHASES) starts. Evaluation results come
    from ``workspace``'s store.
    """
    started = time.monotonic()
    out = Path(config.out)
    run = finished_run(Path(config.run))
    check_out_free(out)

    def phase(name: str) -> None:
        if on_progress is not None:
            on_progress({"phase": name, "done": PHASES.index(name), "total": len(PHASES)})

    phase("checking")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        if run.config.method == "lora":
            dtype, base_folder = _write_merged(run, Path(workspace), config.dtype, staging, phase)
        else:
            dtype, base_folder = _write_full(run, config.dtype, staging, phase), None
        phase("model card")
        info = export_info(run, Path(workspace), dtype, base_folder)
        (staging / EXPORT_JSON).write_text(json.dumps(info, indent=2, default=str), encoding="utf-8")
        (staging / CARD_FILE).write_text(model_card(info, out.name), encoding="utf-8")
        # safetensors writes its files owner-only (0600); a folder meant for serving and sharing gets the mode
        # of any file this process writes (the card's, from the umask)
        mode = (staging / CARD_FILE).stat().st_mode & 0o777
        for path in staging.iterdir():
            if path.is_file():
                path.chmod(mode)
        check_out_free(out)  # again: something may have appeared there while the model was written
        if out.exists():
            out.rmdir()  # empty (checked); a file written into it since makes this fail, and nothing is lost
        staging.rename(out)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise ForgetlessError(f"cannot write {out}: {error.strerror or error}") from error
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    files = sorted(path.name for path in out.iterdir() if path.is_file())
    return {"run": str(run.folder), "out": str(out), "method": run.config.method, "base_model": run.config.model,
            "dtype": dtype, "files": files, "bytes": sum((out / name).stat().st_size for name in files),
            "eval_tasks": sorted({row["task"] for row in info["eval"]["rows"]}),
            "seconds": round(time.monotonic() - started, 2)}


# -- what the card says --------------------------------------------------------------------------------------
def _mix_summary(data: str) -> dict[str, Any]:
    """The snapshot's manifest in brief (what a reader needs to judge the data; the manifest has the rest)."""
    try:
        manifest = yaml.safe_load((Path(data) / "manifest.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        manifest = None
    if not isinstance(manifest, dict):
        return {"path": data, "manifest": None}
    domain, general = manifest.get("domain") or {}, manifest.get("general") or {}
    keys = ("name", "created", "counts", "ratio", "ratio_achieved", "by", "balance", "seed")
    return {"path": data, "manifest": {
        **{key: manifest.get(key) for key in keys}, "domain": domain.get("spec"),
        "domain_test_fraction": domain.get("test_fraction"), "general_holdout": general.get("holdout"),
        "general_held_out": len(general.get("held_out_ids") or []),
        "train_sha256": ((manifest.get("files") or {}).get("train.parquet") or {}).get("sha256"),
    }}


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _limit(value: Any) -> int | None:
    number = _number(value)
    return None if number is None else int(number)


def _newest(results: Any, model: str, task: str, prefer: tuple[int | None, int] | None = None) -> dict[str, Any] | None:
    """The newest stored result of ``model`` on ``task``, with its extra metrics (one with ``prefer``'s item
    limit and seed when there is one: the same items as the run's)."""
    found = results[(results["model"] == model) & (results["task"] == task)]
    if prefer is not None:
        same = [(_limit(limit), int(seed)) == prefer for limit, seed in zip(found["item_limit"], found["seed"],
                                                                              strict=True)]
        found = found[same] if any(same) else found
    if not len(found):
        return None
    row = found.iloc[-1].to_dict()  # eval_results lists oldest first
    return {**row, **json.loads(row.get("extra_json") or "{}")}


def eval_vs_base(workspace: Path, run_dir: Path, base: str) -> list[dict[str, Any]]:
    """Per stored task of the run: each metric of the run and of its base (the same item limit and seed where
    stored), the change and its standard error; [] when the workspace stores no evaluation of the run."""
    if not (Path(workspace) / STORE_FILE).exists():
        return []
    from core.store import Store

    tuned_key, base_key = str(Path(run_dir).resolve()), normalised_spec(base)  # as `forgetless eval` keys them
    results = Store.for_workspace(workspace).eval_results([tuned_key, base_key])
    rows = []
    for task in dict.fromkeys(results.loc[results["model"] == tuned_key, "task"]):
        tuned = _newest(results, tuned_key, task)
        assert tuned is not None
        prefer = (_limit(tuned["item_limit"]), int(tuned["seed"]))
        before = _newest(results, base_key, task, prefer) if task != "drift" else None
        for metric, stderr_key in CARD_METRICS.get(task, (("acc", "stderr"), ("acc_norm", "acc_norm_stderr"))):
            after = _number(tuned.get(metric))
            if after is None:
                continue
            drift = task == "drift"  # KL from the base: the base's own is 0, exactly
            base_value = 0.0 if drift else _number(before.get(metric)) if before else None
            base_error = 0.0 if drift else _number(before.get(stderr_key)) if before and stderr_key else None
            tuned_error = _number(tuned.get(stderr_key)) if stderr_key else None
            known = None not in (base_value, base_error, tuned_error)
            rows.append({"task": task, "metric": metric, "base": base_value, "tuned": after,
                         "change": None if base_value is None else after - base_value,
                         "stderr": math.hypot(base_error, tuned_error) if known else None,
                         "n_base": int(before["n"]) if before else None, "n_tuned": int(tuned["n"]),
                         "item_limit": prefer[0], "seed": prefer[1]})
    return rows


def export_info(run: FinishedRun, workspace: Path, dtype: str, base_folder: str | None) -> dict[str, Any]:
    """Everything the card says, as plain data (``forgetless_export.json``)."""
    config = run.config
    return {
        "forgetless_version": __version__, "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "run": str(run.folder.resolve()), "method": config.method, "base_model": config.model,
        "base_folder": base_folder, "dtype": dtype,
        # the learning rate used (the run's YAML keeps None for "the method's default")
        "training": {**{key: value for key, value in asdict(config).items() if key != "out"},
                     "learning_rate": config.resolved_learning_rate()},
        "run_summary": {key: run.summary.get(key) for key in ("steps", "total_steps", "final_loss", "train_loss",
                                                              "tokens_per_s", "seconds", "dtype", "device",
                                                              "gradient_checkpointing")},
        "mix": _mix_summary(config.data),
        "eval": {"workspace": str(Path(workspace).resolve()),
                 "rows": eval_vs_base(workspace, run.folder, config.model)},
    }


def _value(metric: str, value: float | None) -> str:
    if value is None:
        return "—"
    return f"{100 * value:.1f}%" if metric in RATE_METRICS else f"{value:.4f}"


def _change(row: dict[str, Any]) -> str:
    if row["change"] is None:
        return "— (base not evaluated)"
    scale, digits, unit = (100, 1, " pts") if row["metric"] in RATE_METRICS else (1, 4, "")
    error = f" ± {scale * row['stderr']:.{digits}f}" if row["stderr"] is not None else ""
    return f"{scale * row['change']:+.{digits}f}{error}{unit}"


def _eval_section(info: dict[str, Any]) -> str:
    rows, workspace = info["eval"]["rows"], info["eval"]["workspace"]
    run_cmd = shlex.join(["forgetless", "eval", "--model", info["run"], "--workspace", workspace])
    base_cmd = shlex.join(["forgetless", "eval", "--model", info["base_model"], "--workspace", workspace])
    if not rows:
        return (f"No evaluation of this run was stored in the workspace `{workspace}` when it was exported. Measure "
                f"it and its base with the same suite, limit and seed, then export again:\n\n```\n{run_cmd}\n"
                f"{base_cmd}\n```\n")
    limits = {(row["item_limit"], row["seed"]) for row in rows}
    items = "; ".join(f"{'all items' if limit is None else f'{limit} items'} per task, seed {seed}"
                      for limit, seed in sorted(limits, key=str))
    lines = [f"Stored in `{workspace}` ({items}); change = tuned − base ± one combined standard error (drift: KL "
             "of the tuned model from its base on held-out general text, lower is better).", "",
             "| task | metric | n (base / tuned) | base | tuned | change ± stderr |", "|---|---|---|---|---|---|"]
    for row in rows:
        counts = f"{row['n_base'] if row['n_base'] is not None else '—'} / {row['n_tuned']}"
        lines.append(f"| {row['task']} | {row['metric']} | {counts} | {_value(row['metric'], row['base'])} | "
                     f"{_value(row['metric'], row['tuned'])} | {_change(row)} |")
    if any(row["base"] is None for row in rows):
        lines += ["", f"The base has no stored result for some tasks: `{base_cmd}` (same limit and seed)."]
    return "\n".join(lines) + "\n"


def _mix_section(mix: dict[str, Any]) -> str:
    found = mix["manifest"]
    if found is None:
        return f"Mix snapshot `{mix['path']}` (its manifest.yaml was not readable at export).\n"
    counts = found["counts"] or {}
    achieved = _number(found["ratio_achieved"])
    share = f"requested {found['ratio']}" + (f", achieved {achieved:.4f}" if achieved is not None else "")
    lines = [f"Mix snapshot `{mix['path']}` (`{found['name']}`, created {found['created']}); its `manifest.yaml` "
             "records where every row came from.", "",
             f"- examples: {counts.get('general', '?')} general + {counts.get('domain', '?')} domain = "
             f"{counts.get('total', '?')}",
             f"- general share: {share}" + (f" (by {found['by']})" if found["by"] else ""),
             f"- domain data: `{found['domain']}`" + (f" ({found['domain_test_fraction']} held out for its test)"
                                                      if found["domain_test_fraction"] else ""),
             f"- seed {found['seed']}; balance of the general rows: {found['balance']}",
             f"- general holdout: {found['general_holdout'] or 0} ({found['general_held_out']} instructions never "
             "trained on, kept for measuring drift)"]
    if found["train_sha256"]:
        lines.append(f"- train.parquet sha256 `{found['train_sha256']}`")
    return "\n".join(lines) + "\n"


def _training_section(info: dict[str, Any]) -> str:
    training, summary = info["training"], info["run_summary"]
    hidden = ("data", "model", "merge", "save_steps", "keep_checkpoints", "logging_steps")  # elsewhere, or no effect
    shown = [key for key in training if key not in hidden and (info["method"] == "lora" or not key.startswith("lora_"))]
    lines = ["| setting | value |", "|---|---|",
             *(f"| {key} | {'default' if training[key] is None else training[key]} |" for key in shown)]
    done = ", ".join(f"{key} {round(value, 4) if isinstance(value, float) else value}"
                     for key, value in summary.items() if value is not None)
    return "\n".join(lines) + (f"\n\nThe run: {done}.\n" if done else "\n")


def model_card(info: dict[str, Any], name: str) -> str:
    """README.md for the exported folder: Hugging Face front matter, then what it is, how it was made and measured."""
    base = info["base_model"]
    front = {"base_model": HUB_IDS.get(base, base), "library_name": "transformers", "pipeline_tag": "text-generation",
             "tags": ["forgetless", "sft", "lora-merged" if info["method"] == "lora" else "full-fine-tune"]}
    method = ("LoRA (PEFT), merged into the base weights" if info["method"] == "lora" else "full fine-tuning")
    return f"""---
{yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip()}
---
# {name}

`{target_label(base)}` fine-tuned with Forgetless {info['forgetless_version']} by {method}, on a mix of
domain data and reconstructed general data (arXiv 2506.09428), so that it learns the domain while forgetting less of
what it could do.

- base model: `{base}`{f" ({ALIASES[base]})" if base in ALIASES else ""}
- training run: `{info['run']}`
- weights: safetensors, {info['dtype']}; tokenizer with the base's chat template; exported {info['exported_at']}

Load it with `transformers.AutoModelForCausalLM.from_pretrained("<this folder>")`, or serve it with
`vllm serve <this folder>`.

## Training

{_training_section(info)}
## Training data

{_mix_section(info['mix'])}
## Evaluation vs the base

{_eval_section(info)}"""
