"""Supervised fine-tuning (TRL SFTTrainer; LoRA through PEFT, or full) of a model on a frozen mix snapshot.

The run folder (``--out``) is also the job folder (see core/jobs.py): ``config.yaml``, ``status.json``,
``lock``, ``cancel``, ``progress.jsonl``, ``log.txt``, plus ``checkpoints/checkpoint-N`` (model,
optimizer, scheduler and RNG state, so a resumed run continues at the same step), the final
``adapter/`` (LoRA) or ``model/`` (full), optionally ``merged/``, and ``summary.json``. An adapter
run keeps the base MODEL spec in its config; evaluation loads base + ``adapter/``.

Precision follows the hardware (core.engines.models.choose_dtype): fp32 on CPUs without native bf16, where
TRL's own defaults (bf16 autocast + gradient checkpointing) are ~20x slower; bf16 autocast where it is
native and measures faster than fp32. On a CPU the LM head projects only the trained positions
(core/train/lm_head.py). Under ``accelerate launch`` every process runs this same entry point; only rank 0
writes the job files, and Trainer itself saves checkpoints from the main process only.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from core.config import load_yaml
from core.engines.models import DEFAULT_MODEL, DTYPES, choose_device, choose_dtype, dtype_name, load_model
from core.errors import ForgetlessError
from core.jobs import job_session
from core.mix.snapshot import file_sha256
from core.settings import setting
from core.train.data import read_conversations, require_chat_template, snapshot_file, to_prompt_completion
from core.train.lm_head import project_trained_positions
from core.train.progress import first_progress_with

# Changing these between a run and its --resume changes no weight already trained: extend, save, log differently.
CHANGEABLE_ON_RESUME = ("out", "max_steps", "epochs", "save_steps", "keep_checkpoints", "logging_steps", "merge")


@dataclass
class TrainConfig:
    """Settings of one training run (the YAML in its run folder)."""

    data: str = setting(help="frozen mix snapshot folder (train.parquet with a messages column)",
                        label="Training data (frozen mix)")
    out: str = setting(help="run folder (config, progress, checkpoints, adapter); one run per folder")
    model: str = setting(DEFAULT_MODEL, label="Base model",
                         help="base MODEL spec: alias, local model folder, .gguf file or hub id; an adapter run "
                              "keeps it as the base to load the adapter onto")
    method: str = setting("lora", flag=None, switches={"--lora": "lora", "--full": "full"}, choices=("lora", "full"),
                          help="lora: train low-rank adapters (PEFT); full: train every weight")
    max_steps: int | None = setting(None, help="optimizer steps (default: train by --epochs; -1 too)")
    epochs: float = setting(1.0, minimum=0, help="passes over the data when max steps is not set")
    learning_rate: float | None = setting(None, flag="--lr", minimum=0,
                                          help="learning rate (default 2e-4 LoRA, 2e-5 full)")
    batch_size: int = setting(8, help="conversations per device per step")
    grad_accum: int = setting(1, label="Grad accumulation",
                              help="forward passes per optimizer step (effective batch = batch size x grad accum "
                                   "x devices)")
    max_length: int = setting(1024, label="Max length (tokens)",
                              help="tokens per conversation; longer ones are cut at the end")
    warmup_ratio: float = setting(0.03, help="share of the steps spent warming the learning rate up from 0")
    lora_r: int = setting(16, label="LoRA r", help="LoRA rank")
    lora_alpha: int = setting(32, label="LoRA alpha", help="LoRA scaling")
    lora_dropout: float = setting(0.05, label="LoRA dropout", minimum=0.0, maximum=0.5, step=0.01,
                                  help="dropout on the LoRA layers")
    lora_target_modules: str = setting("all-linear", label="LoRA target modules",
                                       help="all-linear (every linear layer but the LM head) or comma-separated "
                                            "module names such as q_proj,v_proj")
    seed: int = setting(0, help="training seed")
    save_steps: int = setting(50, label="Checkpoint every N steps",
                              help="checkpoint every N steps (a cancel also saves one)")
    keep_checkpoints: int = setting(2, help="checkpoints kept; resume needs only the last")
    logging_steps: int = setting(1, help="one progress line (loss, lr, tokens/s) every N steps")
    merge: bool = setting(False, label="Also save base + adapter merged",
                          help="LoRA: also write base + adapter merged into merged/")
    dtype: str = setting("auto", choices=DTYPES, label="Model dtype",
                         help="auto: bf16 where the hardware runs it natively and faster, else fp32 (fp16 on old GPUs)")
    gradient_checkpointing: bool | None = setting(None, help="default: off on CPU (pure slowdown there), on on GPU "
                                                             "(saves memory)")

    def __post_init__(self) -> None:
        if self.max_steps == -1:
            self.max_steps = None
        whole = ("batch_size", "grad_accum", "max_length", "lora_r", "lora_alpha", "seed", "save_steps",
                 "keep_checkpoints", "logging_steps")
        if any(not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool) for name in whole):
            raise ForgetlessError(f"{', '.join(whole)} must be whole numbers")
        checks = [
            (bool(str(self.data).strip()), "data must be given: a frozen mix snapshot folder"),
            (bool(str(self.out).strip()), "out must be given: the run folder"),
            (bool(self.model.strip()), "model must be given: an alias, a model folder or a .gguf file"),
            (self.method in ("lora", "full"), "method must be lora or full"),
            (self.max_steps is None or (isinstance(self.max_steps, int) and self.max_steps >= 1),
             "max steps must be a whole number of at least 1 (or -1 to train by epochs)"),
            (self.epochs > 0, "epochs must be positive"),
            (self.learning_rate is None or 0 < self.learning_rate < 1, "learning rate must be in (0, 1)"),
            (self.batch_size >= 1 and self.grad_accum >= 1, "batch size and grad accum must be at least 1"),
            (self.max_length >= 8, "max length must be at least 8 tokens"),
            (0 <= self.warmup_ratio < 1, "warmup ratio must be in [0, 1)"),
            (self.lora_r >= 1 and self.lora_alpha >= 1, "lora r and alpha must be at least 1"),
            (0 <= self.lora_dropout < 1, "lora dropout must be in [0, 1)"),
            (bool(self.lora_target_modules.strip()), "lora target modules must be all-linear or module names"),
            (self.save_steps >= 1 and self.logging_steps >= 1, "save steps and logging steps must be at least 1"),
            (self.keep_checkpoints >= 1, "keep checkpoints must be at least 1 (resume needs one)"),
            (not (self.merge and self.method == "full"), "merge applies to LoRA runs only (a full run is the model)"),
            (self.dtype in DTYPES, f"dtype must be one of {', '.join(DTYPES)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ForgetlessError(message)

    def resolved_learning_rate(self) -> float:
        return self.learning_rate or (2e-4 if self.method == "lora" else 2e-5)

    def target_modules(self) -> str | list[str]:
        text = self.lora_target_modules.strip()
        return text if text == "all-linear" else [name.strip() for name in text.split(",") if name.strip()]


def is_main_process() -> bool:
    """False on the non-zero ranks of an ``accelerate launch`` / torchrun job."""
    return int(os.environ.get("RANK", "0")) == 0


def last_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint (Trainer writes trainer_state.json last, so a killed save is skipped)."""
    found = [(int(folder.name.rsplit("-", 1)[1]), folder) for folder in (Path(out) / "checkpoints").glob("checkpoint-*")
             if folder.name.rsplit("-", 1)[1].isdigit() and (folder / "trainer_state.json").is_file()]
    return max(found)[1] if found else None


