"""Evaluation: multiple-choice scoring, domain letters, drift KL, run loading, storage, resume, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from core.engines.in_process import InProcessEngine
from core.engines.models import choose_dtype, dtype_name, load_model
from core.errors import ForgetlessError
from core.eval.benchmarks.domain_mcq import letter_metrics, score_letters
from core.eval.benchmarks.drift import (
    HELD_OUT,
    NOT_TRAINED,
    drift_metrics,
    drift_scores,
    drift_text,
    mix_general_ids,
    mix_held_out_ids,
)
from core.eval.benchmarks.general import (
    McItem,
    McScore,
    load_general_items,
    mc_metrics,
    score_multiple_choice,
    score_one_at_a_time,
)
from core.eval.evaluation import EvalConfig, open_target, resolve_target, run_evaluation
from core.store import Store
from tests.helpers import WORDS, assert_one_line_error, build_finished_run, build_tiny_model_folder, forgetless
from ui.views.evaluate import eval_deltas, eval_history, eval_results_frame

ROOT = Path(__file__).resolve().parent.parent
ITEMS = [  # context, options, gold: a tiny model trained on context + gold must pick gold
    ("how to cook", (" recipe", " poem", " code"), 0),
    ("write a short", (" money", " poem", " travel"), 1),
    ("learn python", (" math", " health", " code"), 2),
    ("give me tips for", (" travel", " email", " history"), 0),
    ("explain the", (" story", " list", " summary"), 2),
    ("what is the best way to", (" plan", " learn", " is"), 1),
]


def mc_items() -> list[McItem]:
    return [McItem("hand", str(i), c, o, g) for i, (c, o, g) in enumerate(ITEMS)]


@pytest.fixture()
def tiny_lm(tiny_model_dir: Path, tmp_path: Path):
    return load_model(str(tiny_model_dir), tmp_path)


def train_to_prefer_gold(lm, items: list[McItem], steps: int = 60) -> None:
    import torch

    torch.manual_seed(0)
    sequences = [lm.tokenizer(item.context + item.options[item.gold])["input_ids"] for item in items]
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), lm.tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq)
        labels[row, : len(seq)] = torch.tensor(seq)
    optimizer = torch.optim.Adam(lm.model.parameters(), lr=0.02)
    lm.model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        lm.model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss.backward()
        optimizer.step()
    lm.model.eval()


def test_trained_model_scores_every_known_answer_and_untrained_does_not(tiny_lm):
    items = mc_items()
    control = mc_metrics(score_multiple_choice(InProcessEngine(tiny_lm), items))
    assert control["n"] == len(items) and control["acc"] < 1.0
    train_to_prefer_gold(tiny_lm, items)
    scores = score_multiple_choice(InProcessEngine(tiny_lm), items)
    assert mc_metrics(scores)["acc"] == 1.0
    # The batched shared-prefix scorer agrees with one forward pass per option (the benchmark's baseline).
    naive = score_one_at_a_time(tiny_lm.model, tiny_lm.tokenizer, items)
    for fast, slow in zip(scores, naive, strict=True):
        assert fast.logprobs == pytest.approx(slow.logprobs, abs=1e-4)


def test_acc_norm_divides_by_option_characters_and_stderr_is_sample_based():
    # Option 0 is likelier in total, option 1 per character.
    score = McScore("x", 1, (-4.0, -6.0), (2, 6))
    assert score.pred == 0 and score.pred_norm == 1
    scores = [score, McScore("y", 0, (-1.0, -2.0), (1, 1)), McScore("z", 0, (-1.0, -3.0), (5, 5)),
              McScore("w", 1, (-3.0, -1.0), (4, 4))]
    metrics = mc_metrics(scores)
    assert metrics["acc"] == 0.75 and metrics["acc_norm"] == 1.0 and metrics["n"] == 4
    assert metrics["stderr"] == pytest.approx(0.25)  # sqrt(var_sample 0.25 / 4)
    assert metrics["acc_norm_stderr"] == 0.0


def test_option_lengths_exclude_the_leading_space(tiny_lm):
    scores = score_multiple_choice(InProcessEngine(tiny_lm), mc_items()[:1])
    assert scores[0].lengths == (6, 4, 4)


def test_subsamples_are_seeded_nested_and_hellaswag_is_capped():
    first = [i.item_id for i in load_general_items("hellaswag", limit=10, seed=0)]
    assert first == [i.item_id for i in load_general_items("hellaswag", limit=10, seed=0)]
    assert first != [i.item_id for i in load_general_items("hellaswag", limit=10, seed=1)]
    assert set(first) <= {i.item_id for i in load_general_items("hellaswag", limit=20, seed=0)}
    assert len(load_general_items("hellaswag", limit=None, seed=0, hellaswag_n=7)) == 7
    arc = load_general_items("arc_easy", limit=5, seed=3)
    assert len(arc) == 5 and all(i.context.startswith("Question: ") and i.context.endswith("\nAnswer:") for i in arc)
    assert all(o.startswith(" ") for i in arc for o in i.options)


def test_job_id_follows_what_changes_results():
    base = EvalConfig(model="smollm2-135m-instruct", limit=10, seed=0)
    assert base.resolved_job_id() == EvalConfig(model="smollm2-135m-instruct", limit=10, seed=0, batch_size=3,
                                                suite=("general",)).resolved_job_id()
    assert base.resolved_job_id() != EvalConfig(model="smollm2-135m-instruct", limit=10, seed=1).resolved_job_id()
    assert base.resolved_job_id() != EvalConfig(model="smollm2-135m-instruct", limit=11, seed=0).resolved_job_id()
    assert EvalConfig(suite=("general", "drift")).tasks() == ("arc_easy", "piqa", "hellaswag", "sciq", "drift")
    with pytest.raises(ForgetlessError, match="unknown suite"):
        EvalConfig(suite=("general", "mmlu"))


def perturbed_copy(tiny_model_dir: Path, folder: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    return folder


def test_kl_of_a_model_against_itself_is_zero_and_positive_when_perturbed(tiny_model_dir: Path, tmp_path: Path):
    base = load_model(str(tiny_model_dir), tmp_path)
    twin = load_model(str(tiny_model_dir), tmp_path)
    other = load_model(str(perturbed_copy(tiny_model_dir, tmp_path / "perturbed")), tmp_path)
    texts = [drift_text(base.tokenizer, "a", "how to cook", "give me a simple recipe", 64),
             drift_text(base.tokenizer, "b", "write a poem", "a short poem about money and travel", 64)]
    same = drift_metrics(drift_scores(base.model, base.model, texts))
    assert same["kl"] == 0.0 and same["ppl_base"] == same["ppl_tuned"]
    assert drift_metrics(drift_scores(base.model, twin.model, texts))["kl"] == pytest.approx(0.0, abs=1e-6)
    moved = drift_metrics(drift_scores(base.model, other.model, texts))
    assert moved["kl"] > 1e-4 and moved["ppl_tuned"] != moved["ppl_base"]
    assert moved["tokens"] == sum(len(t.response_ids) for t in texts) and moved["n"] == 2
    # Padding in a batch does not change a text's numbers.
    alone = drift_scores(base.model, other.model, texts[:1])[0]
    assert alone.kl_sum == pytest.approx(drift_scores(base.model, other.model, texts)[0].kl_sum, rel=1e-4)


def test_run_folder_applies_its_adapter_on_the_base(tiny_model_dir: Path, tmp_path: Path):
    import torch

    run = build_finished_run(tmp_path / "run", tiny_model_dir)
    target = resolve_target(EvalConfig(model=str(run)))
    assert target.run_dir == str(run.resolve()) and target.base == str(tiny_model_dir)

    def engines(spec: str) -> InProcessEngine:
        return InProcessEngine(load_model(spec, tmp_path))

    tuned, base = open_target(target, engines).lm, load_model(str(tiny_model_dir), tmp_path)
    ids = torch.tensor([tuned.tokenizer("how to cook a simple recipe")["input_ids"]])
    with torch.no_grad():
        assert not torch.allclose(tuned.model(input_ids=ids).logits, base.model(input_ids=ids).logits, atol=1e-4)
    (tmp_path / "empty-run").mkdir()
    (tmp_path / "empty-run" / "config.yaml").write_text(yaml.safe_dump({"model": str(tiny_model_dir)}))
    with pytest.raises(ForgetlessError, match="neither adapter"):
        resolve_target(EvalConfig(model=str(tmp_path / "empty-run")))


def add_general_data(store: Store, n: int) -> list[str]:
    """n screened instructions with a best response, straight into the store's tables."""
    from core.store.base import now

    words = [w for w in WORDS if not w.isdigit()]
    ids = []
    with store.write() as con:
        for i in range(n):
            iid, rid = f"i{i:02d}", f"r{i:02d}"
            text = " ".join(words[(i + k) % len(words)] for k in range(4))
            response = " ".join(words[(3 * i + k) % len(words)] for k in range(6))
            con.execute("INSERT INTO instructions (id, text, n_chars, n_tokens, model, prefix, temperature, top_p, "
                        "max_new_tokens, seed, job_id, batch, created_at) "
                        "VALUES (?, ?, 10, 4, 'm', '', 1, 1, 8, 0, 'j', 0, ?)",
                        [iid, text, now()])
            con.execute("INSERT INTO responses VALUES (?, ?, 'm', 0, ?, 6, true, 'chat', 1, 1, 8, 0, 'j', ?, "
                        "'transformers', NULL)",
                        [rid, iid, response, now()])
            con.execute("INSERT INTO best_responses VALUES (?, ?, 4.0, 0.1, NULL)", [iid, rid])
            ids.append(iid)
    return ids


