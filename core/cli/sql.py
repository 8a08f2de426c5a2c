"""`forgetless sql`: one read-only SELECT on the store (no writes, no file access)."""

from __future__ import annotations

import argparse
import json

import pandas as pd

from core.cli.common import Stages, add_stage, emit
from core.store import STORE_FILE
from core.store.sql_safety import run_readonly_sql


def cmd_sql(args: argparse.Namespace) -> None:
    frame = run_readonly_sql(args.workspace / STORE_FILE, args.query, max_rows=args.max_rows)
    truncated = bool(frame.attrs.get("truncated"))
    if args.json:
        rows = json.loads(frame.to_json(orient="values", date_format="iso"))
        emit({"columns": [str(c) for c in frame.columns], "rows": rows, "n_rows": len(frame),
              "truncated": truncated}, True, "")
        return
    with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 200,
                           "display.max_colwidth", 80):
        print(frame.to_string(index=False))
    if truncated:
        print(f"(only the first {args.max_rows} rows; raise --max-rows to see more)")


def add_sql_stage(stages: Stages) -> None:
    sql = add_stage(stages, "sql", "run one read-only SELECT on the store (no writes, no file access)")
    sql.add_argument("query", help='e.g. "SELECT model, count(*) FROM responses GROUP BY model"')
    sql.add_argument("--max-rows", type=int, default=1000)
    sql.set_defaults(handler=cmd_sql)
