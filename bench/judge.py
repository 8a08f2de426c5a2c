"""Judging throughput: responses scored per second by `probs` (one forward pass) vs `generate`, same run.

Both methods score the same instruction/response pairs with the same judges (the packaged models by
default), each in a fresh store so neither reuses the other's work. Last stdout line: JSON summary.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

PAIRS = [
    ("How do I boil an egg?", "Put the egg in boiling water for 9 minutes, then cool it in cold water."),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Write a haiku about autumn.", "Red leaves drift and fall / cold wind hums through bare trees / the year exhales"),
    ("Give me three tips to sleep better.", "Keep a regular schedule, avoid screens at night, keep the room cool."),
    ("Explain photosynthesis simply.", "Plants use sunlight to turn water and carbon dioxide into sugar and oxygen."),
    ("How can I learn Python quickly?", "Pick a small project, follow the tutorial, write code every day."),
    ("What is 12 times 7?", "12 times 7 is 84."),
    ("Suggest a name for a bakery.", "How about 'The Rolling Pin'?"),
]


def _fill_store(store, pairs: list[tuple[str, str]]) -> None:
    from core.store import InstructionRow
    from core.store.base import text_key
    from core.store.screening import ResponseRow, response_id

    rows = [InstructionRow(q, len(q.split()), "bench", "", 1.0, 1.0, 64, 0, "bench", 0) for q, _ in pairs]
    store.add_instruction_batch("bench", 0, rows, limit=len(rows), sampled=len(rows), dropped={}, new_tokens=0,
                                seconds=0.0)
    store.add_responses([
        ResponseRow(response_id(text_key(q), "bench-writer", 0), text_key(q), "bench-writer", 0, a, len(a.split()),
                    True, "chat", 0.7, 0.9, 64, 0, "bench")
        for q, a in pairs
    ])


def measure(method: str, judges: tuple[str, ...], pairs: list[tuple[str, str]], models_dir: Path,
            load, max_new_tokens: int, batch_size: int) -> dict[str, float]:
    from core.screen.judge import JudgeConfig, run_judging
    from core.store import Store

    with tempfile.TemporaryDirectory() as folder:
        store = Store.for_workspace(Path(folder))
        _fill_store(store, pairs)
        config = JudgeConfig(judges=judges, method=method, batch_size=batch_size, max_new_tokens=max_new_tokens)
        started = time.perf_counter()
        summary = run_judging(config, store, load)
        seconds = time.perf_counter() - started
    return {"scores": summary["scores"], "failures": summary["failures"], "seconds": seconds,
            "scores_per_s": summary["scores"] / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, default=Path("workspace"), help="where the model cache is")
    parser.add_argument("--judges", default="smollm2-135m-instruct,gemma-3-270m")
    parser.add_argument("--repeat", type=int, default=4, help="copies of the 8 built-in pairs to score")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=8, help="generate: room for the rating")
    args = parser.parse_args()

    from core.engines.in_process import InProcessEngine
    from core.engines.models import load_model

    judges = tuple(j for j in args.judges.split(",") if j)
    loaded = {spec: load_model(spec, args.workspace) for spec in judges}  # loading is not what we time
    pairs = [(f"{q} (variant {i})" if i else q, a) for i in range(args.repeat) for q, a in PAIRS]
    engines = lambda spec: InProcessEngine(loaded[spec])  # noqa: E731
    probs = measure("probs", judges, pairs, args.workspace, engines, args.max_new_tokens, args.batch_size)
    generate = measure("generate", judges, pairs, args.workspace, engines, args.max_new_tokens, args.batch_size)
    ratio = probs["scores_per_s"] / generate["scores_per_s"]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"probs:    {probs['scores']} scores in {probs['seconds']:.1f} s = {probs['scores_per_s']:.2f} scores/s "
          f"({probs['failures']} failures)")
    print(f"generate: {generate['scores']} scores in {generate['seconds']:.1f} s = "
          f"{generate['scores_per_s']:.2f} scores/s ({generate['failures']} failures)")
    print(f"ratio probs/generate: {ratio:.2f} (target >= 5); peak RSS {peak_mb:.0f} MB")
    print(json.dumps({"probs_scores_per_s": round(probs["scores_per_s"], 3),
                      "generate_scores_per_s": round(generate["scores_per_s"], 3), "ratio": round(ratio, 2),
                      "probs_failures": probs["failures"], "generate_failures": generate["failures"],
                      "judges": list(judges), "pairs": len(pairs), "max_new_tokens": args.max_new_tokens,
                      "peak_rss_mb": round(peak_mb)}))


if __name__ == "__main__":
    main()