def letter_model(tmp_path: Path) -> Path:
    return build_tiny_model_folder(tmp_path / "letters", seed=2, words=[*WORDS, "A", "B", "C", "D"])


def domain_items(n: int) -> list[SimpleNamespace]:
    return [SimpleNamespace(id=f"med{i}", question=f"q{i}", options=("how", "why", "what", "the"), answer=i % 4,
                            explanation="", subject="x") for i in range(n)]


@pytest.fixture()
def fake_domain(monkeypatch):
    items = domain_items(9)
    monkeypatch.setattr("core.eval.benchmarks.domain_mcq.medmcqa_source",
                        lambda: (items, lambda item: "what is the best way"))
    return items


def test_domain_letters_report_accuracy_and_the_majority_letter(tmp_path: Path):
    lm = load_model(str(letter_model(tmp_path)), tmp_path)
    scores = score_letters(InProcessEngine(lm), domain_items(8), lambda item: "what is the best way")
    assert all(len(s.probs) == 4 and 0 < sum(s.probs) <= 1 for s in scores)
    metrics = letter_metrics(scores)
    # The same prompt each time: one letter wins every item, so accuracy is that letter's gold share.
    assert metrics["top_letter_share"] == 1.0 and metrics["acc"] == metrics["top_letter_gold_share"] == 0.25
    assert metrics["majority_letter_baseline"] == 0.25 and metrics["n"] == 8


