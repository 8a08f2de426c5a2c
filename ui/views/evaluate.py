"""What the Evaluate tab shows, computed without Gradio: side-by-side results, deltas vs a base, history.

Each function reads the stored ``eval_results`` (or a frame of them); for every model and task the newest
result counts. ``read_eval_views`` gathers what the tab shows; the figures are drawn in ui/views/eval_charts.py.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import yaml

from core.eval.deltas import DRIFT_TASK, METRICS, RATE_METRICS, STDERR_OF, metric_value, task_deltas
from core.eval.plan import normalised_spec, target_label
from core.store import Store
from ui.views.eval_charts import delta_figure, history_figure

# The metrics, their standard errors and the deltas' verdicts are core.eval.deltas' (the model card reads the
# same); the delta chart plots the HEADLINE accuracies, the trade-off chart their general mean against the
# domain's answer fit (domain_ppl's NLL, lower is better) where every run has it.
DELTA_COLUMNS = ["task", "metric", "base", "tuned", "delta", "stderr", "change"]


def _expanded(results: pd.DataFrame) -> pd.DataFrame:
    """eval_results with every extra_json metric as its own column."""
    if results.empty:
        return results
    extras = pd.DataFrame([json.loads(text) if text else {} for text in results["extra_json"]], index=results.index)
    return pd.concat([results.drop(columns="extra_json"), extras.drop(columns=[c for c in extras if c in results])],
                     axis=1)


def _latest(store: Store, models: Sequence[str]) -> pd.DataFrame:
    results = _expanded(store.eval_results(models))
    if results.empty:
        return results
    # tail(1), not last(): last() takes each column's newest non-null value, mixing rows of different runs
    return results.sort_values("created_at", kind="stable").groupby(["model", "task"]).tail(1)


def eval_results_frame(store: Store, models: Sequence[str]) -> pd.DataFrame:
    """One row per (task, metric), one column per model (its newest result; NaN where not evaluated)."""
    latest = _latest(store, models)
    rows = []
    for task, metric, _ in METRICS:
        row: dict[str, Any] = {"task": task, "metric": metric}
        for model in models:
            row[model] = metric_value(_newest_row(latest, model, task), metric)
        if any(row[model] is not None for model in models):
            rows.append(row)
    return pd.DataFrame(rows, columns=["task", "metric", *models])


def eval_deltas(store: Store, base: str, tuned: str) -> pd.DataFrame:
    """Per benchmark: base, tuned, delta (tuned - base), its standard error and the verdict.

    ``change`` is gain / loss when the delta is beyond 2 combined standard errors in the better / worse
    direction, else "within noise". Drift rows compare the tuned model's perplexity with its base's on
    the same held-out text, and its KL with 0.
    """
    return _deltas(_latest(store, [base, tuned]), base, tuned)


def _newest_row(latest: pd.DataFrame, model: str, task: str) -> pd.Series | None:
    if not len(latest):
        return None
    found = latest[(latest["model"] == model) & (latest["task"] == task)]
    return found.iloc[-1] if len(found) else None


def _deltas(latest: pd.DataFrame, base: str, tuned: str) -> pd.DataFrame:
    rows = []
    for task in dict.fromkeys(task for task, _, _ in METRICS):
        tuned_row = _newest_row(latest, tuned, task)
        if tuned_row is None:
            continue
        base_row = None if task == DRIFT_TASK else _newest_row(latest, base, task)
        rows += [{"task": task, "metric": found.metric, "base": found.base, "tuned": found.tuned,
                  "delta": found.delta, "stderr": found.stderr, "change": found.verdict}
                 for found in task_deltas(task, base_row, tuned_row) if found.delta is not None]
    return pd.DataFrame(rows, columns=DELTA_COLUMNS)


def eval_history(store: Store) -> pd.DataFrame:
    """Every stored result, oldest first, with each run's mix ratio and mix snapshot's name when known."""
    results = _expanded(store.eval_results())
    if results.empty:
        return results
    mixes = {run: _mix_of(run) for run in results["run_dir"].dropna().unique()}
    for index, column in enumerate(("mix_ratio", "mix")):
        results[column] = [mixes[run][index] if isinstance(run, str) else None for run in results["run_dir"]]
    return results.reset_index(drop=True)


def _mix_of(run_dir: str) -> tuple[float | None, str | None]:
    """The run's mix ratio (from its snapshot manifest) and its snapshot folder's name, each None when unknown."""
    try:
        run = yaml.safe_load((Path(run_dir) / "config.yaml").read_text(encoding="utf-8")) or {}
        snapshot = Path(run["data"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError):  # TypeError: no data path in it
        return None, None
    try:
        manifest = yaml.safe_load((snapshot / "manifest.yaml").read_text(encoding="utf-8")) or {}
        return float(manifest["ratio"]), snapshot.name
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError, AttributeError):
        return None, snapshot.name


# -- the Evaluate tab's table and chart data ----------------------------------------------------------------
# The one number per benchmark the charts use: length-normalised accuracy where options are free text
# (lm-evaluation-harness's convention for these tasks), plain accuracy for the one-letter domain answers.
HEADLINE: tuple[tuple[str, str], ...] = (
    ("arc_easy", "acc_norm"), ("piqa", "acc_norm"), ("hellaswag", "acc_norm"), ("sciq", "acc_norm"), ("medmcqa", "acc"),
    ("ifeval", "prompt_strict"), ("domain_mcq", "acc"),
)
DOMAIN_TASKS = ("medmcqa", "domain_mcq")  # builtin:medmcqa's test split; a user's multiple-choice held-out rows
# The trade-off chart's domain gain when every run has it: the fall of the gold answers' NLL per token
# (domain_ppl), measured for any domain data, free-form too, and for a small model more telling than a letter
# accuracy that mostly tracks which letter it prefers (docs/results.md). Otherwise the accuracies above.
ANSWER_FIT = ("domain_ppl", "nll")
METRIC_LABELS = {"acc": "acc %", "acc_norm": "acc_norm %", "top_letter_share": "top letter share %",
                 "kl": "KL per token (vs base)", "ppl_tuned": "perplexity (base → tuned)",
                 "nll": "NLL per answer token", "ppl": "answer perplexity", "prompt_strict": "prompt-level strict %",
                 "instruction_strict": "instruction-level strict %", "prompt_loose": "prompt-level loose %"}
CHANGE_SYMBOLS = {"gain": "▲", "loss": "▼", "within noise": "≈"}
TABLE_LEGEND = ("Accuracies in %, ± one standard error. In a run's column, (Δ vs the base): ▲ gain, ▼ loss, "
                "≈ within noise (2 standard errors). n: items per task (several when the columns differ).")
POINT_COLUMNS = ["run", "run_dir", "mix_ratio", "mix", "base", "general_change", "general_stderr", "domain_gain",
                 "domain_stderr", "domain_measure"]


def latest_results(history: pd.DataFrame) -> pd.DataFrame:
    """The newest result of every (model, task) in an ``eval_history`` frame."""
    if history.empty:
        return history
    return history.sort_values("created_at", kind="stable").groupby(["model", "task"]).tail(1)


def format_metric(metric: str, value: float) -> str:
    if metric in RATE_METRICS:
        return f"{100 * value:.1f}"
    return f"{value:.4f}" if metric in ("kl", "nll") else f"{value:.2f}"


def _cell(row: pd.Series | None, metric: str) -> str:
    value = metric_value(row, metric)
    if value is None:
        return "—"
    error = metric_value(row, STDERR_OF[metric]) if metric in STDERR_OF else None
    text = format_metric(metric, value)
    return f"{text} ± {format_metric(metric, error)}" if error is not None else text


def _delta_note(deltas: pd.DataFrame, task: str, metric: str) -> str:
    if task == "drift" and metric == "kl":  # KL is already a difference from the base
        return ""
    found = deltas[(deltas["task"] == task) & (deltas["metric"] == metric)]
    if not len(found):
        return ""
    delta, change = float(found["delta"].iloc[0]), str(found["change"].iloc[0])
    if metric == "ppl_tuned":
        return f" (base {format_metric(metric, float(found['base'].iloc[0]))} {CHANGE_SYMBOLS[change]})"
    sign = "+" if delta >= 0 else "−"
    return f" ({sign}{format_metric(metric, abs(delta))} {CHANGE_SYMBOLS[change]})"


def column_labels(base: str, runs: Sequence[str]) -> list[str]:
    """Column names: the base marked as such, each run by its folder name (numbered when two share one)."""
    labels = [f"{target_label(base)} (base)"]
    for run in runs:
        label = target_label(run)
        labels.append(label if label not in labels else f"{label} ({len(labels)})")
    return labels


def side_by_side(latest: pd.DataFrame, base: str, runs: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows: one row per benchmark and metric, one column for the base and each run.

    Each cell is the value ± its standard error; a run's cell adds its change against the base.
    """
    deltas = {run: _deltas(latest, base, run) for run in runs}
    headers = ["benchmark", "metric", "n", *column_labels(base, runs)]
    rows = []
    for task, metric, _ in METRICS:
        found = {model: _newest_row(latest, model, task) for model in (base, *runs)}
        cells = [_cell(found[base], metric) if task != "drift" else "—"]
        cells += [_cell(found[run], metric) + _delta_note(deltas[run], task, metric) for run in runs]
        if all(cell == "—" for cell in cells):
            continue
        counts = [int(row["n"]) for model, row in found.items()
                  if row is not None and (task != "drift" or model != base)]
        rows.append([task, METRIC_LABELS.get(metric, metric), " / ".join(str(n) for n in dict.fromkeys(counts)),
                     *cells])
    return headers, rows


