"""Evidence that it works (issue 16), headless: first a regime where domain-only full fine-tuning forgets.

Stage ``grid``: domain-only full fine-tuning of the packaged SmolLM2-135M-Instruct on MedMCQA's train split, over
domain rows x epochs x learning rate, cheapest first (the highest learning rate first at one cost); each run's
primary metric (declared in experiments/evidence_grid.py before any final run: the general benchmarks' accuracy,
500 items each, pooled) and its domain answer fit are compared with the base's, item by item; a setting qualifies
when it loses more than 3 paired standard errors on the first and gains more than 3 on the second, and the search
ends at the cheapest cost that qualifies, with its gentlest learning rate that does (``evidence_grid.next_action``;
``--grid-all`` runs every point). The grid's files are rewritten after every evaluated point. Every stage is the
real CLI (``forgetless mix/train/eval``) run as a subprocess, recorded, and skipped when rerun; an interrupted
training run continues from its checkpoint.

Stage ``arms``: at the grid's choice, the arms of experiments/evidence_arms.py on every seed, main comparison
first (``arm_order``). What it finishes (the general data, each evaluated model) is kept in ``<out>/evidence_runs/``
(experiments/evidence_ledger.py, committed with the report) and restored into a fresh workspace.

Stage ``report``: the report again from the runs the ledger holds, restored into a scratch workspace; nothing is
trained or evaluated.

Stage ``retime``: every kind of stage the arms needed timed again on this machine, over a slice
(experiments/evidence_retime.py), so the report's costs can be read on one machine; then that report.

    python experiments/evidence.py --quick --workspace /tmp/ev          # tiny, a few minutes (CI)
    python experiments/evidence.py --workspace workspace/evidence       # grid then arms (days on 2 CPU cores)

Writes ``<out>/evidence_grid.{json,md}`` (experiments/evidence_grid_files.py) after every grid point and
``<out>/evidence.{json,md}`` (experiments/evidence_report.py) after every evaluated arm run.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.evidence_arms import (  # noqa: E402
    DOMAIN,
    arm_order,
    benchmarks,
    build_mixes,
    evaluate,
    evaluation_stages,
    general_data,
    run_folder,
    scores,
    train_arm,
    training_stage,
)
from experiments.evidence_costs import arm_costs, one_machine_costs  # noqa: E402
from experiments.evidence_grid import (  # noqa: E402
    DOMAIN_FIT,
    IFEVAL_TOKENS,
    PRIMARY_METRIC,
    chosen_point,
    grid_points,
    next_action,
    outcome,
)
from experiments.evidence_grid_files import NOT_RUN_BECAUSE, recorded_outcomes, write_grid  # noqa: E402
from experiments.evidence_ledger import (  # noqa: E402
    LEDGER,
    SYNTHESIS,
    has,
    kept_stage,
    restore,
    save_run,
    save_synthesis,
)
from experiments.evidence_report import evidence, reading, write_report  # noqa: E402
from experiments.evidence_retime import read_retime, retime, write_retime  # noqa: E402
from experiments.forgetting_stats import paired_difference  # noqa: E402
from experiments.stage_runner import (  # noqa: E402
    REPO_ROOT,
    StageRunner,
    checkpoint_every,
    finished_run,
    finished_snapshot,
    machine,
    machine_label,
    train_once,
)


@dataclass
class Settings:
    """Everything that decides the grid's numbers (recorded in its JSON)."""

    quick: bool = False
    model: str = "smollm2-135m-instruct"
    # The IFEval grid (docs/evidence_grid_ifeval.md) bounds this one: at 400 rows, 3 epochs made the domain
    # answers *less* likely at lr 1e-3 (memorised) and lr 3e-3 did at one epoch; below 1e-4 nothing moved
    grid_rows: list[int] = field(default_factory=lambda: [400, 1600])
    grid_epochs: list[int] = field(default_factory=lambda: [1])
    grid_lrs: list[float] = field(default_factory=lambda: [1e-4, 3e-4, 1e-3])
    grid_all: bool = False  # evaluate every point, not only up to the first that qualifies
    batch_size: int = 8
    max_length: int = 512
    ifeval_limit: int = 0  # 0: all 541 prompts
    ifeval_tokens: int = IFEVAL_TOKENS
    seed: int = 0
    threads: int = 0  # OMP threads per stage; 0: torch's default
    # -- the arms (stage "arms"): the grid's chosen setting unless given
    domain_rows: int | None = None
    epochs: int | None = None
    lr: float | None = None
    n_general: int = 2000  # instructions to reconstruct: enough screened rows for the sweep's largest ratio
    k: int = 2  # responses per instruction (the judges pick the best)
    respond_tokens: int = 192
    synthesis_batch_size: int = 128  # rows decoded together by reconstruct and respond (fuller batches, faster)
    screen_quantile: float = 0.25  # drop best responses scoring below this quantile
    # share of the general candidates every mix sets aside (drift's texts): ~200 of 2000, and leaves the sweep's
    # largest ratio (0.75: 3 x domain_rows general rows) enough screened rows (2000 x 0.9 x 0.75 = 1350 >= 1200)
    general_holdout: float = 0.1
    ratio: float = 0.5  # general share of arms (b), (c), (d)
    ratios: list[float] = field(default_factory=lambda: [0.1, 0.25, 0.5, 0.75])  # arm (c)'s sweep
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    sweep_all_seeds: bool = False  # the sweep's other ratios on every seed (default: the first only)
    # IFEval's batch in the arms: 96 prompts took 89 s at batch 96 vs 152 s at 32 (machine C), as rows leave the
    # batch when they stop and a small batch runs mostly empty
    ifeval_batch_size: int = 128
    general_limit: int = 500  # items per general benchmark (0: all)
    domain_limit: int = 0  # domain test items (0: the whole MedMCQA test split)
    wise_alpha: float = 0.5
    # the arms' `forgetless train --dtype`: auto follows the CPU's flags, which on the 2-core AVX512-BF16 Xeon
    # without AMX pick bf16 autocast although bf16 matmuls run 0.6x fp32 there (full FT step: 18.5 s vs 11.9 s)
    train_dtype: str = "auto"
    eval_dtype: str = "auto"  # the arms' (and their base's) `forgetless eval --dtype`; the grid's stay auto
    # stage "retime" (experiments/evidence_retime.py): the slice every stage is timed on again, on one machine
    retime_instructions: int = 256  # two batches of the experiment's reconstruct/respond batch size
    retime_steps: int = 12  # training steps per arm: a quarter of the arms' 50

    @property
    def steps(self) -> int:
        return max(1, -(-(self.domain_rows or 0) * (self.epochs or 1) // self.batch_size))


QUICK = {"grid_rows": [4], "grid_epochs": [1], "grid_lrs": [1e-5, 1e-3], "grid_all": True, "batch_size": 2,
         "max_length": 128, "ifeval_limit": 3, "ifeval_tokens": 8, "domain_rows": 4, "epochs": 1, "lr": 1e-3,
         "n_general": 24, "k": 1, "respond_tokens": 24, "general_holdout": 0.5, "ratios": [0.25, 0.5], "seeds": [0],
         "general_limit": 4, "domain_limit": 4, "retime_instructions": 4, "retime_steps": 1}
STAGES = ("grid", "arms", "all", "report", "retime")


_NONE_TYPES = {"domain_rows": int, "epochs": int, "lr": float}  # fields whose default (None) names no type


def parse_args(argv: list[str] | None = None) -> tuple[Settings, Path, Path, str]:
    """Every Settings field is a flag (lists take several values; a bool is a switch)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tiny run (CI): " + json.dumps(QUICK))
    parser.add_argument("--stage", choices=STAGES, default="all",
                        help="grid, arms (at the grid's choice), all, report: the report again from the runs the "
                        "ledger holds, nothing trained or evaluated (give a scratch workspace), or retime: every "
                        "stage timed again on this machine over a slice, then that report")
    parser.add_argument("--workspace", type=Path, help="experiment workspace (default workspace/evidence[-quick])")
    parser.add_argument("--out", type=Path, help="where the JSON/Markdown go (default docs/; quick: WS/report)")
    for item in fields(Settings):
        if item.name == "quick":
            continue
        flag, default = f"--{item.name.replace('_', '-')}", Settings().__getattribute__(item.name)
        if isinstance(default, bool):
            parser.add_argument(flag, dest=item.name, action="store_true", default=None)
        elif isinstance(default, list):
            parser.add_argument(flag, dest=item.name, type=type(default[0]), nargs="+", help=f"default {default}")
        else:
            kind = _NONE_TYPES.get(item.name, type(default))
            parser.add_argument(flag, dest=item.name, type=kind, help=f"default {default}")
    args = parser.parse_args(argv)
    chosen = {k: v for k, v in vars(args).items() if v is not None and k not in ("quick", "workspace", "out", "stage")}
    settings = Settings(quick=args.quick, **{**(QUICK if args.quick else {}), **chosen})
    workspace = args.workspace or REPO_ROOT / "workspace" / ("evidence-quick" if args.quick else "evidence")
    out = args.out or (workspace / "report" if args.quick else REPO_ROOT / "docs")
    return settings, workspace.resolve(), out.resolve(), args.stage


def search(run: StageRunner, s: Settings, ws: Path,
           progress: Callable[[dict[str, Any]], object] = lambda found: None,
           recorded: Mapping[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The grid, cheapest first; ``progress`` gets what is found so far after every point this call evaluates. A
    point in ``recorded`` (``recorded_outcomes``) that this workspace has not evaluated is taken as it was, not run
    again: a session on a fresh machine goes on where the committed grid stopped."""
    recorded = recorded or {}
    base: dict[str, dict[str, float]] | None = None  # read when a point has to run
    outcomes: list[dict[str, Any]] = []
    not_run: dict[str, list[str]] = {"skip": [], "stop": []}

    def found(finished: bool) -> dict[str, Any]:
        return {"outcomes": outcomes, "skipped": not_run["skip"], "beyond_choice": not_run["stop"],
                "chosen": chosen_point(outcomes), "finished": finished}

    for point in grid_points(s.grid_rows, s.grid_epochs, s.grid_lrs):
        action = "run" if s.grid_all else next_action(point, outcomes)
        evaluated = f"eval-domain-grid-{point.name}" in run.state
        if point.name in recorded and not evaluated:
            outcomes.append(recorded[point.name])
            where = machine_label(recorded[point.name]["machine"])
            run.say(f"grid {point.name}: recorded by an earlier grid (on {where}), not run again")
            continue
        if action != "run" and not evaluated:  # one evaluated before is still read
            not_run[action].append(point.name)
            run.say(f"grid {point.name}: not run ({NOT_RUN_BECAUSE[action]})")
            continue
        if base is None:
            base = scores(ws, benchmarks(run, s, ws, "base", s.model, drift=False))
        snapshot = ws / "mixes" / f"grid-a-rows{point.domain_rows}-seed{s.seed}"
        run.cli(f"grid-mix-rows{point.domain_rows}",
                ["mix", "--workspace", ws, "--domain", DOMAIN, "--ratio", 0, "--max-domain", point.domain_rows,
                 "--seed", s.seed, "--tokenizer-model", s.model, "--out", snapshot],
                existing=finished_snapshot(snapshot))
        out = ws / "runs" / f"grid-{point.name}-seed{s.seed}"
        steps = point.steps(s.batch_size)
        train = train_once(run, f"grid-train-{point.name}",
                           ["train", "--workspace", ws, "--data", snapshot, "--model", s.model, "--out", out, "--full",
                            "--max-steps", steps, "--batch-size", s.batch_size, "--lr", point.lr, "--max-length",
                            s.max_length, "--seed", s.seed, "--save-steps", checkpoint_every(steps),
                            "--keep-checkpoints", 1], out)
        tuned = scores(ws, benchmarks(run, s, ws, f"grid-{point.name}", str(out), drift=False))
        result = outcome(point, s.batch_size, paired_difference(tuned[PRIMARY_METRIC], base[PRIMARY_METRIC]),
                         paired_difference(tuned[DOMAIN_FIT], base[DOMAIN_FIT]), train,
                         _mean(base[PRIMARY_METRIC].values()), _mean(tuned[PRIMARY_METRIC].values()))
        result["machine"] = machine()
        outcomes.append(result)
        verdict = ("forgets and gains" if result["qualifies"] else "forgets but does not gain" if result["forgets"]
                   else "does not forget clearly")
        run.say(f"grid {point.name}: {PRIMARY_METRIC} {result['base']:.3f} -> {result['tuned']:.3f}"
                f"{_paired(result['diff'], result['se'], 100, ' pts')}, answer fit"
                f"{_paired(result['gain'], result['gain_se'], 1, ' nats/token')} ({verdict})")
        if not evaluated:  # a point read back changes nothing written (and a rerun leaves the files' date alone)
            progress(found(finished=False))
    return found(finished=True)


def _paired(diff: float | None, se: float | None, scale: float, unit: str) -> str:
    return "" if diff is None or se is None else f" {scale * diff:+.3g} ± {scale * se:.2g}{unit} paired"


def arms_stage(run: StageRunner, s: Settings, ws: Path, out: Path, grid: dict[str, Any] | None,
               invocation: str, report_only: bool = False) -> dict[str, Any]:
    """The arms at the grid's chosen setting (or the one given), every seed; evidence.json and its Markdown.

    ``report_only``: only the runs the ledger holds (restored into ``ws``), up to the first it lacks; the report
    is written from them (with this code), and nothing is trained or evaluated."""
    _take_grid_setting(s, grid)
    run.say(f"arms at {s.domain_rows} domain rows, {s.epochs} epoch(s), lr {s.lr:g}: {s.steps} steps each")
    ledger = out / LEDGER
    base_name = "base" if s.eval_dtype == "auto" else f"base-{s.eval_dtype}"  # not the grid's base then
    if report_only and not (has(ledger, SYNTHESIS) and has(ledger, base_name)):
        raise SystemExit(f"nothing to report: {ledger} lacks the general data or the base's evaluation ({base_name})")
    restore(ledger, ws, run)
    general = general_data(run, s, ws)
    save_synthesis(ledger, ws, run)
    base_jobs = evaluate(run, s, ws, base_name, s.model, drift=False)
    save_run(ledger, ws, run, base_name, base_jobs.values(), evaluation_stages(base_name))
    base = scores(ws, base_jobs)
    arms: dict[str, list[Any]] = {}
    drift: dict[str, list[Any]] = {}
    trained: dict[str, list[dict[str, Any]]] = {}
    evaluated: dict[str, list[int]] = {}
    mixes: dict[int, dict[str, Any]] = {}
    units = arm_order(s)
    record: dict[str, Any] = {}

    def report(done: int) -> dict[str, Any]:
        return write_evidence(run, s, out, invocation, general, base, arms, drift, trained,
                              progress={"evaluated": evaluated, "done": done, "of": len(units)})

    for done, (seed, arm) in enumerate(units, start=1):
        name, made_by = f"{arm}-s{seed}", training_stage(arm, seed)
        if report_only and not has(ledger, name):
            break
        if seed not in mixes:  # each seed's mix commands are listed in every report (seconds where not built yet)
            mixes[seed] = build_mixes(run, s, ws, general, seed)
        if has(ledger, name):  # evaluated in an earlier workspace: its model is not needed
            kept = kept_stage(ledger, name, made_by, ws)
            info = {"run": str(run_folder(ws, arm, seed)), **run.reuse(made_by, kept), "machine": kept.get("machine")}
        else:
            if arm == "e" and finished_run(run_folder(ws, "a", seed))() is None:
                run.state.pop(training_stage("a", seed), None)  # went with an earlier workspace: trained again
                train_arm(run, s, ws, "a", mixes[seed], seed)
            info = train_arm(run, s, ws, arm, mixes[seed], seed, a_run=str(run_folder(ws, "a", seed)))
            info["machine"] = run.state[made_by].get("machine")  # the report's cost table names where it was timed
        ran_before = len(run.ran)
        jobs = evaluate(run, s, ws, name, info["run"], drift=True)
        save_run(ledger, ws, run, name, jobs.values(), [made_by, *evaluation_stages(name)])
        arms.setdefault(arm, []).append(scores(ws, jobs))
        evaluated.setdefault(arm, []).append(seed)
        summary = run.state[evaluation_stages(name)[1]]["summary"]
        reported = "c" if arm == f"c@{s.ratio:g}" else arm
        drift.setdefault(reported, []).append(summary["results"].get("drift", {}))
        trained.setdefault(reported, []).append(info)
        if len(run.ran) > ran_before or done == len(units):  # a rerun evaluating nothing new writes once, at the end
            record = report(done)
    if report_only and not evaluated:
        raise SystemExit(f"nothing to report: {ledger} holds no arm run")
    if report_only and not record:
        record = report(sum(map(len, evaluated.values())))
    return record


def _take_grid_setting(s: Settings, grid: dict[str, Any] | None) -> None:
    """The arms' domain rows, epochs and learning rate: the grid's choice unless given."""
    if s.domain_rows is None or s.epochs is None or s.lr is None:
        chosen = (grid or {}).get("chosen")
        if not chosen:
            raise SystemExit("the grid chose no setting that forgets: run the grid, or give --domain-rows, --epochs "
                             "and --lr")
        point = chosen["point"]
        s.domain_rows, s.epochs, s.lr = point["domain_rows"], point["epochs"], point["lr"]


def retime_stage(run: StageRunner, s: Settings, ws: Path, out: Path, grid: dict[str, Any] | None) -> None:
    """Every kind of stage the arms needed, timed again on this machine (experiments/evidence_retime.py), from the
    general data and the first seed's mixes (restored from the ledger and rebuilt when the workspace lacks them)."""
    _take_grid_setting(s, grid)
    ledger = out / LEDGER
    if not has(ledger, SYNTHESIS):
        raise SystemExit(f"nothing to time again: {ledger} lacks the general data (run the arms first)")
    restore(ledger, ws, run)
    general = general_data(run, s, ws)
    mixes = build_mixes(run, s, ws, general, s.seeds[0])
    main_ratio = f"c@{s.ratio:g}"
    measured = retime(run, s, ws, {("c" if arm == main_ratio else arm): mix for arm, mix in mixes.items()})
    run.say(f"wrote {write_retime(out, measured)} (timed on {machine_label(measured['machine'])})")
    run.commands.clear()  # the report lists the experiment's commands as any report does; the slice's come apart


def write_evidence(run: StageRunner, s: Settings, out: Path, invocation: str, general: dict[str, Any],
                   base: dict[str, Any], arms: dict[str, list[Any]], drift: dict[str, list[Any]],
                   trained: dict[str, list[dict[str, Any]]], progress: dict[str, Any]) -> dict[str, Any]:
    """evidence.json and evidence.md from the arm runs evaluated so far (``progress``: which seeds of which arm,
    and how many of the planned runs), rewritten after each one so an unfinished experiment shows where it is."""
    costs = arm_costs(general["cost"], trained)
    retimed = read_retime(out)
    drift_mean = {arm: {**{key: _mean(d.get(key) for d in ds) for key in ("kl", "ppl_base", "ppl_tuned")},
                        "texts": ds[0].get("texts"), "n": ds[0].get("n")} for arm, ds in drift.items()}
    record = evidence(base, arms, ratio=s.ratio, seeds=s.seeds, drift=drift_mean, costs=costs, settings=asdict(s),
                      machine=machine(), arm_seeds=progress["evaluated"])
    record["progress"] = {**progress, "finished": progress["done"] == progress["of"]}
    if retimed:
        record["costs_one_machine"] = {
            **{key: retimed[key] for key in ("machine", "instructions", "train_steps", "tokens_per_s", "commands")},
            "arms": one_machine_costs(general["cost"], costs, retimed["tokens_per_s"])}
    record["reading"] = reading(record)
    record.update(general={k: v for k, v in general.items() if k != "cost"}, synthesis=general["cost"],
                  invocation=invocation, commands=run.commands, timings=run.timings)
    write_report(out, record, run.commands)
    run.say(f"wrote {out / 'evidence.md'} ({progress['done']} of {progress['of']} arm runs evaluated)")
    return record


def _mean(values: Any) -> float | None:
    """The mean of the values that are there (None when none is)."""
    present = [value for value in values if value is not None]
    return sum(present) / len(present) if present else None


def main(argv: list[str] | None = None) -> int:
    s, ws, out, stage = parse_args(argv)
    ws.mkdir(parents=True, exist_ok=True)
    run = StageRunner(ws / "experiment", threads=s.threads, name="evidence")
    run.say(f"workspace {ws}; settings {json.dumps(asdict(s))}")
    invocation = shlex.join(["python", "experiments/evidence.py", *(sys.argv[1:] if argv is None else argv)])
    grid = None
    if stage in ("grid", "all"):
        found = search(run, s, ws, progress=lambda partial: write_grid(partial, s, out, run, invocation),
                       recorded=recorded_outcomes(out / "evidence_grid.json", s))
        paths = write_grid(found, s, out, run, invocation)
        run.say(f"{'wrote' if paths['written'] else 'same findings, left as they were:'} {paths['markdown']} and "
                f"{paths['json']}")
        grid = {"chosen": found["chosen"]}
    elif (out / "evidence_grid.json").exists():
        grid = json.loads((out / "evidence_grid.json").read_text(encoding="utf-8"))
        if grid.get("finished") is False and s.domain_rows is None:
            raise SystemExit(f"{out / 'evidence_grid.json'} is a grid in progress: finish it (--stage grid), or give "
                             "--domain-rows, --epochs and --lr")
    result: dict[str, Any] = {"grid": str(out / "evidence_grid.json"), "chosen": ((grid or {}).get("chosen") or {})
                              .get("name")}
    if stage == "retime":
        retime_stage(run, s, ws, out, grid)
    if stage in ("arms", "all", "report", "retime") and (grid and grid.get("chosen") or s.domain_rows is not None):
        record = arms_stage(run, s, ws, out, grid, invocation, report_only=stage in ("report", "retime"))
        result |= {"evidence": str(out / "evidence.json"), "summary": {k: v for k, v in record["summary"].items()
                                                                         if k != "by_arm"}}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
