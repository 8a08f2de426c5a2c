"""The forgetting experiment, headless: does our reconstructed general data make domain tuning forget less?

Three arms, trained with the same steps, seed and LoRA settings on the packaged SmolLM2-135M-Instruct:
  (a) the domain only (MedMCQA train split);
  (b) the domain mixed with public SFT data (ShareGPT, English, 1-2 exchanges) at ratio R;
  (c) the domain mixed with reconstructed + judged + screened general data (this project's method) at ratio R.
The base model and the three runs are evaluated on ARC-Easy, PIQA, HellaSwag, SciQ, the MedMCQA test split and
(runs) drift, and ``<out>/results.json``, ``results.md`` and a Plotly figure are written.

Every stage is the real CLI (``forgetless reconstruct/respond/judge/mix/train/eval``) run as a subprocess,
except arm (b)'s snapshot (see experiments/public_sft.py for why). Rerunning the same command skips what
finished and resumes what did not.

    python experiments/forgetting.py --quick --workspace /tmp/fx        # tiny, a few minutes (CI)
    python experiments/forgetting.py --workspace workspace/forgetting   # the full run (see docs/results.md)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shlex
import sys
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.forgetting_report import per_item, write_outputs  # noqa: E402
from experiments.forgetting_stats import all_finite, compare, drift_summary, reading  # noqa: E402
from experiments.public_sft import build_public_mix, write_public_subset  # noqa: E402
from experiments.stage_runner import REPO_ROOT, StageRunner  # noqa: E402

ARM_NAMES = {"a": "domain only", "b": "domain + public SFT (ShareGPT)", "c": "domain + reconstructed (ours)"}
DOMAIN = "builtin:medmcqa"


@dataclass
class Settings:
    """Everything that decides the experiment's numbers (recorded in results.json)."""

    quick: bool = False
    model: str = "smollm2-135m-instruct"
    domain: str = DOMAIN
    n_general: int = 160  # instructions to reconstruct
    k: int = 2  # responses per instruction (the judge picks the best)
    respond_tokens: int = 192  # max new tokens per response
    screen_quantile: float = 0.25  # drop best responses scoring below this quantile
    ratio: float = 0.5  # general share of the examples in arms (b) and (c)
    steps: int = 30
    batch_size: int = 8
    lr: float = 2e-4
    max_length: int = 512
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    domain_rows: int | None = None  # default: steps x batch x (1 - ratio), so arm (c) sees its mix about once
    limit: int = 100  # items per benchmark (a seeded subsample, the same for every model)
    seed: int = 0
    # OMP threads per stage; 0: torch's default. On this shared 2-core CPU one thread trained 4x faster than two
    # (17 s vs 74 s per step of 8 conversations): torch's workers wait on each other when another process runs.
    threads: int = 1

    def __post_init__(self) -> None:
        if not 0.0 < self.ratio < 1.0:
            raise SystemExit("--ratio must be in (0, 1): arms (b) and (c) need some general data")
        if self.domain_rows is None:
            self.domain_rows = max(1, round(self.steps * self.batch_size * (1 - self.ratio)))

    def tag(self, *fields: str) -> str:
        """A short hash of the named settings: folder names change when the settings that shaped them do."""
        values = {name: getattr(self, name) for name in fields}
        return hashlib.sha1(json.dumps(values, sort_keys=True).encode()).hexdigest()[:8]


QUICK = {"n_general": 8, "k": 1, "respond_tokens": 48, "steps": 4, "batch_size": 2, "max_length": 256,
         "limit": 8, "domain_rows": 4}


def parse_args(argv: list[str] | None = None) -> tuple[Settings, Path, Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tiny run (CI): " + json.dumps(QUICK))
    parser.add_argument("--workspace", type=Path, help="experiment workspace (default workspace/forgetting[-quick])")
    parser.add_argument("--out", type=Path, help="where results.json/.md go (default docs/; quick: <workspace>/report)")
    parser.add_argument("--model", help="MODEL spec (default smollm2-135m-instruct)")
    for flag, kind, text in (("steps", int, "training steps per arm"), ("ratio", float, "general share in (b), (c)"),
                             ("limit", int, "items per benchmark"), ("n_general", int, "instructions to reconstruct"),
                             ("seed", int, "every seed"), ("k", int, "responses per instruction"),
                             ("lr", float, "learning rate"), ("batch_size", int, "conversations per step"),
                             ("max_length", int, "tokens per conversation"),
                             ("domain_rows", int, "domain rows per arm (default steps*batch*(1-ratio))"),
                             ("respond_tokens", int, "max new tokens per response"),
                             ("screen_quantile", float, "drop best responses below this score quantile"),
                             ("threads", int, "OMP threads per stage (default 1; 0: torch's default)")):
        parser.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type=kind, help=text)
    args = parser.parse_args(argv)
    values = {**(QUICK if args.quick else {}),
              **{k: v for k, v in vars(args).items() if v is not None and k not in ("quick", "workspace", "out")}}
    settings = Settings(quick=args.quick, **values)
    workspace = args.workspace or REPO_ROOT / "workspace" / ("forgetting-quick" if args.quick else "forgetting")
    out = args.out or (workspace / "report" if args.quick else REPO_ROOT / "docs")
    return settings, workspace.resolve(), out.resolve()


