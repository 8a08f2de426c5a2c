"""`forgetless mix`: its arguments and handler (kept out of core/cli.py, which only registers them)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

_BAR_ABOVE = 2000  # tokenizing fewer conversations than this takes about a second: no bar


def add_mix_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="a MixConfig YAML (flags override its fields)")
    parser.add_argument("--domain", help="domain data: a JSONL/JSON/CSV/Parquet file, a datasets folder, "
                                         "or builtin:medmcqa")
    parser.add_argument("--ratio", type=float, help="share of general (reconstructed) data in the result, in [0, 1)")
    parser.add_argument("--selection", help="a saved Explore selection naming the general data (or use filters)")
    parser.add_argument("--min-score", type=float, help="best response's consensus score >= this")
    parser.add_argument("--max-score", type=float, help="best response's consensus score <= this")
    parser.add_argument("--max-std", type=float, help="judges' spread on the best response <= this")
    parser.add_argument("--min-difficulty", type=float)
    parser.add_argument("--max-difficulty", type=float)
    parser.add_argument("--clusters", help="comma-separated cluster ids, e.g. 1,2")
    parser.add_argument("--categories", help="comma-separated categories, e.g. coding,math")
    parser.add_argument("--hide-duplicates", action="store_true", help="keep one instruction per near-duplicate group")
    parser.add_argument("--search", help="instructions containing this text (case-insensitive)")
    parser.add_argument("--where", help="a read-only SQL condition over the Explore columns")
    parser.add_argument("--by", choices=("examples", "tokens"), help="what the ratio counts (default examples)")
    parser.add_argument("--balance", choices=("proportional", "clusters", "difficulty"),
                        help="how general rows are picked (default proportional)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--max-domain", type=int, help="use at most this many domain rows (a seeded sample)")
    parser.add_argument("--domain-test-fraction", type=float,
                        help="hold out this share of your own domain rows (by content hash) and never train on "
                             "them; `eval --domain` with the same fraction scores them (not for builtin:medmcqa)")
    parser.add_argument("--tokenizer-model", help="MODEL whose tokenizer counts tokens (default smollm2-135m-instruct)")
    parser.add_argument("--out", type=Path, help="the snapshot folder to write (must not exist or be empty)")


def _split(text: str | None) -> list[str] | None:
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


def _filter_flags(args: argparse.Namespace) -> dict[str, Any]:
    values = {
        "consensus_min": args.min_score, "consensus_max": args.max_score, "max_std": args.max_std,
        "difficulty_min": args.min_difficulty, "difficulty_max": args.max_difficulty,
        "clusters": _split(args.clusters), "categories": _split(args.categories),
        "hide_duplicates": args.hide_duplicates or None, "search": args.search, "where": args.where,
    }
    return {key: value for key, value in values.items() if value is not None}


def mix_config(args: argparse.Namespace) -> Any:
    """The MixConfig of a command line: its YAML (--config) if given, then every flag set on top."""
    from core.config import load_yaml, to_dict
    from core.errors import ForgetlessError
    from core.mix import MixConfig

    values = to_dict(load_yaml(MixConfig, args.config)) if args.config else {}
    overrides = {
        "domain": args.domain, "ratio": args.ratio, "selection": args.selection, "filters": _filter_flags(args) or None,
        "by": args.by, "balance": args.balance, "seed": args.seed, "max_domain": args.max_domain,
        "tokenizer_model": args.tokenizer_model,
        "domain_test_fraction": args.domain_test_fraction, "out": str(args.out) if args.out else None,
    }
    values.update({key: value for key, value in overrides.items() if value is not None})
    if not values.get("domain"):
        raise ForgetlessError("mix needs --domain (a file, a folder or builtin:medmcqa)")
    if "ratio" not in values:
        raise ForgetlessError("mix needs --ratio (the share of general data, in [0, 1))")
    if not values.get("out"):
        raise ForgetlessError("mix needs --out (the snapshot folder to write)")
    return MixConfig(**values)


def cmd_mix(args: argparse.Namespace) -> None:
    from core.cli import _emit, _progress_bar
    from core.mix import freeze_mix
    from core.store import Store

    config = mix_config(args)
    bar = None

    def on_progress(done: int, total: int) -> None:
        nonlocal bar
        if total < _BAR_ABOVE:
            return
        if bar is None or bar.total != total:
            if bar is not None:
                bar.close()
            bar = _progress_bar(total, f"tokenizing ({config.tokenizer_model})")
        bar.update(done - bar.n)

    summary = freeze_mix(config, Store.for_workspace(args.workspace), args.workspace, on_progress=on_progress)
    if bar is not None:
        bar.close()
    counts, tokens = summary["counts"], summary["tokens"]
    lines = [f"wrote {summary['out']}: {counts['total']} examples ({counts['general']} general + {counts['domain']} "
             f"domain), general share {summary['ratio_achieved']:.4f} by {summary['by']} (asked {summary['ratio']:g}), "
             f"{tokens['total']} tokens ({tokens['general']} general + {tokens['domain']} domain, "
             f"{tokens['tokenizer']})",
             *summary["notes"]]
    _emit(summary, args.json, "\n".join(lines))