def check_resumable(saved: TrainConfig, new: TrainConfig) -> None:
    """Refuse a resume whose settings would change what the checkpoint's weights mean."""
    def same(name: str) -> bool:
        old, now = getattr(saved, name), getattr(new, name)
        return Path(old).resolve() == Path(now).resolve() if name == "data" else old == now

    changed = [field.name for field in fields(TrainConfig)
               if field.name not in CHANGEABLE_ON_RESUME and not same(field.name)]
    if changed:
        raise ForgetlessError(f"cannot resume {new.out}: {', '.join(changed)} differ from the run's config.yaml "
                              f"(only {', '.join(CHANGEABLE_ON_RESUME[1:])} may change on resume)")


def _precision(config: TrainConfig) -> tuple[str, Any, bool]:
    """(device, compute dtype, gradient checkpointing) for this machine and config."""
    import torch

    device = choose_device()
    dtype = choose_dtype(device) if config.dtype == "auto" else getattr(torch, config.dtype)
    checkpointing = config.gradient_checkpointing
    if checkpointing is None:
        checkpointing = device != "cpu"
    return device, dtype, checkpointing


def build_trainer(config: TrainConfig, workspace: Path, callbacks: list[Any] | None = None) -> Any:
    """An SFTTrainer ready to ``train()``: the model, the snapshot in prompt/completion form, LoRA or full."""
    conversations = read_conversations(config.data)  # before the slow imports, so bad data fails fast
    import torch
    from peft import LoraConfig
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    device, dtype, checkpointing = _precision(config)
    half = dtype in (torch.bfloat16, torch.float16)
    # LoRA keeps the frozen base in the compute dtype; full fine-tuning keeps fp32 master weights under autocast.
    weights_dtype = dtype if config.method == "lora" else torch.float32
    loaded = load_model(config.model, workspace, device="cpu", dtype=weights_dtype)  # Trainer places it per rank
    require_chat_template(loaded.tokenizer, config.model)
    model = loaded.model
    peft_config = None
    if config.method == "lora":
        peft_config = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                                 target_modules=config.target_modules(), task_type="CAUSAL_LM")
    args = SFTConfig(
        output_dir=str(Path(config.out) / "checkpoints"),
        max_steps=config.max_steps or -1, num_train_epochs=config.epochs,
        learning_rate=config.resolved_learning_rate(), warmup_steps=config.warmup_ratio,  # below 1: a share
        per_device_train_batch_size=config.batch_size, gradient_accumulation_steps=config.grad_accum,
        # Padding-free: a batch is one row of its conversations back to back, each attending only to itself
        # (position ids restart per conversation), so no pad token is computed (half of a padded MedMCQA batch was
        # padding). TRL refuses max_length then, unless it packs: cut below, as TRL would.
        padding_free=True, max_length=None, completion_only_loss=True, seed=config.seed,
        bf16=half and dtype == torch.bfloat16, fp16=half and dtype == torch.float16,
        activation_checkpointing=checkpointing, use_cpu=device == "cpu",  # gradient_checkpointing in transformers 5
        save_strategy="steps", save_steps=config.save_steps, save_total_limit=config.keep_checkpoints,
        logging_steps=config.logging_steps, report_to="none", disable_tqdm=True,
        ddp_find_unused_parameters=False,  # every weight takes part in each forward; the search costs a pass
    )
    try:
        trainer = SFTTrainer(model=model, args=args, train_dataset=to_prompt_completion(conversations),
                             processing_class=loaded.tokenizer, peft_config=peft_config, callbacks=callbacks)
    except ValueError as error:  # e.g. LoRA target modules that the model does not have
        raise ForgetlessError(f"cannot set up training: {str(error).splitlines()[0]}") from error
    trainer.remove_callback(PrinterCallback)  # it prints every log dict to stdout
    if device == "cpu":
        project_trained_positions(trainer.model.get_base_model() if peft_config else trainer.model)
    trainer.train_dataset = _cut_to(trainer.train_dataset, config.max_length)
    if len(trainer.train_dataset) == 0:
        raise ForgetlessError(f"no conversation of {config.data} has an answer within max length {config.max_length}")
    trainer.forgetless_precision = {"device": device, "dtype": dtype_name(dtype),
                                    "gradient_checkpointing": checkpointing}
    return trainer