def general_data(run: StageRunner, s: Settings, ws: str) -> dict[str, Any]:
    """Reconstruct, respond and judge (the CLI stages resume themselves), then the screening threshold."""
    batch = min(64, max(8, math.ceil(s.n_general * 1.5)))  # about a quarter of samples are dropped as fragments
    rec = run.cli("reconstruct", ["reconstruct", "--workspace", ws, "--model", s.model, "--n", s.n_general,
                                  "--batch-size", batch, "--seed", s.seed])
    run.cli("respond", ["respond", "--workspace", ws, "--models", s.model, "--k", s.k, "--max-new-tokens",
                        s.respond_tokens, "--batch-size", min(64, s.n_general * s.k), "--seed", s.seed])
    run.cli("judge", ["judge", "--workspace", ws, "--judges", s.model, "--method", "probs"])
    query = (f"SELECT count(*) AS n, quantile_cont(mean, {s.screen_quantile}) AS q FROM best_responses "
             "WHERE isfinite(mean)")
    stats = run.cli("screen-threshold", ["sql", "--workspace", ws, query], always=True)
    n, q = stats["rows"][0]
    # Rounded down so the row at the quantile itself passes `>=` despite float printing.
    min_score = math.floor(q * 1e4) / 1e4 if s.screen_quantile > 0 and q is not None else None
    return {"reconstructed": rec.get("stored"), "with_best": n, "min_score": min_score,
            "reconstruct_job": rec.get("job_id")}


def _on_disk_snapshot(folder: Path) -> Any:
    """For ``StageRunner.cli(existing=...)``: a finished snapshot's summary from its manifest, else None."""
    def read() -> dict[str, Any] | None:
        if not (folder / "manifest.yaml").exists():
            return None
        from core.mix_snapshot import read_manifest

        manifest = read_manifest(folder)
        return {**manifest, "candidates": manifest.get("general", {}).get("candidates"), "out": str(folder)}
    return read


def _on_disk_run(folder: Path) -> Any:
    """For ``StageRunner.cli(existing=...)``: a finished training run's summary.json, else None."""
    def read() -> dict[str, Any] | None:
        done = (folder / "adapter").is_dir() and (folder / "summary.json").exists()
        return json.loads((folder / "summary.json").read_text(encoding="utf-8")) if done else None
    return read


def _snapshot_summary(folder: Path, summary: dict[str, Any]) -> dict[str, Any]:
    return {"counts": summary["counts"], "tokens": summary["tokens"], "ratio_achieved": summary["ratio_achieved"],
            "notes": summary.get("notes", []), "snapshot": str(folder)}


def build_mixes(run: StageRunner, s: Settings, ws: Path, general: dict[str, Any]) -> dict[str, Any]:
    """Arm (c) first (the general candidates may limit it), then (a) and (b) with exactly its domain rows."""
    tag = s.tag("model", "domain", "ratio", "domain_rows", "seed", "n_general", "k", "screen_quantile",
                "respond_tokens")
    mixes = ws / "mixes"
    screen = ["--min-score", general["min_score"]] if general["min_score"] is not None else []
    c_out = mixes / f"arm-c-{tag}"
    c = run.cli("mix-c", ["mix", "--workspace", ws, "--domain", s.domain, "--ratio", s.ratio, "--max-domain",
                          s.domain_rows, "--seed", s.seed, *screen, "--tokenizer-model", s.model, "--out", c_out],
                existing=_on_disk_snapshot(c_out))
    domain_rows, general_rows = c["counts"]["domain"], c["counts"]["general"]
    a_out = mixes / f"arm-a-{tag}"
    a = run.cli("mix-a", ["mix", "--workspace", ws, "--domain", s.domain, "--ratio", 0, "--max-domain", domain_rows,
                          "--seed", s.seed, "--tokenizer-model", s.model, "--out", a_out],
                existing=_on_disk_snapshot(a_out))
    public_path = ws / "public" / f"sharegpt-en-1-2-seed{s.seed}.jsonl"
    public = run.step("public-subset", f"write a seeded ShareGPT subset to {public_path} (experiments/public_sft.py)",
                      public_path, lambda: write_public_subset(public_path, pool=2000, seed=s.seed))
    b_out = mixes / f"arm-b-{tag}"
    b = run.step("mix-b", f"freeze arm (b) at {b_out}: the {domain_rows} domain rows of mix-a + {general_rows} "
                          "ShareGPT rows (core.mix.plan_mix + core.mix_snapshot.write_snapshot)",
                 b_out / "manifest.yaml",
                 lambda: build_public_mix(ws, b_out, public_path, domain=s.domain, ratio=s.ratio,
                                          domain_rows=domain_rows, general_rows=general_rows, seed=s.seed,
                                          tokenizer_model=s.model))
    for name, summary in (("a", a), ("b", b), ("c", c)):
        if summary["counts"]["domain"] != domain_rows:
            raise RuntimeError(f"arm ({name}) has {summary['counts']['domain']} domain rows, not {domain_rows}")
    general["candidates"] = c.get("candidates")
    return {"arms": {"a": _snapshot_summary(a_out, a), "b": _snapshot_summary(b_out, b),
                     "c": _snapshot_summary(c_out, c)}, "public": public}


