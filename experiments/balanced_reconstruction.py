"""Balanced reconstruction, measured (issue 15 item 4): free vs steered vs corpus-seeded sampling, same budget.

One base workspace: a free ``reconstruct`` of ``n_base`` rows (seed 0), ``respond`` (1 response each), ``judge``
(the default judges) and ``profile`` (``clusters`` k-means clusters). Each arm starts from a copy of that
workspace and adds the same number of stored rows (``n_new``) with its own mode and seed: ``free`` (another free
job), ``steered`` (``--steer coverage``) or ``corpus`` (``--from-corpus builtin:sharegpt``); then ``respond``
and ``judge`` score only its new rows. Every figure is measured against the *base* profile's fixed clusters:
each new row goes to its nearest base centroid (the profile's embedder; what steering itself does), so the arms
share one frame of reference, where re-profiling would fit other clusters per arm. Per arm:

- cost: samples drawn, generated tokens, the job's and the stage's wall seconds;
- spread: cluster KL to uniform (nats, add-half smoothed as ``forgetless coverage``) and the share of rows in
  the largest 10% of clusters, for the new rows alone and for base + new (all rows, duplicates included);
- near-duplicates: the share of new rows within the profile's cosine threshold of an earlier new row or of a
  base row;
- quality: the judges' mean consensus score of the new rows' (only) responses;
- balanced selection: the rows per cluster that the first ``selection_size`` of a cluster-balanced order
  (``core.mix.order.balanced_order``, what ``mix --balance clusters`` uses) over base + new draws, how many
  of them are new, and the largest exactly balanced size (clusters x the smallest cluster).

    python experiments/balanced_reconstruction.py --workspace /work/expts/balanced [--seeds 1,2]

Every stage is the real CLI run as a subprocess (experiments/stage_runner.py): a rerun skips what finished.
Writes ``<out>/balanced_reconstruction.json`` and ``.md`` (default ``docs/``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.mix.order import balanced_order  # noqa: E402
from core.profile.coverage import SMOOTHING, kl_divergence, shares, top_share, uniform_shares  # noqa: E402
from experiments.balanced_report import markdown  # noqa: E402
from experiments.stage_runner import REPO_ROOT, StageRunner  # noqa: E402

ARMS = {"free": [], "steered": ["--steer", "coverage"], "corpus": ["--from-corpus", "builtin:sharegpt"]}
ARM_NAMES = {"free": "free Magpie sampling", "steered": "steered (--steer coverage)",
             "corpus": "corpus-seeded (--from-corpus builtin:sharegpt)"}
MACHINE = "machine C (Intel Xeon with AMX bf16, 2 cores shared)"


@dataclass
class Settings:
    """Everything that decides the numbers (recorded in the JSON)."""

    model: str = "smollm2-135m-instruct"
    n_base: int = 60
    n_new: int = 60  # stored rows every arm adds: the same budget of rows, the samples drawn differ
    clusters: int = 6
    dedup_threshold: float = 0.92  # the profile's near-duplicate cosine (passed to profile, used here too)
    base_seed: int = 0
    seeds: list[int] = field(default_factory=lambda: [1])  # one replicate of every arm per seed
    arms: list[str] = field(default_factory=lambda: list(ARMS))
    base_batch: int = 32
    batch_size: int = 16  # arms: small batches, so the samples drawn overshoot the budget little
    respond_tokens: int = 192
    selection_size: int = 60
    threads: int = 1  # OMP threads per stage: on shared cores one thread is not slower (see forgetting.py)


# -- the pure figures --------------------------------------------------------------------------------------
def spread_figures(counts: Sequence[int]) -> dict[str, Any]:
    """Rows per cluster -> rows, KL to uniform (add-half smoothed, as `forgetless coverage`), the largest 10% of
    clusters' share of the rows, and the smallest and largest cluster."""
    counts = [int(c) for c in counts]
    total = sum(counts)
    top, n_top = top_share(counts)
    kl = kl_divergence(shares(counts, SMOOTHING), uniform_shares(len(counts))) if total else None
    return {"rows": total, "per_cluster": counts, "kl_uniform": None if kl is None else round(kl, 4),
            "largest_10pct_share": round(top, 4), "largest_10pct_clusters": n_top,
            "smallest": min(counts) if counts else 0, "largest": max(counts) if counts else 0}


def cluster_counts(placed: Sequence[int], cells: Sequence[int]) -> list[int]:
    """How many of ``placed`` (cluster ids) fall in each of ``cells``, in ``cells`` order."""
    return [sum(1 for p in placed if p == c) for c in cells]


def _unit(vectors: np.ndarray) -> np.ndarray:
    data = np.atleast_2d(np.asarray(vectors, dtype=np.float64))
    norms = np.linalg.norm(data, axis=1, keepdims=True)
    return data / np.where(norms > 0, norms, 1.0)


