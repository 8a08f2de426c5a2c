"""The ifeval suite: IFEval's prompts and rule checks, offline (regex sentences, no punkt), generated and stored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.cli.main import main
from core.eval.benchmarks.ifeval import IfevalItem, check_reply, ifeval_metrics, load_ifeval_items
from core.store import Store


def item(instruction: str, **kwargs) -> IfevalItem:
    return IfevalItem("t@512", "Write something.", (instruction,), (kwargs,))


@pytest.mark.parametrize(("instruction", "kwargs", "reply", "strict", "loose"), [
    ("punctuation:no_comma", {}, "no commas in here", True, True),
    ("punctuation:no_comma", {}, "one, two", False, False),
    # Loose also tries the reply without its first line (a model's "Sure, ..." preamble).
    ("punctuation:no_comma", {}, "Sure, here it is:\nno commas in here", False, True),
    ("change_case:english_lowercase", {}, "all of this is lower case english text.", True, True),
    ("change_case:english_lowercase", {}, "This Has Capitals.", False, False),
    # Sentence counts go through the regex splitter (NLTK's punkt model is not available offline).
    ("length_constraints:number_sentences", {"relation": "less than", "num_sentences": 3},
     "Dr. Smith came. He left.", True, True),
    ("length_constraints:number_sentences", {"relation": "less than", "num_sentences": 3},
     "One. Two. Three. Four.", False, False),
    # Capital words are counted with NLTK's tokenizer on the whole text (no punkt either).
    ("change_case:capital_word_frequency", {"capital_relation": "at least", "capital_frequency": 2},
     "HELLO BIG world", True, True),
    ("change_case:capital_word_frequency", {"capital_relation": "at least", "capital_frequency": 2},
     "Hello BIG world", False, False),
    ("language:response_language", {"language": "en"},
     "This answer is written in plain English for every reader.", True, True),
    ("language:response_language", {"language": "en"},
     "Cette réponse est écrite en français pour tous les lecteurs.", False, False),
])
def test_rule_checks_strict_and_loose(instruction, kwargs, reply, strict, loose):
    assert check_reply(item(instruction, **kwargs), reply) == {"strict": [strict], "loose": [loose]}


def test_every_packaged_prompt_loads_and_checks():
    items = load_ifeval_items(None, 0)
    assert len(items) == 541 and len({i.item_id for i in items}) == 541
    assert all(i.item_id.endswith("@512") and len(i.instruction_ids) == len(i.kwargs) >= 1 for i in items)
    for entry in items:  # no instruction type raises on an ordinary reply
        checks = check_reply(entry, "Hello there. THIS is a reply, with a comma.\n\n* one\n* two")
        assert len(checks["strict"]) == len(checks["loose"]) == len(entry.instruction_ids)
        assert all(s <= loose for s, loose in zip(checks["strict"], checks["loose"], strict=True))
    picked = load_ifeval_items(20, 3)
    assert picked == load_ifeval_items(20, 3) and picked != load_ifeval_items(20, 4) and len(picked) == 20
    assert load_ifeval_items(5, 0, max_new_tokens=64)[0].item_id.endswith("@64")


def test_prompt_level_needs_every_instruction():
    checks = [{"strict": [True, True], "loose": [True, True]}, {"strict": [True, False], "loose": [True, True]},
              {"strict": [False], "loose": [False]}, {"strict": [True], "loose": [True]}]
    metrics = ifeval_metrics(checks)
    assert metrics["n"] == 4 and metrics["instructions"] == 6
    assert metrics["prompt_strict"] == metrics["acc"] == 0.5 and metrics["prompt_loose"] == 0.75
    assert metrics["instruction_strict"] == pytest.approx(4 / 6)
    assert metrics["instruction_loose"] == pytest.approx(5 / 6)
    assert metrics["stderr"] == pytest.approx(metrics["prompt_strict_stderr"]) and metrics["stderr"] > 0


def test_cli_generates_checks_stores_and_resumes(capsys, tiny_model_dir: Path, tmp_path: Path):
    args = ["eval", "--model", str(tiny_model_dir), "--suite", "ifeval", "--limit", "3", "--batch-size", "2",
            "--ifeval-max-new-tokens", "24", "--workspace", str(tmp_path / "ws"), "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    ifeval = summary["results"]["ifeval"]
    assert ifeval["n"] == 3 and 0.0 <= ifeval["acc"] <= ifeval["prompt_loose"] <= 1.0
    rows = Store.for_workspace(tmp_path / "ws").eval_items(summary["job_id"], "ifeval")
    prompts = {i.item_id: i for i in load_ifeval_items(3, 0, max_new_tokens=24)}
    assert {r.item_id for r in rows} == set(prompts)
    for row in rows:  # each stored reply re-checks to the stored verdicts
        assert check_reply(prompts[row.item_id], row.extra["reply"]) == {k: row.extra[k] for k in ("strict", "loose")}
        assert row.pred == int(all(row.extra["strict"])) and 0 <= row.extra["tokens"] <= 24
    assert main(args) == 0  # a rerun finds every reply stored
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["items_scored"] == 0 and again["results"] == summary["results"]


@pytest.mark.integration
def test_smollm2_replies_are_real_text_and_checked(capsys, real_workspace: Path, tmp_path: Path):
    import os

    workspace = tmp_path / "ws"
    workspace.mkdir()
    (real_workspace / "models").mkdir(parents=True, exist_ok=True)
    os.symlink(real_workspace / "models", workspace / "models")  # convert the GGUF once per session
    assert main(["eval", "--model", "smollm2-135m-instruct", "--suite", "ifeval", "--limit", "4",
                 "--ifeval-max-new-tokens", "48", "--workspace", str(workspace), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["results"]["ifeval"]["n"] == 4
    rows = Store.for_workspace(workspace).eval_items(summary["job_id"], "ifeval")
    words = [row.extra["reply"].split() for row in rows]
    assert all(len(w) >= 5 for w in words)  # the instruct model answers in words, not empty or special tokens
    assert all("<|im_end|>" not in row.extra["reply"] and row.extra["tokens"] <= 48 for row in rows)


def test_results_reach_the_evaluate_tab_table_and_delta_chart(tmp_path: Path):
    from core.store.evaluation import EvalResultRow
    from ui.views.evaluate import eval_deltas, eval_history, headline_deltas, latest_results, side_by_side

    store = Store.for_workspace(tmp_path / "ws")
    for model, strict, run_dir in (("base", 0.40, None), ("tuned", 0.20, "tuned")):
        metrics = ifeval_metrics([{"strict": [i < strict * 100], "loose": [True]} for i in range(100)])
        assert metrics["prompt_strict"] == pytest.approx(strict)
        store.save_eval_result(EvalResultRow(
            f"eval-{model}", "ifeval", "ifeval", model, run_dir, None, metrics["acc"], None, metrics["stderr"],
            metrics["n"], {k: v for k, v in metrics.items() if k not in ("acc", "acc_norm", "stderr", "n")}, 100, 0))
    _, rows = side_by_side(latest_results(eval_history(store)), "base", ["tuned"])
    by_metric = {row[1]: row for row in rows if row[0] == "ifeval"}
    assert by_metric["prompt-level strict %"][3] == "40.0 ± 4.9"
    assert by_metric["prompt-level strict %"][4] == "20.0 ± 4.0 (−20.0 ▼)"  # beyond 2 combined stderr (12.7)
    assert by_metric["prompt-level loose %"][3:] == ["100.0 ± 0.0", "100.0 ± 0.0 (+0.0 ≈)"]
    chart = headline_deltas(eval_deltas(store, "base", "tuned"))
    assert list(zip(chart["task"], chart["metric"], strict=True)) == [("ifeval", "prompt_strict")]


def test_a_cancel_during_generation_stores_nothing_half_done_and_a_rerun_finishes(tiny_model_dir: Path,
                                                                                  tmp_path: Path):
    from core.engines.in_process import InProcessEngine
    from core.engines.models import load_model
    from core.eval.evaluation import EvalConfig, run_evaluation

    store = Store.for_workspace(tmp_path / "ws")
    config = EvalConfig(model=str(tiny_model_dir), suite=("ifeval",), limit=4, batch_size=2,
                        ifeval_max_new_tokens=12)
    asked_after_first_batch = {"n": 0}

    def stop_mid_second_batch() -> bool:  # asked between batches, then at every generated token
        if len(store.eval_items(config.resolved_job_id(), "ifeval")) < 2:
            return False
        asked_after_first_batch["n"] += 1
        return asked_after_first_batch["n"] > 1  # the between-batches check passes, the first token stops

    def load(spec: str) -> InProcessEngine:
        return InProcessEngine(load_model(spec, tmp_path))

    partial = run_evaluation(config, store, load, should_stop=stop_mid_second_batch)
    stored = store.eval_items(partial["job_id"], "ifeval")
    assert partial["cancelled"] and "ifeval" not in partial["results"]
    assert len(stored) == partial["items_scored"] == 2  # the first batch only: the interrupted one left no rows
    summary = run_evaluation(config, store, load)
    assert not summary["cancelled"] and summary["items_scored"] == 2 and summary["results"]["ifeval"]["n"] == 4
