"""`forgetless coverage`: how the profiled instructions spread over clusters, categories and difficulty levels
against a target (uniform or a reference set), the imbalance in one number, and the rows each cell lacks."""

from __future__ import annotations

import argparse
from typing import Any

from core.cli.common import Stages, add_stage, emit
from core.cli.flags import add_settings, config_from_args
from core.errors import ForgetlessError
from core.profile.coverage import DIMENSIONS, CoverageConfig, coverage_report
from core.store import STORE_FILE, Store

_LABEL_WIDTH = 40


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _cell_name(row: dict[str, Any]) -> str:
    name = str(row["cell"]) + (f" · {row['label']}" if row.get("label") else "")
    return name if len(name) <= _LABEL_WIDTH else name[: _LABEL_WIDTH - 1] + "…"


def dimension_table(name: str, dimension: dict[str, Any]) -> str:
    """One dimension as an aligned text table (cell, rows, share, target share, deficit) under a heading line."""
    kl = "-" if dimension["kl"] is None else f"{dimension['kl']:.3f} nats"
    missing = f", {dimension['missing']} without a value" if dimension["missing"] else ""
    lines = [f"{name} — target {dimension['target']}, {dimension['rows']} rows{missing}, KL(observed‖target) {kl}"]
    if dimension["note"]:
        lines.append(f"  note: {dimension['note']}")
    if dimension["cells"]:
        lines.append(f"  {'cell':<{_LABEL_WIDTH}} {'rows':>6} {'share':>7} {'target':>7} {'deficit':>7}")
        for row in dimension["cells"]:
            lines.append(f"  {_cell_name(row):<{_LABEL_WIDTH}} {row['rows']:>6} {_percent(row['share']):>7} "
                         f"{_percent(row['target_share']):>7} {row['deficit']:>7}")
    return "\n".join(lines)


def imbalance_line(report: dict[str, Any]) -> str:
    figures = report["imbalance"]
    kls = " · ".join(f"{d} {'-' if figures[f'{d}_kl'] is None else format(figures[f'{d}_kl'], '.3f')}"
                     for d in DIMENSIONS)
    top = report["dimensions"]["cluster"]["largest_10pct"]
    return (f"imbalance: KL(observed‖target) {kls} nats; the largest 10% of clusters ({top['clusters']}) hold "
            f"{_percent(top['share'])} of rows (target {_percent(top['target_share'])})")


def format_report(report: dict[str, Any]) -> str:
    """The human output: the rows counted, one table per dimension, the reference used and the imbalance."""
    counted = "all profiled rows" if report["include_duplicates"] else "near-duplicate representatives"
    head = f"coverage of {report['rows']} rows ({counted}; {report['profiled']} profiled"
    head += f", {report['unprofiled']} stored instructions not profiled yet)" if report["unprofiled"] else ")"
    parts = [head]
    reference = report["reference"]
    if reference:
        source = "cached" if reference["cached"] else f"embedded in {reference['seconds']} s"
        parts.append(f"reference: {reference['texts']} texts of {reference['source']}, embedder "
                     f"{reference['embedder']} ({source}), assigned to the nearest cluster centroid")
    parts += [dimension_table(name, report["dimensions"][name]) for name in DIMENSIONS]
    parts.append(imbalance_line(report))
    return "\n\n".join(parts)


def cmd_coverage(args: argparse.Namespace) -> None:
    config = config_from_args(CoverageConfig, args)
    if not (args.workspace / STORE_FILE).exists():  # a read: no empty store is created for it
        raise ForgetlessError(f"no store in {args.workspace}: run `forgetless reconstruct`, then "
                              "`forgetless profile` first")
    report = coverage_report(Store.for_workspace(args.workspace), config)
    emit(report, args.json, format_report(report))


def add_coverage_stage(stages: Stages) -> None:
    sub = add_stage(stages, "coverage", "how the profiled instructions spread over clusters, categories and "
                                        "difficulty against a target, with the rows each cell lacks")
    add_settings(sub, CoverageConfig)
    sub.set_defaults(handler=cmd_coverage)