def near_duplicate_shares(new: np.ndarray, base: np.ndarray, threshold: float) -> dict[str, Any]:
    """Among the new rows (in store order): how many have cosine >= ``threshold`` with an earlier new row, with a
    base row, with either (the profile's rule; the same 1e-6 tolerance), as counts and shares."""
    new_u = _unit(new)
    n = len(new_u)
    if n == 0:
        return {"rows": 0, "within_new": 0, "against_base": 0, "any": 0, "share_within_new": 0.0,
                "share_against_base": 0.0, "share_any": 0.0, "mean_nearest_new_cosine": None,
                "mean_nearest_base_cosine": None}
    limit = threshold - 1e-6
    sims = new_u @ new_u.T
    within = np.array([bool((sims[i, :i] >= limit).any()) for i in range(n)])
    against = ((new_u @ _unit(base).T) >= limit).any(axis=1) if len(base) else np.zeros(n, dtype=bool)
    either = within | against
    # Graded beside the shares: how close each new row comes to its nearest other new row and nearest base row.
    others = sims - 2.0 * np.eye(n)
    nearest_new = float(others.max(axis=1).mean()) if n > 1 else None
    nearest_base = float((new_u @ _unit(base).T).max(axis=1).mean()) if len(base) else None
    return {"rows": n, "within_new": int(within.sum()), "against_base": int(against.sum()), "any": int(either.sum()),
            "share_within_new": round(float(within.mean()), 4), "share_against_base": round(float(against.mean()), 4),
            "share_any": round(float(either.mean()), 4),
            "mean_nearest_new_cosine": None if nearest_new is None else round(nearest_new, 4),
            "mean_nearest_base_cosine": None if nearest_base is None else round(nearest_base, 4)}


def balanced_draw(keys: Sequence[int], is_new: Sequence[bool], cells: Sequence[int], size: int,
                  seed: int = 0) -> dict[str, Any]:
    """The first ``size`` rows of a cluster-balanced order over ``keys`` (cluster per row): rows drawn per cluster
    (``cells`` order), how many are new rows, that draw's spread, and the largest exactly balanced size
    (clusters x the smallest cluster's rows: 0 when a cluster is empty)."""
    order = balanced_order(list(keys), np.random.default_rng(seed))[:size]
    drawn = [int(keys[i]) for i in order]
    per_cluster = cluster_counts(drawn, cells)
    available = cluster_counts(keys, cells)
    return {"size": size, "drawn": len(order), "per_cluster": per_cluster,
            "from_new": int(sum(bool(is_new[i]) for i in order)),
            "kl_uniform": spread_figures(per_cluster)["kl_uniform"],
            "exactly_balanced_max": len(cells) * min(available) if cells else 0}


# -- the stages ---------------------------------------------------------------------------------------------
def base_stages(run: StageRunner, s: Settings, ws: Path) -> dict[str, Any]:
    w = str(ws)
    rec = run.cli("base-reconstruct", ["reconstruct", "--workspace", w, "--model", s.model, "--n", s.n_base,
                                       "--batch-size", s.base_batch, "--seed", s.base_seed])
    screen_stages(run, s, ws, "base")
    prof = run.cli("base-profile", ["profile", "--workspace", w, "--clusters", s.clusters, "--dedup-threshold",
                                    s.dedup_threshold, "--seed", s.base_seed])
    return {"reconstruct": rec, "profile": {k: prof.get(k) for k in ("job_id", "rows", "seconds", "clusters")}}


def screen_stages(run: StageRunner, s: Settings, ws: Path, name: str) -> None:
    """One response per instruction that lacks one, then the default judges on the responses not judged yet."""
    w = str(ws)
    run.cli(f"{name}-respond", ["respond", "--workspace", w, "--models", s.model, "--k", 1, "--max-new-tokens",
                                s.respond_tokens, "--batch-size", 16, "--seed", s.base_seed])
    run.cli(f"{name}-judge", ["judge", "--workspace", w])


def copy_workspace(base: Path, target: Path) -> None:
    """The base workspace's store (not its job folders) copied once, while nothing writes it; its model cache is
    linked, not copied (half a GB per arm, read only)."""
    if (target / "forgetless.duckdb").exists():
        return
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(base, partial, ignore=shutil.ignore_patterns("jobs", "state", "models"))
    if (base / "models").is_dir():
        (partial / "models").symlink_to((base / "models").resolve(), target_is_directory=True)
    partial.replace(target)


