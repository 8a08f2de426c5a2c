"""Run `forgetless <stage>` as a subprocess, the way a user would, and remember what finished.

Each call is logged to ``<state_dir>/logs/<name>.log`` (the stage's progress bars and messages), its
``--json`` summary (the last stdout line) is returned and recorded in ``<state_dir>/stages.json`` under
a key that includes every argument, so a rerun of the experiment skips stages that already finished
with the same arguments. The CLI stages also resume themselves (job ids derived from their settings),
so a stage interrupted halfway continues where it stopped.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
_LOG_TAIL_LINES = 15


class StageError(RuntimeError):
    """A stage exited non-zero; the message holds its command and the tail of its log."""


def _readable(argv: Sequence[str]) -> str:
    return shlex.join(["forgetless", *argv])


class StageRunner:
    """Runs CLI stages (or in-process steps) once per distinct argument list, with progress lines."""

    def __init__(self, state_dir: Path, threads: int = 0, echo: bool = True, name: str = "experiment") -> None:
        self.name = name  # the experiment's name, at the start of every progress line
        self.state_dir = Path(state_dir)
        self.logs = self.state_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.state_path = self.state_dir / "stages.json"
        self.state: dict[str, Any] = (json.loads(self.state_path.read_text(encoding="utf-8"))
                                      if self.state_path.exists() else {})
        self.threads = threads
        self.echo = echo
        self.commands: list[str] = []  # every command of this experiment, in order, run or skipped
        self.timings: dict[str, float] = {}  # seconds per stage name (as recorded when it ran)
        self.ran: list[str] = []  # the stages this process ran (not skipped, not reused from disk), in order
        self.started = time.monotonic()

    def say(self, message: str) -> None:
        if self.echo:
            print(f"[{self.name} {time.monotonic() - self.started:7.1f}s] {message}", flush=True)

    def _save(self) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=1, default=str), encoding="utf-8")
        tmp.replace(self.state_path)

    def _env(self) -> dict[str, str]:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
        if self.threads:
            # On shared cores, torch's thread pool waits on descheduled workers at every op (see bench/train.py):
            # fewer threads can be several times faster. Only the children get this setting.
            env.update(OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
        return env

    def cli(self, name: str, argv: Sequence[str], *, resume_key: str | None = None, always: bool = False,
            existing: Callable[[], dict[str, Any] | None] | None = None) -> dict[str, Any]:
        """Run ``forgetless <argv> --json`` unless ``name`` already finished with the same arguments.

        ``always``: run even then (cheap queries whose answer may change). ``existing()``: the summary of an
        output already on disk that this record does not know about (a lost stages.json), or None.
        """
        argv = [str(part) for part in argv]
        command = _readable(argv)
        self.commands.append(command)
        key = resume_key or command
        entry = self.state.get(name)
        if entry and entry.get("key") == key and not always:
            self.timings[name] = entry.get("seconds", 0.0)
            self.say(f"{name}: done before, skipped ({entry.get('seconds', 0)} s then)")
            return entry["summary"]
        found = existing() if existing is not None else None
        if found is not None:
            self.state[name] = {"key": key, "summary": found, "command": command, "seconds": 0.0}
            self._save()
            self.timings[name] = 0.0
            self.say(f"{name}: output already on disk, reused")
            return found
        self.say(f"{name}: {command}")
        log = self.logs / f"{name}.log"
        start = time.monotonic()
        with log.open("w", encoding="utf-8") as handle:
            handle.write(f"$ {command}\n")
            handle.flush()
            result = subprocess.run([sys.executable, "-m", "core.cli", *argv, "--json"], cwd=REPO_ROOT,
                                    env=self._env(), stdout=subprocess.PIPE, stderr=handle, text=True)
            handle.write(result.stdout)
        seconds = time.monotonic() - start
        if result.returncode != 0:
            tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-_LOG_TAIL_LINES:])
            raise StageError(f"{name} failed (exit {result.returncode}): {command}\n--- {log} (tail) ---\n{tail}")
        lines = [line for line in result.stdout.splitlines() if line.strip()]
        summary = json.loads(lines[-1]) if lines else {}
        self.state[name] = {"key": key, "summary": summary, "command": command, "seconds": round(seconds, 1),
                            "machine": machine()}
        self._save()
        self.timings[name] = round(seconds, 1)
        self.ran.append(name)
        self.say(f"{name}: finished in {seconds:.1f} s")
        return summary

    def adopt(self, entries: dict[str, Any]) -> bool:
        """Take stage records kept elsewhere (experiments/evidence_ledger.py) for the stages this state lacks, so
        they are skipped as done; whether any was taken."""
        new = {name: entry for name, entry in entries.items() if name not in self.state}
        if new:
            self.state.update(new)
            self._save()
        return bool(new)

    def reuse(self, name: str, entry: dict[str, Any]) -> dict[str, Any]:
        """A stage whose output is no longer needed (its model evaluated and kept in the ledger): its recorded
        command and seconds, not run."""
        self.commands.append(entry["command"])
        self.timings[name] = entry.get("seconds", 0.0)
        self.say(f"{name}: done before, kept in the ledger ({entry.get('seconds', 0)} s then)")
        return entry["summary"]

    def step(self, name: str, description: str, output: Path, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """An in-process step (``work()`` writes ``output`` and returns its summary), skipped when it was done
        before for the same output and that output is still there."""
        self.commands.append(f"# {description}")
        entry = self.state.get(name)
        key = str(output)
        if entry and entry.get("key") == key and Path(output).exists():
            self.timings[name] = entry.get("seconds", 0.0)
            self.say(f"{name}: done before, skipped")
            return entry["summary"]
        self.say(f"{name}: {description}")
        start = time.monotonic()
        summary = work()
        seconds = time.monotonic() - start
        self.state[name] = {"key": key, "summary": summary, "command": f"# {description}",
                            "seconds": round(seconds, 1), "machine": machine()}
        self._save()
        self.timings[name] = round(seconds, 1)
        self.ran.append(name)
        self.say(f"{name}: finished in {seconds:.1f} s")
        return summary


def finished_snapshot(folder: Path) -> Callable[[], dict[str, Any] | None]:
    """For ``StageRunner.cli(existing=...)``: a finished mix snapshot's summary from its manifest, else None."""
    def read() -> dict[str, Any] | None:
        if not (folder / "manifest.yaml").exists():
            return None
        from core.mix.snapshot import read_manifest

        manifest = read_manifest(folder)
        return {**manifest, "candidates": manifest.get("general", {}).get("candidates"), "out": str(folder)}
    return read


