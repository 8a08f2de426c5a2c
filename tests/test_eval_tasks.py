"""Eval tasks as a protocol: the registry, its run order, and tasks run on a fake engine (no model, no torch)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from core.engines.base import Sample, SampleSettings
from core.errors import ForgetlessError
from core.eval.benchmarks import TASKS
from core.eval.evaluation import SUITES, EvalConfig, TargetModels, open_target, resolve_target, run_evaluation
from core.eval.task import EvalTarget, EvalTask, TaskModels, register, sort_tasks
from core.progress import Progress
from core.store import Store

ROOT = Path(__file__).resolve().parent.parent
LETTER_PROBS = (0.1, 0.2, 0.3, 0.4)  # what the fake engine gives "A".."D" after any prompt


class FakeTokenizer:
    """Word-level ids from a growing vocabulary; no chat template (prompts take the plain format)."""

    chat_template = None
    pad_token_id, eos_token_id, unk_token_id = 0, 1, None

    def __init__(self) -> None:
        self.vocab = {"<pad>": 0, "<eos>": 1}

    def get_vocab(self) -> dict[str, int]:
        return dict(self.vocab)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [self.vocab.setdefault(word, len(self.vocab)) for word in text.split()]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        words = {index: word for word, index in self.vocab.items()}
        return " ".join(words[i] for i in ids)

    def __call__(self, text: str | list[str], add_special_tokens: bool = False) -> dict[str, Any]:
        if isinstance(text, str):
            return {"input_ids": self.encode(text)}
        return {"input_ids": [self.encode(one) for one in text]}


class FakeEngine:
    """The engine protocol without a model: an option's log-likelihood is minus its word count, the letters
    A..D get LETTER_PROBS, and every sample is the same reply. Calls are recorded."""

    name = "fake"

    def __init__(self, served_by: str = "transformers") -> None:
        self.served_by, self.url = served_by, None if served_by == "transformers" else "http://127.0.0.1:1/v1"
        self.tokenizer = FakeTokenizer()
        self.calls: list[tuple[str, Any]] = []
        self.closed = False

    def sample(self, prompts: Sequence[Sequence[int]], settings: SampleSettings, *,
               on_tokens: Callable[[int], None] | None = None) -> list[Sample]:
        self.calls.append(("sample", settings))
        if on_tokens:
            on_tokens(3 * len(prompts))
        return [Sample("  all lowercase reply  ", [5, 6, 7], True) for _ in prompts for _ in range(settings.n)]

    def next_token_logprobs(self, prompts: Sequence[Sequence[int]], token_ids: Sequence[int]) -> list[list[float]]:
        self.calls.append(("next_token_logprobs", list(token_ids)))
        letters = [self.tokenizer.vocab[letter] for letter in "ABCD"]
        return [[math.log(LETTER_PROBS[letters.index(t)]) for t in token_ids] for _ in prompts]

    def continuation_logprobs(self, contexts: Sequence[str], continuations: Sequence[str]) -> list[list[float]]:
        self.calls.append(("continuation_logprobs", list(zip(contexts, continuations, strict=True))))
        return [[-1.0] * len(continuation.split()) for continuation in continuations]

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> FakeEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def test_every_benchmark_is_one_registered_task_in_run_order():
    assert list(TASKS) == ["arc_easy", "piqa", "hellaswag", "sciq", "medmcqa", "domain_mcq", "domain_ppl", "drift",
                           "ifeval"]
    assert SUITES == {"general": ("arc_easy", "piqa", "hellaswag", "sciq"),
                      "domain": ("medmcqa", "domain_mcq", "domain_ppl"), "drift": ("drift",), "ifeval": ("ifeval",)}
    assert all(isinstance(task, EvalTask) and TASKS[name] is task for name, task in TASKS.items())
    with pytest.raises(ValueError, match="registered twice"):
        register(TASKS["piqa"])


def test_a_new_task_sorts_by_its_suite_whatever_the_import_order():
    registry = dict(TASKS)
    def named(name: str, suite: str) -> SimpleNamespace:
        return SimpleNamespace(name=name, suite=suite)

    try:
        TASKS.clear()
        for task in (named("later", "zeta"), named("ifeval", "ifeval"), named("drift", "drift"),
                     named("arc_easy", "general"), named("extra", "general")):
            register(task)
        sort_tasks()
        assert list(TASKS) == ["arc_easy", "extra", "drift", "ifeval", "later"]
    finally:
        TASKS.clear()
        TASKS.update(registry)


def run_on_fake_engine(workspace: str) -> None:
    """arc_easy and ifeval end to end on FakeEngine; prints what the test checks (run in a fresh process)."""
    engine = FakeEngine()
    config = EvalConfig(model="fake-model", suite=("arc_easy", "ifeval"), limit=3, batch_size=2,
                        ifeval_max_new_tokens=7)
    store = Store.for_workspace(Path(workspace))
    summary = run_evaluation(config, store, engines=lambda spec: engine)
    items = {task: [[row.item_id, row.scores, row.pred, row.extra] for row in store.eval_items(summary["job_id"], task)]
             for task in summary["tasks"]}
    sampled = [settings for kind, settings in engine.calls if kind == "sample"]
    scored = [pairs for kind, pairs in engine.calls if kind == "continuation_logprobs"]
    print(json.dumps({"summary": summary, "items": items, "torch": "torch" in sys.modules, "closed": engine.closed,
                      "sampled": [[s.temperature, s.max_new_tokens, list(s.stop)] for s in sampled],
                      "scored": scored}))


def test_tasks_run_on_a_fake_engine_without_torch(tmp_path: Path):
    code = f"from tests.test_eval_tasks import run_on_fake_engine; run_on_fake_engine({str(tmp_path / 'ws')!r})"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert not out["torch"] and out["closed"]
    summary = out["summary"]
    assert summary["tasks"] == ["arc_easy", "ifeval"] and summary["items_scored"] == 6
    arc, ifeval = summary["results"]["arc_easy"], summary["results"]["ifeval"]
    assert arc["n"] == ifeval["n"] == 3 and 0.0 <= arc["acc"] <= 1.0
    # One call per batch; a question's options are adjacent pairs with its context (an engine may share its pass).
    assert len(out["scored"]) == 2
    for pairs in out["scored"]:
        contexts = [context for context, _ in pairs]
        runs = [c for index, c in enumerate(contexts) if index == 0 or contexts[index - 1] != c]
        assert len(runs) == len(set(contexts))
    for item_id, scores, pred, _ in out["items"]["arc_easy"]:
        assert scores == [-float(len(option.split())) for option in _arc_options(item_id)]
        assert pred == scores.index(max(scores))
    assert out["sampled"] == [[0.0, 7, ["\n### ", "\n\n\n"]]] * 2  # greedy, the budget, the plain format's stops
    for _, _, pred, extra in out["items"]["ifeval"]:
        assert extra["reply"] == "all lowercase reply" and extra["tokens"] == 3 and pred == int(all(extra["strict"]))


def _arc_options(item_id: str) -> tuple[str, ...]:
    from core.eval.benchmarks.general import load_general_items

    return next(item.options for item in load_general_items("arc_easy", 3, 0) if item.item_id == item_id)


def test_letter_tasks_read_the_answer_letters_through_the_engine(monkeypatch, tmp_path: Path):
    questions = [SimpleNamespace(id=f"q{i}", question=f"question {i}", options=("w", "x", "y", "z"), answer=i % 4)
                 for i in range(8)]
    monkeypatch.setattr("core.eval.benchmarks.domain_mcq.medmcqa_source",
                        lambda: (questions, lambda item: f"{item.question} A. w B. x C. y D. z"))
    engine = FakeEngine()
    store = Store.for_workspace(tmp_path / "ws")
    summary = run_evaluation(EvalConfig(model="fake-model", suite=("medmcqa",), batch_size=3), store,
                             engines=lambda spec: engine)
    medmcqa = summary["results"]["medmcqa"]
    assert medmcqa["n"] == 8 and medmcqa["top_letter"] == "D" and medmcqa["top_letter_share"] == 1.0
    assert medmcqa["acc"] == 0.25  # answers cycle A..D, the engine always favours D
    rows = store.eval_items(summary["job_id"], "medmcqa")
    assert all(row.scores == pytest.approx(LETTER_PROBS) and row.pred == 3 for row in rows)
    assert [kind for kind, _ in engine.calls] == ["next_token_logprobs"] * 3  # one call per batch


def test_a_run_adapter_is_merged_only_into_an_in_process_engine(tmp_path: Path):
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "config.yaml").write_text("model: some-base\n")
    engine = FakeEngine()
    with pytest.raises(ForgetlessError, match="holds a LoRA adapter"):
        open_target(resolve_target(EvalConfig(model=str(run))), lambda spec: engine)
    assert engine.closed


def test_drift_needs_a_model_loaded_in_process():
    progress = Progress("job", 1)
    text = SimpleNamespace(item_id="x", prompt_ids=(1, 2), response_ids=(3,))
    for name in ("drift", "domain_ppl"):
        with pytest.raises(ForgetlessError, match="loaded in this process"):
            TASKS[name].score([text], TaskModels(FakeEngine(), FakeEngine()), progress)


def test_tasks_that_need_the_model_itself_stay_in_process_when_the_engines_serve_elsewhere():
    opened: list[tuple[str, str]] = []

    def opener(served_by: str):
        def open_engine(spec: str) -> FakeEngine:
            opened.append((served_by, spec))
            return FakeEngine(served_by)
        return open_engine

    target = EvalTarget("tuned", None, "base", None, "tuned", None)
    models = TargetModels(target, opener("vllm"), opener("transformers"))
    assert models.for_task(TASKS["arc_easy"]).model.served_by == "vllm"
    drift = models.for_task(TASKS["drift"])
    assert (drift.model.served_by, drift.base.served_by) == ("transformers", "transformers")
    assert models.for_task(TASKS["domain_ppl"]) is drift  # opened once
    assert opened == [("vllm", "tuned"), ("transformers", "tuned"), ("transformers", "base")]
    engines = [models.served.model, drift.model, drift.base]
    models.close()
    assert all(engine.closed for engine in engines)

    in_process = TargetModels(target, opener("transformers"), opener("transformers"))
    assert in_process.for_task(TASKS["drift"]) is in_process.served  # nothing opened twice in-process
