"""Two `forgetless reconstruct` jobs on one workspace: started together vs run one after the other.

Model jobs of a workspace take its compute slot (``<workspace>/jobs/.compute.lock``), so two started
together run one after another: the second is "queued" until the first ends, and each uses every core.
Before the slot, two such runs shared the cores side by side and each crawled (~2 tok/s against ~100
alone: both processes ran all-core thread pools that spun against each other).

The script warms the workspace first (the packaged GGUF is converted once into ``<workspace>/models``,
and imports are cached), then runs jobs A and B one after the other, then A' and B' (other seeds, so other
job ids and no resume) started at the same moment. For comparison it last starts two more at the same
moment in two different workspaces (each has its own slot, so they share the cores side by side: what
two jobs did before the slot existed; the second workspace is warmed as well). Each job is a real CLI
subprocess; its tokens/s is
the job's own (`--json` summary: generated tokens over the time spent sampling, model load excluded), its
wall time runs from the start of the pair to the job's exit (queue wait and model load included).
Readable lines first; the last stdout line is one JSON object.

    PYTHONPATH=. .venv/bin/python bench/concurrent_jobs.py
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m-instruct"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, help="a fresh workspace (default: a new folder under /tmp)")
    parser.add_argument("--n", type=int, default=16, help="instructions per job")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    return parser.parse_args(argv)


def cpu_kind() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = re.search(r"^model name\s*:\s*(.+)$", info, re.M)
    flags = [flag for flag in ("avx512_bf16", "amx_bf16", "avx512f", "avx2") if re.search(rf"\b{flag}\b", info)]
    return f"{name.group(1) if name else 'unknown CPU'} ({', '.join(flags) or 'no avx flags'})"


def start(workspace: Path, seed: int, args: argparse.Namespace) -> subprocess.Popen:
    command = [sys.executable, "-m", "core.cli", "reconstruct", "--model", MODEL, "--n", str(args.n),
               "--batch-size", str(args.batch_size), "--max-new-tokens", str(args.max_new_tokens),
               "--seed", str(seed), "--job-id", f"bench-seed{seed}", "--workspace", str(workspace), "--json"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FORGETLESS_NO_PROGRESS": "1"}
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, started: float) -> dict[str, Any]:
    out, err = process.communicate()
    wall = time.monotonic() - started
    if process.returncode != 0:
        raise SystemExit(f"a job failed ({process.returncode}): {err.strip()}")
    summary = json.loads(out.strip().splitlines()[-1])
    queued = [line for line in err.splitlines() if line.startswith("queued:")]
    return {"job_id": summary["job_id"], "wall_s": round(wall, 1), "tokens_per_s": summary["tokens_per_s"],
            "sampling_s": summary["seconds"], "stored": summary["stored"], "queued": queued[0] if queued else None}


def run_one_after_the_other(workspace: Path, seeds: tuple[int, int], args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    jobs = []
    for seed in seeds:
        jobs.append(finish(start(workspace, seed, args), started))
    return {"wall_s": round(time.monotonic() - started, 1), "jobs": jobs}


def run_together(workspaces: tuple[Path, Path], seeds: tuple[int, int], args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    processes = [start(workspace, seed, args) for workspace, seed in zip(workspaces, seeds, strict=True)]
    with ThreadPoolExecutor(len(processes)) as pool:  # each job's wall time ends when that job exits
        jobs = list(pool.map(lambda process: finish(process, started), processes))
    return {"wall_s": round(time.monotonic() - started, 1), "jobs": jobs}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workspace = args.workspace or Path(tempfile.mkdtemp(prefix="forgetless-bench-jobs-"))
    cores = len(os.sched_getaffinity(0))
    print(f"CPU: {cpu_kind()}, {cores} cores available; workspace {workspace}", flush=True)
    other = Path(tempfile.mkdtemp(prefix="forgetless-bench-jobs-other-"))
    tiny = argparse.Namespace(**{**vars(args), "n": 2})
    warm = run_one_after_the_other(workspace, (100,), tiny)
    run_one_after_the_other(other, (100,), tiny)
    print(f"warm-up (GGUF conversion, imports): {warm['wall_s']} s", flush=True)
    sequential = run_one_after_the_other(workspace, (1, 2), args)
    together = run_together((workspace, workspace), (3, 4), args)
    side_by_side = run_together((workspace, other), (5, 6), args)
    for label, result in (("one after the other", sequential), ("started together", together),
                          ("side by side in two workspaces (no shared slot)", side_by_side)):
        print(f"{label}: {result['wall_s']} s for both", flush=True)
        for job in result["jobs"]:
            note = f" ({job['queued']})" if job["queued"] else ""
            print(f"  {job['job_id']}: {job['stored']} stored, {job['tokens_per_s']} tok/s over "
                  f"{job['sampling_s']} s sampling, done at {job['wall_s']} s{note}", flush=True)
    print(json.dumps({"cpu": cpu_kind(), "cores": cores, "n": args.n, "batch_size": args.batch_size,
                      "max_new_tokens": args.max_new_tokens, "workspace": str(workspace), "warm_up_s": warm["wall_s"],
                      "one_after_the_other": sequential, "together": together, "side_by_side": side_by_side}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