def test_evaluation_stores_results_resumes_and_feeds_the_views(tmp_path: Path, fake_domain):
    model = letter_model(tmp_path)
    store = Store.for_workspace(tmp_path / "ws")
    used = add_general_data(store, 12)[:5]
    snapshot = tmp_path / "mix"
    snapshot.mkdir()
    (snapshot / "manifest.yaml").write_text(yaml.safe_dump({"ratio": 0.5, "general": {"instruction_ids": used}}))
    run = build_finished_run(tmp_path / "run", model, data=snapshot)
    assert mix_general_ids({"data": str(snapshot)}) == set(used)

    def load(spec: str) -> InProcessEngine:
        return InProcessEngine(load_model(spec, tmp_path))

    config = EvalConfig(model=str(run), suite=("arc_easy", "domain", "drift"), limit=4, batch_size=2)
    calls = {"n": 0}

    def stop_after_two_batches() -> bool:
        calls["n"] += 1
        return calls["n"] > 2

    partial = run_evaluation(config, store, load, should_stop=stop_after_two_batches)
    assert partial["cancelled"] and partial["items_scored"] == 4 and "arc_easy" in partial["results"]
    summary = run_evaluation(config, store, load)
    assert not summary["cancelled"] and summary["items_scored"] == 4 + 4 + 7  # letters, answer fits, drift texts
    assert summary["results"]["drift"]["n"] == 7 and summary["results"]["drift"]["kl"] > 0
    assert summary["results"]["drift"]["texts"] == NOT_TRAINED  # an old manifest: no held-out list
    assert summary["results"]["medmcqa"]["n"] == 4 and summary["results"]["arc_easy"]["n"] == 4
    assert summary["results"]["domain_ppl"]["n"] == 4 and summary["results"]["domain_ppl"]["nll"] > 0
    assert summary["dtype"] == dtype_name(choose_dtype("cpu"))  # auto, resolved on this CPU
    def in_bf16(spec: str) -> InProcessEngine:
        import torch

        return InProcessEngine(load_model(spec, tmp_path, dtype=torch.bfloat16))

    again = run_evaluation(config, store, in_bf16)
    assert again["items_scored"] == 0 and again["results"] == summary["results"]
    assert again["dtype"] == "bfloat16"  # what this run loaded, not the setting's name

    stored = store.eval_results([str(run.resolve())]).set_index("task")
    assert set(stored.index) == {"arc_easy", "medmcqa", "domain_ppl", "drift"}
    assert stored.loc["arc_easy", "acc"] == summary["results"]["arc_easy"]["acc"]
    assert stored.loc["arc_easy", "item_limit"] == 4 and stored.loc["drift", "base_model"] == str(model)
    assert json.loads(stored.loc["drift", "extra_json"])["kl"] == summary["results"]["drift"]["kl"]

    base = run_evaluation(EvalConfig(model=str(model), suite=("arc_easy", "domain"), limit=4), store, load)
    side = eval_results_frame(store, [str(model), str(run.resolve())]).set_index(["task", "metric"])
    assert side.loc[("arc_easy", "acc"), str(model)] == base["results"]["arc_easy"]["acc"]
    assert side.loc[("drift", "kl"), str(run.resolve())] == summary["results"]["drift"]["kl"]
    deltas = eval_deltas(store, str(model), str(run.resolve())).set_index(["task", "metric"])
    expected = summary["results"]["arc_easy"]["acc"] - base["results"]["arc_easy"]["acc"]
    assert deltas.loc[("arc_easy", "acc"), "delta"] == pytest.approx(expected)
    assert set(deltas["change"]) <= {"gain", "loss", "within noise"}
    history = eval_history(store)
    assert len(history) == 7 and set(history.loc[history["run_dir"].notna(), "mix_ratio"]) == {0.5}  # 3 + 3 + drift


