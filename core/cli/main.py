"""`forgetless <stage> ...`: every stage runnable headless (the console script and ``python -m core.cli``).

This module only assembles the stages' parsers and runs one; each stage family lives in its own module,
its flags generated from its config dataclass (core/cli/flags.py). Errors print one line on stderr and
exit non-zero (a traceback only with --debug); ``--json`` prints one JSON summary as the last line of stdout.
"""

from __future__ import annotations

import argparse
import sys

from core.cli.common import Parser, quiet_libraries
from core.cli.compare import add_compare_stage
from core.cli.coverage import add_coverage_stage
from core.cli.engine import add_engine_stage
from core.cli.eval import add_eval_stage
from core.cli.export import add_export_stage
from core.cli.judge_check import add_judge_check_stage
from core.cli.mix import add_mix_stage
from core.cli.pipeline import add_pipeline_stage
from core.cli.profile import add_profile_stage
from core.cli.reconstruct import add_reconstruct_stages
from core.cli.screen import add_screen_stages
from core.cli.sql import add_sql_stage
from core.cli.train import add_train_stage
from core.errors import ForgetlessError

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="forgetless", description="Fine-tune an aligned LLM on domain data without forgetting.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    stages = parser.add_subparsers(dest="stage", required=True, parser_class=Parser)
    add_reconstruct_stages(stages)  # prequery, reconstruct
    add_screen_stages(stages)  # respond, judge
    add_judge_check_stage(stages)
    add_profile_stage(stages)
    add_coverage_stage(stages)
    add_eval_stage(stages)
    add_compare_stage(stages)
    add_train_stage(stages)
    add_export_stage(stages)
    add_mix_stage(stages)
    add_sql_stage(stages)
    add_engine_stage(stages)  # start, status, stop: the managed vLLM servers
    add_pipeline_stage(stages)  # every stage in order from one YAML
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        quiet_libraries()
        args.handler(args)
    except ForgetlessError as error:
        if debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # anything unexpected still gets one line; --debug shows where
        if debug:
            raise
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        print(f"error: {type(error).__name__}: {first} (rerun with --debug for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
