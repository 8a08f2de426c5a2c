"""The model card of an exported run: ``export_info`` gathers what it says as plain data
(``forgetless_export.json``), ``model_card`` writes it as the folder's README.md (Hugging Face front matter, the
training settings, the mix snapshot's manifest in brief, and the stored evaluation results vs the base, read
as the Evaluate tab reads them: core.eval.deltas).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from core import __version__
from core.engines.models import ALIASES
from core.eval.deltas import DRIFT_TASK, RATE_METRICS, number, task_deltas
from core.eval.plan import normalised_spec, target_label
from core.store.base import STORE_FILE
from core.train.training import TrainConfig

# The hub model each packaged alias was quantised from: the card's base_model, which the Hub links to.
HUB_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct", "gemma-3-270m": "google/gemma-3-270m"}


# -- what the card says, as data -------------------------------------------------------------------------------
def _mix_summary(data: str) -> dict[str, Any]:
    """The snapshot's manifest in brief (what a reader needs to judge the data; the manifest has the rest)."""
    try:
        manifest = yaml.safe_load((Path(data) / "manifest.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        manifest = None
    if not isinstance(manifest, dict):
        return {"path": data, "manifest": None}
    domain, general = manifest.get("domain") or {}, manifest.get("general") or {}
    keys = ("name", "created", "counts", "ratio", "ratio_achieved", "by", "balance", "seed")
    return {"path": data, "manifest": {
        **{key: manifest.get(key) for key in keys}, "domain": domain.get("spec"),
        "domain_test_fraction": domain.get("test_fraction"), "general_holdout": general.get("holdout"),
        "general_held_out": len(general.get("held_out_ids") or []),
        "train_sha256": ((manifest.get("files") or {}).get("train.parquet") or {}).get("sha256"),
    }}


def _limit(value: Any) -> int | None:
    found = number(value)
    return None if found is None else int(found)


def _newest(results: Any, model: str, task: str, prefer: tuple[int | None, int] | None = None) -> dict[str, Any] | None:
    """The newest stored result of ``model`` on ``task``, with its extra metrics (one with ``prefer``'s item
    limit and seed when there is one: the same items as the run's)."""
    found = results[(results["model"] == model) & (results["task"] == task)]
    if prefer is not None:
        same = [(_limit(limit), int(seed)) == prefer for limit, seed in zip(found["item_limit"], found["seed"],
                                                                              strict=True)]
        found = found[same] if any(same) else found
    if not len(found):
        return None
    row = found.iloc[-1].to_dict()  # eval_results lists oldest first
    return {**row, **json.loads(row.get("extra_json") or "{}")}


def eval_vs_base(workspace: Path, run_dir: Path, base: str) -> list[dict[str, Any]]:
    """Per stored task of the run: each metric the task reports (core.eval.deltas), of the run and of its base
    (the same item limit and seed where stored), the change, its standard error and its verdict; [] when the
    workspace stores no evaluation of the run."""
    if not (Path(workspace) / STORE_FILE).exists():
        return []
    from core.store import Store

    tuned_key, base_key = str(Path(run_dir).resolve()), normalised_spec(base)  # as `forgetless eval` keys them
    results = Store.for_workspace(workspace).eval_results([tuned_key, base_key])
    rows = []
    for task in dict.fromkeys(results.loc[results["model"] == tuned_key, "task"]):
        tuned = _newest(results, tuned_key, task)
        assert tuned is not None
        prefer = (_limit(tuned["item_limit"]), int(tuned["seed"]))
        before = _newest(results, base_key, task, prefer) if task != DRIFT_TASK else None
        rows += [{"task": task, "metric": found.metric, "base": found.base, "tuned": found.tuned,
                  "change": found.delta, "stderr": found.stderr, "verdict": found.verdict,
                  "n_base": int(before["n"]) if before else None, "n_tuned": int(tuned["n"]),
                  "item_limit": prefer[0], "seed": prefer[1]}
                 for found in task_deltas(task, before, tuned)]
    return rows


def export_info(run_folder: Path, config: TrainConfig, summary: dict[str, Any], workspace: Path, dtype: str,
                base_folder: str | None) -> dict[str, Any]:
    """Everything the card says about the run at ``run_folder`` (its settings and summary.json), the weights
    written (``dtype``, merged onto ``base_folder`` for a LoRA run) and ``workspace``'s stored evaluations, as plain
    data (``forgetless_export.json``)."""
    return {
        "forgetless_version": __version__, "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "run": str(Path(run_folder).resolve()), "method": config.method, "base_model": config.model,
        "base_folder": base_folder, "dtype": dtype,
        # the learning rate used (the run's YAML keeps None for "the method's default")
        "training": {**{key: value for key, value in asdict(config).items() if key != "out"},
                     "learning_rate": config.resolved_learning_rate()},
        "run_summary": {key: summary.get(key) for key in ("steps", "total_steps", "final_loss", "train_loss",
                                                          "tokens_per_s", "seconds", "dtype", "device",
                                                          "gradient_checkpointing")},
        "mix": _mix_summary(config.data),
        "eval": {"workspace": str(Path(workspace).resolve()),
                 "rows": eval_vs_base(workspace, run_folder, config.model)},
    }


# -- the card as text -----------------------------------------------------------------------------------------
def _value(metric: str, value: float | None) -> str:
    if value is None:
        return "—"
    return f"{100 * value:.1f}%" if metric in RATE_METRICS else f"{value:.4f}"


def _change(row: dict[str, Any]) -> str:
    if row["change"] is None:
        return "— (base not evaluated)"
    scale, digits, unit = (100, 1, " pts") if row["metric"] in RATE_METRICS else (1, 4, "")
    error = f" ± {scale * row['stderr']:.{digits}f}" if row["stderr"] is not None else ""
    return f"{scale * row['change']:+.{digits}f}{error}{unit}"


def _eval_section(info: dict[str, Any]) -> str:
    rows, workspace = info["eval"]["rows"], info["eval"]["workspace"]
    run_cmd = shlex.join(["forgetless", "eval", "--model", info["run"], "--workspace", workspace])
    base_cmd = shlex.join(["forgetless", "eval", "--model", info["base_model"], "--workspace", workspace])
    if not rows:
        return (f"No evaluation of this run was stored in the workspace `{workspace}` when it was exported. Measure "
                f"it and its base with the same suite, limit and seed, then export again:\n\n```\n{run_cmd}\n"
                f"{base_cmd}\n```\n")
    limits = {(row["item_limit"], row["seed"]) for row in rows}
    items = "; ".join(f"{'all items' if limit is None else f'{limit} items'} per task, seed {seed}"
                      for limit, seed in sorted(limits, key=str))
    lines = [f"Stored in `{workspace}` ({items}); change = tuned − base ± one combined standard error (drift: KL "
             "of the tuned model from its base on held-out general text, and its perplexity there against the "
             "base's; lower is better).", "",
             "| task | metric | n (base / tuned) | base | tuned | change ± stderr |", "|---|---|---|---|---|---|"]
    for row in rows:
        counts = f"{row['n_base'] if row['n_base'] is not None else '—'} / {row['n_tuned']}"
        lines.append(f"| {row['task']} | {row['metric']} | {counts} | {_value(row['metric'], row['base'])} | "
                     f"{_value(row['metric'], row['tuned'])} | {_change(row)} |")
    if any(row["base"] is None for row in rows):
        lines += ["", f"The base has no stored result for some tasks: `{base_cmd}` (same limit and seed)."]
    return "\n".join(lines) + "\n"


def _mix_section(mix: dict[str, Any]) -> str:
    found = mix["manifest"]
    if found is None:
        return f"Mix snapshot `{mix['path']}` (its manifest.yaml was not readable at export).\n"
    counts = found["counts"] or {}
    achieved = number(found["ratio_achieved"])
    share = f"requested {found['ratio']}" + (f", achieved {achieved:.4f}" if achieved is not None else "")
    lines = [f"Mix snapshot `{mix['path']}` (`{found['name']}`, created {found['created']}); its `manifest.yaml` "
             "records where every row came from.", "",
             f"- examples: {counts.get('general', '?')} general + {counts.get('domain', '?')} domain = "
             f"{counts.get('total', '?')}",
             f"- general share: {share}" + (f" (by {found['by']})" if found["by"] else ""),
             f"- domain data: `{found['domain']}`" + (f" ({found['domain_test_fraction']} held out for its test)"
                                                      if found["domain_test_fraction"] else ""),
             f"- seed {found['seed']}; balance of the general rows: {found['balance']}",
             f"- general holdout: {found['general_holdout'] or 0} ({found['general_held_out']} instructions never "
             "trained on, kept for measuring drift)"]
    if found["train_sha256"]:
        lines.append(f"- train.parquet sha256 `{found['train_sha256']}`")
    return "\n".join(lines) + "\n"


def _training_section(info: dict[str, Any]) -> str:
    training, summary = info["training"], info["run_summary"]
    hidden = ("data", "model", "merge", "save_steps", "keep_checkpoints", "logging_steps")  # elsewhere, or no effect
    shown = [key for key in training if key not in hidden and (info["method"] == "lora" or not key.startswith("lora_"))]
    lines = ["| setting | value |", "|---|---|",
             *(f"| {key} | {'default' if training[key] is None else training[key]} |" for key in shown)]
    done = ", ".join(f"{key} {round(value, 4) if isinstance(value, float) else value}"
                     for key, value in summary.items() if value is not None)
    return "\n".join(lines) + (f"\n\nThe run: {done}.\n" if done else "\n")


def model_card(info: dict[str, Any], name: str) -> str:
    """README.md for the exported folder: Hugging Face front matter, then what it is, how it was made and measured."""
    base = info["base_model"]
    front = {"base_model": HUB_IDS.get(base, base), "library_name": "transformers", "pipeline_tag": "text-generation",
             "tags": ["forgetless", "sft", "lora-merged" if info["method"] == "lora" else "full-fine-tune"]}
    method = ("LoRA (PEFT), merged into the base weights" if info["method"] == "lora" else "full fine-tuning")
    return f"""---
{yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip()}
---
# {name}

`{target_label(base)}` fine-tuned with Forgetless {info['forgetless_version']} by {method}, on a mix of
domain data and reconstructed general data (arXiv 2506.09428), so that it learns the domain while forgetting less of
what it could do.

- base model: `{base}`{f" ({ALIASES[base]})" if base in ALIASES else ""}
- training run: `{info['run']}`
- weights: safetensors, {info['dtype']}; tokenizer with the base's chat template; exported {info['exported_at']}

Load it with `transformers.AutoModelForCausalLM.from_pretrained("<this folder>")`, or serve it with
`vllm serve <this folder>`.

## Training

{_training_section(info)}
## Training data

{_mix_section(info['mix'])}
## Evaluation vs the base

{_eval_section(info)}"""
