"""Evaluation results as the Evaluate tab reads them, built without training or evaluating: run folders as the
train stage leaves them and stored result rows."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from core.store import Store
from core.store.evaluation import EvalResultRow

BASE = "smollm2-135m-instruct"
GENERAL = ("arc_easy", "piqa", "hellaswag", "sciq")


def make_run(folder: Path, base: str = BASE, ratio: float | None = 0.5, *, status: str = "done",
             full_model: Path | None = None) -> Path:
    """A finished run folder as the train stage leaves it: config.yaml, status, and an adapter/ or model/."""
    snapshot = folder.parent / f"{folder.name}-mix"
    snapshot.mkdir(parents=True)
    if ratio is not None:
        (snapshot / "manifest.yaml").write_text(yaml.safe_dump({"ratio": ratio}))
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"data": str(snapshot), "out": str(folder), "model": base,
                                                        "method": "full" if full_model else "lora"}))
    (folder / "status.json").write_text(f'{{"state": "{status}", "kind": "train", "started_at": 1}}')
    if full_model is not None:
        shutil.copytree(full_model, folder / "model")
    else:
        (folder / "adapter").mkdir()
    return folder


def add_result(store: Store, model: str, task: str, *, acc: float = 0.5, acc_norm: float | None = 0.5,
               stderr: float | None = 0.02, n: int = 100, run_dir: str | None = None, base: str | None = None,
               **extra: float) -> None:
    if task in GENERAL:
        extra.setdefault("acc_norm_stderr", stderr)
    suite = "general" if task in GENERAL else "domain" if task == "medmcqa" else "drift"
    store.save_eval_result(EvalResultRow(f"eval-{abs(hash((model, task))) % 10**8}", task, suite, model, run_dir,
                                         base, acc, acc_norm, stderr, n, extra, None, 0))


def add_two_runs(store: Store, runs: Path) -> tuple[str, str]:
    """The base and two runs: one gains on the domain and loses on ARC, one is within noise everywhere."""
    good, flat = str(make_run(runs / "good", ratio=0.3)), str(make_run(runs / "flat", ratio=0.7))
    for task in GENERAL:
        add_result(store, BASE, task, acc=0.60, acc_norm=0.60, stderr=0.01)
    add_result(store, BASE, "medmcqa", acc=0.30, acc_norm=None, stderr=0.01, top_letter_share=0.5)
    for task in GENERAL:
        norm = 0.50 if task == "arc_easy" else 0.60  # arc_easy: -10 pp, far beyond 2 SE
        add_result(store, good, task, acc=norm, acc_norm=norm, stderr=0.01, run_dir=good, base=BASE)
        add_result(store, flat, task, acc=0.605, acc_norm=0.605, stderr=0.01, run_dir=flat, base=BASE)
    add_result(store, good, "medmcqa", acc=0.45, acc_norm=None, stderr=0.01, run_dir=good, base=BASE,
               top_letter_share=0.4)
    add_result(store, good, "drift", acc=None, acc_norm=None, stderr=None, n=50, run_dir=good, base=BASE,
               kl=0.0312, kl_stderr=0.004, ppl_base=12.05, ppl_tuned=12.31)
    return good, flat
