"""The evidence experiment's costs on one machine (issue 16 item 3).

The experiment runs for days, across sessions that land on different machines, so its stages were timed on
whichever ran them (the report names it). This stage times every kind of work it did once more, on the machine it
runs on, over a slice and with the experiment's own settings and CLI: reconstruct, respond and judge on
``retime_instructions`` instructions, and ``retime_steps`` training steps on each trained arm's mix of the first
seed. Each stage's tokens per second there, applied to the tokens the experiment's stages needed
(``evidence_costs.one_machine_costs``), puts every arm's seconds on that one machine. What it measured is written
to ``<out>/evidence_retime.json`` (committed beside the report, which shows it), so it is run once per machine:

    python experiments/evidence.py --stage retime --workspace W --train-dtype float32 --eval-dtype float32
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from experiments.evidence_arms import stage_cost, synthesis_argv
from experiments.stage_runner import StageRunner, machine, machine_label

RETIME_FILE = "evidence_retime.json"


def retime(run: StageRunner, s: Any, ws: Path, mixes: dict[str, Any]) -> dict[str, Any]:
    """Tokens per second of reconstruct, respond, judge and each mix's training (``mixes``: arm -> the summary of
    its first-seed snapshot, as ``build_mixes`` returns) on this machine, in a scratch workspace of its own.

    The stages are recorded under a key naming this machine: a rerun here skips them, one elsewhere times again."""
    here = machine_label(machine())
    where = ws / "retime" / re.sub(r"[^A-Za-z0-9]+", "-", here).strip("-")

    def timed(name: str, argv: list[Any]) -> dict[str, Any]:
        argv = [str(part) for part in argv]
        return run.cli(f"retime-{name}", argv, resume_key=f"{' '.join(argv)} on {here}")

    seed, n = s.seeds[0], s.retime_instructions
    synthesis = {name: timed(name, argv) for name, argv in synthesis_argv(s, where, n).items()}
    rates = {name: _rate(stage_cost(summary)) for name, summary in synthesis.items()}
    for arm, mix in mixes.items():
        out = where / "runs" / arm.replace("@", "-r")
        trained = timed(f"train-{arm}", [
            "train", "--workspace", where, "--data", mix["out"], "--model", s.model, "--out", out, "--full",
            "--max-steps", s.retime_steps, "--batch-size", s.batch_size, "--lr", s.lr, "--max-length",
            s.max_length, "--seed", seed, "--dtype", s.train_dtype, "--save-steps", s.retime_steps,
            "--keep-checkpoints", 1])
        rates[f"train-{arm}"] = trained["tokens_per_s"]
        shutil.rmtree(out, ignore_errors=True)  # only its rate is needed; a full model is 0.5 GB
    return {"machine": machine(), "instructions": n, "train_steps": s.retime_steps, "seed": seed,
            "tokens_per_s": rates, "commands": [run.state[f"retime-{name}"]["command"] for name in
                                                 [*synthesis, *(f"train-{arm}" for arm in mixes)]]}


def _rate(cost: dict[str, Any]) -> float | None:
    return cost["tokens"] / cost["seconds"] if cost.get("tokens") and cost.get("seconds") else None


def write_retime(out: Path, measured: dict[str, Any]) -> Path:
    path = out / RETIME_FILE
    path.write_text(json.dumps(measured, indent=1) + "\n", encoding="utf-8")
    return path


def read_retime(out: Path) -> dict[str, Any] | None:
    path = out / RETIME_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
