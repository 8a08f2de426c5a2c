"""Reconstruction throughput on the packaged SmolLM2, engine by engine, in one run on one machine.

Every side samples the Magpie pre-query prefix (temperature 1, top-p 1, stop at the end of the user turn,
at most ``--max-new-tokens``) ``--n`` times in requests of ``--batch-size`` samples, after one warm-up batch
of its own, and counts generated tokens only (stop tokens and padding are not counted):

- ``ours``: the in-process engine (`core.engines.in_process`, our batched sampler) through the engine seam;
- ``vllm``: raw vLLM, ``/v1/completions`` with the prefix's token ids and ``n`` (the managed server, started
  before timing; its start-up is reported apart);
- ``forgetless-vllm``: a whole reconstruction job through the vLLM engine (cleaning and storing included),
  to ``--n`` stored instructions;
- ``hf-batched``: ``model.generate`` on ``--batch-size`` copies of the prefix at once (the strongest plain
  transformers baseline), in the same dtype as ours;
- ``one-at-a-time``: ``model.generate`` one prompt per call (``--baseline-n`` prompts), what a script would do.

Readable lines first; the last stdout line is one JSON object (``ours_tok_s``, ``vllm_tok_s``,
``forgetless_vllm_tok_s``, ``hf_batched_tok_s``, ``baseline_tok_s`` and the ratios between them).

    PYTHONPATH=. python bench/generate.py --workspace /tmp/ws1 --engines ours,vllm,forgetless-vllm,hf-batched
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

MODEL = "smollm2-135m-instruct"
ENGINES = ("ours", "vllm", "forgetless-vllm", "hf-batched", "one-at-a-time")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, default=Path("./workspace"),
                        help="holds the converted model and the managed vLLM server")
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated, of {', '.join(ENGINES)}")
    parser.add_argument("--n", type=int, default=256, help="samples per engine")
    parser.add_argument("--batch-size", type=int, default=256, help="samples per request / decoded together")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--baseline-n", type=int, default=4, help="prompts for model.generate one at a time")
    parser.add_argument("--engine-url", help="a running vLLM server to use instead of the managed one")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.engines = [name.strip() for name in args.engines.split(",") if name.strip()]
    unknown = sorted(set(args.engines) - set(ENGINES))
    if unknown or args.n < 1 or args.batch_size < 1:
        parser.error(f"unknown engines {unknown}" if unknown else "--n and --batch-size must be positive")
    return args


def cpu_kind() -> str:
    """The CPU's model name and its bf16 support, written beside every figure."""
    from core.engines.models import cpu_bf16_support, cpu_has_native_bf16, cpu_model_name

    return f"{cpu_model_name()}, {cpu_bf16_support()}{'' if cpu_has_native_bf16() else ' (bf16 emulated)'}"


class Prefix:
    """The model's pre-query prompt and end-of-turn stop ids, read once from its tokenizer."""

    def __init__(self, tokenizer: Any) -> None:
        from core.reconstruct.prequery import derive_prequery, stop_token_ids

        query = derive_prequery(tokenizer)
        self.ids = tokenizer(query.prefix, add_special_tokens=False)["input_ids"]
        self.stops = stop_token_ids(tokenizer, query.stop)


def batches(args: argparse.Namespace) -> list[int]:
    return [min(args.batch_size, args.n - start) for start in range(0, args.n, args.batch_size)]


def run_ours(engine: Any, prefix: Prefix, args: argparse.Namespace) -> tuple[int, float]:
    from core.engines.base import SampleSettings

    def settings(rows: int, seed: int) -> SampleSettings:
        return SampleSettings(max_new_tokens=args.max_new_tokens, n=rows, stop_token_ids=tuple(prefix.stops),
                              seed=seed)

    engine.sample([prefix.ids], settings(min(args.batch_size, 16), args.seed - 1))  # warm-up
    tokens, started = 0, time.perf_counter()
    for index, rows in enumerate(batches(args)):
        samples = engine.sample([prefix.ids], settings(rows, args.seed + index))
        tokens += sum(len(sample.token_ids) for sample in samples)
    return tokens, time.perf_counter() - started


