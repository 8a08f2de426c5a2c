"""Evaluation throughput: multiple-choice items per second, batched (ours) vs one option at a time, same run.

Ours is the real `run_evaluation` path through the in-process engine (length-bucketed batches of
``--batch-size`` items, each context run once with its key/value cache shared by its options, every batch
committed to a fresh store).

The baseline is `core.eval.benchmarks.general.score_one_at_a_time` on the same loaded model (same weights,
same dtype) and the same items: for every option of every item, one batch-1 forward pass over the whole
context + option text, summing the option tokens' log-probabilities (`core.engines.loglik`), with no
batching, no cache shared between an item's options and no store. It is the naive way, not the strongest
one: lm-evaluation-harness, for instance, batches requests too. Both must pick the same answers.
Last stdout line: JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

TARGET_RATIO = 4.0
BASELINE = ("one batch-1 forward pass per option over context + option (score_one_at_a_time): no batching, no "
            "cache shared among an item's options, no store; same model and dtype")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, default=Path("workspace"), help="where the model cache is")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--task", default="arc_easy", choices=("arc_easy", "piqa", "hellaswag", "sciq"))
    parser.add_argument("--limit", type=int, default=100, help="items (a seeded subsample)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    from core.engines.in_process import InProcessEngine
    from core.engines.models import dtype_name, load_model
    from core.eval.benchmarks.general import load_general_items, mc_metrics, score_one_at_a_time
    from core.eval.evaluation import EvalConfig, run_evaluation
    from core.store import Store

    lm = load_model(args.model, args.workspace)  # loading is not what we time
    items = load_general_items(args.task, args.limit, args.seed)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        store = Store.for_workspace(Path(folder))
        config = EvalConfig(model=args.model, suite=(args.task,), limit=args.limit, seed=args.seed,
                            batch_size=args.batch_size)
        started = time.perf_counter()
        ours = run_evaluation(config, store, lambda spec: InProcessEngine(lm))
        ours_s = time.perf_counter() - started
        ours_preds = {row.item_id: row.pred for row in store.eval_items(config.resolved_job_id(), args.task)}
    started = time.perf_counter()
    baseline = score_one_at_a_time(lm.model, lm.tokenizer, items)
    baseline_s = time.perf_counter() - started
    load_after = os.getloadavg()[0]
    agree = sum(ours_preds[s.item_id] == s.pred for s in baseline) / len(baseline)
    n = ours["results"][args.task]["n"]
    ours_rate, baseline_rate = n / ours_s, len(items) / baseline_s
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    options = sum(len(item.options) for item in items)
    print(f"ours:     {n} items in {ours_s:.1f} s = {ours_rate:.2f} items/s (batch {args.batch_size}, store included)")
    print(f"baseline: {len(items)} items in {baseline_s:.1f} s = {baseline_rate:.2f} items/s "
          f"({options} batch-1 forward passes = {options / baseline_s:.1f} passes/s)")
    print(f"baseline = {BASELINE} ({str(lm.dtype).removeprefix('torch.')}, torch threads {torch.get_num_threads()})")
    ratio = ours_rate / baseline_rate
    print(f"ratio: {ratio:.2f} (target >= {TARGET_RATIO:g}: {'met' if ratio >= TARGET_RATIO else 'NOT met'}); "
          f"same answers on {agree:.0%}; "
          f"acc ours {ours['results'][args.task]['acc']:.3f}, baseline {mc_metrics(baseline)['acc']:.3f}")
    shared = max(load_before, load_after) > (os.cpu_count() or 1)
    print(f"load average {load_before:.1f} before, {load_after:.1f} after ({os.cpu_count()} CPUs"
          f"{': cores shared with other processes' if shared else ''})")
    print(json.dumps({
        "ours_items_s": round(ours_rate, 3), "baseline_items_s": round(baseline_rate, 3),
        "ratio": round(ratio, 2), "target_ratio": TARGET_RATIO, "target_met": ratio >= TARGET_RATIO,
        "baseline": BASELINE, "dtype": dtype_name(lm.dtype),
        "load_avg": [round(load_before, 2), round(load_after, 2)], "baseline_passes_s": round(options / baseline_s, 2),
        "agreement": round(agree, 4), "acc_ours": ours["results"][args.task]["acc"],
        "acc_baseline": mc_metrics(baseline)["acc"], "task": args.task, "items": n, "batch_size": args.batch_size,
        "model": args.model, "threads": torch.get_num_threads(), "peak_rss_mb": round(peak_mb),
    }))


if __name__ == "__main__":
    main()
