"""Training throughput: SFT tokens/s of our trainer vs TRL with the same settings vs TRL's defaults, same run.

All three train the same model on the same conversations (short fixed chats, or the first rows of a mix
snapshot with ``--data``) with the same LoRA settings (or, with ``--full``, every weight), each for one warm-up
step and then the same ``--steps`` timed steps; a rate is the timed steps' tokens (not padding) over their wall
time.

- **ours**: `core.train.training.build_trainer` with TrainConfig's defaults (the hardware's dtype: bf16
  autocast where bf16 is native, else fp32, or ``--dtype``; no gradient checkpointing on a CPU; padding-free
  batches; on a CPU an LM head that projects only the trained positions, core/train/lm_head.py).
- **TRL, same settings**: a plain `SFTTrainer` given our dtype (weights and autocast) and no gradient
  checkpointing, batches padded as TRL does by default: ours / this ratio is what our own code adds beyond
  choosing those two settings (padding-free batches: it shows on conversations of different lengths, ``--data``;
  the CPU LM head: most with a large vocabulary and few trained tokens per position, as in MedMCQA answers).
- **TRL defaults**: `SFTConfig`'s defaults (bf16 autocast, gradient checkpointing) on the model as the app
  loads it, except what is needed to run and time it here (CPU, no saving, a log line per step).

The bound counts the matmul FLOPs each token actually costs: forward 2N plus the input-gradient backward 2N
for a frozen weight (LoRA's base model: it gets no weight gradient), and 6N for a trained one (LoRA's
adapters; every weight with ``--full``), N being the weights of the model's Linear layers (the tied LM
head included; embedding look-ups are no matmul; attention's score products, small at these lengths, and
gradient checkpointing's recomputed forward are not counted). It is set against the best 2048x2048
matmul GFLOP/s in the dtype the matmuls run in, measured in the same run after our run and at the end;
the GFLOP/s of the model's own MLP matmul at one step's tokens is printed beside it (small matrices run
far below the square bound, most of all on AMX).
Last stdout line: JSON summary.

On shared cores, torch's worker threads wait at every op for a thread that another process has
descheduled, which makes many small ops 10-20x slower; ``--threads 1`` (with the matmul bound then
measured on one thread too) gives a fairer reading while other jobs run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

TARGET_BOUND_SHARE = 0.5
TARGET_TRL_DEFAULTS_RATIO = 15.0  # issue 4's, set on machine A (no native bf16, where TRL's bf16 default is slow)
TOPICS = ["tea", "rain", "bread", "chess", "maps", "bees", "salt", "kites", "clocks", "ships", "ice", "moss"]
ASKS = ["Give me one fact about {}.", "Why do people like {}?", "Describe {} in one sentence."]


def conversations(count: int) -> list[list[dict[str, str]]]:
    """Short fixed chats (~50 tokens each with SmolLM2's default system prompt)."""
    chats = []
    for index in range(count):
        topic, ask = TOPICS[index % len(TOPICS)], ASKS[index % len(ASKS)]
        answer = f"Here is a short answer about {topic}: it is common, useful and easy to learn about."
        chats.append([{"role": "user", "content": ask.format(topic)}, {"role": "assistant", "content": answer}])
    return chats


def matmul_gflops(dtype: Any, rows: int = 2048, inner: int = 2048, cols: int = 2048, reps: int = 8) -> float:
    """GFLOP/s of a [rows, inner] x [inner, cols] matmul in ``dtype``, best repetition (the machine's capacity
    when others are not using it)."""
    import torch

    a, b = torch.randn(rows, inner, dtype=dtype), torch.randn(inner, cols, dtype=dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(reps):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * rows * inner * cols / best / 1e9


def matmul_flops_per_token(model: Any) -> tuple[float, int, int]:
    """(FLOPs per token, frozen matmul weights, trained matmul weights) over the model's Linear layers:
    4 per frozen weight (forward + input gradient), 6 per trained one (+ its weight gradient)."""
    import torch

    frozen = trained = 0
    seen: set[int] = set()
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and id(module.weight) not in seen:
            seen.add(id(module.weight))  # a weight shared by two layers would be one matmul each; none here
            if module.weight.requires_grad:
                trained += module.weight.numel()
            else:
                frozen += module.weight.numel()
    return 4.0 * frozen + 6.0 * trained, frozen, trained


class StepClock(TrainerCallback):
    """The wall clock and the trainer's token count after every step; the first (warm-up) step is not timed."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, float]] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "num_tokens" in logs:
            self.marks.append((time.perf_counter(), float(logs["num_tokens"])))

    def summary(self) -> dict[str, float]:
        (t0, n0), (t1, n1) = self.marks[0], self.marks[-1]
        steps = len(self.marks) - 1
        return {"tok_s": (n1 - n0) / (t1 - t0), "steps": steps, "s_per_step": (t1 - t0) / steps,
                "tokens_per_step": (n1 - n0) / steps}


def run_ours(data: Path, model: str, workspace: Path, steps: int, batch_size: int, method: str, out: Path,
             dtype: str = "auto", trl_lm_head: bool = False) -> dict:
    """Our trainer; with ``trl_lm_head`` it keeps TRL's fused LM head on a CPU too (what core/train/lm_head.py
    replaces there)."""
    from unittest import mock

    from core.engines.models import dtype_name
    from core.train.training import TrainConfig, build_trainer

    clock = StepClock()
    config = TrainConfig(data=str(data), out=str(out), model=model, method=method, max_steps=steps + 1,
                         batch_size=batch_size, save_steps=10_000, dtype=dtype)
    with mock.patch("core.train.training.project_trained_positions", side_effect=lambda model: None) \
            if trl_lm_head else contextlib.nullcontext():
        trainer = build_trainer(config, workspace, callbacks=[clock])
    trainer.train()
    flops, frozen, trained = matmul_flops_per_token(trainer.model)
    weights = next(p.dtype for p in trainer.model.parameters() if not p.requires_grad or method == "full")
    return {**clock.summary(), **trainer.forgetless_precision, "bf16": trainer.args.bf16,
            "weights_dtype": dtype_name(weights), "flops_per_token": flops, "frozen_params": frozen,
            "trained_params": trained, "model_config": trainer.model.config}


def run_trl(data: Path, model: str, workspace: Path, steps: int, batch_size: int, method: str, out: Path,
            same_as: dict | None) -> dict:
    """TRL's SFTTrainer: with ``same_as`` (our run's summary) in our dtype and without checkpointing,
    else with SFTConfig's defaults."""
    import torch
    from peft import LoraConfig
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from core.engines.models import dtype_name, load_model
    from core.train.data import read_conversations, to_prompt_completion
    from core.train.training import TrainConfig

    ours = TrainConfig(data=str(data), out=str(out), model=model, method=method)
    settings: dict[str, Any] = {}
    dtype = None  # as the app loads it
    if same_as is not None:
        dtype = getattr(torch, same_as["weights_dtype"])
        settings = {"bf16": same_as["bf16"], "fp16": same_as["dtype"] == "float16", "activation_checkpointing": False}
    loaded = load_model(model, workspace, device="cpu", dtype=dtype)
    clock = StepClock()
    args = SFTConfig(output_dir=str(out), max_steps=steps + 1, per_device_train_batch_size=batch_size,
                     max_length=ours.max_length, seed=ours.seed, logging_steps=1, save_strategy="no",
                     report_to="none", disable_tqdm=True, use_cpu=True,
                     **settings)
    lora = None
    if method == "lora":
        lora = LoraConfig(r=ours.lora_r, lora_alpha=ours.lora_alpha, lora_dropout=ours.lora_dropout,
                          target_modules=ours.target_modules(), task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=loaded.model, args=args, processing_class=loaded.tokenizer, peft_config=lora,
                         train_dataset=to_prompt_completion(read_conversations(data)), callbacks=[clock])
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    return {**clock.summary(), "bf16": args.bf16, "gradient_checkpointing": args.activation_checkpointing,
            "weights_dtype": dtype_name(loaded.dtype)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--workspace", type=Path, default=Path("workspace"), help="holds the converted model cache")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4, help="timed steps of each run (after one warm-up step)")
    parser.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    parser.add_argument("--data", type=Path, help="a mix snapshot folder: train on its first batch x (steps + 1) "
                        "conversations (lengths as they come) instead of the fixed short chats")
    parser.add_argument("--dtype", default="auto", help="our run's dtype (TrainConfig's; TRL, same settings, follows "
                        "it): auto follows the CPU's flags")
    parser.add_argument("--compare-lm-head", action="store_true", help="also ours with TRL's fused LM head (on a CPU "
                        "it scores every position; ours only the trained ones)")
    parser.add_argument("--no-trl-defaults", action="store_true", help="skip the run with TRL's defaults")
    parser.add_argument("--threads", type=int, help="torch threads for everything measured, matmul bound included "
                        "(default: torch's choice; 1 when other work shares the cores, see the module docstring)")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import pandas as pd

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import datasets

    datasets.disable_progress_bars()
    method = "full" if args.full else "lora"
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "mix"
        data.mkdir()
        rows = args.batch_size * (args.steps + 1)
        chats = (pd.read_parquet(args.data / "train.parquet", columns=["messages"])["messages"].head(rows).tolist()
                 if args.data else conversations(rows))
        pd.DataFrame({"messages": chats}).to_parquet(data / "train.parquet")
        load_before = os.getloadavg()[0]
        runs: dict[str, dict] = {}
        runs["ours"] = run_ours(data, args.model, args.workspace, args.steps, args.batch_size, method,
                                Path(folder) / "ours", args.dtype)
        if args.compare_lm_head:
            runs["ours with TRL's LM head"] = run_ours(data, args.model, args.workspace, args.steps, args.batch_size,
                                                       method, Path(folder) / "trl-head", args.dtype, True)
        compute = getattr(torch, runs["ours"]["dtype"])
        gflops_mid = matmul_gflops(compute)
        runs["TRL, same dtype, no checkpointing"] = run_trl(data, args.model, args.workspace, args.steps,
                                                            args.batch_size, method, Path(folder) / "same",
                                                            runs["ours"])
        if not args.no_trl_defaults:
            runs["TRL defaults"] = run_trl(data, args.model, args.workspace, args.steps, args.batch_size, method,
                                           Path(folder) / "defaults", None)
        gflops_after = matmul_gflops(compute)
        fp32_gflops = matmul_gflops(torch.float32) if compute != torch.float32 else None
        # the model's own MLP matmul at one step's tokens: what small matrices allow, beside the square bound
        config = runs["ours"]["model_config"]
        shape = (round(runs["ours"]["tokens_per_step"]), config.hidden_size, config.intermediate_size)
        shape_gflops = matmul_gflops(compute, *shape)
        load_after = os.getloadavg()[0]
    ours = runs["ours"]
    gflops = max(gflops_mid, gflops_after)
    achieved = ours["flops_per_token"] * ours["tok_s"] / 1e9
    share = achieved / gflops
    shared = max(load_before, load_after) > (os.cpu_count() or 1)
    print(f"{args.model}, {method}, batch {args.batch_size}, {ours['tokens_per_step']:.0f} tokens a step, "
          f"{args.steps} timed steps after 1 warm-up step each; torch threads {torch.get_num_threads()}")
    for name, run in runs.items():
        print(f"{name:34s} {run['tok_s']:7.1f} tok/s, {run['s_per_step']:.2f} s/step (weights "
              f"{run['weights_dtype']}, bf16 autocast {run['bf16']}, checkpointing {run['gradient_checkpointing']})")
    for name, run in runs.items():
        if name != "ours":
            ratio = ours["tok_s"] / run["tok_s"]
            target = (f" (target >= {TARGET_TRL_DEFAULTS_RATIO:g}x, set on a CPU without native bf16: "
                      f"{'met' if ratio >= TARGET_TRL_DEFAULTS_RATIO else 'NOT met'})" if name == "TRL defaults" else
                      " (what the CPU LM head saves)" if name == "ours with TRL's LM head" else
                      " (what our code adds beyond choosing dtype and checkpointing)")
            print(f"ratio ours / {name}: {ratio:.2f}x{target}")
    per_token = (f"4 x {ours['frozen_params'] / 1e6:.1f}M frozen + 6 x {ours['trained_params'] / 1e6:.2f}M trained "
                 f"matmul weights = {ours['flops_per_token'] / 1e9:.2f} GFLOP/token")
    print(f"bound: {per_token}; {ours['dtype']} matmul {gflops:.0f} GFLOP/s (after ours {gflops_mid:.0f}, at the end "
          f"{gflops_after:.0f}); ours {achieved:.0f} GFLOP/s = {share:.1%} of the bound "
          f"(target >= {TARGET_BOUND_SHARE:.0%}: {'met' if share >= TARGET_BOUND_SHARE else 'NOT met'})")
    print(f"at the model's MLP shape ({shape[0]} x {shape[1]} x {shape[2]}, one step's tokens) {ours['dtype']} matmul "
          f"runs {shape_gflops:.0f} GFLOP/s: ours is {achieved / shape_gflops:.1%} of that")
    if fp32_gflops:
        print(f"(for reference, fp32 matmul {fp32_gflops:.0f} GFLOP/s: ours would be {achieved / fp32_gflops:.1%} "
              "of an fp32 bound)")
    print(f"load average {load_before:.1f} before, {load_after:.1f} after ({os.cpu_count()} CPUs"
          f"{': cores shared with other processes' if shared else ''})")
    print(json.dumps({
        "model": args.model, "method": method, "batch_size": args.batch_size, "steps": args.steps,
        "tokens_per_step": ours["tokens_per_step"],
        "tok_s": {name: round(run["tok_s"], 1) for name, run in runs.items()},
        "ratio_same_settings": round(ours["tok_s"] / runs["TRL, same dtype, no checkpointing"]["tok_s"], 2),
        "ratio_lm_head": round(ours["tok_s"] / runs["ours with TRL's LM head"]["tok_s"], 2)
        if "ours with TRL's LM head" in runs else None,
        "ratio_trl_defaults": round(ours["tok_s"] / runs["TRL defaults"]["tok_s"], 2) if "TRL defaults" in runs
        else None,
        "dtype": ours["dtype"], "flops_per_token": ours["flops_per_token"], "frozen_params": ours["frozen_params"],
        "trained_params": ours["trained_params"], "matmul_gflops": round(gflops, 1),
        "achieved_gflops": round(achieved, 1), "bound_share": round(share, 3), "target_bound_share": TARGET_BOUND_SHARE,
        "target_met": share >= TARGET_BOUND_SHARE, "target_trl_defaults_ratio": TARGET_TRL_DEFAULTS_RATIO,
        "fp32_matmul_gflops": round(fp32_gflops, 1) if fp32_gflops else None, "shape_matmul": list(shape),
        "shape_matmul_gflops": round(shape_gflops, 1), "shape_bound_share": round(achieved / shape_gflops, 3),
        "load_avg": [round(load_before, 2), round(load_after, 2)],
        "cores_shared": shared, "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
