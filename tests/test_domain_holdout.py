"""A user's domain data held out by the mix and scored by evaluation (domain_ppl): same rows, resumable, shown."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from core.cli.main import main
from core.engines.models import load_model
from core.errors import ForgetlessError
from core.eval.benchmarks.domain_ppl import conversation_text, item_ids, ppl_metrics
from core.eval.benchmarks.drift import drift_scores
from core.eval.evaluation import EvalConfig
from core.mix.domain import content_digest, load_domain
from core.mix.mixing import MixConfig
from core.store import Store
from core.store.evaluation import EvalResultRow
from tests.helpers import build_mix_store, build_tiny_model_folder, write_domain
from ui.views.evaluate import HEADLINE, eval_deltas, eval_history, headline_deltas, latest_results, side_by_side

CONVERSATIONS = [  # tiny-vocabulary chats; the second has two exchanges, so its context holds an answer
    [{"role": "user", "content": "how to cook"}, {"role": "assistant", "content": "give me a recipe"}],
    [{"role": "user", "content": "write a poem"}, {"role": "assistant", "content": "a short poem"},
     {"role": "user", "content": "and a story"}, {"role": "assistant", "content": "a simple story about money"}],
    [{"role": "user", "content": "learn python"}, {"role": "assistant", "content": "code and math"}],
    [{"role": "user", "content": "tips for travel"}, {"role": "assistant", "content": "plan my travel"}],
]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_mix_holds_out_exactly_the_rows_eval_scores(capsys, tmp_path: Path, tiny_model_dir: Path):
    workspace = tmp_path / "ws"
    workspace.mkdir()
    build_mix_store(workspace / "forgetless.duckdb")
    domain = write_domain(tmp_path / "health.jsonl")
    rows = [json.loads(line)["messages"] for line in domain.read_text().splitlines()]
    out = tmp_path / "mix"
    code, stdout, stderr = run_cli(capsys, "mix", "--domain", str(domain), "--ratio", "0.5", "--domain-test-fraction",
                                   "0.25", "--tokenizer-model", str(tiny_model_dir), "--out", str(out),
                                   "--workspace", str(workspace), "--json")
    assert code == 0, stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["counts"] == {"general": 30, "domain": 30, "total": 60}  # 40 rows, 10 held out
    manifest = yaml.safe_load((out / "manifest.yaml").read_text())
    assert manifest["domain"]["test_fraction"] == 0.25 and manifest["domain"]["held_out_rows"] == 10
    assert manifest["domain"]["train_rows"] == 30
    frame = pd.read_parquet(out / "train.parquet")
    mixed = {content_digest([dict(m) for m in messages]) for messages in frame[frame["source"] == "domain"]["messages"]}
    held_out = {content_digest(row) for row in rows} - mixed
    assert len(held_out) == 10 and len(mixed) == 30

    args = ("eval", "--model", str(tiny_model_dir), "--suite", "domain", "--domain", str(domain),
            "--domain-test-fraction", "0.25", "--batch-size", "4", "--workspace", str(workspace), "--json")
    code, stdout, stderr = run_cli(capsys, *args)
    assert code == 0, stderr
    result = json.loads(stdout.strip().splitlines()[-1])
    ppl = result["results"]["domain_ppl"]
    assert list(result["results"]) == ["domain_ppl"] and ppl["n"] == 10 and ppl["tokens"] > 0
    assert ppl["ppl"] == pytest.approx(math.exp(ppl["nll"])) and ppl["nll_stderr"] > 0
    assert ppl["domain"] == str(domain.resolve()) and ppl["domain_test_fraction"] == 0.25
    store = Store.for_workspace(workspace)
    assert {row.item_id for row in store.eval_items(result["job_id"], "domain_ppl")} == held_out

    code, stdout, _ = run_cli(capsys, *args)  # a rerun resumes: nothing left to score, the same numbers
    again = json.loads(stdout.strip().splitlines()[-1])
    assert code == 0 and again["items_scored"] == 0 and again["results"] == result["results"]


def test_builtin_domain_keeps_its_split_and_its_job_ids():
    with pytest.raises(ForgetlessError, match="fixed test split"):
        MixConfig(domain="builtin:medmcqa", domain_test_fraction=0.2)
    assert MixConfig(domain="d.jsonl", domain_test_fraction=0.2).domain_test_fraction == 0.2
    plain = EvalConfig(model="smollm2-135m-instruct", limit=10)
    assert plain.resolved_job_id() == "eval-c022b97e8a"  # the id this config had before the domain fields
    assert EvalConfig(model="smollm2-135m-instruct", limit=10, domain_test_fraction=0.5).resolved_job_id() == \
        plain.resolved_job_id()  # ignored for the built-in set
    user = EvalConfig(domain="d.jsonl", suite=("general", "domain"))
    assert user.tasks()[-1] == "domain_ppl" and "medmcqa" not in user.tasks()
    assert plain.tasks()[-2:] == ("medmcqa", "domain_ppl")  # the answer fit beside a small model's letter bias
    assert user.resolved_job_id() != EvalConfig(domain="d.jsonl", domain_test_fraction=0.3).resolved_job_id()
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ForgetlessError, match="fraction"):
            EvalConfig(domain="d.jsonl", domain_test_fraction=bad)


def test_eval_holds_out_what_load_domain_does(tmp_path: Path):
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps({"messages": row}) + "\n" for row in CONVERSATIONS * 3))
    data = load_domain(path, test_fraction=0.25)
    ids = item_ids(data.test)
    assert len(set(ids)) == len(ids) == len(data.test)  # repeated rows get their own ids
    assert ids[0] == content_digest(data.test[0]) and ids.count(f"{ids[0]}-1") == 1


def test_answer_tokens_are_the_final_turn_in_the_model_template(tiny_model_dir: Path, tmp_path: Path):
    lm = load_model(str(tiny_model_dir), tmp_path)
    text = conversation_text(lm.tokenizer, "x", CONVERSATIONS[1])
    decoded = lm.tokenizer.decode(list(text.response_ids))
    assert decoded.split() == ["a", "simple", "story", "about", "money", "<|im_end|>"]
    prompt = lm.tokenizer.decode(list(text.prompt_ids))
    assert "a short poem" in prompt and prompt.split()[-2:] == ["<|im_start|>", "assistant"]
    cut = conversation_text(lm.tokenizer, "x", CONVERSATIONS[1], max_tokens=4)
    assert len(cut.response_ids) == 3 and len(cut.prompt_ids) == 1


def test_answer_tokens_without_a_chat_template(tiny_base_model_dir: Path, tmp_path: Path):
    lm = load_model(str(tiny_base_model_dir), tmp_path)
    text = conversation_text(lm.tokenizer, "x", CONVERSATIONS[0])
    assert lm.tokenizer.decode(list(text.response_ids)).split() == ["give", "me", "a", "recipe"]


def _domain_ppl(lm, texts) -> dict:
    return ppl_metrics(drift_scores(lm.model, lm.model, texts, pad_id=lm.tokenizer.pad_token_id))


def test_training_on_the_answers_lowers_domain_perplexity(tmp_path: Path):
    import torch

    lm = load_model(str(build_tiny_model_folder(tmp_path / "m", seed=3)), tmp_path)
    texts = [conversation_text(lm.tokenizer, str(i), row) for i, row in enumerate(CONVERSATIONS)]
    before = _domain_ppl(lm, texts)
    assert math.isfinite(before["ppl"]) and before == _domain_ppl(lm, texts)  # reproducible
    assert before["n"] == 4 and before["tokens"] == sum(len(t.response_ids) for t in texts)
    sequences = [list(t.prompt_ids) + list(t.response_ids) for t in texts]
    ids = torch.full((len(texts), max(map(len, sequences))), lm.tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    for row, (text, sequence) in enumerate(zip(texts, sequences, strict=True)):
        ids[row, : len(sequence)] = torch.tensor(sequence)
        labels[row, len(text.prompt_ids) : len(sequence)] = torch.tensor(text.response_ids)  # the answers only
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(lm.model.parameters(), lr=0.05)
    lm.model.train()
    for _ in range(8):
        optimizer.zero_grad()
        lm.model(input_ids=ids, attention_mask=(ids != lm.tokenizer.pad_token_id).long(), labels=labels).loss.backward()
        optimizer.step()
    lm.model.eval()
    after = _domain_ppl(lm, texts)
    assert after["ppl"] < before["ppl"] / 2 and after["nll"] < before["nll"]


def test_domain_ppl_is_a_table_row_where_lower_is_better(tmp_path: Path):
    store = Store.for_workspace(tmp_path / "ws")
    for model, nll, run_dir in (("base", 2.0, None), ("tuned", 1.5, "tuned")):
        store.save_eval_result(EvalResultRow(f"eval-{model}", "domain_ppl", "domain", model, run_dir, None, None,
                                             None, None, 50, {"nll": nll, "ppl": math.exp(nll), "nll_stderr": 0.05},
                                             None, 0))
    latest = latest_results(eval_history(store))
    headers, rows = side_by_side(latest, "base", ["tuned"])
    by_metric = {row[1]: row for row in rows}
    assert by_metric["NLL per answer token"][2:] == ["50", "2.0000 ± 0.0500", "1.5000 ± 0.0500 (−0.5000 ▲)"]
    assert by_metric["answer perplexity"][3:] == ["7.39", "4.48 (−2.91 ▲)"]
    assert all(task != "domain_ppl" for task, _ in HEADLINE)
    assert headline_deltas(eval_deltas(store, "base", "tuned")).empty  # not an accuracy: kept off the delta chart
