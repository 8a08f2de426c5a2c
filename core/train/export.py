"""Export a finished training run as one model folder that transformers loads and vLLM serves, with a model card.

A LoRA run is merged: its base is loaded in fp32 (so adding the low-rank update rounds once, not twice), the
adapter applied and ``merge_and_unload()``-ed, and the result saved as safetensors in the base model's own
dtype (``--dtype`` overrides), with the base's tokenizer (and chat template) and generation config. A full run's
``model/`` folder is copied as saved, without trainer state (or loaded and saved again when ``--dtype`` asks for
another dtype). Beside the weights go ``README.md`` (a Hugging Face model card: base model, training settings,
the mix snapshot and its manifest, evaluation results vs the base when the workspace stores them) and
``forgetless_export.json`` (the same, for scripts).

The folder is written into a hidden sibling and renamed into place, so a crash leaves no half folder at
``--out``; an ``--out`` that exists and is not empty is refused, never overwritten. What the card says is
core/train/model_card.py's.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config import fingerprint, load_yaml
from core.engines.models import DTYPES, local_folder
from core.errors import ForgetlessError
from core.folders import check_out_free, staged_folder
from core.jobs import job_info
from core.settings import setting
from core.train.model_card import export_info, model_card
from core.train.training import TrainConfig

EXPORT_JSON = "forgetless_export.json"
CARD_FILE = "README.md"
# Trainer state a full run's model/ may hold: no use to a user of the model (training_args.bin is a pickle).
TRAINER_FILES = ("training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state*.pth", "trainer_state.json",
                 "checkpoint-*")
PHASES = ("checking", "loading", "merging", "saving", "model card")


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
    try:
        with staged_folder(out) as staging:
            if run.config.method == "lora":
                dtype, base_folder = _write_merged(run, Path(workspace), config.dtype, staging, phase)
            else:
                dtype, base_folder = _write_full(run, config.dtype, staging, phase), None
            phase("model card")
            info = export_info(run.folder, run.config, run.summary, Path(workspace), dtype, base_folder)
            (staging / EXPORT_JSON).write_text(json.dumps(info, indent=2, default=str), encoding="utf-8")
            (staging / CARD_FILE).write_text(model_card(info, out.name), encoding="utf-8")
            # safetensors writes its files owner-only (0600); a folder meant for serving and sharing gets the mode
            # of any file this process writes (the card's, from the umask)
            mode = (staging / CARD_FILE).stat().st_mode & 0o777
            for path in staging.iterdir():
                if path.is_file():
                    path.chmod(mode)
    except OSError as error:
        raise ForgetlessError(f"cannot write {out}: {error.strerror or error}") from error
    files = sorted(path.name for path in out.iterdir() if path.is_file())
    return {"run": str(run.folder), "out": str(out), "method": run.config.method, "base_model": run.config.model,
            "dtype": dtype, "files": files, "bytes": sum((out / name).stat().st_size for name in files),
            "eval_tasks": sorted({row["task"] for row in info["eval"]["rows"]}),
            "seconds": round(time.monotonic() - started, 2)}
