"""The evidence experiment's arms (issue 16 item 2), at the setting the grid chose: every arm gets the same
domain rows, steps, seed and hyper-parameters (full fine-tuning).

  (a) domain only; (b) + public SFT (ShareGPT); (c) + reconstructed and screened data (ours) at each ratio of the
  sweep; (d) + reconstructed data without screening (random responses, same count as (c)); (e) WiSE-FT: (a)'s
  weights halfway back to the base, no training.

Every arm's mix holds out the same general rows (by instruction id hash), and drift scores exactly them. Each
model gets the general benchmarks (``--limit`` items each), the whole domain test, drift and all of IFEval.
Stages are the real CLI, recorded and skipped on a rerun; costs (seconds; tokens generated, read by the judges and
trained on) are read from the stages' summaries.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from experiments.evidence_grid import DOMAIN_FIT, IFEVAL, PRIMARY_METRIC
from experiments.forgetting_stats import GENERAL
from experiments.public_sft import build_public_mix, write_public_subset
from experiments.stage_runner import (
    StageRunner,
    checkpoint_every,
    finished_snapshot,
    reconstruct_batch_size,
    screen_threshold,
    train_once,
)
from experiments.unscreened import build_unscreened_mix
from experiments.wise_ft import interpolate_run

DOMAIN = "builtin:medmcqa"
DOMAIN_TASK = "medmcqa"  # letter accuracy: at 135M a letter preference more than knowledge (docs/results.md)
ARM_NAMES = {"a": "domain only", "b": "+ public SFT (ShareGPT)", "c": "+ reconstructed, screened (ours)",
             "d": "+ reconstructed, not screened", "e": "WiSE-FT of (a), alpha 0.5"}


def synthesis_argv(s: Any, ws: Path, n: int) -> dict[str, list[Any]]:
    """The general data's stages as CLI arguments: reconstruct ``n`` instructions, respond, judge — at the batch
    sizes of the experiment's own instruction count, so a slice of it (evidence_retime) runs at the same rate."""
    batch = min(s.synthesis_batch_size, reconstruct_batch_size(s.n_general) * 4)
    return {"reconstruct": ["reconstruct", "--workspace", ws, "--model", s.model, "--n", n, "--batch-size", batch,
                            "--seed", s.seeds[0]],
            "respond": ["respond", "--workspace", ws, "--models", s.model, "--k", s.k, "--max-new-tokens",
                        s.respond_tokens, "--batch-size", s.synthesis_batch_size, "--seed", s.seeds[0]],
            "judge": ["judge", "--workspace", ws]}


def general_data(run: StageRunner, s: Any, ws: Path) -> dict[str, Any]:
    """Reconstruct, respond and judge with the default (checked) judges, then the screening threshold."""
    rec, respond, judge = (run.cli(name, argv) for name, argv in synthesis_argv(s, ws, s.n_general).items())
    if "tokens_read" not in judge:  # judged before the judge stage counted the tokens it reads
        from experiments.judged_tokens import count_judged_tokens  # loads torch: only for such a job

        job, counted = judge["job_id"], ws / "judge_tokens.json"
        judge = {**judge, **run.step("judge-tokens", f"count the tokens the judges of {job} read "
                                     "(experiments/judged_tokens.py)", counted,
                                     lambda: count_judged_tokens(ws, job, counted))}
    n, min_score = screen_threshold(run, ws, s.screen_quantile)
    cost = {name: {**stage_cost(summary), "machine": run.state[name].get("machine")}
            for name, summary in (("reconstruct", rec), ("respond", respond), ("judge", judge))}
    return {"reconstructed": rec.get("stored"), "with_best": n, "min_score": min_score, "cost": cost}


def resumed_scale(total: float, done: float) -> float:
    """How much to scale a resumed stage's timing, which covers only the ``done`` part of ``total``."""
    return total / done if 0 < done < total else 1.0


def stage_cost(summary: dict[str, Any]) -> dict[str, Any]:
    """Seconds and tokens a synthesis stage needed (generated; screening's: read by its judges). A resumed stage's
    summary (reconstruct, respond, judge) times only the work it added (``new`` of ``stored``), so its rate is
    carried over to all of it (``scaled``: by how much)."""
    seconds = summary.get("seconds")
    rate = summary.get("tokens_per_s")
    tokens = round(seconds * rate) if seconds and rate else summary.get("new_tokens", summary.get("tokens_read"))
    scale = resumed_scale(summary.get("stored") or 0, summary.get("new") or 0)
    return {"seconds": None if seconds is None else round(seconds * scale, 2),
            "tokens": None if tokens is None else round(tokens * scale), "scaled": round(scale, 3)}


