"""Builders shared by tests, benches and the fixture script: the tiny offline model, the hand-built stores of the
Explore and Mix tests, sample domain and training data, the CLI as a subprocess, the processes and jobs a test
starts. The app in a real browser is tests/browser.py.

Pytest fixtures built on them live in conftest.py; a test module imports only from here and tests/browser.py, never
from another test.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from core.engines.models import resolve_model
from core.jobs import job_info, list_jobs, request_cancel, wait_for
from core.store import InstructionRow, Store, text_key
from core.store.base import StoreBase
from core.store.explore import ExploreQueries
from core.store.instructions import InstructionQueries
from core.store.screen_tables import ScreenTableQueries
from core.store.screening import ResponseRow, ScoreRow, ScreeningQueries, response_id
from core.train.runs import cancel_run, runs_root

ROOT = Path(__file__).resolve().parents[1]


# -- the tiny offline model ----------------------------------------------------------------------------------
WORDS = [
    "1", "2", "3", "4", "5",  # rating digits, so judges score by real token probabilities
    "please", "write", "explain", "how", "why", "what", "a", "the", "poem", "story", "code", "list",
    "recipe", "plan", "for", "about", "my", "to", "of", "in", "python", "math", "history", "short", "simple",
    "tips", "email", "summary", "and", "is", "can", "you", "give", "me", "best", "way", "learn", "cook",
    "travel", "health", "money",
]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML_WITH_SYSTEM = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a tiny test assistant<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tiny_tokenizer(chat_template: str | None = CHATML_WITH_SYSTEM, words: tuple[str, ...] | list[str] = WORDS):
    """A real fast tokenizer: word-level over a few dozen words, ChatML specials, a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate([*SPECIALS, "[UNK]", "\n", "system", "user", "assistant"])}
    for word in words:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##")  # joins word tokens with spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="[UNK]",
        additional_special_tokens=SPECIALS[1:],
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def build_tiny_model_folder(folder: Path, seed: int = 0, chat_template: str | None = CHATML_WITH_SYSTEM,
                            words: tuple[str, ...] | list[str] = WORDS) -> Path:
    """Save a 2-layer random Llama plus the tiny tokenizer as a Hugging Face folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer(chat_template, words)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# -- the CLI as users run it ---------------------------------------------------------------------------------
def forgetless(*args: str, workspace: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    extra = ["--workspace", str(workspace)] if workspace else []
    return subprocess.run(
        [sys.executable, "-m", "core.cli", *args, *extra], capture_output=True, text=True, timeout=timeout,
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "FORGETLESS_NO_PROGRESS": "1"},
    )


def assert_one_line_error(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:") and fragment in lines[0]
    assert "Traceback" not in result.stderr


# -- the Explore tests' store: six instructions, two judges, four profiled -----------------------------------
class ExploreStore(ExploreQueries, InstructionQueries, ScreeningQueries, ScreenTableQueries, StoreBase):
    """Only the query groups the Explore and Screen views read: they need no other part of the store."""


# (text, n_tokens); i5 gets no responses, i4 one response, the others two.
EXPLORE_INSTRUCTIONS = [
    ("Write a Python function to sort a list", 8),
    ("Explain the tides", 3),
    ("Plan a trip to Paris", 5),
    ("Write a python function that sorts a list", 8),
    ("Cook rice", 2),
    ("Write a poem about the sea", 6),
]
# instruction index -> {model: (judge j1 score, judge j2 score)}
EXPLORE_SCORES = {
    0: {"model-a": (5, 4), "model-b": (3, 3)},
    1: {"model-a": (2, 4), "model-b": (2, 2)},
    2: {"model-a": (1, 1), "model-b": (1.4, 1.6)},
    3: {"model-a": (4, 4), "model-b": (5, 5)},
    4: {"model-a": (3, 3.5)},
}
# instruction index -> (difficulty, cluster, category, x, y, dup_group, is_representative); i4, i5 unprofiled
EXPLORE_PROFILE = {
    0: (2.0, 0, "coding", 0.0, 0.0, 1, True),
    1: (3.5, 1, "knowledge", 1.0, 1.0, None, True),
    2: (1.5, 1, "advice", 2.0, 1.0, None, True),
    3: (2.5, 0, "coding", 0.1, 0.1, 1, False),
}


def explore_ids() -> list[str]:
    return [text_key(text) for text, _ in EXPLORE_INSTRUCTIONS]


# A steerable profile for the tiny model's vocabulary: cluster 0 code and maths, 1 daily life, 2 writing (thin).
STEER_PROFILE = [
    *[(f"write python code to sort list number {i}", 0, True) for i in range(8)],
    ("write python code to sort list number 0 again", 0, False),
    *[(f"give me a simple recipe to cook on day {i}", 1, True) for i in range(8)],
    ("write a short poem about the sea", 2, True),
]


def build_steerable_store(folder: Path, profile: Sequence[tuple[str, int, bool]] = STEER_PROFILE,
                          embedding: tuple[str, np.ndarray] | None = None) -> Store:
    """A workspace store profiled by hand (``profile``: text, cluster, near-duplicate representative), so
    `reconstruct --steer coverage` runs on it as after a real `profile`. ``embedding``: the embedder's name and a
    vector per row (default: the packaged embedder on the texts)."""
    store = Store.for_workspace(folder)
    texts = [text for text, *_ in profile]
    rows = [InstructionRow(text, 8, "tiny", "<p>", 1.0, 1.0, 32, 7, "p", 0) for text in texts]
    store.add_instruction_batch("p", 0, rows, limit=100, sampled=len(rows), dropped={}, new_tokens=0, seconds=0)
    ids = [text_key(text) for text in texts]
    store.replace_profile(pd.DataFrame({"instruction_id": ids, "cluster": [r[1] for r in profile],
                                        "is_representative": [r[2] for r in profile]}))
    if embedding is None:
        from core.engines.embedder import DEFAULT_EMBEDDER, open_embedder

        embedding = DEFAULT_EMBEDDER, open_embedder()(texts)
    store.save_embeddings(embedding[0], ids, embedding[1])
    return store


def build_explore_store(path: Path, *, refresh: bool = True) -> ExploreStore:
    store = ExploreStore(path)
    rows = [InstructionRow(text, n, "tiny", "<p>", 1.0, 1.0, 32, 7, "job-r", 0) for text, n in EXPLORE_INSTRUCTIONS]
    store.add_instruction_batch("job-r", 0, rows, limit=100, sampled=len(rows), dropped={}, new_tokens=0, seconds=0)
    key = explore_ids()
    responses, scores = [], []
    for index, by_model in EXPLORE_SCORES.items():
        for model, (s1, s2) in by_model.items():
            rid = response_id(key[index], model, 0)
            responses.append(ResponseRow(rid, key[index], model, 0, f"{model} answers {EXPLORE_INSTRUCTIONS[index][0]}",
                                         5, True, "chat", 0.7, 0.9, 64, 1, "job-s"))
            scores += [ScoreRow(rid, "j1", "probs", float(s1), None, None, False, "chat", "job-j"),
                       ScoreRow(rid, "j2", "probs", float(s2), None, None, False, "chat", "job-j")]
    # Noise the views must ignore: a failed judge and another method's score.
    first = response_id(key[0], "model-a", 0)
    scores += [ScoreRow(first, "j3", "probs", None, None, None, True, "chat", "job-j"),
               ScoreRow(first, "j1", "generate", 1.0, None, "1", False, "chat", "job-j")]
    store.add_responses(responses)
    store.add_scores(scores)

    frame = store.scores_frame("probs")
    consensus = (frame.groupby("response_id")
                 .agg(instruction_id=("instruction_id", "first"), mean=("score", "mean"), median=("score", "median"),
                      std=("score", lambda s: float(s.std(ddof=0))), min=("score", "min"), max=("score", "max"),
                      n_judges=("score", "count"))
                 .reset_index())
    consensus["method"] = "probs"
    best_rows = []
    for instruction_id, group in consensus.groupby("instruction_id"):
        ranked = group.sort_values("mean", ascending=False)
        top = ranked.iloc[0]
        margin = top["mean"] - ranked.iloc[1]["mean"] if len(ranked) > 1 else None
        best_rows.append((instruction_id, top["response_id"], top["mean"], top["std"], margin))
    best = pd.DataFrame(best_rows, columns=["instruction_id", "response_id", "mean", "std", "margin"])
    agreement = pd.DataFrame([("j1", "j2", "probs", 9, 0.5, 0.4)],
                             columns=["judge_a", "judge_b", "method", "n", "spearman", "kendall"])
    store.replace_consensus("probs", consensus, best, agreement)
    with store.write() as con:
        for index, (difficulty, cluster, category, x, y, dup, rep) in EXPLORE_PROFILE.items():
            con.execute(
                "INSERT INTO instruction_profile VALUES (?, ?, NULL, 0.5, ?, ?, ?, ?, ?, ?, ?, NULL, now())",
                [key[index], difficulty, cluster, f"label {cluster}", x, y, dup, rep, category],
            )
    if refresh:
        store.refresh_explore_rows()
    return store


# -- the Mix tests' store and domain file --------------------------------------------------------------------
N_GENERAL = 60
N_DOMAIN = 40
CLUSTER_SIZES = (30, 15, 9)  # then 6 rows without a cluster
DIFFICULTY_SIZES = (25, 15, 10, 6, 4)  # rows per difficulty bin (values 1, 1.9, 2.8, 3.7, 4.6)
FAKE_EMBEDDER = "fake-embedder"


def _group(i: int, sizes: tuple[int, ...]) -> int | None:
    edges = np.cumsum(sizes)
    return int(np.searchsorted(edges, i, side="right")) if i < edges[-1] else None


def build_mix_store(path: Path) -> Store:
    store = Store(path)
    texts = [f"please write a {'poem' if i % 2 else 'code'} about {'math' if i % 3 else 'travel'} {i}"
             for i in range(N_GENERAL)]
    rows = [InstructionRow(text, 8, "tiny", "<p>", 1.0, 1.0, 32, 7, "job-r", 0) for text in texts]
    store.add_instruction_batch("job-r", 0, rows, limit=1000, sampled=len(rows), dropped={}, new_tokens=0, seconds=0)
    ids = [text_key(text) for text in texts]
    responses = [ResponseRow(response_id(iid, "m", 0), iid, "m", 0, "give " + " ".join(["tips"] * (1 + i % 7)),
                             5, True, "chat", 0.7, 0.9, 64, 1, "job-s") for i, iid in enumerate(ids)]
    store.add_responses(responses)
    means = [1.0 + (i % 9) * 0.5 for i in range(N_GENERAL)]
    consensus = pd.DataFrame({"response_id": [r.id for r in responses], "instruction_id": ids, "method": "probs",
                              "mean": means, "median": means, "std": 0.1, "min": means, "max": means, "n_judges": 2})
    best = pd.DataFrame({"instruction_id": ids, "response_id": [r.id for r in responses], "mean": means, "std": 0.1,
                         "margin": None})
    agreement = pd.DataFrame(columns=["judge_a", "judge_b", "method", "n", "spearman", "kendall"])
    store.replace_consensus("probs", consensus, best, agreement)
    profile = pd.DataFrame({
        "instruction_id": ids,
        "difficulty": [1.0 + 0.9 * _group(i, DIFFICULTY_SIZES) for i in range(N_GENERAL)],
        "cluster": pd.array([_group(i, CLUSTER_SIZES) for i in range(N_GENERAL)], dtype="Int64"),
        "cluster_label": [None if _group(i, CLUSTER_SIZES) is None else f"topic {_group(i, CLUSTER_SIZES)}"
                          for i in range(N_GENERAL)],
        "category": ["coding" if i % 2 == 0 else "math" for i in range(N_GENERAL)],
        "is_representative": True,
    })
    store.replace_profile(profile)
    vectors = np.random.default_rng(0).normal(size=(N_GENERAL, 8)).astype(np.float32)
    store.save_embeddings(FAKE_EMBEDDER, ids, vectors)
    store.refresh_explore_rows()
    return store


def write_domain(path: Path, n: int = N_DOMAIN) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for i in range(n):
            messages = [{"role": "user", "content": f"explain health {i}"},
                        {"role": "assistant", "content": " ".join(["money"] * (1 + i % 5))}]
            handle.write(json.dumps({"messages": messages}) + "\n")
    return path


# -- a frozen mix to train on --------------------------------------------------------------------------------
TRAIN_CONVERSATIONS = [
    [{"role": "user", "content": "please write a poem about the travel"},
     {"role": "assistant", "content": "the poem is short and simple"}],
    [{"role": "system", "content": "you are a simple list"},
     {"role": "user", "content": "give me tips to learn python"},
     {"role": "assistant", "content": "learn the code and write a list"}],
    [{"role": "user", "content": "how to cook"}, {"role": "assistant", "content": "cook a recipe"},
     {"role": "user", "content": "why"}, {"role": "assistant", "content": "money and health"}],
    [{"role": "user", "content": "explain the math"}, {"role": "assistant", "content": "1 2 3 4 5"}],
]


def write_snapshot(folder: Path, conversations=TRAIN_CONVERSATIONS, repeat: int = 4) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = conversations * repeat
    pd.DataFrame({"messages": rows, "source": ["general"] * len(rows), "origin_id": range(len(rows))}).to_parquet(
        folder / "train.parquet")
    (folder / "manifest.yaml").write_text("ratio: 0.5\n")
    return folder


# -- damaged model files -------------------------------------------------------------------------------------
def packaged_gguf() -> Path:
    source = resolve_model("smollm2-135m-instruct", Path("unused"))
    return Path(source.location) / source.gguf_file


def damaged_ggufs(folder: Path) -> list[Path]:
    """A real GGUF v3 header followed by garbage, and the first 2 MB of the packaged SmolLM2 GGUF."""
    garbage = folder / "garbage.gguf"
    garbage.write_bytes(b"GGUF" + struct.pack("<I", 3) + random.Random(0).randbytes(4096))
    truncated = folder / "truncated.gguf"
    with packaged_gguf().open("rb") as real:
        truncated.write_bytes(real.read(2_000_000))
    return [garbage, truncated]


# -- processes, jobs and runs a test starts -------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.25) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


def stop_process(process: subprocess.Popen, timeout_s: float) -> None:
    """SIGTERM, then SIGKILL if it has not ended within ``timeout_s``."""
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()


def stop_jobs(workspace: Path) -> None:
    """Jobs outlive the app by design; a failed test must not leave one sampling in the background."""
    for job in list_jobs(workspace):
        if job.active:
            request_cancel(job.folder)
    wait_until(lambda: not any(job.active for job in list_jobs(workspace)), 30, "jobs to stop")


def build_finished_run(folder: Path, base: Path, data: Path | None = None, *, lora: bool = True,
                       **config: Any) -> Path:
    """A finished training run as the train stage leaves it: config.yaml naming the base (and the mix, and any
    other ``config`` keys), and a LoRA adapter whose weights are not zero (PEFT starts B at zero: an untouched
    adapter would change nothing), or a full model (a copy of the base)."""
    folder.mkdir(parents=True)
    values = {"model": str(base), **({"data": str(data)} if data else {}), **config}
    (folder / "config.yaml").write_text(yaml.safe_dump(values))
    if not lora:
        shutil.copytree(base, folder / "model")
        return folder
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    model.save_pretrained(folder / "adapter")
    return folder


def tiny_pipeline(model: Path, **sections: dict) -> dict:
    """A pipeline on the tiny model: it reconstructs, answers, judges and is tuned; general benchmarks only (its
    word-level vocabulary has no answer letters for MedMCQA)."""
    config = {
        "name": "tiny", "model": str(model), "threads": 1,
        "reconstruct": {"n": 6, "batch_size": 8, "max_new_tokens": 24},
        "respond": {"k": 1, "max_new_tokens": 12}, "judge": {"judges": [str(model)]}, "profile": {},
        "mix": {"domain": "builtin:medmcqa", "ratio": 0.5, "max_domain": 4},
        "train": {"max_steps": 2, "batch_size": 2, "max_length": 128},
        "eval": {"suite": ["general"], "limit": 2},
    }
    for name, values in sections.items():
        config[name] = {**config[name], **values}
    return config


def stop_runs(workspace: Path) -> None:
    """Runs outlive the app by design; a failed test must not leave one training in the background."""
    folders = [folder for folder in runs_root(workspace).glob("*") if job_info(folder).active]
    for folder in folders:
        cancel_run(folder)
    for folder in folders:
        wait_for(folder, 30, lambda job: not job.active)