def run_raw_vllm(url: str, served: str, prefix: Prefix, args: argparse.Namespace) -> tuple[int, float]:
    def request(rows: int) -> int:
        body = {"model": served, "prompt": [prefix.ids], "n": rows, "max_tokens": args.max_new_tokens,
                "temperature": 1.0, "top_p": 1.0, "stop_token_ids": prefix.stops}
        call = urllib.request.Request(url + "/completions", data=json.dumps(body).encode(),
                                      headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(call, timeout=3600) as answer:
            return json.load(answer)["usage"]["completion_tokens"]

    request(min(args.batch_size, 16))  # warm-up
    tokens, started = 0, time.perf_counter()
    for rows in batches(args):
        tokens += request(rows)
    return tokens, time.perf_counter() - started


def run_forgetless_vllm(url: str, args: argparse.Namespace) -> tuple[int, float, int]:
    """Generated tokens, wall time and rows stored by a reconstruction job of ``--n`` through the vLLM engine."""
    import duckdb

    from core.engines.choice import EngineChoice, open_engines
    from core.reconstruct.reconstruction import ReconstructConfig, run_reconstruction
    from core.store import Store

    engines = open_engines(EngineChoice(engine_url=url), args.workspace)
    with tempfile.TemporaryDirectory() as folder:
        store = Store(Path(folder) / "forgetless.duckdb")
        warm = ReconstructConfig(model=MODEL, n=4, batch_size=min(args.batch_size, 16),
                                 max_new_tokens=args.max_new_tokens, seed=args.seed - 1, job_id="warm-up")
        run_reconstruction(warm, store, engines)
        config = ReconstructConfig(model=MODEL, n=args.n, batch_size=args.batch_size,
                                   max_new_tokens=args.max_new_tokens, seed=args.seed, job_id="bench")
        started = time.perf_counter()
        summary = run_reconstruction(config, store, engines)
        seconds = time.perf_counter() - started
        with duckdb.connect(str(store.path), read_only=True) as con:
            tokens = con.execute("SELECT sum(new_tokens) FROM reconstruct_batches WHERE job_id = 'bench'").fetchone()[0]
    return int(tokens), seconds, summary["stored"]


def generated(row: list[int], stops: list[int]) -> int:
    return next((k for k, token in enumerate(row) if token in stops), len(row))


def run_hf(model: Any, prefix: Prefix, args: argparse.Namespace, *, rows: int, calls: int,
           max_new_tokens: int) -> tuple[int, float]:
    import torch

    ids = torch.tensor([prefix.ids] * rows, device=model.device)

    def generate(seed: int) -> int:
        torch.manual_seed(seed)
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0,
                                 top_p=1.0, top_k=0, max_new_tokens=max_new_tokens, eos_token_id=prefix.stops,
                                 pad_token_id=prefix.stops[0])
        return sum(generated(row, prefix.stops) for row in out[:, len(prefix.ids):].tolist())

    generate(args.seed - 1)  # warm-up
    tokens, started = 0, time.perf_counter()
    for call in range(calls):
        tokens += generate(args.seed + call)
    return tokens, time.perf_counter() - started


def line(name: str, tokens: int, seconds: float, note: str) -> float:
    rate = tokens / seconds if seconds else 0.0
    print(f"{name:<16} {rate:8.1f} tok/s  ({tokens} tokens in {seconds:.1f} s; {note})", flush=True)
    return round(rate, 1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from core.engines.in_process import InProcessEngine
    from core.engines.models import generation_dtype, load_model

    result: dict[str, Any] = {"cpu": cpu_kind(), "n": args.n, "batch_size": args.batch_size,
                              "max_new_tokens": args.max_new_tokens}
    print(f"CPU: {result['cpu']}; {torch.get_num_threads()} torch threads")
    lm = load_model(MODEL, args.workspace, dtype=generation_dtype("cpu"))  # what reconstruct samples with
    prefix = Prefix(lm.tokenizer)
    print(f"model {MODEL} in-process in {lm.dtype}; prefix {len(prefix.ids)} tokens, stop ids {prefix.stops}")

    if "ours" in args.engines:
        tokens, seconds = run_ours(InProcessEngine(lm), prefix, args)
        result["ours_tok_s"] = line("ours", tokens, seconds, f"in-process sampler, {lm.dtype}")
    if "hf-batched" in args.engines:
        calls = len(batches(args))
        tokens, seconds = run_hf(lm.model, prefix, args, rows=min(args.batch_size, args.n), calls=calls,
                                 max_new_tokens=args.max_new_tokens)
        result["hf_batched_tok_s"] = line("hf-batched", tokens, seconds,
                                          f"model.generate, {calls} x {min(args.batch_size, args.n)} rows")
    if "one-at-a-time" in args.engines:
        tokens, seconds = run_hf(lm.model, prefix, args, rows=1, calls=args.baseline_n, max_new_tokens=64)
        result["baseline_tok_s"] = line("one-at-a-time", tokens, seconds,
                                        f"model.generate, {args.baseline_n} prompts x <=64 tokens")
    del lm

    if {"vllm", "forgetless-vllm"} & set(args.engines):
        url, served = args.engine_url, MODEL
        if url is None:
            from core.engines.server import ensure_server

            started = time.perf_counter()
            server = ensure_server(args.workspace, MODEL, on_phase=lambda phase: print(f"  {phase}", file=sys.stderr))
            url, served = server.url, server.served
            result["vllm_startup_s"] = round(time.perf_counter() - started, 1)
            print(f"vLLM server {url} ready after {result['vllm_startup_s']} s (0 when it was already running); "
                  f"it keeps running for the next run: `forgetless engine stop --workspace {args.workspace}`")
        if "vllm" in args.engines:
            tokens, seconds = run_raw_vllm(url, served, prefix, args)
            result["vllm_tok_s"] = line("vllm", tokens, seconds, "raw /v1/completions")
        if "forgetless-vllm" in args.engines:
            tokens, seconds, stored = run_forgetless_vllm(url, args)
            result["forgetless_vllm_tok_s"] = line("forgetless-vllm", tokens, seconds,
                                                   f"reconstruction job, {stored} instructions stored")

    def ratio(name: str, top: str, bottom: str) -> None:
        if result.get(top) and result.get(bottom):
            result[name] = round(result[top] / result[bottom], 2)
            print(f"{name:<34} {result[name]:6.2f}")

    ratio("forgetless_vllm_vs_raw_vllm", "forgetless_vllm_tok_s", "vllm_tok_s")
    ratio("ours_vs_vllm", "ours_tok_s", "vllm_tok_s")
    ratio("ours_vs_hf_batched", "ours_tok_s", "hf_batched_tok_s")
    ratio("ours_vs_one_at_a_time", "ours_tok_s", "baseline_tok_s")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