def _cut_to(dataset: Any, max_length: int) -> Any:
    """TRL's own truncation (keep the start, drop rows left without a trained token), which it skips when batches
    are padding-free."""
    cut = dataset.map(lambda row: {"input_ids": row["input_ids"][:max_length], "labels": row["labels"][:max_length]})
    return cut.filter(lambda row: any(label != -100 for label in row["labels"]))


def _log_to_file(out: Path | None) -> Callable[[], None]:
    """Library logging and warnings go to the run's log.txt (rank 0) or nowhere, not the console; returns the undo."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    if out is None:
        transformers.utils.logging.set_verbosity_error()
        return lambda: None
    handler = logging.FileHandler(out / "log.txt", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger(name) for name in ("trl", "peft", "py.warnings")]
    transformers.utils.logging.add_handler(handler)
    transformers.utils.logging.disable_default_handler()
    transformers.utils.logging.set_verbosity_info()
    logging.captureWarnings(True)
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False

    def undo() -> None:
        transformers.utils.logging.remove_handler(handler)
        transformers.utils.logging.enable_default_handler()
        transformers.utils.logging.set_verbosity_error()
        logging.captureWarnings(False)
        for logger in loggers:
            logger.removeHandler(handler)
            logger.propagate = True
        handler.close()

    return undo


def _prepare_run_folder(config: TrainConfig, resume: bool) -> Path | None:
    """Check the folder fits the request; return the checkpoint to resume from (None for a fresh run)."""
    out = Path(config.out)
    if not resume:
        if last_checkpoint(out) or (out / "adapter").exists() or (out / "model").exists():
            raise ForgetlessError(f"{out} already holds a training run; add --resume to continue it or pick another "
                                  "--out")
        for stale in ("progress.jsonl", "summary.json"):  # left by a run that failed before its first checkpoint
            (out / stale).unlink(missing_ok=True)
        return None
    checkpoint = last_checkpoint(out)
    if checkpoint is None:
        raise ForgetlessError(f"nothing to resume in {out}: no checkpoint under {out / 'checkpoints'}")
    if (out / "config.yaml").exists():
        check_resumable(load_yaml(TrainConfig, out / "config.yaml"), config)
    started = first_progress_with(out, "data_sha256")
    if started and started["data_sha256"] != file_sha256(snapshot_file(config.data)):
        raise ForgetlessError(f"cannot resume {out}: {snapshot_file(config.data)} changed since the run started")
    return checkpoint


def run_training(config: TrainConfig, workspace: Path, *, resume: bool = False,
                 on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train in ``config.out`` (the job folder) and return the summary (also written to summary.json).

    A ``cancel`` file in the folder (or SIGTERM through the CLI) saves a checkpoint and stops;
    ``resume=True`` continues from the last checkpoint at its step.
    """
    out = Path(config.out)
    snapshot_file(config.data)
    checkpoint = _prepare_run_folder(config, resume)
    out.mkdir(parents=True, exist_ok=True)
    if not is_main_process():
        return _train(config, workspace, checkpoint, recorder=None, on_progress=None)
    with job_session(out, "train", config, compute_slot=Path(workspace)) as recorder:  # queued behind model jobs
        summary = _train(config, workspace, checkpoint, recorder=recorder, on_progress=on_progress)
        recorder.summary = summary
    return summary


