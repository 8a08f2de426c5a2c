"""The evidence experiment's ledger: what its costly stages produced, kept beside the report (``docs/evidence_runs/``,
committed) so a session on a fresh machine, with an empty workspace, goes on where the last one stopped.

A workspace is scratch space and has been lost between sessions; the experiment needs about a day of this
machine's time. The ledger holds, as Parquet (zstd) and JSON:

- ``synthesis/``: every store table the general data's stages filled (reconstruct, respond, judge and its checks),
  with the records of those stages (commands, seconds, summaries), complete once all three finished;
- ``<run>/`` (``base-float32``, ``a-s0``, ...): one evaluated model's rows (``eval_items``, ``eval_results`` and the
  ``jobs`` of its evaluation jobs) and the stage records of its training and evaluations, complete once all its
  evaluations finished.

``restore`` puts the rows into a store that lacks them and the records into the stage runner's state (the recorded
workspace path replaced by this one), so those stages are skipped with their recorded costs. Models are not kept
(0.5 GB each in fp32): a run whose evaluations are in the ledger is not needed again, except arm (a)'s for (e)'s
interpolation, which is then trained again. Mixes are not kept either: they are rebuilt from the restored general
data in seconds.

A session that has to stop mid-stage keeps what is finished so far (``snapshot``, also run as
``python experiments/evidence_ledger.py --workspace W``): the general data's rows as they are (the stage in
progress resumes from them) and each model's finished evaluations, as *partial* entries without the training
record, so the model is trained again (same seed and data) for the evaluations still to run.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.stage_runner import StageRunner, machine  # noqa: E402

LEDGER = "evidence_runs"  # beside the report (docs/)
SYNTHESIS = "synthesis"
SYNTHESIS_STAGES = ("reconstruct", "respond", "judge")
RUN_TABLES = ("eval_items", "eval_results", "jobs")  # rows of a run's evaluation jobs (column job_id)
_NOT_SYNTHESIS = {"eval_items", "eval_results", "schema_version", "comparisons"}  # nor the explore_* caches
_RECORD = "stages.json"


def has(ledger: Path, name: str) -> bool:
    """Whether the ledger holds ``name`` (``synthesis`` or a run) complete."""
    return (ledger / name / _RECORD).exists() and record(ledger, name)["complete"]


def record(ledger: Path, name: str) -> dict[str, Any]:
    """``name``'s record: {"workspace", "machine", "complete", "stages": {stage: the runner's entry}}."""
    return json.loads((ledger / name / _RECORD).read_text(encoding="utf-8"))


def kept_stage(ledger: Path, name: str, stage: str, workspace: Path) -> dict[str, Any]:
    """One stage's record as ``name``'s entry kept it, its paths in ``workspace``."""
    return _stages_here(record(ledger, name), workspace)[stage]


def _stages_here(kept: Mapping[str, Any], workspace: Path) -> dict[str, Any]:
    """A record's stages with the workspace they ran in replaced by ``workspace`` (commands, keys and outputs name
    it), each with the machine it ran on (the record's, for stages recorded before the runner kept their own)."""
    def inner(path: Any) -> str:
        return json.dumps(str(path))[1:-1]
    stages = json.loads(json.dumps(kept["stages"]).replace(inner(kept["workspace"]), inner(workspace)))
    return {name: {"machine": kept["machine"], **entry} for name, entry in stages.items()}


def save_synthesis(ledger: Path, workspace: Path, run: StageRunner) -> bool:
    """Keep the general data's store tables and the records of its finished stages (complete when all three are),
    unless the ledger has them complete; whether it wrote."""
    if has(ledger, SYNTHESIS):
        return False
    from core.store import Store

    finished = {name: run.state[name] for name in SYNTHESIS_STAGES if name in run.state}
    with Store.for_workspace(workspace).read() as con:
        tables = [name for (name,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()
                  if name not in _NOT_SYNTHESIS and not name.startswith("explore_")]
        where = {table: "WHERE kind <> 'eval'" if table == "jobs" else "" for table in tables}  # runs keep theirs
        _write(ledger / SYNTHESIS, con, where, [], workspace, finished, len(finished) == len(SYNTHESIS_STAGES))
    run.say(f"ledger: kept the general data ({', '.join(finished) or 'no stage'} finished) in {ledger / SYNTHESIS}")
    return True


def save_run(ledger: Path, workspace: Path, run: StageRunner, name: str, jobs: Iterable[str],
             stages: Iterable[str], complete: bool = True) -> bool:
    """Keep one evaluated model's rows (its evaluation ``jobs``) and ``stages``' records, unless the ledger has it
    complete; whether it wrote."""
    if has(ledger, name):
        return False
    from core.store import Store

    job_ids = sorted(set(jobs))
    marks = ", ".join("?" for _ in job_ids)
    with Store.for_workspace(workspace).read() as con:
        _write(ledger / name, con, {table: f"WHERE job_id IN ({marks})" for table in RUN_TABLES}, job_ids,
               workspace, {stage: run.state[stage] for stage in stages}, complete)
    run.say(f"ledger: kept {name}{'' if complete else ' (partial)'} in {ledger / name}")
    return True


def snapshot(ledger: Path, workspace: Path, run: StageRunner) -> list[str]:
    """Keep what this workspace finished that the ledger lacks: the general data so far, and every model's
    finished evaluations (partial, without its training record). Names written."""
    from experiments.evidence_arms import evaluation_stages

    written = [SYNTHESIS] if run.state and save_synthesis(ledger, workspace, run) else []
    models = {stage.split("-", 2)[2] for stage in run.state if stage.startswith("eval-")}
    for name in sorted(model for model in models if not model.startswith("grid-")):
        finished = [stage for stage in evaluation_stages(name) if stage in run.state]
        if save_run(ledger, workspace, run, name, [run.state[stage]["summary"]["job_id"] for stage in finished],
                    finished, complete=False):
            written.append(name)
    return written


def _write(folder: Path, con: Any, tables: Mapping[str, str], params: list[Any], workspace: Path,
           stages: Mapping[str, Any], complete: bool) -> None:
    """Each table's rows (``WHERE`` clause) as Parquet, then the record last: a folder without it is unfinished and
    is written again."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for table, where in tables.items():
        rows = con.sql(f"SELECT * FROM {table} {where}", params=params or None)  # names from the schema
        if rows.shape[0]:
            rows.write_parquet(str(folder / f"{table}.parquet"), compression="zstd")
    body = {"workspace": str(workspace), "machine": machine(), "complete": complete, "stages": stages}
    (folder / _RECORD).write_text(json.dumps(body, indent=1, default=str), encoding="utf-8")


def restore(ledger: Path, workspace: Path, run: StageRunner) -> list[str]:
    """Put every ledger entry, complete or partial, that this workspace lacks into its store and the runner's
    state; the names of those that brought a stage record."""
    if not ledger.is_dir():
        return []
    from core.store import Store

    store = Store.for_workspace(workspace)
    restored = []
    for folder in sorted(path for path in ledger.iterdir() if (path / _RECORD).exists()):
        stages = _stages_here(record(ledger, folder.name), workspace)
        with store.write() as con:
            inserting = _lacks(con, folder)
            if inserting:
                for table in sorted(folder.glob("*.parquet")):
                    keyed = con.execute("SELECT count(*) FROM duckdb_constraints() WHERE table_name = ? AND "
                                        "constraint_type = 'PRIMARY KEY'", [table.stem]).fetchone()[0]
                    con.execute(f"INSERT {'OR IGNORE ' if keyed else ''}INTO {table.stem} BY NAME "
                                "SELECT * FROM read_parquet(?)", [str(table)])
        if inserting and folder.name == SYNTHESIS:
            store.refresh_explore_rows()  # the cache `mix` selects from, rebuilt as the judge stage does
        if run.adopt(stages):
            restored.append(folder.name)
    if restored:
        run.say(f"ledger: restored {', '.join(restored)} from {ledger}")
    return restored


def _lacks(con: Any, folder: Path) -> bool:
    """Whether the store lacks this entry's rows (the general data: any instruction; a run: its eval items)."""
    if folder.name == SYNTHESIS:
        return con.execute("SELECT count(*) FROM instructions").fetchone()[0] == 0
    items = folder / "eval_items.parquet"
    return items.exists() and con.execute(
        "SELECT count(*) FROM eval_items WHERE job_id IN (SELECT DISTINCT job_id FROM read_parquet(?))",
        [str(items)]).fetchone()[0] == 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Keep what an evidence workspace finished so far in the ledger "
                                     "(before a session ends mid-stage); commit it with the report.")
    parser.add_argument("--workspace", type=Path, required=True, help="the experiment's workspace")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "docs",
                        help="the report's folder (the ledger is its evidence_runs/)")
    args = parser.parse_args(argv)
    run = StageRunner(args.workspace / "experiment", name="ledger")
    written = snapshot(args.out / LEDGER, args.workspace, run)
    run.say(f"kept {', '.join(written)}" if written else "nothing new to keep")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
