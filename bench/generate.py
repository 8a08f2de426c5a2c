"""Reconstruction throughput on the packaged SmolLM2: our batched sampler against plain ``model.generate``.

"ours" samples N instructions from the Magpie pre-query prefix with ``core.engines.sampler
.sample`` (temperature 1, top_p 1, stop at the end of the user turn, at most 128 new tokens) in batches
of ``--batch-size``; the "baseline" is ``model.generate(do_sample=True, max_new_tokens=64)`` one prompt at
a time on the same prefix. Both count generated tokens only: stop tokens and padding are not counted.
Readable lines first; the last stdout line is one JSON object for scripts.

    PYTHONPATH=. python bench/generate.py --workspace /tmp/ws1
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

MODEL = "smollm2-135m-instruct"
# Measured on the 2-core AVX2 CPU (n 256): batch 256 ran at ~360 tok/s, 128 at ~285, 64 at ~215, with
# peak RSS ~1.7, ~1.45 and ~1.16 GB. Bigger batches share each step's weight streaming (~50 ms even for
# one row) among more rows, and pay the tail of rows that run to max_new_tokens once instead of n/batch
# times; the KV cache (~46 KB per token) is what bounds the batch.
DEFAULT_BATCH = 256


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workspace", type=Path, default=Path("./workspace"), help="holds the converted model"
    )
    parser.add_argument("--n", type=int, default=256, help="samples to generate with our sampler")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help="rows decoded together")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="cap per sample (ours)")
    parser.add_argument("--baseline-n", type=int, default=4, help="prompts for model.generate, one at a time")
    parser.add_argument("--baseline-max-new-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--show", type=int, default=5, help="decoded samples to print")
    return parser.parse_args(argv)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ours(model: Any, prefix: list[int], stops: list[int], args: argparse.Namespace) -> tuple[list, float]:
    """All samples and the wall time; progress goes to stderr so stdout stays readable."""
    from core.engines.sampler import sample

    samples: list = []
    started = time.perf_counter()
    for start in range(0, args.n, args.batch_size):
        rows = min(args.batch_size, args.n - start)
        samples += sample(
            model,
            [prefix] * rows,
            temperature=1.0,
            top_p=1.0,
            max_new_tokens=args.max_new_tokens,
            stop_token_ids=stops,
            seed=args.seed + start,
        )
        done = sum(len(s.token_ids) for s in samples)
        elapsed = time.perf_counter() - started
        print(f"  ours: {len(samples)}/{args.n} samples, {done / elapsed:.1f} tok/s", file=sys.stderr)
    return samples, time.perf_counter() - started


def run_baseline(
    model: Any, prefix: list[int], stops: list[int], args: argparse.Namespace
) -> tuple[int, float]:
    """Generated-token count and wall time of plain sampling with ``generate``, one prompt per call."""
    import torch

    ids = torch.tensor([prefix], device=model.device)
    tokens, started = 0, time.perf_counter()
    for i in range(args.baseline_n):
        torch.manual_seed(args.seed + i)
        with torch.inference_mode():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                max_new_tokens=args.baseline_max_new_tokens,
                eos_token_id=stops,
                pad_token_id=stops[0],
            )
        new = out[0, len(prefix) :].tolist()
        tokens += next((k for k, t in enumerate(new) if t in stops), len(new))
    return tokens, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.n < 1 or args.batch_size < 1:
        raise SystemExit("--n and --batch-size must be positive")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from core.engines.models import generation_dtype, load_model
    from core.reconstruct.prequery import derive_prequery, stop_token_ids

    lm = load_model(MODEL, args.workspace, dtype=generation_dtype("cpu"))  # what reconstruct uses
    query = derive_prequery(lm.tokenizer)
    stops = stop_token_ids(lm.tokenizer, query.stop)
    prefix = lm.tokenizer(query.prefix, add_special_tokens=False).input_ids
    print(
        f"model {MODEL} on {lm.device} ({lm.dtype}), {torch.get_num_threads()} threads; "
        f"prefix {len(prefix)} tokens, stop ids {stops}"
    )

    samples, ours_s = run_ours(lm.model, prefix, stops, args)
    ours_tokens = sum(len(s.token_ids) for s in samples)
    ours = ours_tokens / ours_s
    stopped = sum(s.stopped for s in samples)
    print(
        f"ours:     {ours:7.1f} tok/s  ({ours_tokens} tokens, {len(samples)} samples, "
        f"batch {args.batch_size}, "
        f"{ours_s:.1f} s; {stopped} ended at end of turn, {len(samples) - stopped} cut at "
        f"{args.max_new_tokens} tokens)"
    )

    base_tokens, base_s = run_baseline(lm.model, prefix, stops, args)
    baseline = base_tokens / base_s
    print(
        f"baseline: {baseline:7.1f} tok/s  ({base_tokens} tokens, {args.baseline_n} x model.generate "
        f"one prompt at a time, {base_s:.1f} s)"
    )
    ratio = ours / baseline if baseline else float("inf")
    rss = peak_rss_mb()
    print(f"ratio:    {ratio:7.1f} x")
    print(f"peak RSS: {rss:7.0f} MB")
    print("samples:")
    for s in [s for s in samples if s.token_ids][: args.show]:
        print("  - " + repr(lm.tokenizer.decode(s.token_ids, skip_special_tokens=True))[:300])
    print(
        json.dumps(
            {
                "ours_tok_s": round(ours, 1),
                "baseline_tok_s": round(baseline, 1),
                "ratio": round(ratio, 2),
                "peak_rss_mb": round(rss),
                "batch_size": args.batch_size,
                "n": args.n,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