def test_drift_scores_exactly_the_rows_the_mix_held_out(tmp_path: Path):
    """A manifest listing held-out ids: drift scores those (never the trained rows, nor the other untrained
    ones) and says which texts they are."""
    model = letter_model(tmp_path)
    store = Store.for_workspace(tmp_path / "ws")
    ids = add_general_data(store, 12)
    used, held = ids[:5], ids[9:]
    snapshot = tmp_path / "mix"
    snapshot.mkdir()
    (snapshot / "manifest.yaml").write_text(yaml.safe_dump(
        {"ratio": 0.5, "general": {"instruction_ids": used, "holdout": 0.25, "held_out_ids": held}}))
    run = build_finished_run(tmp_path / "run", model, data=snapshot)
    assert mix_held_out_ids({"data": str(snapshot)}) == set(held)
    summary = run_evaluation(EvalConfig(model=str(run), suite=("drift",), drift_n=100), store,
                             lambda spec: InProcessEngine(load_model(spec, tmp_path)))
    assert summary["results"]["drift"]["n"] == 3 and summary["results"]["drift"]["texts"] == HELD_OUT
    assert {row.item_id for row in store.eval_items(summary["job_id"], "drift")} == set(held)


def test_kl_is_zero_when_the_base_is_the_model_itself(tiny_model_dir: Path, tmp_path: Path):
    store = Store.for_workspace(tmp_path / "ws")
    add_general_data(store, 3)
    config = EvalConfig(model=str(tiny_model_dir), base=str(tiny_model_dir), suite=("drift",))
    summary = run_evaluation(config, store, lambda spec: InProcessEngine(load_model(spec, tmp_path)))
    assert summary["results"]["drift"]["kl"] == 0.0 and summary["results"]["drift"]["n"] == 3
    with pytest.raises(ForgetlessError, match="drift needs a base"):
        run_evaluation(EvalConfig(model=str(tiny_model_dir), suite=("drift",)), store, lambda spec: None)