def build_mixes(run: StageRunner, s: Any, ws: Path, general: dict[str, Any], seed: int) -> dict[str, Any]:
    """Every arm's snapshot for one seed: (c) at each ratio first (it names the held-out rows and the general
    count), then (a), (b), (d) with exactly its domain rows."""
    mixes, rows = ws / "mixes", s.domain_rows
    screen = ["--min-score", general["min_score"]] if general["min_score"] is not None else []
    common = ["--domain", DOMAIN, "--max-domain", rows, "--seed", seed, *screen, "--general-holdout",
              s.general_holdout, "--tokenizer-model", s.model]
    out: dict[str, Any] = {}
    for ratio in (s.ratios if seed == s.seeds[0] or s.sweep_all_seeds else [s.ratio]):
        folder = mixes / f"c-r{ratio:g}-rows{rows}-s{seed}"
        out[f"c@{ratio:g}"] = run.cli(f"mix-c-r{ratio:g}-s{seed}", ["mix", "--workspace", ws, "--ratio", ratio,
                                                                    *common, "--out", folder],
                                      existing=finished_snapshot(folder))
    from core.mix.snapshot import read_manifest

    final = ws / "mixes" / f"c-r{s.ratio:g}-rows{rows}-s{seed}"
    held = read_manifest(final)["general"].get("held_out_ids") or []
    general_rows = out[f"c@{s.ratio:g}"]["counts"]["general"]
    folder = mixes / f"a-rows{rows}-s{seed}"
    out["a"] = run.cli(f"mix-a-s{seed}", ["mix", "--workspace", ws, "--ratio", 0, *common, "--out", folder],
                       existing=finished_snapshot(folder))
    public = ws / "public" / f"sharegpt-en-1-2-seed{seed}.jsonl"
    run.step(f"public-subset-s{seed}", f"write a seeded ShareGPT subset to {public}", public,
             lambda: write_public_subset(public, pool=max(2000, general_rows), seed=seed))
    folder = mixes / f"b-r{s.ratio:g}-rows{rows}-s{seed}"
    out["b"] = run.step(f"mix-b-s{seed}", f"freeze arm (b) at {folder} (experiments/public_sft.py)",
                        folder / "manifest.yaml",
                        lambda: build_public_mix(ws, folder, public, domain=DOMAIN, ratio=s.ratio, domain_rows=rows,
                                                 general_rows=general_rows, seed=seed, tokenizer_model=s.model,
                                                 general_holdout=s.general_holdout, held_out_ids=held))
    folder = mixes / f"d-r{s.ratio:g}-rows{rows}-s{seed}"
    out["d"] = run.step(f"mix-d-s{seed}", f"freeze arm (d) at {folder} (experiments/unscreened.py)",
                        folder / "manifest.yaml",
                        lambda: build_unscreened_mix(ws, folder, domain=DOMAIN, ratio=s.ratio, domain_rows=rows,
                                                     general_rows=general_rows, seed=seed, tokenizer_model=s.model,
                                                     general_holdout=s.general_holdout, held_out_ids=held))
    for arm, summary in out.items():
        if summary["counts"]["domain"] != rows:
            raise RuntimeError(f"arm {arm} (seed {seed}) has {summary['counts']['domain']} domain rows, not {rows}: "
                               "too few screened general rows for its ratio; reconstruct more (--n-general)")
    return {arm: {**summary, "out": summary.get("out")} for arm, summary in out.items()}


def arm_order(s: Any) -> list[tuple[int, str]]:
    """(seed, arm) in the order they are trained and evaluated: the pair the summary rests on first — (a) and (c)
    at the final ratio, seed by seed — then (e), then (b) and (d), then the sweep's other ratios (the first seed
    only unless ``sweep_all_seeds``). An experiment cut short by the machine's budget has its main figures first."""
    final = f"c@{s.ratio:g}"
    order = [(seed, arm) for group in (("a", final), ("e",), ("b", "d")) for seed in s.seeds for arm in group]
    sweep_seeds = s.seeds if s.sweep_all_seeds else s.seeds[:1]
    return order + [(seed, f"c@{r:g}") for seed in sweep_seeds for r in s.ratios if f"c@{r:g}" != final]


def run_folder(ws: Path, arm: str, seed: int) -> Path:
    """Where one arm's model for one seed is written."""
    return ws / "runs" / f"{arm.replace('@', '-r')}-s{seed}"


def training_stage(arm: str, seed: int) -> str:
    """The stage that makes one arm's model for one seed: its training, or for (e) the interpolation."""
    return f"wise-ft-s{seed}" if arm == "e" else f"train-{arm}-s{seed}"


def evaluation_stages(name: str) -> list[str]:
    """The stages ``evaluate`` runs for the model it calls ``name``."""
    return [f"eval-general-{name}", f"eval-domain-{name}", f"eval-ifeval-{name}"]


