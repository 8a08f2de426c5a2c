"""Export: a tiny LoRA run merged into one folder that transformers loads with base + adapter's logits, a full run
copied, the model card (settings, mix manifest, eval vs base), refusals that change nothing, the CLI, the Train
tab's export handler, and a real vLLM server (.venv-vllm) answering from an exported folder."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml

from core.config import to_yaml
from core.data_paths import ReadableRoots
from core.engines.in_process import InProcessEngine
from core.engines.models import load_model
from core.errors import ForgetlessError
from core.eval.evaluation import EvalConfig, run_evaluation
from core.jobs import JobInfo, list_jobs, wait_for
from core.store import Store
from core.store.evaluation import EvalResultRow
from core.train.export import CARD_FILE, EXPORT_JSON, ExportConfig, export_run
from core.train.model_card import eval_vs_base
from core.train.training import TrainConfig, run_training
from tests.helpers import assert_one_line_error, build_tiny_tokenizer, forgetless, write_snapshot
from ui.views.evaluate import eval_deltas
from ui.views.train import EXPORT_IDLE, export_folder, export_status_line, newest_export, start_export

MANIFEST = {
    "name": "mix-r05", "created": "2025-01-01T00:00:00+00:00", "ratio": 0.5, "ratio_achieved": 0.75,
    "by": "examples", "balance": "none", "seed": 7, "counts": {"general": 12, "domain": 4, "total": 16},
    "domain": {"spec": "/data/health.jsonl", "test_fraction": 0.2},
    "general": {"holdout": 0.1, "held_out_ids": ["i1", "i2", "i3"], "instruction_ids": ["i4"]},
    "files": {"train.parquet": {"sha256": "ab" * 32, "rows": 16}},
}
PROMPT = "please write a short poem about the travel"


@pytest.fixture(scope="module")
def runs(tiny_model_dir: Path, tmp_path_factory) -> dict[str, Path]:
    """One finished LoRA run and one full run of 2 steps on the tiny model, in one workspace."""
    root = tmp_path_factory.mktemp("export")
    snapshot = write_snapshot(root / "mix")
    (snapshot / "manifest.yaml").write_text(yaml.safe_dump(MANIFEST))
    workspace = root / "ws"
    made = {"workspace": workspace, "snapshot": snapshot}
    for method in ("lora", "full"):
        config = TrainConfig(data=str(snapshot), out=str(workspace / "runs" / method), model=str(tiny_model_dir),
                             method=method, max_steps=2, batch_size=4, warmup_ratio=0.0)
        assert not run_training(config, workspace)["cancelled"]
        made[method] = Path(config.out)
    return made


def logits(model, tokenizer):
    import torch

    with torch.no_grad():
        return model(**tokenizer(PROMPT, return_tensors="pt")).logits


def card_front(folder: Path) -> tuple[dict, str]:
    _, front, body = (folder / CARD_FILE).read_text().split("---\n", 2)
    return yaml.safe_load(front), body


def test_a_lora_run_exports_one_folder_with_base_plus_adapters_logits(runs, tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "exported"
    summary = export_run(ExportConfig(run=str(runs["lora"]), out=str(out)), runs["workspace"])
    assert summary["out"] == str(out) and summary["method"] == "lora" and summary["dtype"] == "float32"
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", CARD_FILE,
            EXPORT_JSON} <= set(summary["files"])
    assert not (out / "adapter_config.json").exists() and [p.name for p in tmp_path.iterdir()] == ["exported"]
    assert (out / "model.safetensors").stat().st_mode == (out / CARD_FILE).stat().st_mode  # not owner-only

    exported = AutoModelForCausalLM.from_pretrained(out)  # transformers alone: no PEFT, no adapter
    tokenizer = AutoTokenizer.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                          runs["lora"] / "adapter")
    assert exported.dtype == base.dtype  # the base model's own dtype (fp32 for the tiny model)
    assert logits(exported, tokenizer).allclose(logits(reference, tokenizer), atol=1e-5)
    assert not logits(exported, tokenizer).allclose(logits(base, tokenizer), atol=1e-5)  # the adapter is in it
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(tiny_model_dir).chat_template
    messages = [{"role": "user", "content": "how to cook"}]
    assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True).endswith(
        "<|im_start|>assistant\n")

    front, body = card_front(out)
    assert front["base_model"] == str(tiny_model_dir) and front["library_name"] == "transformers"
    assert "forgetless" in front["tags"]
    assert "| lora_r | 16 |" in body and "| max_steps | 2 |" in body and "| method | lora |" in body
    assert "12 general + 4 domain = 16" in body and "requested 0.5, achieved 0.7500 (by examples)" in body
    assert "seed 7" in body and "general holdout: 0.1 (3 instructions" in body and "/data/health.jsonl" in body
    assert "No evaluation of this run was stored" in body and f"forgetless eval --model {runs['lora']}" in body
    info = json.loads((out / EXPORT_JSON).read_text())
    assert info["mix"]["manifest"]["counts"] == MANIFEST["counts"] and info["eval"]["rows"] == []
    assert info["training"]["lora_alpha"] == 32 and info["run_summary"]["steps"] == 2


def test_a_full_run_exports_its_saved_model_without_trainer_state(runs, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "full"
    summary = export_run(ExportConfig(run=str(runs["full"]), out=str(out)), runs["workspace"])
    assert summary["method"] == "full" and not (out / "training_args.bin").exists()
    assert (runs["full"] / "model" / "training_args.bin").exists()  # the run keeps its own
    saved = AutoModelForCausalLM.from_pretrained(runs["full"] / "model").state_dict()
    exported = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert saved.keys() == exported.keys() and all(exported[name].equal(saved[name]) for name in saved)
    _, body = card_front(out)
    assert "full fine-tuning" in body and "lora_r" not in body and "| method | full |" in body

    halved = export_run(ExportConfig(run=str(runs["full"]), out=str(tmp_path / "bf16"), dtype="bfloat16"),
                        runs["workspace"])
    import torch

    assert halved["dtype"] == "bfloat16"
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "bf16").dtype == torch.bfloat16
    assert halved["bytes"] < summary["bytes"]


def test_the_card_compares_stored_eval_results_with_the_base(runs, tiny_model_dir, tmp_path):
    workspace = tmp_path / "ws"  # its own store, so the other tests see none
    store = Store.for_workspace(workspace)

    def engines(spec: str) -> InProcessEngine:
        return InProcessEngine(load_model(spec, workspace))

    tuned = run_evaluation(EvalConfig(model=str(runs["lora"]), suite=("arc_easy",), limit=4), store, engines)
    base = run_evaluation(EvalConfig(model=str(tiny_model_dir), suite=("arc_easy",), limit=4), store, engines)
    out = tmp_path / "exported"
    summary = export_run(ExportConfig(run=str(runs["lora"]), out=str(out)), workspace)
    assert summary["eval_tasks"] == ["arc_easy"]

    rows = {row["metric"]: row for row in json.loads((out / EXPORT_JSON).read_text())["eval"]["rows"]}
    for metric in ("acc", "acc_norm"):
        before, after = base["results"]["arc_easy"][metric], tuned["results"]["arc_easy"][metric]
        assert rows[metric]["base"] == pytest.approx(before) and rows[metric]["tuned"] == pytest.approx(after)
        assert rows[metric]["change"] == pytest.approx(after - before) and rows[metric]["n_tuned"] == 4
    stderr = (base["results"]["arc_easy"]["stderr"] ** 2 + tuned["results"]["arc_easy"]["stderr"] ** 2) ** 0.5
    assert rows["acc"]["stderr"] == pytest.approx(stderr)
    _, body = card_front(out)
    assert "| task | metric | n (base / tuned) | base | tuned | change ± stderr |" in body
    acc = rows["acc"]
    expected = (f"| arc_easy | acc | 4 / 4 | {100 * acc['base']:.1f}% | {100 * acc['tuned']:.1f}% | "
                f"{100 * acc['change']:+.1f} ± {100 * acc['stderr']:.1f} pts |")
    assert expected in body and "No evaluation" not in body



def test_the_card_and_the_evaluate_tab_read_the_same_deltas(tmp_path):
    """Both read core.eval.deltas: the same metrics per task, values, changes, standard errors and verdicts; the
    card also lists a task its base has no result for (the tab leaves it out)."""
    workspace, base = tmp_path / "ws", "smollm2-135m-instruct"
    run = str((tmp_path / "runs" / "r1").resolve())
    store = Store.for_workspace(workspace)

    def save(model: str, task: str, acc: float | None, stderr: float | None, **extra: float) -> None:
        tuned = model == run
        store.save_eval_result(EvalResultRow(f"eval-{'run' if tuned else 'base'}-{task}", task, "general", model,
                                             run if tuned else None, base if tuned else None, acc,
                                             extra.pop("acc_norm", None), stderr, 20, extra, 20, 0))

    save(base, "arc_easy", 0.60, 0.02, acc_norm=0.55, acc_norm_stderr=0.02)
    save(run, "arc_easy", 0.40, 0.02, acc_norm=0.56, acc_norm_stderr=0.02)
    save(base, "ifeval", 0.30, 0.05, prompt_strict=0.30, prompt_strict_stderr=0.05, instruction_strict=0.40,
         prompt_loose=0.35, prompt_loose_stderr=0.05)
    save(run, "ifeval", 0.60, 0.05, prompt_strict=0.60, prompt_strict_stderr=0.05, instruction_strict=0.70,
         prompt_loose=0.62, prompt_loose_stderr=0.05)
    save(run, "drift", None, None, kl=0.03, kl_stderr=0.004, ppl_base=12.0, ppl_tuned=12.5)
    save(run, "sciq", 0.70, 0.02, acc_norm=0.70, acc_norm_stderr=0.02)  # the base was not evaluated on it

    card = {(row["task"], row["metric"]): row for row in eval_vs_base(workspace, Path(run), base)}
    tab = eval_deltas(store, base, run)
    verdicts = {("arc_easy", "acc"): "loss", ("arc_easy", "acc_norm"): "within noise",
                ("ifeval", "prompt_strict"): "gain", ("ifeval", "instruction_strict"): "gain",
                ("ifeval", "prompt_loose"): "gain", ("drift", "kl"): "loss", ("drift", "ppl_tuned"): "loss"}
    assert list(zip(tab["task"], tab["metric"], tab["change"], strict=True)) == [(*key, verdict)
                                                                                 for key, verdict in verdicts.items()]
    assert set(card) == {*verdicts, ("sciq", "acc"), ("sciq", "acc_norm")}
    for row in tab.to_dict("records"):
        found = card[(row["task"], row["metric"])]
        assert found["verdict"] == row["change"]
        for card_key, tab_key in (("base", "base"), ("tuned", "tuned"), ("change", "delta"), ("stderr", "stderr")):
            expected = None if pd.isna(row[tab_key]) else row[tab_key]
            assert found[card_key] == (None if expected is None else pytest.approx(expected)), (card_key, row)
    assert card[("arc_easy", "acc")]["stderr"] == pytest.approx(0.02 * 2 ** 0.5)
    assert card[("drift", "kl")]["stderr"] == pytest.approx(0.004) and card[("drift", "kl")]["base"] == 0.0
    assert card[("drift", "ppl_tuned")]["base"] == 12.0 and card[("drift", "ppl_tuned")]["stderr"] is None
    assert card[("ifeval", "instruction_strict")]["stderr"] is None  # no stored error for it: none invented
    assert (card[("arc_easy", "acc")]["n_base"], card[("drift", "kl")]["n_base"]) == (20, None)
    sciq = card[("sciq", "acc")]
    assert (sciq["base"], sciq["change"], sciq["stderr"], sciq["verdict"], sciq["tuned"]) == (None, None, None, None,
                                                                                              0.70)

def test_refusals_are_one_line_and_change_nothing(runs, tmp_path):
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("user data")
    before = {path.name: (path.read_bytes(), path.stat().st_mtime_ns) for path in occupied.iterdir()}
    result = forgetless("export", str(runs["lora"]), "--out", str(occupied), workspace=runs["workspace"])
    assert result.returncode == 2
    assert_one_line_error(result, "already exists and is not empty")
    assert {path.name: (path.read_bytes(), path.stat().st_mtime_ns) for path in occupied.iterdir()} == before
    assert [path.name for path in tmp_path.iterdir()] == ["occupied"]  # no half-written sibling either

    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text((runs["lora"] / "config.yaml").read_text())
    (unfinished / "status.json").write_text(json.dumps({"state": "cancelled", "kind": "train"}))
    for run, fragment in [(tmp_path / "missing", "is not a training run folder (no config.yaml)"),
                          (runs["snapshot"], "is not a training run folder"),
                          (unfinished, "is not a finished run (it is cancelled)")]:
        result = forgetless("export", str(run), "--out", str(tmp_path / "new"), workspace=runs["workspace"])
        assert result.returncode == 2
        assert_one_line_error(result, fragment)
    assert not (tmp_path / "new").exists()
    assert_one_line_error(forgetless("export", "--out", str(tmp_path / "new")), "export needs RUN")
    with pytest.raises(ForgetlessError, match="is a file"):
        export_run(ExportConfig(run=str(runs["lora"]), out=str(occupied / "keep.txt")), runs["workspace"])
    assert list_jobs(runs["workspace"], "export") == []  # refused before a job folder was made


def test_a_crash_while_writing_leaves_no_half_folder(runs, tmp_path, monkeypatch):
    def crash(*_):
        raise RuntimeError("disk gone")

    monkeypatch.setattr("core.train.export.model_card", crash)  # after the weights were written
    out = tmp_path / "out"
    out.mkdir()  # an empty folder the user made: still there, still empty
    with pytest.raises(RuntimeError, match="disk gone"):
        export_run(ExportConfig(run=str(runs["lora"]), out=str(out)), runs["workspace"])
    assert [path.name for path in tmp_path.iterdir()] == ["out"] and list(out.iterdir()) == []


def test_cli_json_is_the_last_line_and_the_job_is_recorded(runs, tmp_path):
    out = tmp_path / "cli"
    out.mkdir()  # an empty folder is fine: it is replaced
    result = forgetless("export", str(runs["lora"]), "--out", str(out), "--json", workspace=runs["workspace"])
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["out"] == str(out) and summary["run"] == str(runs["lora"]) and summary["eval_tasks"] == []
    assert (out / "model.safetensors").exists()
    job = newest_export(runs["workspace"])
    assert job.state == "done" and job.summary["out"] == str(out)
    assert "Traceback" not in result.stderr


def test_the_train_tabs_export_starts_a_background_job_and_reports_it(runs, tmp_path):
    import gradio as gr

    from ui.train_tab import build_train_tab

    workspace = runs["workspace"]
    roots = ReadableRoots.for_app(workspace)
    with pytest.raises(ForgetlessError, match="pick a run first"):
        start_export(workspace, None, "", roots)
    with pytest.raises(ForgetlessError, match="outside the folders this app reads"):
        start_export(workspace, "lora", str(tmp_path / "elsewhere"), roots)
    (workspace / "runs" / "broken").mkdir()
    with pytest.raises(ForgetlessError, match="not a training run folder"):
        start_export(workspace, "broken", "", roots)
    assert export_folder(workspace, "lora", "mine", roots) == workspace / "exports" / "mine"

    with gr.Blocks() as demo:
        handlers = build_train_tab(demo, workspace)
    with pytest.warns(UserWarning, match="pick a run first"):
        assert handlers.export(None, "") == ("Not exported: pick a run first (the Run dropdown, or click a row of "
                                             "the run list)", "")  # the error stays: no export is followed
    assert handlers.export_poll("") == (gr.skip(), "")
    message, folder = handlers.export("lora", "")  # nothing typed: exports/<run> in the workspace
    out = workspace / "exports" / "lora"
    assert message.startswith("Exporting **lora** to ") and folder
    job = wait_for(Path(folder), 180, lambda info: not info.active)
    assert job.state == "done", (Path(folder) / "log.txt").read_text()[-2000:]
    line, followed = handlers.export_poll(folder)
    assert followed == ""  # it ended: the timer stops reading it
    assert line.startswith("Exported **lora** → ") and "no stored eval" in line and " MB · " in line
    assert (out / "model.safetensors").exists() and (out / CARD_FILE).exists()
    assert handlers.export_on_load() == (line, folder)  # a reloaded page shows the newest export's end
    with pytest.warns(UserWarning, match="already exists and is not empty"):
        assert handlers.export("lora", "")[0].startswith("Not exported: ")


def test_export_status_lines_say_what_the_job_is_doing(tmp_path):
    assert export_status_line(None) == EXPORT_IDLE
    folder = tmp_path / "export-1"
    folder.mkdir()
    (folder / "config.yaml").write_text(to_yaml(ExportConfig(run="/ws/runs/run7", out="/ws/exports/run7")))

    def line(state: str, progress: dict | None = None, error: str | None = None) -> str:
        return export_status_line(JobInfo("export-1", "export", state, folder, progress or {}, error, None, 1.0))

    assert line("running", {"phase": "merging"}) == "Exporting **run7** → /ws/exports/run7 · merging…"
    assert line("starting") == "Exporting **run7** → /ws/exports/run7 · starting…"
    assert line("queued", {"waiting_for": "train-9"}).endswith("waiting for job train-9 to finish")
    assert line("failed", error="cannot write /ws/exports/run7: No space left on device").endswith(
        "failed: cannot write /ws/exports/run7: No space left on device")
    assert line("interrupted").endswith("ended without finishing; nothing was written there")


VLLM_FREE_TOKENS = 4


def test_vllm_serves_an_exported_folder(tmp_path):
    """The shared tiny model has head size 8: vLLM 0.32's CPU build starts on it, then fails its first request
    ("Unsupported CPU attention configuration: head_dim=8"; its CPU attention takes 32 and up), so this tiny
    Llama has head size 32, still random, offline and small."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from core.engines.server import ensure_server, stop_servers

    base = tmp_path / "tiny-head32"
    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, max_position_embeddings=256, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=None)).save_pretrained(base)
    tokenizer.save_pretrained(base)
    workspace = tmp_path / "ws"
    run = workspace / "runs" / "lora"
    run_training(TrainConfig(data=str(write_snapshot(tmp_path / "mix")), out=str(run), model=str(base),
                             max_steps=2, batch_size=4), workspace)
    out = tmp_path / "served-model"
    export_run(ExportConfig(run=str(run), out=str(out)), workspace)

    try:
        server = ensure_server(workspace, str(out), timeout_s=600)
        request = urllib.request.Request(
            f"{server.url}/completions", headers={"Content-Type": "application/json"},
            data=json.dumps({"model": server.served, "prompt": PROMPT, "max_tokens": VLLM_FREE_TOKENS,
                             "temperature": 0, "ignore_eos": True}).encode())
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read())
    finally:
        stop_servers(workspace)
    assert server.served == "served-model"
    assert answer["usage"]["completion_tokens"] == VLLM_FREE_TOKENS
    words = answer["choices"][0]["text"].split()
    assert words and set(words) <= set(tokenizer.get_vocab())  # the tiny vocabulary, detokenized by vLLM
