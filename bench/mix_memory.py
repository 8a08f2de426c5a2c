"""Peak memory of `forgetless mix` on a large domain file, against the file's size and against reading it
with `datasets.load_dataset("json")` (what a user would otherwise do), each in its own process.

    .venv/bin/python bench/mix_memory.py [--size-mb 1024] [--workspace DIR] [--keep] [--no-baseline]

Writes a JSONL of chat rows (``messages``: a user question and an assistant answer of random words,
~1 KB a row) of about ``--size-mb``, a store of 60 judged general rows, and runs in child processes:

* ``forgetless mix`` on a 100-row file: the fixed cost (Python, pandas, DuckDB, the tokenizer);
* ``forgetless mix`` on the large file, at the ratio that takes all 60 general rows: import (streamed
  through a spool file), token counts of every row, and the snapshot written batch by batch;
* ``datasets.load_dataset("json", data_files=FILE)`` (Arrow, memory-mapped cache), with --baseline.

Peak RSS is each child's own ``ru_maxrss`` (``os.wait4``). The bound checked is peak RSS <= 2 GiB (stated
for a 1 GiB file; the growth over the fixed cost shows how memory scales with the file). The last stdout
line is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BOUND_BYTES = 2 * 1024**3
WORDS = (
    "patient", "dose", "symptom", "treatment", "clinical", "trial", "heart", "blood", "pressure", "diagnosis",
    "therapy", "chronic", "acute", "infection", "risk", "study", "result", "effect", "drug", "medicine", "surgery",
    "recovery", "pain", "fever", "cell", "tissue", "organ", "liver", "kidney", "lung", "brain", "nerve", "muscle",
    "bone", "skin", "vaccine", "immune", "response", "test", "sample", "level", "normal", "high", "low", "what",
    "how", "why", "when", "which", "explain", "describe", "compare", "list", "the", "a", "of", "to", "in", "for",
    "with", "and", "or", "is", "are", "can",
)


def cpu_kind() -> str:
    from core.engines.models import cpu_bf16_support, cpu_model_name

    return f"{cpu_model_name()}, {os.cpu_count()} cores, {cpu_bf16_support()}"


def write_domain(path: Path, size_bytes: int, seed: int = 0) -> int:
    """Chat rows of random words until the file reaches ``size_bytes``; returns the row count."""
    rng = np.random.default_rng(seed)
    words = np.array(WORDS)
    rows = 0
    with path.open("w", encoding="utf-8") as handle:
        while handle.tell() < size_bytes:
            block = []
            for _ in range(1000):
                question = " ".join(words[rng.integers(0, len(words), rng.integers(8, 40))])
                answer = " ".join(words[rng.integers(0, len(words), rng.integers(60, 220))])
                block.append(json.dumps({"messages": [{"role": "user", "content": question + "?"},
                                                      {"role": "assistant", "content": answer + "."}]}))
            handle.write("\n".join(block) + "\n")
            rows += len(block)
    return rows


def run_measured(command: list[str], log: Path) -> tuple[int, float, int]:
    """(peak RSS in bytes, seconds, exit code) of one child process."""
    started = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                   env={**os.environ, "FORGETLESS_NO_PROGRESS": "1"})
        _, status, usage = os.wait4(process.pid, 0)
    return usage.ru_maxrss * 1024, time.perf_counter() - started, os.waitstatus_to_exitcode(status)


def mix(workspace: Path, domain: Path, ratio: float, out: Path, log: Path) -> tuple[int, float]:
    command = [sys.executable, "-m", "core.cli", "mix", "--workspace", str(workspace), "--domain", str(domain),
               "--ratio", repr(ratio), "--out", str(out), "--json"]
    rss, seconds, code = run_measured(command, log)
    if code != 0:
        raise SystemExit(f"mix failed ({code}): {log.read_text()[-2000:]}")
    return rss, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="domain file size in MiB (default 1024)")
    parser.add_argument("--workspace", type=Path, help="folder to work in (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the files")
    parser.add_argument("--no-baseline", action="store_true", help="skip datasets.load_dataset")
    args = parser.parse_args()

    from tests.helpers import N_GENERAL
    from tests.helpers import build_mix_store as build_store  # the hand-built judged store of the mix tests

    root = args.workspace or Path(tempfile.mkdtemp(prefix="forgetless-mixmem-"))
    root.mkdir(parents=True, exist_ok=True)
    workspace = root / "ws"
    try:
        if not (workspace / "forgetless.duckdb").exists():
            workspace.mkdir(exist_ok=True)
            build_store(workspace / "forgetless.duckdb")
        big, small = root / "domain.jsonl", root / "small.jsonl"
        size = args.size_mb * 1024**2
        if not big.exists() or abs(big.stat().st_size - size) > 4 * 1024**2:
            print(f"writing {args.size_mb} MiB of chat rows to {big} …", file=sys.stderr, flush=True)
            rows = write_domain(big, size)
        else:
            rows = sum(1 for _ in big.open("rb"))
        write_domain(small, 100_000)
        small_rows = sum(1 for _ in small.open("rb"))
        for out in root.glob("out-*"):
            shutil.rmtree(out)

        print("mix on the small file (fixed cost) …", file=sys.stderr, flush=True)
        fixed, fixed_s = mix(workspace, small, N_GENERAL / (small_rows + N_GENERAL), root / "out-small",
                             root / "small.log")
        print(f"mix on {rows:,} rows …", file=sys.stderr, flush=True)
        peak, seconds = mix(workspace, big, N_GENERAL / (rows + N_GENERAL), root / "out-big", root / "big.log")
        summary_line = (root / "big.log").read_text().strip().splitlines()[-1]
        counts = json.loads(summary_line)["counts"]
        baseline = None
        if not args.no_baseline:
            print("baseline: datasets.load_dataset('json') …", file=sys.stderr, flush=True)
            code = ("import datasets, sys; d = datasets.load_dataset('json', data_files=sys.argv[1], "
                    "cache_dir=sys.argv[2])['train']; print(d.num_rows)")
            rss, base_s, status = run_measured([sys.executable, "-c", code, str(big), str(root / "hf-cache")],
                                               root / "baseline.log")
            baseline = {"peak_rss_mb": round(rss / 1024**2), "seconds": round(base_s, 1), "exit": status}
            shutil.rmtree(root / "hf-cache", ignore_errors=True)

        file_size = big.stat().st_size
        result = {
            "cpu": cpu_kind(), "python": platform.python_version(), "file_mb": round(file_size / 1024**2),
            "rows": rows, "mix_counts": counts, "fixed_peak_rss_mb": round(fixed / 1024**2),
            "fixed_seconds": round(fixed_s, 1), "peak_rss_mb": round(peak / 1024**2), "seconds": round(seconds, 1),
            "peak_over_file_size": round(peak / file_size, 3),
            "growth_over_fixed_mb": round((peak - fixed) / 1024**2),
            "bound_mb": round(BOUND_BYTES / 1024**2), "within_bound": peak <= BOUND_BYTES,
            "baseline_datasets": baseline,
            "peak_over_baseline": round(peak / (baseline["peak_rss_mb"] * 1024**2), 3) if baseline else None,
        }
        print(f"{cpu_kind()}\n{result['file_mb']} MiB ({rows:,} rows): forgetless mix peak RSS "
              f"{result['peak_rss_mb']} MiB in {result['seconds']} s (fixed cost {result['fixed_peak_rss_mb']} MiB; "
              f"{result['peak_over_file_size']}x the file; bound {result['bound_mb']} MiB: "
              f"{'met' if result['within_bound'] else 'MISSED'})"
              + (f"; datasets.load_dataset peak {baseline['peak_rss_mb']} MiB in {baseline['seconds']} s "
                 f"(ratio {result['peak_over_baseline']})" if baseline else ""))
        print(json.dumps(result))
    finally:
        if not args.keep and args.workspace is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
