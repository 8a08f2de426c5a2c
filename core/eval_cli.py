"""`forgetless eval`: its flags and handler (kept out of core/cli.py, which only registers them)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="an EvalConfig YAML (flags override its fields)")
    parser.add_argument("--model", help="MODEL spec, or a training run folder (config.yaml + adapter/ or model/)")
    parser.add_argument("--suite", help="comma-separated: general, domain, drift (or tasks: arc_easy, piqa, "
                                        "hellaswag, sciq, medmcqa, domain_mcq, domain_ppl) and ifeval (slow: it "
                                        "generates a reply per prompt); default general,domain")
    parser.add_argument("--limit", type=int, help="items per task, a seeded subsample (default: all; HellaSwag 1000)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--base", help="drift's reference MODEL (default: the run's base model)")
    parser.add_argument("--hellaswag-n", type=int, help="HellaSwag's fixed subsample size (default 1000)")
    parser.add_argument("--drift-n", type=int, help="held-out general texts for drift (default 200)")
    parser.add_argument("--domain", help="the domain suite's data: builtin:medmcqa (default, letter accuracy) or a "
                                         "user's FILE/DIR, whose held-out rows are scored by answer perplexity "
                                         "(domain_ppl) and, when multiple choice, by letter accuracy (domain_mcq)")
    parser.add_argument("--domain-test-fraction", type=float,
                        help="user domain data: the held-out share to score, the same rows as `mix "
                             "--domain-test-fraction` with this value leaves out (default 0.2)")
    parser.add_argument("--ifeval-max-new-tokens", type=int,
                        help="ifeval: reply budget per prompt (default 512; fewer is faster, long essays get cut)")
    parser.add_argument("--job-id")


def json_results(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The headline numbers per task for ``--json`` (everything else stays in the store)."""
    letters = ("acc", "stderr", "n", "top_letter", "top_letter_share", "majority_letter_baseline")
    keys = {"drift": ("kl", "ppl_base", "ppl_tuned", "kl_stderr", "n", "tokens"), "medmcqa": letters,
            "domain_mcq": (*letters, "domain", "domain_test_fraction"),
            "domain_ppl": ("nll", "ppl", "nll_stderr", "n", "tokens", "domain", "domain_test_fraction"),
            "ifeval": ("acc", "stderr", "n", "prompt_strict", "instruction_strict", "prompt_loose",
                       "instruction_loose", "instructions")}
    return {task: {k: metrics.get(k) for k in keys.get(task, ("acc", "acc_norm", "stderr", "n"))}
            for task, metrics in results.items()}


def results_table(results: dict[str, dict[str, Any]]) -> str:
    def cell(value: Any) -> str:
        return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = [f"{'task':<10} {'acc':>8} {'acc_norm':>8} {'stderr':>8} {'n':>6}  notes"]
    for task, m in results.items():
        if task == "drift":
            notes = f"kl={cell(m.get('kl'))} ppl base={cell(m.get('ppl_base'))} tuned={cell(m.get('ppl_tuned'))}"
            lines.append(f"{task:<10} {'-':>8} {'-':>8} {cell(m.get('kl_stderr')):>8} {m['n']:>6}  {notes}")
            continue
        if task == "domain_ppl":
            notes = f"nll/token={cell(m.get('nll'))} ppl={cell(m.get('ppl'))} (lower is better)"
            lines.append(f"{task:<10} {'-':>8} {'-':>8} {cell(m.get('nll_stderr')):>8} {m['n']:>6}  {notes}")
            continue
        if task == "ifeval":
            notes = (f"prompt-level strict; instruction-level strict={cell(m.get('instruction_strict'))} "
                     f"loose: prompt={cell(m.get('prompt_loose'))} instruction={cell(m.get('instruction_loose'))}")
            lines.append(f"{task:<10} {cell(m.get('acc')):>8} {'-':>8} {cell(m.get('stderr')):>8} {m['n']:>6}  {notes}")
            continue
        notes = (f"top letter {m['top_letter']} {cell(m['top_letter_share'])}, majority-letter baseline "
                 f"{cell(m['majority_letter_baseline'])}") if task in ("medmcqa", "domain_mcq") else ""
        lines.append(f"{task:<10} {cell(m.get('acc')):>8} {cell(m.get('acc_norm')):>8} {cell(m.get('stderr')):>8} "
                     f"{m['n']:>6}  {notes}")
    return "\n".join(lines)


def cmd_eval(args: argparse.Namespace) -> None:
    from core.cli import _config, _emit, _loader, _run_job
    from core.evaluate import EvalConfig, resolve_target, run_evaluation
    from core.store import Store

    config = _config(args, EvalConfig, {
        "model": args.model, "suite": tuple(args.suite.split(",")) if args.suite is not None else None,
        "limit": args.limit, "seed": args.seed, "batch_size": args.batch_size, "base": args.base,
        "hellaswag_n": args.hellaswag_n, "drift_n": args.drift_n, "job_id": args.job_id, "domain": args.domain,
        "domain_test_fraction": args.domain_test_fraction, "ifeval_max_new_tokens": args.ifeval_max_new_tokens,
    })
    store = Store.for_workspace(args.workspace)
    target = resolve_target(config)
    summary = _run_job(args, "eval", config,
                       lambda **hooks: run_evaluation(config, store, _loader(args.workspace), **hooks),
                       models=(target.load_spec, target.base))
    summary = {**summary, "results": json_results(summary["results"])}
    state = "cancelled" if summary["cancelled"] else "done"
    human = (f"{results_table(summary['results'])}\n{state}: {summary['items_scored']} items scored for "
             f"{summary['model']} (job {summary['job_id']}, {summary['seconds']} s) in {summary['db']}")
    _emit(summary, args.json, human)
