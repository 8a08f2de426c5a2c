"""`forgetless mix`: screened general data and domain data at a ratio, frozen as a dataset snapshot."""

from __future__ import annotations

import argparse

from core.cli.common import Stages, add_stage, emit, progress_bar
from core.cli.flags import add_settings, config_values
from core.errors import ForgetlessError
from core.mix.mixing import MixConfig, freeze_mix
from core.store import Store

_BAR_ABOVE = 2000  # tokenizing fewer conversations than this takes about a second: no bar


def mix_config(args: argparse.Namespace) -> MixConfig:
    """The MixConfig of a command line: its YAML (--config) if given, then every flag set on top."""
    values = config_values(MixConfig, args)
    if not values.get("domain"):
        raise ForgetlessError("mix needs --domain (a file, a folder or builtin:medmcqa)")
    if "ratio" not in values:
        raise ForgetlessError("mix needs --ratio (the share of general data, in [0, 1))")
    if not values.get("out"):
        raise ForgetlessError("mix needs --out (the snapshot folder to write)")
    return MixConfig(**values)


def cmd_mix(args: argparse.Namespace) -> None:
    config = mix_config(args)
    bar = None

    def on_progress(done: int, total: int) -> None:
        nonlocal bar
        if total < _BAR_ABOVE:
            return
        if bar is None or bar.total != total:
            if bar is not None:
                bar.close()
            bar = progress_bar(total, f"tokenizing ({config.tokenizer_model})")
        bar.update(done - bar.n)

    summary = freeze_mix(config, Store.for_workspace(args.workspace), args.workspace, on_progress=on_progress)
    if bar is not None:
        bar.close()
    counts, tokens = summary["counts"], summary["tokens"]
    lines = [f"wrote {summary['out']}: {counts['total']} examples ({counts['general']} general + {counts['domain']} "
             f"domain), general share {summary['ratio_achieved']:.4f} by {summary['by']} (asked {summary['ratio']:g}), "
             f"{tokens['total']} tokens ({tokens['general']} general + {tokens['domain']} domain, "
             f"{tokens['tokenizer']})",
             *([f"{summary['general_held_out']} general rows held out for drift (general holdout "
                f"{config.general_holdout:g}), never mixed"] if summary["general_held_out"] else []),
             *summary["notes"]]
    emit(summary, args.json, "\n".join(lines))


def add_mix_stage(stages: Stages) -> None:
    mix = add_stage(stages, "mix", "mix screened general data with domain data at a ratio; freeze it as a dataset "
                                   "snapshot")
    add_settings(mix, MixConfig, asked=("domain", "ratio", "out"))
    mix.set_defaults(handler=cmd_mix)
