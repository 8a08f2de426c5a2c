"""How long one Mix-tab update takes (config, plan, composition chart) with the tab's cache, against the same
update without it (domain data and tokenizer loaded, every row tokenized, each time).

    .venv/bin/python bench/mix_update.py [--workspace DIR] [--repeats 5]

Builtin MedMCQA (3,344 train rows) against the 60 judged general rows of the mix tests' store, the packaged
SmolLM2 tokenizer, ratios 0.1 then 0.3, 0.5, 0.7, 0.9 (each a seeded prefix of the first one's rows, as a
user sliding the ratio up). Both sides run the same updates after one warm-up load of the tokenizer's
converted cache. The last stdout line is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RATIOS = (0.3, 0.5, 0.7, 0.9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, help="folder to work in (default: a temporary one)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds over the ratios (default 5)")
    args = parser.parse_args()

    from bench.mix_memory import cpu_kind
    from core.mix.domain import BUILTIN_MEDMCQA, load_domain
    from core.mix.mixing import load_counter, plan_mix
    from core.store import Store
    from tests.helpers import build_mix_store as build_store
    from ui.views.mix import MixCache, composition_figure, mix_config

    workspace = args.workspace or Path(tempfile.mkdtemp(prefix="forgetless-mixupdate-"))
    if not (workspace / "forgetless.duckdb").exists():
        workspace.mkdir(parents=True, exist_ok=True)
        build_store(workspace / "forgetless.duckdb")
    store = Store.for_workspace(workspace)

    def form(ratio: float) -> dict:
        return {"domain": BUILTIN_MEDMCQA, "selection": "all screened data", "ratio": ratio, "by": "examples",
                "balance": "proportional", "seed": 0, "tokenizer_model": "smollm2-135m-instruct",
                "domain_test_fraction": 0}

    def cached_update(cache: MixCache, ratio: float) -> float:
        started = time.perf_counter()
        config = mix_config(form(ratio))
        plan = plan_mix(config, store, workspace, domain=cache.domain(config.domain), counter=cache.counter(config))
        composition_figure(plan.composition("category"), "category", config.by)
        return time.perf_counter() - started

    def uncached_update(ratio: float) -> float:
        started = time.perf_counter()
        config = mix_config(form(ratio))
        domain, counter = load_domain(config.domain), load_counter(config, workspace)
        plan = plan_mix(config, store, workspace, domain=domain, counter=counter)
        composition_figure(plan.composition("category"), "category", config.by)
        return time.perf_counter() - started

    load_counter(mix_config(form(0.5)), workspace)  # warm-up: the tokenizer's converted cache
    cache = MixCache(workspace)
    first = cached_update(cache, 0.1)
    cached = [cached_update(cache, ratio) for _ in range(args.repeats) for ratio in RATIOS]
    uncached = [uncached_update(ratio) for _ in range(max(1, args.repeats // 2)) for ratio in RATIOS]
    result = {
        "cpu": cpu_kind(), "first_s": round(first, 3), "cached_median_s": round(statistics.median(cached), 4),
        "cached_max_s": round(max(cached), 4), "uncached_median_s": round(statistics.median(uncached), 3),
        "speedup": round(statistics.median(uncached) / statistics.median(cached), 1), "updates": len(cached),
    }
    print(f"{result['cpu']}\nMix update with the cache: median {result['cached_median_s']} s (max "
          f"{result['cached_max_s']} s, first {result['first_s']} s); without it: median "
          f"{result['uncached_median_s']} s = {result['speedup']}x")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
