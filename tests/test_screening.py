"""Respond and judge on tiny models: every response scored by every judge, consensus stored, resumable."""

from pathlib import Path

import pytest

from core.engines.in_process import InProcessEngine
from core.engines.models import load_model
from core.errors import ForgetlessError
from core.screen.judge import JudgeConfig, judge_prompt, run_judging
from core.screen.respond import RespondConfig, run_responses
from core.store import InstructionRow, Store

INSTRUCTIONS = ["write a short poem about math", "explain how to cook rice", "give me tips to learn python"]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store.for_workspace(tmp_path)
    rows = [InstructionRow(text, 5, "tiny", "<p>", 1.0, 1.0, 32, 0, "seed-job", 0) for text in INSTRUCTIONS]
    store.add_instruction_batch("seed-job", 0, rows, limit=10, sampled=3, dropped={}, new_tokens=15, seconds=0.1)
    return store


@pytest.fixture
def loader(tmp_path: Path):
    """Opens engines over models loaded once per test (loading is not what these tests check)."""
    cache = {}

    def load(spec: str):
        if spec not in cache:
            cache[spec] = load_model(spec, tmp_path)
        return InProcessEngine(cache[spec])

    return load


def test_responses_for_chat_and_base_models_resume_without_duplicates(store, loader, tiny_model_dir,
                                                                        tiny_base_model_dir):
    models = (str(tiny_model_dir), str(tiny_base_model_dir))
    config = RespondConfig(models=models, k=2, max_new_tokens=12, batch_size=4)
    calls = []
    cancelled = run_responses(config, store, loader, should_stop=lambda: any(c["done"] >= 4 for c in calls),
                              on_progress=calls.append)
    assert cancelled["cancelled"] and 0 < cancelled["responses"] < 12
    summary = run_responses(config, store, loader)
    assert summary["responses"] == 12 - cancelled["responses"] and not summary["cancelled"]
    # a resumed run says how much of the whole it did, so its cost can be scaled to all of it
    assert (cancelled["stored"], summary["stored"]) == (cancelled["responses"], 12)
    assert summary["new"] == summary["responses"]
    with store.read() as con:
        formats = dict(con.execute("SELECT model, any_value(prompt_format) FROM responses GROUP BY model").fetchall())
        assert con.execute("SELECT count(*), count(DISTINCT (instruction_id, model, sample_index)) "
                           "FROM responses").fetchone() == (12, 12)
    assert formats == {models[0]: "chat", models[1]: "plain"}
    assert run_responses(config, store, loader)["responses"] == 0


def test_judges_score_every_response_and_consensus_is_stored(store, loader, tiny_model_dir, tiny_base_model_dir):
    models = (str(tiny_model_dir), str(tiny_base_model_dir))
    run_responses(RespondConfig(models=models, k=2, max_new_tokens=8, batch_size=8), store, loader)
    summary = run_judging(JudgeConfig(judges=models, batch_size=8), store, loader)
    assert summary["scores"] == 24 and summary["failures"] == 0
    assert summary["responses_with_consensus"] == 12 and summary["instructions_with_best"] == 3
    with store.read() as con:
        low, high, prob_sum = con.execute(
            "SELECT min(score), max(score), max(abs(list_sum(probs) - 1)) FROM scores").fetchone()
        assert 1.0 <= low <= high <= 5.0 and prob_sum < 1e-6
        assert con.execute("SELECT count(*) FROM judge_agreement").fetchone()[0] == 1
        best = con.execute("SELECT b.mean, max(c.mean) FROM best_responses b JOIN consensus c "
                           "ON c.instruction_id = b.instruction_id GROUP BY b.instruction_id, b.mean").fetchall()
    assert all(abs(chosen - top) < 1e-12 for chosen, top in best)  # the best is the highest consensus

    excluded = run_judging(JudgeConfig(judges=models, exclude_self=True, method="generate", max_new_tokens=3),
                           store, loader)
    assert excluded["scores"] == 12  # each judge skips the 6 responses its own model wrote
    assert excluded["failures"] > 0  # a random model rarely writes a rating digit: failures are rows, not crashes
    retried = run_judging(JudgeConfig(judges=models, exclude_self=True, method="generate", max_new_tokens=3,
                                      retry_failed=True), store, loader)
    assert retried["pending_before"] == excluded["failures"]
    assert summary["stored"] == summary["new"] == 24  # the logprob scores; the generated ones are another method
    assert excluded["stored"] == 12 and retried["new"] == excluded["failures"]


def test_one_model_is_open_at_a_time(store, loader, tiny_model_dir, tiny_base_model_dir):
    models = (str(tiny_model_dir), str(tiny_base_model_dir))
    events = []

    def recording(spec: str):
        engine = loader(spec)
        close = engine.close
        events.append(("open", spec))
        engine.close = lambda: (events.append(("close", spec)), close())
        return engine

    run_responses(RespondConfig(models=models, k=1, max_new_tokens=4, batch_size=2), store, recording)
    assert events == [("open", models[0]), ("close", models[0]), ("open", models[1]), ("close", models[1])]
    events.clear()
    run_judging(JudgeConfig(judges=models, batch_size=2), store, recording)
    assert events == [("open", models[0]), ("close", models[0]), ("open", models[1]), ("close", models[1])]
    events.clear()
    assert run_responses(RespondConfig(models=models, k=1), store, recording)["responses"] == 0
    assert events == []  # nothing pending: no model is opened


def test_judge_prompt_uses_template_or_plain_format(loader, tiny_model_dir, tiny_base_model_dir):
    chat, chat_format = judge_prompt(loader(str(tiny_model_dir)).tokenizer, "do x", "did x")
    plain, plain_format = judge_prompt(loader(str(tiny_base_model_dir)).tokenizer, "do x", "did x")
    assert chat_format == "chat" and chat.endswith("<|im_start|>assistant\nRating:")
    assert plain_format == "plain" and plain.endswith("Rating (1-5):") and "did x" in plain


def test_respond_without_instructions_is_a_clear_error(tmp_path: Path, loader, tiny_model_dir):
    with pytest.raises(ForgetlessError, match="reconstruct"):
        run_responses(RespondConfig(models=(str(tiny_model_dir),)), Store.for_workspace(tmp_path), loader)


def test_config_validation():
    with pytest.raises(ForgetlessError, match="method"):
        JudgeConfig(method="vibes")
    with pytest.raises(ForgetlessError, match="twice"):
        RespondConfig(models=("a", "a"))