def train_arm(run: StageRunner, s: Any, ws: Path, arm: str, mixes: dict[str, Any], seed: int,
              a_run: str | None = None) -> dict[str, Any]:
    """One arm's model for one seed: full fine-tuning on its mix, or for (e) the WiSE-FT of ``a_run``."""
    out = run_folder(ws, arm, seed)
    if arm == "e":
        if a_run is None:
            raise ValueError("arm (e) interpolates arm (a)'s run: train (a) first")
        return {"run": str(out), **run.step(training_stage(arm, seed), f"WiSE-FT of {a_run} (alpha "
                                            f"{s.wise_alpha:g}) at {out}", out / "summary.json",
                                            lambda: interpolate_run(Path(a_run), out, s.wise_alpha, ws))}
    return {"run": str(out), **train_once(
        run, training_stage(arm, seed),
        ["train", "--workspace", ws, "--data", mixes[arm]["out"], "--model", s.model, "--out", out, "--full",
         "--max-steps", s.steps, "--batch-size", s.batch_size, "--lr", s.lr, "--max-length", s.max_length,
         "--seed", seed, "--dtype", s.train_dtype, "--save-steps", checkpoint_every(s.steps),
         "--keep-checkpoints", 1], out)}


def benchmarks(run: StageRunner, s: Any, ws: Path, name: str, model: str, drift: bool,
               dtype: str = "auto") -> dict[str, str]:
    """The scored evaluations of one model (base or run): general (limited) and domain (accuracy and answer fit,
    + drift), in ``dtype`` (`forgetless eval --dtype`). Job ids."""
    general_limit = ["--limit", s.general_limit] if s.general_limit else []
    pinned = _dtype_flag(dtype)
    general, domain, _ = evaluation_stages(name)
    return {
        "general": run.cli(general, ["eval", "--workspace", ws, "--model", model, "--suite", "general",
                                     *general_limit, "--seed", 0, *pinned])["job_id"],
        # --limit caps the domain test only here: drift's texts are capped by --drift-n (all held-out rows)
        "domain": run.cli(domain, ["eval", "--workspace", ws, "--model", model, "--suite",
                                   f"domain,{DOMAIN_FIT}" + (",drift" if drift else ""), "--seed", 0,
                                   *(["--limit", s.domain_limit] if s.domain_limit else []),
                                   *(["--drift-n", 100000] if drift else []), *pinned])["job_id"],
    }


def _dtype_flag(dtype: str) -> list[str]:
    """``--dtype`` for a pinned dtype; none for auto, so its commands (and stage keys) are those of before."""
    return ["--dtype", dtype] if dtype != "auto" else []


def evaluate(run: StageRunner, s: Any, ws: Path, name: str, model: str, drift: bool) -> dict[str, str]:
    """``benchmarks`` and IFEval (all prompts, at the arms' batch size: greedy replies depend slightly on how
    prompts are batched, so every arm and their base are generated alike) of one model, in the arms' eval dtype.
    Job ids."""
    jobs = benchmarks(run, s, ws, name, model, drift, s.eval_dtype)
    limit = ["--limit", s.ifeval_limit] if s.ifeval_limit else []
    jobs[IFEVAL] = run.cli(evaluation_stages(name)[-1], [
        "eval", "--workspace", ws, "--model", model, "--suite", IFEVAL, *limit, "--seed", s.seed,
        "--ifeval-max-new-tokens", s.ifeval_tokens, "--batch-size", s.ifeval_batch_size,
        *_dtype_flag(s.eval_dtype), "--job-id", f"arms-ifeval-{name.replace('@', '-r')}-b{s.ifeval_batch_size}"
        + ("" if s.eval_dtype == "auto" else f"-{s.eval_dtype}")])["job_id"]
    return jobs


def scores(ws: Path, jobs: dict[str, str]) -> dict[str, dict[str, float]]:
    """Per task, per item scores of one model's evaluation jobs: 1/0 for the graded tasks, their general items
    pooled as the primary metric (ids prefixed by task), minus the answer's NLL per token for the domain fit."""
    from core.store import Store
    from experiments.forgetting_report import per_item

    groups = (("general", GENERAL), ("domain", (DOMAIN_TASK,)), (IFEVAL, (IFEVAL,)))
    tasks: dict[str, dict[str, float]] = {}
    for group, names in groups:
        if group in jobs:
            tasks.update(per_item(ws, {"m": jobs[group]}, names)["correct"]["m"])
    tasks[PRIMARY_METRIC] = {f"{task}/{item}": value for task in GENERAL for item, value in tasks[task].items()}
    rows = Store.for_workspace(ws).eval_items(jobs["domain"], DOMAIN_FIT)
    tasks[DOMAIN_FIT] = {row.item_id: -row.extra["nll"] / row.extra["tokens"] for row in rows
                         if row.extra and row.extra.get("tokens")}
    return tasks