def arm_stages(run: StageRunner, s: Settings, base: Path, arm: str, seed: int) -> dict[str, Any]:
    ws = base.parent / f"{arm}-seed{seed}"
    copy_workspace(base, ws)
    name = f"{arm}-seed{seed}"
    first = len(run.commands)
    rec = run.cli(f"{name}-reconstruct", ["reconstruct", "--workspace", str(ws), "--model", s.model, "--n", s.n_new,
                                          "--batch-size", s.batch_size, "--seed", seed, *ARMS[arm]])
    screen_stages(run, s, ws, name)
    seconds = sum(run.timings.get(f"{name}-{stage}", 0.0) for stage in ("reconstruct", "respond", "judge"))
    return {"arm": arm, "seed": seed, "workspace": str(ws), "job": rec, "commands": run.commands[first:],
            "stage_seconds": {stage: run.timings.get(f"{name}-{stage}") for stage in ("reconstruct", "respond",
                                                                                      "judge")},
            "stage_seconds_total": round(seconds, 1)}


# -- reading the stores -------------------------------------------------------------------------------------
def read_base(base: Path) -> dict[str, Any]:
    from core.store import Store

    store = Store.for_workspace(base)
    embedder = store.profiled_embedder()
    centroids = store.cluster_centroids(embedder)
    cells = sorted(centroids)
    frame = store.profile_frame()
    frame = frame[frame["cluster"].notna()]
    ids = frame["instruction_id"].tolist()
    vectors = store.load_embeddings(embedder, ids)
    with store.read() as con:
        scores = [m for (m,) in con.execute("SELECT mean FROM best_responses WHERE isfinite(mean)").fetchall()]
    return {"embedder": embedder, "cells": cells, "centroids": np.stack([centroids[c] for c in cells]),
            "keys": [int(c) for c in frame["cluster"]], "vectors": np.stack([vectors[i] for i in ids]),
            "labels": dict(zip(frame["cluster"].astype(int), frame["cluster_label"], strict=False)),
            "mean_score": round(float(np.mean(scores)), 4) if scores else None, "scored": len(scores)}


def batch_costs(batches: Sequence[dict[str, Any]], last_batch: int | None) -> dict[str, Any]:
    """Samples, generated tokens and seconds of a job's batches up to ``last_batch`` (None: all of them)."""
    used = [b for b in batches if last_batch is None or b["batch"] <= last_batch]
    return {"sampled": sum(int(b["sampled"]) for b in used), "new_tokens": sum(int(b["new_tokens"]) for b in used),
            "seconds": sum(float(b["seconds"]) for b in used), "batches": len(used)}


def arm_figures(base: dict[str, Any], arm: dict[str, Any], s: Settings, limit: int | None = None) -> dict[str, Any]:
    """The arm's figures over its new rows, or over the first ``limit`` of them in store order (the cost then
    counts the batches up to the one that stored the last of them)."""
    from core.engines.embedder import open_embedder
    from core.profile.coverage import nearest_centroid
    from core.store import Store

    store = Store(Path(arm["job"]["db"]))
    job_id = arm["job"]["job_id"]
    rows = store.instruction_steering(job_id=job_id)
    rows = rows if limit is None else rows[:limit]
    with store.read() as con:
        cursor = con.execute("SELECT batch, sampled, new_tokens, seconds FROM reconstruct_batches WHERE job_id = ? "
                             "ORDER BY batch", [job_id])
        batches = [dict(zip(("batch", "sampled", "new_tokens", "seconds"), r, strict=True)) for r in cursor.fetchall()]
    cost = batch_costs(batches, None if limit is None or not rows else int(rows[-1]["batch"]))
    texts = [r["text"] for r in rows]
    vectors = np.asarray(open_embedder(base["embedder"])(texts), dtype=np.float64)
    placed = [base["cells"][i] for i in nearest_centroid(vectors, base["centroids"])]
    ids = [r["id"] for r in rows]
    with store.read() as con:
        scores = [m for (m,) in con.execute("SELECT mean FROM best_responses WHERE list_contains($ids, "
                                            "instruction_id) AND isfinite(mean)", {"ids": ids}).fetchall()]
    keys = [*base["keys"], *placed]
    is_new = [False] * len(base["keys"]) + [True] * len(placed)
    return {
        "arm": arm["arm"] if limit is None else f"{arm['arm']} (first {len(rows)})", "seed": arm["seed"],
        "job_id": job_id, "stored": len(rows), "first_rows_of_job": limit,
        "stopped_because": arm["job"].get("stopped_because"),
        "cost": {"sampled": cost["sampled"], "generated_tokens": cost["new_tokens"], "batches": cost["batches"],
                 "job_seconds": round(cost["seconds"], 1),
                 "dropped_whole_job": arm["job"].get("dropped"),
                 "tokens_per_stored_row": round(cost["new_tokens"] / max(1, len(rows)), 1),
                 "samples_per_stored_row": round(cost["sampled"] / max(1, len(rows)), 2),
                 "stage_seconds": arm["stage_seconds"],
                 "stage_seconds_total": arm["stage_seconds_total"] if limit is None else None},
        "new": spread_figures(cluster_counts(placed, base["cells"])),
        "base_plus_new": spread_figures(cluster_counts(keys, base["cells"])),
        "near_duplicates": near_duplicate_shares(vectors, base["vectors"], s.dedup_threshold),
        "judges": {"mean_score": round(float(np.mean(scores)), 4) if scores else None, "scored": len(scores)},
        "balanced_selection": balanced_draw(keys, is_new, base["cells"], s.selection_size),
        "examples": [t[:200] for t in texts[:4]], "commands": arm["commands"],
    }