def test_background_job_round_trips_its_config_and_reports_progress(tiny_model_dir: Path, tmp_path: Path):
    from core.config import load_yaml, to_yaml
    from core.jobs import start_background, wait_for

    config = EvalConfig(model=str(tiny_model_dir), suite=("arc_easy", "piqa"), limit=3, seed=5)
    (tmp_path / "eval.yaml").write_text(to_yaml(config))
    assert load_yaml(EvalConfig, tmp_path / "eval.yaml") == config
    workspace = tmp_path / "ws"
    folder = start_background(workspace, "eval", config, config.resolved_job_id())
    info = wait_for(folder, 180, lambda job: not job.active)
    assert info.state == "done", (folder / "log.txt").read_text()
    assert info.progress["done"] == info.progress["total"] == 6
    assert set(info.summary["results"]) == {"arc_easy", "piqa"}
    stored = Store.for_workspace(workspace).eval_results([str(tiny_model_dir)])
    assert sorted(stored["task"]) == ["arc_easy", "piqa"] and set(stored["seed"]) == {5}


@pytest.mark.parametrize(("args", "fragment"), [
    (["--suite", "general,mmlu"], "unknown suite"),
    (["--model", "/no/such/run"], "no model or run folder"),
    (["--limit", "0"], "limit must be at least 1"),
])
def test_cli_bad_input_is_one_line_exit_2(args, fragment, tmp_path: Path):
    result = forgetless("eval", *args, workspace=tmp_path)
    assert result.returncode == 2
    assert_one_line_error(result, fragment)


def test_cli_json_is_the_last_line(tiny_model_dir: Path, tmp_path: Path):
    result = forgetless("eval", "--model", str(tiny_model_dir), "--suite", "piqa", "--limit", "3", "--json",
                        workspace=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    piqa = summary["results"]["piqa"]
    assert set(piqa) == {"acc", "acc_norm", "stderr", "n"} and piqa["n"] == 3


@pytest.mark.integration
def test_smollm2_arc_easy_runs_and_is_stored(real_workspace: Path, tmp_path: Path):
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (real_workspace / "models").mkdir(parents=True, exist_ok=True)
    os.symlink(real_workspace / "models", workspace / "models")  # convert the GGUF once per session
    result = subprocess.run(
        [sys.executable, "-m", "core.cli", "eval", "--model", "smollm2-135m-instruct", "--suite", "arc_easy",
         "--limit", "20", "--json", "--workspace", str(workspace)],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT), "FORGETLESS_NO_PROGRESS": "1"})
    assert result.returncode == 0, result.stderr
    arc = json.loads(result.stdout.strip().splitlines()[-1])["results"]["arc_easy"]
    assert arc["n"] == 20 and 0.0 <= arc["acc"] <= 1.0 and 0.0 <= arc["acc_norm"] <= 1.0
    stored = Store.for_workspace(workspace).eval_results(["smollm2-135m-instruct"])
    assert list(stored["task"]) == ["arc_easy"] and stored["n"].iloc[0] == 20
