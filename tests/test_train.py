"""Training: LoRA and full runs on the tiny model, assistant-only labels, cancel, resume, kill -9, CLI, runs API."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from core.engines.models import choose_dtype, dtype_name
from core.errors import ForgetlessError
from core.jobs import job_info, wait_for
from core.train.progress import read_progress
from core.train.runs import cancel_run, list_runs, resume_training, start_training
from core.train.training import TrainConfig, build_trainer, last_checkpoint, run_training
from tests.helpers import ROOT, TRAIN_CONVERSATIONS, assert_one_line_error, forgetless, write_snapshot


@pytest.fixture
def snapshot(tmp_path: Path) -> Path:
    return write_snapshot(tmp_path / "mix")


def tiny_config(tmp_path: Path, model: Path, data: Path, **overrides) -> TrainConfig:
    values = {"data": str(data), "out": str(tmp_path / "run"), "model": str(model), "max_steps": 2, "batch_size": 4,
              "save_steps": 50, **overrides}
    return TrainConfig(**values)


def test_lora_two_steps_trains_only_adapters_and_writes_the_run(tiny_model_dir, snapshot, tmp_path):
    config = tiny_config(tmp_path, tiny_model_dir, snapshot, warmup_ratio=0.0)  # B moves at step 1, so A at step 2
    trainer = build_trainer(config, tmp_path / "ws")
    before = {name: param.detach().clone() for name, param in trainer.model.named_parameters()}
    trainer.train()
    trainable = {name for name, param in trainer.model.named_parameters() if param.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    changed = {name for name, param in trainer.model.named_parameters() if not param.detach().equal(before[name])}
    assert changed == trainable  # every adapter matrix moved, no base weight did
    expected_dtype = dtype_name(choose_dtype("cpu"))  # auto: the machine's (test_models checks it)
    assert trainer.forgetless_precision["dtype"] == expected_dtype

    # fp32 on purpose: the merged model is compared with base + adapter below, exactly.
    summary = run_training(tiny_config(tmp_path, tiny_model_dir, snapshot, out=str(tmp_path / "run2"), merge=True,
                                       dtype="float32"), tmp_path / "ws")
    out = tmp_path / "run2"
    assert summary["steps"] == 2 and math.isfinite(summary["final_loss"]) and not summary["cancelled"]
    assert summary["adapter"] == str(out / "adapter") and (out / "adapter" / "adapter_config.json").exists()
    assert (out / "config.yaml").exists() and json.loads((out / "summary.json").read_text())["steps"] == 2
    assert job_info(out).state == "done"
    progress = read_progress(out)
    assert list(progress["step"]) == [1, 2] and progress["loss"].map(math.isfinite).all()
    assert (progress["total_steps"] == 2).all() and (progress["tokens_per_s"] > 0).all()
    assert summary["dtype"] == "float32" and summary["gradient_checkpointing"] is False

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out / "adapter")
    ids = trainer.processing_class("please write a poem", return_tensors="pt")["input_ids"]
    assert not base(ids).logits.allclose(tuned(ids).logits)  # the saved adapter changes the model
    merged = AutoModelForCausalLM.from_pretrained(summary["merged"])
    assert merged(ids).logits.allclose(tuned(ids).logits, atol=1e-5)  # merged = base + adapter, one folder


def test_labels_cover_only_the_final_assistant_turn(tiny_model_dir, snapshot, tmp_path):
    trainer = build_trainer(tiny_config(tmp_path, tiny_model_dir, snapshot), tmp_path / "ws")
    tokenizer = trainer.processing_class
    for example, turns in zip(trainer.train_dataset, TRAIN_CONVERSATIONS, strict=False):
        ids, labels = example["input_ids"], example["labels"]
        trained = [token for token, label in zip(ids, labels, strict=True) if label != -100]
        assert all(label in (-100, token) for token, label in zip(ids, labels, strict=True))
        assert tokenizer.decode(trained).split() == [*turns[-1]["content"].split(), "<|im_end|>"]
        first_trained = labels.index(next(label for label in labels if label != -100))
        assert all(label == -100 for label in labels[:first_trained])  # system, user, earlier turns: context
        assert tokenizer.decode(ids[:first_trained]).split()[-2:] == ["<|im_start|>", "assistant"]
    batch = trainer.data_collator([trainer.train_dataset[0], trainer.train_dataset[2]])
    starts = batch["position_ids"][0] == 0  # padding-free: one row, positions restart at each conversation
    assert "attention_mask" not in batch and batch["input_ids"].shape[0] == 1 and int(starts.sum()) == 2
    assert (batch["labels"][0][starts] == -100).all()  # a conversation's end never predicts the next one's start


def test_padding_free_batches_give_the_padded_loss_and_gradients(tiny_model_dir, snapshot, tmp_path):
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    trainer = build_trainer(tiny_config(tmp_path, tiny_model_dir, snapshot, method="full", dtype="float32"),
                            tmp_path / "ws")
    model, rows = trainer.model, [trainer.train_dataset[i] for i in range(4)]
    assert len({len(row["input_ids"]) for row in rows}) > 1  # lengths differ, so the padded batch has padding
    padded = DataCollatorForLanguageModeling(pad_token_id=trainer.processing_class.pad_token_id)(rows)
    assert (padded["attention_mask"] == 0).any()

    def loss_and_grads(batch):
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        return loss.detach(), [param.grad.clone() for param in model.parameters()]

    free_loss, free_grads = loss_and_grads(trainer.data_collator(rows))
    padded_loss, padded_grads = loss_and_grads(padded)
    assert torch.allclose(free_loss, padded_loss, atol=1e-5)  # each conversation sees only itself
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(free_grads, padded_grads, strict=True))


@pytest.mark.parametrize("slice_tokens", [1024, 5])  # one slice; several, recomputed under checkpointing
def test_cpu_lm_head_gives_trls_fused_head_loss_gradients_and_metrics(tiny_model_dir, snapshot, tmp_path,
                                                                      monkeypatch, slice_tokens):
    import torch
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from core.train import lm_head

    monkeypatch.setattr(lm_head, "TOKENS_PER_SLICE", slice_tokens)
    trainer = build_trainer(tiny_config(tmp_path, tiny_model_dir, snapshot, method="full", dtype="float32"),
                            tmp_path / "ws")
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    reference.load_state_dict(trainer.model.state_dict())
    add_fused_lm_head(reference, outputs=("log_probs", "entropy", "is_top1"))  # as SFTTrainer patches it
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    assert (batch["labels"][:, 1:] != -100).sum() > 2 * slice_tokens or slice_tokens > 100

    def run(model, labels):
        model.zero_grad()
        out = model(**{**batch, "labels": labels}, fused_lm_head=True)
        out.loss.backward()
        return out, [param.grad.clone() for param in model.parameters()]

    for labels in (batch["labels"], torch.full_like(batch["labels"], -100)):  # the second: nothing to train
        (ours, our_grads), (trls, trl_grads) = run(trainer.model, labels), run(reference, labels)
        assert torch.allclose(ours.loss, trls.loss, atol=1e-5)
        for name in ("log_probs", "entropy"):
            assert torch.allclose(getattr(ours, name), getattr(trls, name), atol=1e-4), name
        assert ours.is_top1.equal(trls.is_top1) and ours.label_mask.equal(trls.label_mask)
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(our_grads, trl_grads, strict=True))
    assert ours.loss == 0 and not ours.label_mask.any()


def test_conversations_longer_than_max_length_are_cut_like_trl_does(tiny_model_dir, snapshot, tmp_path):
    full = build_trainer(tiny_config(tmp_path, tiny_model_dir, snapshot), tmp_path / "ws").train_dataset
    first_trained = [next(i for i, label in enumerate(row["labels"]) if label != -100) for row in full]
    max_length = sorted(first_trained)[len(first_trained) // 2]  # half the rows keep no answer token
    cut = build_trainer(tiny_config(tmp_path, tiny_model_dir, snapshot, max_length=max_length),
                        tmp_path / "ws").train_dataset
    assert 0 < len(cut) == sum(start < max_length for start in first_trained) < len(full)
    assert max(len(row["input_ids"]) for row in cut) == max_length
    assert all(len(row["labels"]) == len(row["input_ids"]) for row in cut)


def test_full_fine_tune_two_steps_writes_the_model(tiny_model_dir, snapshot, tmp_path):
    summary = run_training(tiny_config(tmp_path, tiny_model_dir, snapshot, method="full"), tmp_path / "ws")
    model_dir = tmp_path / "run" / "model"
    assert summary["model_dir"] == str(model_dir) and summary["adapter"] is None
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    tuned = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    assert sum(not tuned[name].equal(base[name]) for name in base) >= len(base) // 2
    assert (model_dir / "tokenizer.json").exists()


def test_cancel_saves_a_checkpoint_and_resume_continues_at_its_step(tiny_model_dir, snapshot, tmp_path):
    config = tiny_config(tmp_path, tiny_model_dir, snapshot, max_steps=6, batch_size=2)
    out = Path(config.out)

    def cancel_at_step_two(values):
        if values["step"] == 2:
            cancel_run(out)

    summary = run_training(config, tmp_path / "ws", on_progress=cancel_at_step_two)
    assert summary["cancelled"] and summary["steps"] == 3 and summary["adapter"] is None
    assert last_checkpoint(out).name == "checkpoint-3" and job_info(out).state == "cancelled"
    assert list_runs(tmp_path / "nowhere").empty

    with pytest.raises(ForgetlessError, match="lora_r differ"):
        run_training(TrainConfig(**{**config.__dict__, "lora_r": 4}), tmp_path / "ws", resume=True)
    with pytest.raises(ForgetlessError, match="already holds a training run"):
        run_training(config, tmp_path / "ws")
    resumed = run_training(config, tmp_path / "ws", resume=True)
    assert resumed["resumed_from_step"] == 3 and resumed["steps"] == 6 and not resumed["cancelled"]
    assert list(read_progress(out)["step"]) == [1, 2, 3, 4, 5, 6]
    assert job_info(out).state == "done" and (out / "adapter" / "adapter_model.safetensors").exists()


def test_kill_minus_nine_then_resume_continues_from_the_last_checkpoint(tiny_model_dir, snapshot, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--data", str(snapshot), "--model", str(tiny_model_dir), "--out", str(out), "--batch-size", "2",
            "--max-steps", "100000", "--save-steps", "3"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FORGETLESS_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    victim = subprocess.Popen([sys.executable, "-m", "core.cli", *args, "--workspace", str(tmp_path / "ws")],
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and last_checkpoint(out) is None:
        time.sleep(0.05)
    assert victim.poll() is None, "the run ended before it could be killed"
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert job_info(out).state == "interrupted"
    killed_at = int(last_checkpoint(out).name.rsplit("-", 1)[1])
    assert killed_at >= 3 and killed_at % 3 == 0

    resumed = forgetless("train", "--out", str(out), "--resume", "--max-steps", str(killed_at + 2), "--json",
                         workspace=tmp_path / "ws")
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert summary["resumed_from_step"] == killed_at and summary["steps"] == killed_at + 2
    for key in ("final_loss", "tokens_per_s", "seconds", "out", "adapter"):
        assert summary[key] is not None
    lines = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
    restart = max(index for index, line in enumerate(lines) if line.get("resumed_from_step") == killed_at)
    assert [line["step"] for line in lines[restart:] if "step" in line] == [killed_at + 1, killed_at + 2]


@pytest.mark.parametrize(("make_args", "fragment"), [
    (lambda tmp, model, data: ["--data", str(tmp / "missing"), "--model", str(model), "--out", str(tmp / "r")],
     "data folder not found"),
    (lambda tmp, model, data: ["--data", str(tmp), "--model", str(model), "--out", str(tmp / "r")], "train.parquet"),
    (lambda tmp, model, data: ["--data", str(data), "--model", str(model), "--out", str(tmp / "r"), "--lora",
                               "--full"], "not allowed with argument --lora"),
    (lambda tmp, model, data: ["--data", str(data), "--model", str(model)], "--out"),
    (lambda tmp, model, data: ["--out", str(tmp / "r"), "--data", str(data), "--model", str(model), "--resume"],
     "nothing to resume"),
    (lambda tmp, model, data: ["--data", str(data), "--out", str(tmp / "r"), "--max-steps", "0"], "max steps"),
])
def test_bad_train_input_is_one_line_exit_two(make_args, fragment, tiny_model_dir, snapshot, tmp_path):
    result = forgetless("train", *make_args(tmp_path, tiny_model_dir, snapshot), workspace=tmp_path / "ws")
    assert result.returncode == 2
    assert_one_line_error(result, fragment)


def test_bad_snapshots_and_template_less_models_are_one_line(tiny_model_dir, tiny_base_model_dir, snapshot, tmp_path):
    no_messages = tmp_path / "no-messages"
    no_messages.mkdir()
    pd.DataFrame({"text": ["hello"]}).to_parquet(no_messages / "train.parquet")
    ends_with_user = write_snapshot(tmp_path / "ends-user", [[{"role": "user", "content": "how"}]], repeat=1)
    cases = [(no_messages, tiny_model_dir, "no 'messages' column"), (ends_with_user, tiny_model_dir, "row 0"),
             (snapshot, tiny_base_model_dir, "no chat template")]
    for data, model, fragment in cases:
        result = forgetless("train", "--data", str(data), "--model", str(model), "--out", str(tmp_path / "r"),
                            workspace=tmp_path / "ws")
        assert result.returncode == 2
        assert_one_line_error(result, fragment)


def test_accelerate_launch_runs_the_same_entry_point(tiny_model_dir, snapshot, tmp_path):
    out = tmp_path / "run"
    command = ["accelerate", "launch", "--cpu", "--num_processes", "1", "--num_machines", "1", "--mixed_precision",
               "no", "--dynamo_backend", "no", "--num_cpu_threads_per_process", "1", "-m", "core.cli", "train",
               "--data", str(snapshot), "--model", str(tiny_model_dir), "--out", str(out), "--max-steps", "2",
               "--batch-size", "2", "--json", "--workspace", str(tmp_path / "ws")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FORGETLESS_NO_PROGRESS": "1"}
    launcher = str(Path(sys.executable).parent / "accelerate")
    result = subprocess.run([launcher, *command[1:]], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["steps"] == 2
    assert (out / "adapter" / "adapter_config.json").exists() and len(read_progress(out)) == 2


def test_background_run_is_listed_cancelled_and_resumed(tiny_model_dir, snapshot, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny matrices: a second thread only waits on busy shared cores
    workspace = tmp_path / "ws"
    config = tiny_config(tmp_path, tiny_model_dir, snapshot, out=str(workspace / "runs" / "first"), max_steps=40,
                         batch_size=2, save_steps=100)
    folder = start_training(config, workspace)
    with pytest.raises(ForgetlessError, match="already running"):
        start_training(config, workspace)
    wait_for(folder, 120, lambda job: job.progress.get("step", 0) >= 3)
    cancel_run(folder)
    info = wait_for(folder, 60, lambda job: not job.active)
    assert info.state == "cancelled", (folder / "log.txt").read_text()[-2000:]
    stopped_at = info.summary["steps"]
    assert 3 <= stopped_at < 40 and last_checkpoint(folder).name == f"checkpoint-{stopped_at}"
    runs = list_runs(workspace)
    assert list(runs["name"]) == ["first"] and runs.loc[0, "status"] == "cancelled"
    assert runs.loc[0, "step"] == stopped_at and runs.loc[0, "total_steps"] == 40 and runs.loc[0, "method"] == "lora"

    resume_training(folder, workspace)
    info = wait_for(folder, 180, lambda job: job.state not in ("starting", "running"))
    assert info.state == "done", (folder / "log.txt").read_text()[-2000:]
    assert info.summary["resumed_from_step"] == stopped_at and info.summary["steps"] == 40
    progress = read_progress(folder)
    assert list(progress["step"]) == list(range(1, 41))
    assert list_runs(workspace).loc[0, "final_loss"] == pytest.approx(progress["loss"].iloc[-1])


@pytest.mark.integration
def test_smollm2_template_masks_its_default_system_prompt_and_trains(real_workspace, snapshot, tmp_path):
    config = TrainConfig(data=str(snapshot), out=str(tmp_path / "run"), model="smollm2-135m-instruct", max_steps=1,
                         batch_size=2)
    trainer = build_trainer(config, real_workspace)
    tokenizer = trainer.processing_class
    example = trainer.train_dataset[0]
    text = tokenizer.decode(example["input_ids"])
    assert "You are a helpful AI assistant named SmolLM" in text  # the template's default system turn
    trained = tokenizer.decode([token for token, label in zip(example["input_ids"], example["labels"], strict=True)
                                if label != -100])
    assert trained == TRAIN_CONVERSATIONS[0][-1]["content"] + "<|im_end|>\n"
    trainer.train()
    assert trainer.state.global_step == 1 and math.isfinite(trainer.state.log_history[0]["loss"])


def test_last_step_reads_the_newest_step_line_past_phase_and_partial_lines(tmp_path):
    from core.train.progress import last_step

    assert last_step(tmp_path) is None
    lines = [{"phase": "training"}, *({"step": n, "total_steps": 900, "loss": 1.0 / n} for n in range(1, 901)),
             {"phase": "saving"}]
    (tmp_path / "progress.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"step": 9')
    assert last_step(tmp_path) == {"step": 900, "total_steps": 900, "loss": 1.0 / 900}
    assert last_step(tmp_path) == read_progress(tmp_path).iloc[-1][["step", "total_steps", "loss"]].to_dict()
