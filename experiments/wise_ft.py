"""WiSE-FT (Wortsman et al., 2022), the regularisation baseline of the evidence experiment (arm e): the weights of
a fully fine-tuned run interpolated with its base's, ``alpha * tuned + (1 - alpha) * base``, with no training.

The result is written as a run folder (``config.yaml`` of the tuned run, ``model/``, ``summary.json``), so
``forgetless eval`` treats it like any run: the same base for drift, the same mix snapshot for its held-out texts.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import yaml


def interpolate_run(tuned_run: Path, out: Path, alpha: float, workspace: Path) -> dict[str, Any]:
    """Write the WiSE-FT run of ``tuned_run`` (a full fine-tuning run folder) at ``out``; return its summary."""
    import torch

    from core.engines.models import load_model

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    tuned_run, out = Path(tuned_run), Path(out)
    config = yaml.safe_load((tuned_run / "config.yaml").read_text(encoding="utf-8"))
    if not (tuned_run / "model" / "config.json").exists():
        raise ValueError(f"{tuned_run} has no full model/ folder (WiSE-FT needs full fine-tuning)")
    start = time.monotonic()
    base = load_model(str(config["model"]), workspace, dtype=torch.float32)
    tuned = load_model(str(tuned_run / "model"), workspace, dtype=torch.float32)
    base_weights = dict(base.model.named_parameters())
    with torch.no_grad():
        # named_parameters lists a tied weight (embeddings = LM head) once: it is interpolated once.
        for name, weight in tuned.model.named_parameters():
            weight.copy_(alpha * weight + (1.0 - alpha) * base_weights[name].to(weight.dtype))
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    tuned.model.save_pretrained(staging / "model")
    tuned.tokenizer.save_pretrained(staging / "model")
    (staging / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    summary = {"out": str(out), "method": "wise-ft", "alpha": alpha, "tuned_run": str(tuned_run),
               "model": config["model"], "seconds": round(time.monotonic() - start, 2), "model_dir": str(out / "model")}
    (staging / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    staging.replace(out)
    return summary
