"""`forgetless train`: its flags and handler (kept out of core/cli.py to keep that file small).

Multi-GPU runs the same entry point under accelerate (see assets/accelerate/multi_gpu.yaml):
``accelerate launch --config_file assets/accelerate/multi_gpu.yaml -m core.cli train --data DIR ...``
"""

from __future__ import annotations

import argparse
import signal
from pathlib import Path
from typing import Any

from core.config import load_yaml, to_dict
from core.errors import ForgetlessError
from core.train import DTYPES, TrainConfig, is_main_process

# flag -> TrainConfig field, for flags that map one to one
FLAGS = {
    "data": "data", "model": "model", "out": "out", "max_steps": "max_steps", "epochs": "epochs",
    "lr": "learning_rate", "batch_size": "batch_size", "grad_accum": "grad_accum", "max_length": "max_length",
    "warmup_ratio": "warmup_ratio", "lora_r": "lora_r", "lora_alpha": "lora_alpha", "lora_dropout": "lora_dropout",
    "lora_target_modules": "lora_target_modules", "save_steps": "save_steps", "keep_checkpoints": "keep_checkpoints",
    "logging_steps": "logging_steps",
    "merge": "merge", "seed": "seed", "dtype": "dtype", "gradient_checkpointing": "gradient_checkpointing",
}


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="a TrainConfig YAML (flags override its fields)")
    parser.add_argument("--data", help="frozen mix snapshot folder (train.parquet with a messages column)")
    parser.add_argument("--model", help="base MODEL spec: alias, local model folder, .gguf file or hub id")
    parser.add_argument("--out", help="run folder (config, progress, checkpoints, adapter); one run per folder")
    method = parser.add_mutually_exclusive_group()
    method.add_argument("--lora", action="store_true", help="train LoRA adapters (default)")
    method.add_argument("--full", action="store_true", help="train every weight")
    parser.add_argument("--max-steps", type=int, help="optimizer steps (default: train by --epochs)")
    parser.add_argument("--epochs", type=float, help="default 1")
    parser.add_argument("--lr", type=float, help="learning rate (default 2e-4 LoRA, 2e-5 full)")
    parser.add_argument("--batch-size", type=int, help="conversations per device per step (default 8)")
    parser.add_argument("--grad-accum", type=int, help="forward passes per optimizer step (default 1)")
    parser.add_argument("--max-length", type=int, help="tokens per conversation (default 1024)")
    parser.add_argument("--warmup-ratio", type=float)
    parser.add_argument("--lora-r", type=int, help="default 16")
    parser.add_argument("--lora-alpha", type=int, help="default 32")
    parser.add_argument("--lora-dropout", type=float, help="default 0.05")
    parser.add_argument("--lora-target-modules", help="all-linear (default) or comma-separated module names")
    parser.add_argument("--save-steps", type=int, help="checkpoint every N steps (default 50)")
    parser.add_argument("--keep-checkpoints", type=int, help="checkpoints kept (default 2; resume needs the last)")
    parser.add_argument("--logging-steps", type=int, help="progress line every N steps (default 1)")
    parser.add_argument("--merge", action="store_true", default=None, help="LoRA: also write the merged model")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--dtype", choices=DTYPES, help="default auto: fp32 unless the hardware runs bf16 natively")
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                        help="default: off on CPU, on on GPU")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """--config (or, for --resume, the run's own config.yaml), then every flag the user set on top."""
    values: dict[str, Any] = {}
    if args.config:
        values = to_dict(load_yaml(TrainConfig, args.config))
    elif args.resume and args.out and (Path(args.out) / "config.yaml").exists():
        values = to_dict(load_yaml(TrainConfig, Path(args.out) / "config.yaml"))
    values.update({field: getattr(args, flag) for flag, field in FLAGS.items() if getattr(args, flag) is not None})
    if args.lora or args.full:
        values["method"] = "lora" if args.lora else "full"
    missing = [f"--{name}" for name in ("data", "out") if not values.get(name)]
    if missing:
        raise ForgetlessError(f"train needs {' and '.join(missing)} (or --config with them)")
    return TrainConfig(**values)


def cmd_train(args: argparse.Namespace) -> None:
    from core.cli import _emit, _progress_bar
    from core.jobs import request_cancel
    from core.models import resolve_model
    from core.train import run_training

    config = config_from_args(args)
    bar = None

    def on_progress(values: dict[str, Any]) -> None:
        nonlocal bar
        if bar is None:
            bar = _progress_bar(values["total_steps"], f"train {Path(config.out).name}")
        bar.update(values["step"] - bar.n)
        bar.set_postfix(loss=f"{values['loss']:.3f}", tok_s=f"{values['tokens_per_s']:.0f}")

    resolve_model(config.model, args.workspace)  # a bad MODEL fails before the run folder is written
    if is_main_process():
        signal.signal(signal.SIGTERM, lambda *_: request_cancel(Path(config.out)))
    summary = run_training(config, args.workspace, resume=args.resume, on_progress=on_progress)
    if bar is not None:
        bar.close()
    if not is_main_process():
        return
    state = "cancelled (checkpoint saved; --resume continues)" if summary["cancelled"] else "done"
    saved = summary["adapter"] or summary["model_dir"] or summary["checkpoint"]
    human = (f"{state}: {summary['steps']}/{summary['total_steps']} steps of {summary['method']} on "
             f"{summary['model']}, final loss {summary['final_loss']}, {summary['tokens_per_s']} tok/s, "
             f"{summary['seconds']} s -> {saved}")
    _emit(summary, args.json, human)