def figures_step(run: StageRunner, s: Settings, base: dict[str, Any], info: dict[str, Any],
                 limit: int | None = None) -> dict[str, Any]:
    """:func:`arm_figures` as a resumable step (its JSON beside the arm's workspace)."""
    name = f"{info['arm']}-seed{info['seed']}"
    suffix = "" if limit is None else f"-first{limit}"
    out = Path(info["workspace"]) / f"figures{suffix}.json"

    def work() -> dict[str, Any]:
        figures = arm_figures(base, info, s, limit)
        out.write_text(json.dumps(figures, indent=1, default=str), encoding="utf-8")
        return figures
    what = "its new rows" if limit is None else f"its first {limit} new rows"
    return run.step(f"{name}-figures{suffix}", f"figures of {name}, {what}, against the base profile's clusters "
                    "(in-process)", out, work)


def machine() -> dict[str, Any]:
    from core.engines.models import cpu_bf16_support, cpu_model_name

    return {"name": MACHINE, "cpu": cpu_model_name(), "cores": os.cpu_count(),
            "amx_bf16": cpu_bf16_support() == "AMX bf16",
            "load_average": [round(x, 2) for x in os.getloadavg()], "python": platform.python_version()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", type=Path, default=REPO_ROOT / "workspace" / "balanced")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs")
    parser.add_argument("--seeds", default="1", help="comma-separated arm seeds (one replicate of each arm per seed)")
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated: " + ", ".join(ARMS))
    parser.add_argument("--reading", type=Path, help="a text file with the plain reading for the .md")
    for flag in ("n_base", "n_new", "clusters", "selection_size", "threads", "respond_tokens", "batch_size"):
        parser.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type=int)
    args = parser.parse_args(argv)
    values = {k: getattr(args, k) for k in ("n_base", "n_new", "clusters", "selection_size", "threads",
                                            "respond_tokens", "batch_size") if getattr(args, k) is not None}
    s = Settings(seeds=[int(x) for x in args.seeds.split(",")], arms=args.arms.split(","), **values)
    if unknown := set(s.arms) - set(ARMS):
        raise SystemExit(f"unknown arm(s): {', '.join(sorted(unknown))}")
    root = args.workspace.resolve()
    run = StageRunner(root / "state", threads=s.threads, name="balanced")
    started, load_start = datetime.now(UTC), machine()["load_average"]
    base_ws = root / "base"
    base_run = base_stages(run, s, base_ws)
    base = read_base(base_ws)
    arms = []
    for seed in s.seeds:
        infos = {arm: arm_stages(run, s, base_ws, arm, seed) for arm in s.arms}
        figures = {arm: figures_step(run, s, base, info) for arm, info in infos.items()}
        arms += figures.values()
        # Steering stops once no cluster lacks rows, which can be before n_new: the other arms are then also
        # read at the steered arm's row count (their first rows in store order), for a same-rows comparison.
        steered = figures.get("steered", {}).get("stored")
        for arm, info in infos.items():
            if arm != "steered" and steered and figures[arm]["stored"] > steered:
                arms.append(figures_step(run, s, base, info, steered))
    base_spread = spread_figures(cluster_counts(base["keys"], base["cells"]))
    command = "python experiments/balanced_reconstruction.py " + " ".join(argv if argv is not None else sys.argv[1:])
    result = {
        "settings": asdict(s), "command": command, "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"), "machine": {**machine(), "load_start": load_start},
        "base": {"spread": base_spread, "mean_score": base["mean_score"], "scored": base["scored"],
                 "embedder": base["embedder"], "cluster_labels": {str(k): v for k, v in base["labels"].items()},
                 "exactly_balanced_max": len(base["cells"]) * base_spread["smallest"], "run": base_run,
                 "stage_seconds": {k: run.timings.get(k) for k in run.timings if k.startswith("base-")}},
        "arms": arms, "commands": [c for c in run.commands if not c.startswith("#")],
        "reading": args.reading.read_text(encoding="utf-8").strip() if args.reading else None,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "balanced_reconstruction.json").write_text(json.dumps(result, indent=1, default=str) + "\n",
                                                           encoding="utf-8")
    (args.out / "balanced_reconstruction.md").write_text(markdown(result), encoding="utf-8")
    run.say(f"wrote {args.out / 'balanced_reconstruction.json'} and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