def headline_deltas(deltas: pd.DataFrame) -> pd.DataFrame:
    """The rows of an ``eval_deltas`` frame the delta chart shows: one headline metric per benchmark, in order."""
    keyed = deltas.set_index(["task", "metric"])
    return keyed.loc[[key for key in HEADLINE if key in keyed.index]].reset_index()


def _mean_delta(deltas: pd.DataFrame, wanted: Sequence[tuple[str, str]]) -> tuple[float | None, float | None]:
    """Mean delta over the wanted (task, metric) rows present, and its standard error (None if any is unknown)."""
    found = deltas.set_index(["task", "metric"]).reindex(list(wanted)).dropna(subset=["delta"])
    if not len(found):
        return None, None
    errors = [None if pd.isna(e) else float(e) for e in found["stderr"]]
    stderr = math.sqrt(sum(e * e for e in errors)) / len(errors) if all(e is not None for e in errors) else None
    return float(found["delta"].mean()), stderr


def ratio_points(history: pd.DataFrame, fallback_base: str | None = None) -> pd.DataFrame:
    """One row per evaluated run: its mix ratio and snapshot, the mean general change and the domain gain.

    Each run is compared with its own base (the model it was trained from) when that was evaluated, else
    with ``fallback_base``; the general change averages the headline metric of every general benchmark
    both have, in fractions (the chart shows percentage points). The domain gain is the answer fit's (the fall
    of the answers' NLL per token, ``domain_measure`` "answer fit") when every run with a domain result has it,
    else the domain accuracy's (in fractions): one chart has one unit.
    """
    latest = latest_results(history)
    if latest.empty or "run_dir" not in latest:
        return pd.DataFrame(columns=POINT_COLUMNS)
    general = [(task, metric) for task, metric in HEADLINE if task not in DOMAIN_TASKS]
    domain = [(task, metric) for task, metric in HEADLINE if task in DOMAIN_TASKS]
    rows = []
    evaluated = set(latest["model"])
    for run_dir, group in latest[latest["run_dir"].notna()].groupby("run_dir", sort=False):
        model = str(group["model"].iloc[-1])
        base = next((b for b in group["base_model"].dropna() if b in evaluated and b != model), fallback_base)
        if not base:
            continue
        deltas = _deltas(latest, base, model)
        general_change, general_stderr = _mean_delta(deltas, general)
        accuracy_gain, accuracy_stderr = _mean_delta(deltas, domain)
        nll_change, fit_stderr = _mean_delta(deltas, [ANSWER_FIT])
        if general_change is None and accuracy_gain is None and nll_change is None:
            continue
        ratio = group["mix_ratio"].dropna() if "mix_ratio" in group else pd.Series(dtype=float)
        mix = group["mix"].dropna() if "mix" in group else pd.Series(dtype=object)
        rows.append({"run": target_label(str(run_dir)), "run_dir": run_dir,
                     "mix_ratio": float(ratio.iloc[0]) if len(ratio) else None,
                     "mix": str(mix.iloc[0]) if len(mix) else None, "base": base,
                     "general_change": general_change, "general_stderr": general_stderr,
                     "accuracy": (accuracy_gain, accuracy_stderr),
                     "answer fit": (None if nll_change is None else -nll_change, fit_stderr)})
    with_domain = [row for row in rows if row["accuracy"][0] is not None or row["answer fit"][0] is not None]
    measure = "answer fit" if with_domain and all(row["answer fit"][0] is not None for row in with_domain) \
        else "accuracy"
    for row in rows:
        row["domain_gain"], row["domain_stderr"] = row[measure]
        row["domain_measure"] = measure
    points = pd.DataFrame(rows, columns=POINT_COLUMNS)  # the other measure's key is not a column
    return points.sort_values(["mix_ratio", "run"], na_position="last").reset_index(drop=True)


