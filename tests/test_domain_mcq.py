"""A user's multiple-choice domain data: held-out rows scored by answer-letter likelihood (domain_mcq)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.cli.main import main
from core.engines.models import load_model
from core.eval.benchmarks.domain_mcq import chat_mcq, letter_prompt
from core.eval.benchmarks.domain_ppl import item_ids
from core.mix.domain import McqItem, load_domain, render_mcq
from core.store import Store
from tests.helpers import WORDS, build_tiny_model_folder

# The question word decides the answer, so a model can learn the key from the training rows and apply it to
# the held-out ones (their option order differs, the question word does not).
KEY = {"why": 0, "how": 1, "what": 2, "can": 3}
OPTION_WORDS = ("poem", "story", "code", "list")


def mcq_rows(n: int) -> list[list[dict[str, str]]]:
    rows = []
    for i in range(n):
        word = list(KEY)[i % len(KEY)]
        options = OPTION_WORDS[i % 4:] + OPTION_WORDS[: i % 4]
        item = McqItem(f"q{i}", f"{word} {WORDS[5 + i // 4]}", options, KEY[word], None, None)
        rows.append(render_mcq(item))
    return rows


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps({"messages": row}) + "\n" for row in rows), encoding="utf-8")
    return path


def test_rendered_questions_and_common_answer_styles_parse():
    rendered = mcq_rows(1)[0]
    parsed = chat_mcq("x", rendered)
    assert parsed is not None and parsed.options == ("A", "B", "C", "D") and parsed.answer == 0
    assert parsed.turns == (rendered[0],)
    user = {"role": "user", "content": "Which?\nA) red\nB) blue\nC) green"}
    for reply, answer in (("B", 1), ("(C)", 2), ("C) green", 2), ("A. red\n\nbecause", 0), (" B, blue", 1)):
        assert chat_mcq("x", [user, {"role": "assistant", "content": reply}]).answer == answer, reply
    system = {"role": "system", "content": "You are a doctor."}
    with_system = chat_mcq("x", [system, user, {"role": "assistant", "content": "A"}])
    assert with_system.turns == (system, user) and with_system.options == ("A", "B", "C")


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": "Which?\nA. red\nB. blue"}, {"role": "assistant", "content": "Blue, surely."}],
    [{"role": "user", "content": "Which?\nA. red\nB. blue"}, {"role": "assistant", "content": "C. green"}],
    [{"role": "user", "content": "Which?\nA. red\nC. blue"}, {"role": "assistant", "content": "A"}],
    [{"role": "user", "content": "Which?\nA. red"}, {"role": "assistant", "content": "A"}],
    [{"role": "user", "content": "Which? A. red B. blue"}, {"role": "assistant", "content": "A"}],
    [{"role": "user", "content": "Which?\nA. red\nB. blue"}, {"role": "assistant", "content": "a. red"}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "A"},
     {"role": "user", "content": "Which?\nA. red\nB. blue"}, {"role": "assistant", "content": "B"}],
])
def test_other_conversations_are_not_questions(messages):
    assert chat_mcq("x", messages) is None


def run_cli(capsys, *argv: str) -> tuple[int, dict | None, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, json.loads(captured.out.strip().splitlines()[-1]) if code == 0 else None, captured.err


def train_on_answers(model_dir: Path, rows: list, tmp_path: Path) -> Path:
    """A few Adam steps on the answer letter after each training row's prompt; the model is saved in place."""
    import torch

    lm = load_model(str(model_dir), tmp_path, dtype=torch.float32)
    questions = [chat_mcq(str(i), row) for i, row in enumerate(rows)]
    prompts = [letter_prompt(lm.tokenizer, q.turns) for q in questions]
    letters = [lm.tokenizer.convert_tokens_to_ids(q.options[q.answer]) for q in questions]
    width = max(map(len, prompts))
    pad = lm.tokenizer.pad_token_id
    ids = torch.tensor([p + [pad] * (width - len(p)) for p in prompts])
    mask = (ids != pad).long()
    last = torch.tensor([len(p) - 1 for p in prompts])  # where each answer letter is predicted
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(lm.model.parameters(), lr=0.003)
    lm.model.train()
    for _ in range(100):
        optimizer.zero_grad()
        logits = lm.model(input_ids=ids, attention_mask=mask).logits[torch.arange(len(prompts)), last]
        torch.nn.functional.cross_entropy(logits, torch.tensor(letters)).backward()
        optimizer.step()
    lm.model.save_pretrained(model_dir)
    return model_dir


def test_held_out_questions_are_scored_and_a_model_that_learned_the_key_scores_higher(capsys, tmp_path: Path):
    rows = mcq_rows(40)
    chats = [[{"role": "user", "content": "write a poem"}, {"role": "assistant", "content": "a short poem"}]] * 3
    domain = write_jsonl(tmp_path / "quiz.jsonl", rows + chats)  # three rows are not questions
    held_out = load_domain(domain, test_fraction=0.25).test
    questions = {i for i, row in zip(item_ids(held_out), held_out, strict=True) if chat_mcq(i, row)}
    assert questions

    model = build_tiny_model_folder(tmp_path / "letters", seed=2, words=[*WORDS, "A", "B", "C", "D"])
    workspace = tmp_path / "ws"
    args = ("eval", "--suite", "domain", "--domain", str(domain), "--domain-test-fraction", "0.25",
            "--batch-size", "4", "--workspace", str(workspace), "--json")
    code, before, err = run_cli(capsys, *args, "--model", str(model))
    assert code == 0, err
    mcq = before["results"]["domain_mcq"]
    assert list(before["results"]) == ["domain_mcq", "domain_ppl"] and mcq["n"] == len(questions)
    assert before["results"]["domain_ppl"]["n"] == len(held_out)
    assert mcq["domain"] == str(domain.resolve()) and mcq["domain_test_fraction"] == 0.25
    stored = Store.for_workspace(workspace).eval_items(before["job_id"], "domain_mcq")
    assert {row.item_id for row in stored} == questions
    assert mcq["acc"] == pytest.approx(sum(row.pred == row.gold for row in stored) / len(stored))

    train = load_domain(domain, test_fraction=0.25).train
    trained = train_on_answers(model, [row for row in train if chat_mcq("t", row)], tmp_path)
    code, after, err = run_cli(capsys, *args, "--model", str(trained), "--job-id", "eval-trained")
    assert code == 0, err
    assert after["results"]["domain_mcq"]["acc"] == 1.0 > mcq["acc"]


def test_asking_for_domain_mcq_on_data_without_questions_is_one_clear_error(capsys, tmp_path: Path,
                                                                           tiny_model_dir: Path):
    chats = [[{"role": "user", "content": f"explain health {i}"}, {"role": "assistant", "content": "money"}]
             for i in range(8)]
    domain = write_jsonl(tmp_path / "chats.jsonl", chats)
    code, _, err = run_cli(capsys, "eval", "--model", str(tiny_model_dir), "--suite", "domain_mcq", "--domain",
                           str(domain), "--workspace", str(tmp_path / "ws"))
    assert code == 2 and "is multiple choice" in err and len(err.strip().splitlines()) == 1
    code, summary, err = run_cli(capsys, "eval", "--model", str(tiny_model_dir), "--suite", "domain", "--domain",
                                 str(domain), "--workspace", str(tmp_path / "ws"), "--json")
    assert code == 0 and list(summary["results"]) == ["domain_ppl"], err