def reconstruct_batch_size(n: int) -> int:
    """Samples per reconstruction batch for ``n`` instructions: about a quarter of samples are dropped as
    fragments, so half again as many, between 8 and 64."""
    return min(64, max(8, math.ceil(n * 1.5)))


def screen_threshold(run: StageRunner, workspace: Any, quantile: float) -> tuple[int, float | None]:
    """How many instructions have a best response, and the ``quantile`` of their consensus scores: the
    ``--min-score`` that drops the rest (None at quantile 0). Asked every time: the store may have changed."""
    query = (f"SELECT count(*) AS n, quantile_cont(mean, {quantile}) AS q FROM best_responses "
             "WHERE isfinite(mean)")
    n, q = run.cli("screen-threshold", ["sql", "--workspace", workspace, query], always=True)["rows"][0]
    # Rounded down so the row at the quantile itself passes `>=` despite float printing.
    return n, (math.floor(q * 1e4) / 1e4 if quantile > 0 and q is not None else None)


def finished_run(folder: Path) -> Callable[[], dict[str, Any] | None]:
    """For ``StageRunner.cli(existing=...)``: a finished training run's summary.json (its ``adapter/`` or full
    ``model/`` saved), else None."""
    def read() -> dict[str, Any] | None:
        done = ((folder / "adapter").is_dir() or (folder / "model").is_dir()) and (folder / "summary.json").exists()
        return json.loads((folder / "summary.json").read_text(encoding="utf-8")) if done else None
    return read


def checkpoint_every(steps: int) -> int:
    """``--save-steps`` for a run of ``steps``: about four checkpoints, at most every 50 steps; a run of a few
    steps saves only at its end (a full model's checkpoint with optimizer state is ~1.6 GB at 135M)."""
    return max(1, min(50, steps // 4)) if steps >= 8 else steps


def train_once(run: StageRunner, name: str, argv: Sequence[Any], out: Path) -> dict[str, Any]:
    """``forgetless train <argv>`` (its ``--out`` is ``out``) once: skipped when finished, continued with
    ``--resume`` from its newest checkpoint when an earlier attempt was interrupted. A finished run's
    checkpoints are deleted: its saved model or adapter is what the experiment uses, and full fine-tuning
    checkpoints fill a disk quickly."""
    argv = [str(part) for part in argv]
    interrupted = (out.is_dir() and any((out / "checkpoints").glob("checkpoint-*"))
                   and finished_run(out)() is None)
    summary = run.cli(name, [*argv, "--resume"] if interrupted else argv, resume_key=" ".join(argv),
                      existing=finished_run(out))
    if finished_run(out)() is not None:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    return summary


def machine() -> dict[str, Any]:
    """The CPU this ran on (the figures depend on it): model name, family/model numbers (a name like "AMD EPYC"
    covers several generations) and its bf16 support."""
    from core.engines.models import cpu_bf16_support, cpu_family_model, cpu_model_name

    numbers = cpu_family_model()
    family_model = {"family_model": numbers} if numbers else {}
    return {"cpu": cpu_model_name(), **family_model, "bf16": cpu_bf16_support(), "python": platform.python_version()}


def same_machine(one: dict[str, Any], other: dict[str, Any]) -> bool:
    """Whether two machine() records name the same kind of machine, on the keys both have (older records lack
    the family/model numbers)."""
    return all(one[key] == other[key] for key in one.keys() & other.keys())


def machine_label(record: dict[str, Any] | None) -> str:
    """A machine() record in a few words, e.g. "AMD EPYC 25/17 (AVX512-BF16)"."""
    if not record:
        return "machine not recorded"
    numbers = f" {record['family_model']}" if record.get("family_model") else ""
    return f"{record['cpu']}{numbers} ({record['bf16']})"
