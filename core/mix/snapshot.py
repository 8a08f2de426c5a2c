"""Frozen mixes: a snapshot folder training reads (never the live store), and the list of past ones.

A snapshot folder holds ``train.parquet`` (chat ``messages`` plus provenance columns), ``manifest.yaml``
(where every row came from and how it was chosen, with content hashes), the ``config.yaml`` it was made
with and a dataset card ``README.md`` whose front matter lets ``datasets.load_dataset(folder)`` find the
data. It is written into a hidden sibling folder and renamed into place, so a crash never leaves half a
snapshot, and an existing non-empty folder is never overwritten.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from core import __version__
from core.config import to_yaml
from core.errors import ForgetlessError
from core.folders import check_out_free, staged_folder
from core.mix.rows import rows_sha256

MIXES_DIR = "mixes"
TRAIN_FILE = "train.parquet"
MANIFEST_FILE = "manifest.yaml"
SNAPSHOT_COLUMNS = ("name", "created", "general", "domain", "total", "ratio", "ratio_achieved", "by", "balance",
                    "domain_spec", "limited_by", "path")


def mixes_dir(workspace: Path) -> Path:
    """Where the app keeps snapshots: ``<workspace>/mixes/<name>``."""
    return Path(workspace) / MIXES_DIR


def file_sha256(path: Path) -> str:
    """The hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def input_sha256(spec: str) -> str | None:
    """sha256 of the domain input as given: the file, or a folder's files (relative path and bytes, in
    path order); None for a builtin set (its rows' hash identifies it)."""
    path = Path(spec).expanduser()
    if path.is_file():
        return file_sha256(path)
    if not path.is_dir():
        return None
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode() + b"\0" + file_sha256(file).encode())
    return digest.hexdigest()


_SCHEMA_COLUMNS = ("source", "origin_id", "cluster", "cluster_label", "category", "consensus", "difficulty")
WRITE_BATCH_ROWS = 1024  # rows materialised at a time while writing train.parquet


def _train_schema() -> Any:
    import pyarrow as pa

    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    return pa.schema([
        ("messages", pa.list_(message)), ("source", pa.string()), ("origin_id", pa.string()),
        ("cluster", pa.int64()), ("cluster_label", pa.string()), ("category", pa.string()),
        ("consensus", pa.float64()), ("difficulty", pa.float64()),
    ])


def _train_batch(rows: pd.DataFrame, conversations: list[list[dict[str, str]]], schema: Any) -> Any:
    import pyarrow as pa

    messages = [[{"role": m["role"], "content": m["content"]} for m in conversation] for conversation in conversations]

    def column(name: str) -> list[Any]:
        return [None if pd.isna(value) else value for value in rows[name]]

    return pa.table({"messages": messages, **{name: column(name) for name in _SCHEMA_COLUMNS}}, schema=schema)


def write_train_file(plan: Any, path: Path) -> None:
    """``train.parquet`` of a plan, written a batch of rows at a time (domain rows read from their spool)."""
    import pyarrow.parquet as pq

    schema = _train_schema()
    with pq.ParquetWriter(path, schema) as writer:
        start = 0
        for conversations in plan.conversation_batches(WRITE_BATCH_ROWS):
            rows = plan.rows.iloc[start:start + len(conversations)]
            writer.write_table(_train_batch(rows, conversations, schema))
            start += len(conversations)


def _card(name: str, manifest: dict[str, Any]) -> str:
    front = {
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": TRAIN_FILE}]}],
        "pretty_name": f"Forgetless mix {name}", "tags": ["forgetless", "sft", "synthetic", "chat"],
    }
    counts, tokens, domain, general = manifest["counts"], manifest["tokens"], manifest["domain"], manifest["general"]
    source = f"the saved selection `{general['selection']}`" if general["selection"] else "the filters below"
    notes = "".join(f"\n- {note}" for note in manifest["notes"]) or "\n- none"
    return f"""---
{yaml.safe_dump(front, sort_keys=False).strip()}
---
# Forgetless mix `{name}`

A supervised fine-tuning set in chat format (`messages`: role/content turns ending with the assistant's
answer) that mixes **domain data** with **reconstructed general data**, following "Improved Supervised
Fine-Tuning for Large Language Models to Mitigate Catastrophic Forgetting" (arXiv 2506.09428): the general
part replays instructions sampled from the aligned model's own pre-query template, each with its best
response as screened by judge models, so tuning on the domain forgets less.

| | examples | tokens ({tokens['tokenizer']}) |
|---|---|---|
| general | {counts['general']} | {tokens['general']} |
| domain | {counts['domain']} | {tokens['domain']} |
| total | {counts['total']} | {tokens['total']} |

- ratio (general share, by {manifest['by']}): requested {manifest['ratio']}, achieved {manifest['ratio_achieved']:.4f}
- balance of the general rows: {manifest['balance']}; seed {manifest['seed']}
- domain data: `{domain['spec']}` ({domain['import_report']})
- general data: {source}, {general['candidates']} candidates; filters `{json.dumps(general['filters'])}`
- notes:{notes}

Columns: `messages`, `source` (general | domain), `origin_id` (instruction id, or `<domain>:<row>`), and for
general rows `cluster`, `cluster_label`, `category`, `consensus` (judges' mean score of the response) and
`difficulty` (1-5). `manifest.yaml` holds the full provenance, content hashes and the ids of the general
instructions used (instructions outside this list are held out for measuring forgetting).

Load it with `datasets.load_dataset("parquet", data_files="{TRAIN_FILE}")` or `datasets.load_dataset("<this folder>")`.
Made by Forgetless {__version__} on {manifest['created']}.
"""


