"""Training throughput: LoRA SFT tokens/s with our TrainConfig defaults vs TRL's SFTConfig defaults, same run.

Both train the same model on the same short conversations with the same LoRA settings; only the
trainer settings differ (ours: the hardware's dtype, fp32 on CPUs without native bf16, no gradient
checkpointing; TRL's: bf16 autocast and gradient checkpointing). The first step of each is warm-up
and not timed. The fp32 matmul GFLOP/s is measured in the same run, and the share of that bound is
6 x parameters x tokens/s over it. Last stdout line: JSON summary.

On shared cores, torch's worker threads wait at every op for a thread that another process has
descheduled, which makes many small ops 10-20x slower; ``--threads 1`` (with the matmul bound then
measured on one thread too) gives a fair reading while other jobs run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from transformers import TrainerCallback

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


def matmul_gflops(size: int = 2048, reps: int = 8) -> float:
    """fp32 matmul GFLOP/s of the best repetition (the machine's capacity when others are not using it)."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(reps):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


class StepClock(TrainerCallback):
    """Per-step tokens/s from the trainer's token count and the wall clock; the first (warm-up) step is not timed."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, float]] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "num_tokens" in logs:
            self.marks.append((time.perf_counter(), float(logs["num_tokens"])))

    def summary(self) -> dict:
        steps = [(n1 - n0, t1 - t0) for (t0, n0), (t1, n1) in zip(self.marks, self.marks[1:], strict=False)]
        rates = sorted(tokens / seconds for tokens, seconds in steps)
        return {"tok_s": statistics.median(rates), "best_tok_s": rates[-1], "steps": len(steps),
                "s_per_step": statistics.median(seconds for _, seconds in steps),
                "tokens_per_step": statistics.median(tokens for tokens, _ in steps)}


def run_ours(data: Path, model: str, workspace: Path, steps: int, batch_size: int, out: Path) -> dict:
    from core.train.training import TrainConfig, build_trainer

    clock = StepClock()
    config = TrainConfig(data=str(data), out=str(out), model=model, max_steps=steps + 1, batch_size=batch_size,
                         save_steps=10_000)
    trainer = build_trainer(config, workspace, callbacks=[clock])
    trainer.train()
    params = sum(p.numel() for p in trainer.model.parameters() if not p.requires_grad)
    return {**clock.summary(), "params": params, **trainer.forgetless_precision}


def run_trl_defaults(data: Path, model: str, workspace: Path, steps: int, batch_size: int, out: Path) -> dict:
    from peft import LoraConfig
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from core.engines.models import load_model
    from core.train.data import read_conversations, to_prompt_completion
    from core.train.training import TrainConfig

    ours = TrainConfig(data=str(data), out=str(out), model=model)
    loaded = load_model(model, workspace, device="cpu")
    clock = StepClock()
    # TRL's defaults, except what is needed to run and time it here: CPU, no saving, a log line per step
    args = SFTConfig(output_dir=str(out), max_steps=steps + 1, per_device_train_batch_size=batch_size,
                     logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True)
    lora = LoraConfig(r=ours.lora_r, lora_alpha=ours.lora_alpha, lora_dropout=ours.lora_dropout,
                      target_modules=ours.target_modules(), task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=loaded.model, args=args, processing_class=loaded.tokenizer, peft_config=lora,
                         train_dataset=to_prompt_completion(read_conversations(data)), callbacks=[clock])
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    return {**clock.summary(), "bf16": args.bf16,
            "gradient_checkpointing": args.gradient_checkpointing}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--workspace", type=Path, default=Path("workspace"), help="holds the converted model cache")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6, help="timed steps with our defaults (after one warm-up)")
    parser.add_argument("--trl-steps", type=int, default=1, help="timed steps with TRL's defaults (~1 min each here)")
    parser.add_argument("--threads", type=int, help="torch threads for everything measured, matmul bound included "
                        "(default: torch's choice; 1 when other work shares the cores, see the module docstring)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    import pandas as pd

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import datasets

    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "mix"
        data.mkdir()
        needed = args.batch_size * (max(args.steps, args.trl_steps) + 1)
        pd.DataFrame({"messages": conversations(needed)}).to_parquet(data / "train.parquet")
        load_before = os.getloadavg()[0]
        gflops_before = matmul_gflops()
        ours = run_ours(data, args.model, args.workspace, args.steps, args.batch_size, Path(folder) / "ours")
        gflops_after = matmul_gflops()
        print(f"ours: {ours['tok_s']:.1f} tok/s, {ours['s_per_step']:.2f} s/step; matmul {gflops_before:.0f} / "
              f"{gflops_after:.0f} GFLOP/s", flush=True)
        trl = run_trl_defaults(data, args.model, args.workspace, args.trl_steps, args.batch_size,
                               Path(folder) / "trl")
        load_after = os.getloadavg()[0]
    gflops = max(gflops_before, gflops_after)
    achieved = 6 * ours["params"] * ours["tok_s"] / 1e9
    share = achieved / gflops
    print(f"ours ({ours['dtype']}, checkpointing {ours['gradient_checkpointing']}): {ours['tok_s']:.1f} tok/s "
          f"(median step; best {ours['best_tok_s']:.1f}), {ours['s_per_step']:.2f} s/step over {ours['steps']} steps "
          f"of {ours['tokens_per_step']:.0f} tokens")
    print(f"TRL defaults (bf16 {trl['bf16']}, checkpointing {trl['gradient_checkpointing']}): {trl['tok_s']:.1f} "
          f"tok/s, {trl['s_per_step']:.2f} s/step over {trl['steps']} steps")
    print(f"ratio {ours['tok_s'] / trl['tok_s']:.1f}x; fp32 matmul {gflops:.0f} GFLOP/s (before {gflops_before:.0f}, "
          f"after {gflops_after:.0f}); 6 x {ours['params'] / 1e6:.1f}M params x tok/s = {achieved:.0f} GFLOP/s "
          f"= {share:.0%} of the bound")
    import torch

    print(f"load average {load_before:.1f} before, {load_after:.1f} after (2 cores: above ~2 others were competing); "
          f"torch threads {torch.get_num_threads()}")
    print(json.dumps({
        "model": args.model, "batch_size": args.batch_size, "ours_tok_s": round(ours["tok_s"], 1),
        "trl_default_tok_s": round(trl["tok_s"], 1), "ratio": round(ours["tok_s"] / trl["tok_s"], 2),
        "ours_s_per_step": round(ours["s_per_step"], 3), "trl_default_s_per_step": round(trl["s_per_step"], 3),
        "matmul_gflops": round(gflops, 1), "achieved_gflops": round(achieved, 1), "bound_share": round(share, 3),
        "params": ours["params"], "ours_steps": ours["steps"], "trl_steps": trl["steps"],
        "ours_best_tok_s": round(ours["best_tok_s"], 1), "tokens_per_step": ours["tokens_per_step"],
        "load_avg_before": round(load_before, 2), "load_avg_after": round(load_after, 2),
        "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