def _train(config: TrainConfig, workspace: Path, checkpoint: Path | None, recorder: Any,
           on_progress: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    out = Path(config.out)
    write = recorder.progress if recorder is not None else None
    if write:
        write({"phase": "loading model", "model": config.model})
    undo_logging = _log_to_file(out if recorder is not None else None)
    try:
        from core.train.callback import TrainProgressCallback

        callback = TrainProgressCallback(out / "cancel", write=write, on_progress=on_progress)
        trainer = build_trainer(config, workspace, callbacks=[callback])
        resumed_from = int(checkpoint.name.rsplit("-", 1)[1]) if checkpoint else None
        if write:
            write({"phase": "training", "resumed_from_step": resumed_from, "examples": len(trainer.train_dataset),
                   "data_sha256": file_sha256(snapshot_file(config.data)), **trainer.forgetless_precision})
        started = time.monotonic()
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        seconds = time.monotonic() - started
        summary = {
            "out": str(out), "model": config.model, "method": config.method, "steps": trainer.state.global_step,
            "total_steps": trainer.state.max_steps, "final_loss": callback.last_loss,
            "train_loss": result.training_loss, "tokens_per_s": round(callback.tokens_per_s(), 1),
            "seconds": round(seconds, 1), "resumed_from_step": resumed_from, "cancelled": callback.cancelled,
            "checkpoint": str(last_checkpoint(out)) if last_checkpoint(out) else None,
            "adapter": None, "model_dir": None, "merged": None, **trainer.forgetless_precision,
        }
        if not callback.cancelled:
            summary.update(_save_outputs(trainer, config, write))
    finally:
        undo_logging()
    if recorder is not None:
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    return summary


def _save_outputs(trainer: Any, config: TrainConfig, write: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    """Write adapter/ (LoRA) or model/ (full) with the tokenizer, and merged/ when asked."""
    out = Path(config.out)
    if write:
        write({"phase": "saving"})
    target = out / ("adapter" if config.method == "lora" else "model")
    trainer.save_model(str(target))  # main process only; PEFT saves just the adapter weights
    saved = {"adapter": str(target)} if config.method == "lora" else {"model_dir": str(target)}
    if config.merge and trainer.is_world_process_zero():
        if write:
            write({"phase": "merging"})
        merged_dir = out / "merged"
        shutil.rmtree(merged_dir, ignore_errors=True)
        merged = trainer.model.merge_and_unload()
        merged.save_pretrained(merged_dir)
        trainer.processing_class.save_pretrained(merged_dir)
        saved["merged"] = str(merged_dir)
    return saved