def write_snapshot(plan: Any, out: Path) -> dict[str, Any]:
    """Write ``plan`` (a MixPlan) as a snapshot folder at ``out``; return its summary (with ``out``)."""
    out = Path(out)
    check_out_free(out)
    with staged_folder(out) as staging:
        write_train_file(plan, staging / TRAIN_FILE)
        summary = plan.summary()
        report = plan.domain.report
        manifest = {
            "name": out.name, "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "forgetless_version": __version__,
            **{key: summary[key] for key in ("ratio", "ratio_achieved", "by", "balance", "seed", "counts", "tokens",
                                             "limited_by", "notes")},
            "domain": {
                "spec": plan.config.domain, "name": plan.domain.name, "import_report": report.summary_line(),
                "format": report.format, "rows_read": report.rows_read, "rows_kept": report.rows_kept,
                "bad_rows": report.skipped, "train_rows": plan.domain_available,
                "max_domain": plan.config.max_domain, "input_sha256": input_sha256(plan.config.domain),
                "rows_sha256": rows_sha256(plan.domain.train),
                # only when rows were held out, so manifests of other mixes stay as they were
                **({"test_fraction": plan.config.domain_test_fraction, "held_out_rows": len(plan.domain.test),
                    "held_out_sha256": rows_sha256(plan.domain.test)} if plan.config.domain_test_fraction > 0
                   else {}),
            },
            "general": {
                "selection": plan.config.selection, "filters": json.loads(plan.filters.to_json()),
                "candidates": plan.candidates, "instruction_ids": plan.general_ids(),
                # only when rows were held out, so manifests of other mixes stay as they were
                **({"holdout": plan.config.general_holdout, "held_out_ids": list(plan.general_held_out)}
                   if plan.config.general_holdout > 0 else {}),
            },
            "files": {TRAIN_FILE: {"sha256": file_sha256(staging / TRAIN_FILE), "rows": len(plan.rows)}},
        }
        (staging / MANIFEST_FILE).write_text(yaml.safe_dump(manifest, sort_keys=False, allow_unicode=True),
                                             encoding="utf-8")
        (staging / "config.yaml").write_text(to_yaml(plan.config), encoding="utf-8")
        (staging / "README.md").write_text(_card(out.name, manifest), encoding="utf-8")
    return {**summary, "out": str(out), "sha256": manifest["files"][TRAIN_FILE]["sha256"]}


def read_manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST_FILE
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise ForgetlessError(f"cannot read {path}: {str(error).splitlines()[0]}") from error
    if not isinstance(data, dict):
        raise ForgetlessError(f"{path} is not a snapshot manifest")
    return data


def list_snapshots(workspace: Path) -> pd.DataFrame:
    """The snapshots under ``<workspace>/mixes``, newest first (unreadable manifests are skipped)."""
    rows = []
    for manifest_path in sorted(mixes_dir(workspace).glob(f"*/{MANIFEST_FILE}")):
        try:
            manifest = read_manifest(manifest_path.parent)
            counts = manifest["counts"]
            rows.append((manifest_path.parent.name, manifest["created"], counts["general"], counts["domain"],
                         counts["total"], manifest["ratio"], manifest["ratio_achieved"], manifest["by"],
                         manifest["balance"], manifest["domain"]["spec"], manifest.get("limited_by"),
                         str(manifest_path.parent)))
        except (ForgetlessError, KeyError, TypeError):
            continue
    frame = pd.DataFrame(rows, columns=list(SNAPSHOT_COLUMNS))
    return frame.sort_values(["created", "name"], ascending=[False, True], ignore_index=True)
