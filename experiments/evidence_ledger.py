"""The evidence experiment's ledger: what its costly stages produced, kept beside the report (``docs/evidence_runs/``,
committed) so a session on a fresh machine, with an empty workspace, goes on where the last one stopped.

A workspace is scratch space and has been lost between sessions; the experiment needs about a day of this
machine's time. The ledger holds, as Parquet (zstd) and JSON:

- ``synthesis/``: every store table the general data's stages filled (reconstruct, respond, judge and its checks),
  written once those stages finished, with their stage records (commands, seconds, summaries);
- ``<run>/`` (``base-float32``, ``a-s0``, ...): one evaluated model's rows (``eval_items``, ``eval_results`` and the
  ``jobs`` of its evaluation jobs) and the stage records of its training and evaluations, written once all its
  evaluations finished.

``restore`` puts the rows into a store that lacks them and the records into the stage runner's state (the recorded
workspace path replaced by this one), so those stages are skipped with their recorded costs. Models are not kept
(0.5 GB each in fp32): a run whose evaluations are in the ledger is not needed again, except arm (a)'s for (e)'s
interpolation, which is then trained again. Mixes are not kept either: they are rebuilt from the restored general
data in seconds.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from experiments.stage_runner import StageRunner, machine

LEDGER = "evidence_runs"  # beside the report (docs/)
SYNTHESIS = "synthesis"
SYNTHESIS_STAGES = ("reconstruct", "respond", "judge")
RUN_TABLES = ("eval_items", "eval_results", "jobs")  # rows of a run's evaluation jobs (column job_id)
_NOT_SYNTHESIS = {"eval_items", "eval_results", "schema_version", "comparisons"}  # nor the explore_* caches
_RECORD = "stages.json"


def has(ledger: Path, name: str) -> bool:
    """Whether the ledger holds ``name`` (``synthesis`` or a run) complete."""
    return (ledger / name / _RECORD).exists()


def record(ledger: Path, name: str) -> dict[str, Any]:
    """``name``'s record: {"workspace", "machine", "stages": {stage: the runner's entry}}."""
    return json.loads((ledger / name / _RECORD).read_text(encoding="utf-8"))


def kept_stage(ledger: Path, name: str, stage: str, workspace: Path) -> dict[str, Any]:
    """One stage's record as ``name``'s entry kept it, its paths in ``workspace``."""
    return _stages_here(record(ledger, name), workspace)[stage]


def _stages_here(kept: Mapping[str, Any], workspace: Path) -> dict[str, Any]:
    """A record's stages with the workspace they ran in replaced by ``workspace`` (commands, keys and outputs name
    it)."""
    def inner(path: Any) -> str:
        return json.dumps(str(path))[1:-1]
    return json.loads(json.dumps(kept["stages"]).replace(inner(kept["workspace"]), inner(workspace)))


def save_synthesis(ledger: Path, workspace: Path, run: StageRunner) -> bool:
    """Keep the general data's store tables and stage records, once (False when the ledger had them)."""
    if has(ledger, SYNTHESIS):
        return False
    from core.store import Store

    with Store.for_workspace(workspace).read() as con:
        tables = [name for (name,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()
                  if name not in _NOT_SYNTHESIS and not name.startswith("explore_")]
        where = {table: "WHERE kind <> 'eval'" if table == "jobs" else "" for table in tables}  # runs keep theirs
        _write(ledger / SYNTHESIS, con, where, [], workspace, {name: run.state[name] for name in SYNTHESIS_STAGES})
    run.say(f"ledger: kept the general data in {ledger / SYNTHESIS}")
    return True


def save_run(ledger: Path, workspace: Path, run: StageRunner, name: str, jobs: Iterable[str],
             stages: Iterable[str]) -> bool:
    """Keep one evaluated model's rows (its evaluation ``jobs``) and ``stages``' records, once."""
    if has(ledger, name):
        return False
    from core.store import Store

    job_ids = sorted(set(jobs))
    marks = ", ".join("?" for _ in job_ids)
    with Store.for_workspace(workspace).read() as con:
        _write(ledger / name, con, {table: f"WHERE job_id IN ({marks})" for table in RUN_TABLES}, job_ids,
               workspace, {stage: run.state[stage] for stage in stages})
    run.say(f"ledger: kept {name} in {ledger / name}")
    return True


def _write(folder: Path, con: Any, tables: Mapping[str, str], params: list[Any], workspace: Path,
           stages: Mapping[str, Any]) -> None:
    """Each table's rows (``WHERE`` clause) as Parquet, then the record last: a folder without it is unfinished and
    is written again."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for table, where in tables.items():
        rows = con.sql(f"SELECT * FROM {table} {where}", params=params or None)  # names from the schema
        if rows.shape[0]:
            rows.write_parquet(str(folder / f"{table}.parquet"), compression="zstd")
    body = {"workspace": str(workspace), "machine": machine(), "stages": stages}
    (folder / _RECORD).write_text(json.dumps(body, indent=1, default=str), encoding="utf-8")


def restore(ledger: Path, workspace: Path, run: StageRunner) -> list[str]:
    """Put every complete ledger entry this workspace lacks into its store and the runner's state; their names."""
    if not ledger.is_dir():
        return []
    from core.store import Store

    store = Store.for_workspace(workspace)
    restored = []
    for folder in sorted(path for path in ledger.iterdir() if has(ledger, path.name)):
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