@dataclass(frozen=True)
class EvalViews:
    """Everything below the Evaluate tab's launcher, for one choice of base and runs."""

    headers: list[str]
    rows: list[list[str]]
    deltas: go.Figure
    history: go.Figure
    note: str


def read_eval_views(store: Store, base: str | None, runs: Sequence[str] | None) -> EvalViews:
    """Read the stored results once and build the side-by-side table, the delta chart and the history chart."""
    base = normalised_spec(base or "")
    runs = [spec for spec in dict.fromkeys(normalised_spec(run) for run in runs or ()) if spec and spec != base]
    history = eval_history(store)
    latest = latest_results(history)
    headers, rows = side_by_side(latest, base, runs) if base else (["benchmark"], [])
    labels = column_labels(base, runs)[1:]
    deltas = {label: headline_deltas(_deltas(latest, base, run)) for label, run in zip(labels, runs, strict=True)}
    figure = delta_figure(deltas, target_label(base)) if base else delta_figure({}, "")
    return EvalViews(headers, rows, figure, history_figure(ratio_points(history, base or None)),
                     _views_note(latest, base, runs))


def _views_note(latest: pd.DataFrame, base: str, runs: Sequence[str]) -> str:
    if not base:
        return "Pick a base model to compare with."
    evaluated = set(latest["model"]) if len(latest) else set()
    missing = [target_label(model) for model in (base, *runs) if model not in evaluated]
    if not evaluated:
        return "No evaluations stored yet: pick the base and the tuned runs, then press Start."
    if missing:
        return f"Not evaluated yet: {', '.join(missing)} (press Start to evaluate them)."
    return TABLE_LEGEND if runs else "Pick one or more tuned runs to compare with the base. " + TABLE_LEGEND
