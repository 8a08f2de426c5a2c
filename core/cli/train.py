"""`forgetless train`: fine-tune a model on a frozen mix snapshot (TRL SFT: LoRA or full), resumable.

Multi-GPU runs the same entry point under accelerate (see assets/accelerate/multi_gpu.yaml):
``accelerate launch --config_file assets/accelerate/multi_gpu.yaml -m core.cli train --data DIR ...``
"""

from __future__ import annotations

import argparse
import signal
from pathlib import Path
from typing import Any

from core.cli.common import Stages, add_stage, emit, progress_bar
from core.cli.flags import add_settings, config_values
from core.engines.models import resolve_model
from core.errors import ForgetlessError
from core.jobs import request_cancel
from core.train.training import TrainConfig, is_main_process, run_training


def train_config(args: argparse.Namespace) -> TrainConfig:
    """--config (or, for --resume, the run's own config.yaml), then every flag the user set on top."""
    start = Path(args.out) / "config.yaml" if args.resume and args.out else None
    values = config_values(TrainConfig, args, start=start)
    missing = [f"--{name}" for name in ("data", "out") if not values.get(name)]
    if missing:
        raise ForgetlessError(f"train needs {' and '.join(missing)} (or --config with them)")
    return TrainConfig(**values)


def cmd_train(args: argparse.Namespace) -> None:
    config = train_config(args)
    bar = None

    def on_progress(values: dict[str, Any]) -> None:
        nonlocal bar
        if bar is None:
            bar = progress_bar(values["total_steps"], f"train {Path(config.out).name}")
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
    emit(summary, args.json, human)


def add_train_stage(stages: Stages) -> None:
    tra = add_stage(stages, "train", "fine-tune a model on a frozen mix snapshot (TRL SFT: LoRA or full), resumable")
    add_settings(tra, TrainConfig)
    tra.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    tra.set_defaults(handler=cmd_train)