def train_arms(run: StageRunner, s: Settings, ws: Path, snapshots: dict[str, Any]) -> dict[str, Any]:
    tag = s.tag("model", "steps", "batch_size", "lr", "max_length", "lora_r", "lora_alpha", "lora_dropout", "seed")
    runs: dict[str, Any] = {}
    for arm, data in snapshots.items():
        out = ws / "runs" / f"arm-{arm}-{Path(data['snapshot']).name.rsplit('-', 1)[-1]}-{tag}"
        argv = ["train", "--workspace", ws, "--data", data["snapshot"], "--model", s.model, "--out", out, "--lora",
                "--max-steps", s.steps, "--batch-size", s.batch_size, "--lr", s.lr, "--max-length", s.max_length,
                "--lora-r", s.lora_r, "--lora-alpha", s.lora_alpha, "--lora-dropout", s.lora_dropout,
                "--seed", s.seed, "--save-steps", max(1, min(50, s.steps // 4 or 1))]
        key = " ".join(map(str, argv))
        resume = out.is_dir() and any((out / "checkpoints").glob("checkpoint-*")) and not (out / "adapter").is_dir()
        summary = run.cli(f"train-{arm}", [*argv, "--resume"] if resume else argv, resume_key=key,
                          existing=_on_disk_run(out))
        runs[arm] = {"run": str(out), **{k: summary.get(k) for k in ("steps", "final_loss", "train_loss",
                                                                      "tokens_per_s", "seconds", "dtype")}}
    return runs


def evaluate(run: StageRunner, s: Settings, ws: Path, runs: dict[str, Any], drift_n: int) -> dict[str, Any]:
    common = ["--limit", s.limit, "--seed", s.seed]
    models = {"base": run.cli("eval-base", ["eval", "--workspace", ws, "--model", s.model, "--suite", "general,domain",
                                            *common])}
    for arm, info in runs.items():
        models[arm] = run.cli(f"eval-{arm}", ["eval", "--workspace", ws, "--model", info["run"], "--suite",
                                              "general,domain,drift", *common, "--drift-n", drift_n])
    return models


def main(argv: list[str] | None = None) -> int:
    s, ws, out = parse_args(argv)
    ws.mkdir(parents=True, exist_ok=True)
    run = StageRunner(ws / "experiment", threads=s.threads)
    run.say(f"workspace {ws}; settings {json.dumps(asdict(s))}")
    general = general_data(run, s, str(ws))
    mixes = build_mixes(run, s, ws, general)
    runs = train_arms(run, s, ws, {arm: mixes["arms"][arm] for arm in ("a", "b", "c")})
    # Drift scores every held-out pair (a number above the pool): the arms' pools differ only by what (c)
    # trained on, and the report compares arms on the texts all of them scored.
    evals = evaluate(run, s, ws, runs, drift_n=max(1, int(general["with_best"])))
    run.say("reading per-item scores back from the store")
    scores = per_item(ws, {model: summary["job_id"] for model, summary in evals.items()})
    drift = drift_summary({arm: scores["drift"].get(arm, []) for arm in runs})
    models: dict[str, Any] = {}
    for model, summary in evals.items():
        tasks = {t: v for t, v in summary["results"].items() if t != "drift"}
        models[model] = {"job_id": summary["job_id"], "model": summary["model"], "tasks": tasks,
                         "drift_own": summary["results"].get("drift"), "train": runs.get(model)}
    results: dict[str, Any] = {
        "experiment": "forgetting", "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": asdict(s), "arms": list(runs), "arm_names": ARM_NAMES, "models": models,
        "data": {"general": general, "public": mixes["public"], "arms": mixes["arms"]},
        **compare(scores["correct"], list(runs), drift),
        "drift_common": {k: v for k, v in drift.items() if k != "per_text_kl"},
        "invocation": shlex.join(["python", "experiments/forgetting.py", *(sys.argv[1:] if argv is None else argv)]),
        "commands": run.commands, "timings": run.timings,
    }
    results["reading"] = reading(results)
    results["finite"] = all_finite({k: v for k, v in results.items() if k != "commands"})
    paths = write_outputs(results, out)
    run.say(f"wrote {paths['markdown']}, {paths['json']} and {paths['figure']}")
    for line in results["reading"]:
        print(f"  - {line}")
    print(json.dumps({"results": paths["json"], "stage_seconds": round(sum(run.timings.values()), 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
