"""A second domain for the forgetting experiment: arithmetic questions from the `mathematics-dataset` package.

Not wired into experiments/forgetting.py yet: `forgetless eval --suite domain` scores MedMCQA's test split
only, so a math test set needs either that suite to accept a user's test file (core/evaluate.py) or an
in-process scorer (core.eval_domain.score_letters on these McqItems). What this module does:

* makes the package importable with the installed sympy: `mathematics_dataset.sample.polynomials` imports
  ``base_solution_linear`` from ``sympy.solvers.diophantine``, which moved to
  ``sympy.solvers.diophantine.diophantine`` (the function itself is unchanged);
* generates arithmetic questions (add/subtract, several terms, multiply, divide; the package's "train-easy"
  entropy) as 4-option multiple choice (the gold answer and three nearby wrong numbers), so they are scored
  like MedMCQA, by answer-letter likelihood;
* writes ``train.jsonl`` (chat ``messages``, the same rendering as the built-in MedMCQA: a ``forgetless mix
  --domain`` input) and ``test.jsonl`` (question, options, answer index), split so no question text is in both.

    python -m experiments.math_domain --out workspace/math --train 2000 --test 400
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


def write_split(out: Path, n_train: int, n_test: int, seed: int = 0) -> dict[str, Any]:
    from core.domain import McqItem, render_mcq

    items = generate_items(n_train + n_test, seed)
    order = random.Random(seed).sample(range(len(items)), len(items))
    test, train = [items[i] for i in order[:n_test]], [items[i] for i in order[n_test:]]
    out.mkdir(parents=True, exist_ok=True)
    with (out / "train.jsonl").open("w", encoding="utf-8") as handle:
        for item in train:
            mcq = McqItem(item["id"], item["question"], tuple(item["options"]), item["answer"], None, "arithmetic")
            handle.write(json.dumps({"messages": render_mcq(mcq)}) + "\n")
    (out / "test.jsonl").write_text("".join(json.dumps(item) + "\n" for item in test), encoding="utf-8")
    return {"out": str(out), "train": len(train), "test": len(test), "seed": seed, "modules": list(MODULES)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="arithmetic multiple-choice train/test files")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(write_split(args.out, args.train, args.test, args.seed)))
