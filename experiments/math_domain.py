"""A second domain for the forgetting experiment: arithmetic questions from the `mathematics-dataset` package.

MedMCQA is too hard for a 135M model to gain on measurably in a short run, so the experiment can also use
arithmetic (``experiments/forgetting.py --domain arithmetic``). This module

* makes the package importable with the installed sympy: `mathematics_dataset.sample.polynomials` imports
  ``base_solution_linear`` from ``sympy.solvers.diophantine``, which moved to
  ``sympy.solvers.diophantine.diophantine`` (the function itself is unchanged);
* generates arithmetic questions (add/subtract, several terms, multiply, divide; the package's "train-easy"
  entropy) as 4-option multiple choice (the gold answer and three nearby wrong numbers);
* writes them as one chat file (``messages``: the question with lettered options, then "B. <answer>", as the
  built-in MedMCQA is rendered), an ordinary user domain file: ``forgetless mix --domain-test-fraction F``
  holds out a share by content and ``forgetless eval --domain FILE --domain-test-fraction F`` scores exactly
  that share (letter accuracy, ``domain_mcq``, and answer perplexity, ``domain_ppl``). Questions are
  distinct, so no question is on both sides.

    python -m experiments.math_domain --out workspace/arithmetic.jsonl --n 2500
"""

from __future__ import annotations

import argparse
import importlib
import json
import random
import sys
from pathlib import Path
from typing import Any

MODULES = ("add_or_sub", "add_sub_multiple", "mul", "div")


def load_arithmetic() -> dict[str, Any]:
    """The package's arithmetic problem generators (easy third of the training entropy)."""
    diophantine = importlib.import_module("sympy.solvers.diophantine")
    if not hasattr(diophantine, "base_solution_linear"):
        from sympy.solvers.diophantine.diophantine import base_solution_linear

        sys.modules["sympy.solvers.diophantine"].base_solution_linear = base_solution_linear
    from mathematics_dataset import generate
    from mathematics_dataset.modules import modules

    return modules.train(generate._make_entropy_fn(0, 3))["arithmetic"]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _distractors(answer: str, rng: random.Random) -> list[str]:
    """Three distinct wrong answers near the gold one (same form: integer or decimal)."""
    value = float(answer)
    decimals = len(answer.split(".")[1]) if "." in answer else 0
    step = 10 ** -decimals
    wrong: set[str] = set()
    while len(wrong) < 3:
        candidate = value + rng.choice([-1, 1]) * rng.randint(1, 10) * step * rng.choice([1, 1, 10])
        if rng.random() < 0.2:
            candidate = -value if value else step
        text = f"{candidate:.{decimals}f}" if decimals else str(int(round(candidate)))
        if text != answer:
            wrong.add(text)
    return sorted(wrong)


def generate_items(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` multiple-choice arithmetic items with distinct questions, reproducible from ``seed``."""
    import numpy as np

    random.seed(seed)  # the package samples with the global random and numpy generators
    np.random.seed(seed)
    rng = random.Random(seed)
    generators = load_arithmetic()
    items: list[dict[str, Any]] = []
    seen: set[str] = set()
    while len(items) < n:
        problem = generators[MODULES[len(items) % len(MODULES)]]()
        question, answer = str(problem.question).strip(), str(problem.answer).strip()
        if question in seen or not _is_number(answer):  # fractions like -1/397 have no nearby-number distractors
            continue
        seen.add(question)
        options = [answer, *_distractors(answer, rng)]
        rng.shuffle(options)
        items.append({"id": f"math-{len(items)}", "question": question, "options": options,
                      "answer": options.index(answer)})
    return items


def write_file(path: Path, n: int, seed: int = 0) -> dict[str, Any]:
    """``n`` questions as chat rows in a JSONL file (written whole, then moved into place)."""
    from core.mix.domain import McqItem, render_mcq

    rows = []
    for item in generate_items(n, seed):
        mcq = McqItem(item["id"], item["question"], tuple(item["options"]), item["answer"], None, "arithmetic")
        rows.append(json.dumps({"messages": render_mcq(mcq)}) + "\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text("".join(rows), encoding="utf-8")
    partial.replace(path)
    return {"path": str(path), "questions": n, "seed": seed, "modules": list(MODULES)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="arithmetic multiple-choice questions as a chat JSONL file")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n", type=int, default=2500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(write_file(args.out, args.n, args.seed)))
