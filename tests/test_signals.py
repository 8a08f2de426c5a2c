"""Signal judges: specs, the 1-5 map, each measurement against the engine's own numbers on the tiny model,
judging and judge-checking with signals beside model judges, one-line errors, and the packaged signals on a
few judge-check pairs."""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path

import numpy as np
import pytest

from core.engines.in_process import InProcessEngine
from core.engines.models import load_model
from core.errors import ForgetlessError
from core.screen.check_pairs import build_pairs, load_references, pair_outcome, pairwise_accuracy
from core.screen.judge import JudgeConfig, run_judging
from core.screen.judge_check import JudgeCheckConfig, run_judge_check
from core.screen.respond import RespondConfig, run_responses
from core.screen.signals import (
    SignalJudge,
    answer_context,
    answer_logprobs,
    end_of_turn,
    loaded_models,
    measure,
    parse_signal,
    relevance,
    to_rating,
)
from core.store import InstructionRow, Store
from core.store.judge_checks import CheckResult
from tests.helpers import assert_one_line_error, forgetless


def bag_of_words(texts):
    """A stand-in embedder: hashed word counts, unit length (texts that share words are close)."""
    vectors = np.zeros((len(texts), 64))
    for row, text in enumerate(texts):
        for word in text.lower().split():
            vectors[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % 64] += 1
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)


class WordEmbedder:
    """`bag_of_words` as a judge's embedder: it counts a token per word, and keeps how many it embedded."""

    def __init__(self) -> None:
        self.embedded = 0

    def __call__(self, texts):
        self.embedded += self.count_tokens(texts)
        return bag_of_words(texts)

    def count_tokens(self, texts):
        return sum(len(text.split()) for text in texts)


class ReadingEngine:
    """An in-process engine that counts the tokens its forward passes are given (prompts, contexts + answers)."""

    def __init__(self, engine: InProcessEngine) -> None:
        self.engine, self.read = engine, 0

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def next_token_logprobs(self, prompts, tokens):
        self.read += sum(len(prompt) for prompt in prompts)
        return self.engine.next_token_logprobs(prompts, tokens)

    def continuation_logprobs(self, contexts, continuations):
        from core.engines.loglik import encode_pairs

        self.read += sum(len(c) + len(a) for c, a in encode_pairs(self.tokenizer, contexts, continuations))
        return self.engine.continuation_logprobs(contexts, continuations)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.engine.close()


@pytest.fixture
def engine(tiny_model_dir: Path, tmp_path: Path) -> InProcessEngine:
    return InProcessEngine(load_model(str(tiny_model_dir), tmp_path))


def test_specs_name_a_signal_and_its_model():
    assert parse_signal("relevance:all-minilm-l6-v2") == SignalJudge("relevance", "all-minilm-l6-v2")
    assert parse_signal("completeness:/models/a:b").model == "/models/a:b"  # only the first colon splits
    assert parse_signal("fluency:x").name == "fluency:x"
    assert parse_signal("smollm2-135m-instruct") is None and parse_signal("toxicity:x") is None
    assert loaded_models(["a", "relevance:e", "fluency:a", "completeness:b"]) == ["a", "b"]


def test_ratings_map_raw_values_monotonically_onto_one_to_five():
    assert to_rating("completeness", 0.0) == 1.0 and to_rating("completeness", 1.0) == 5.0
    assert to_rating("completeness", 0.01) == pytest.approx(3.0)  # a probability counts on a log scale
    assert to_rating("fluency", -2.5) == pytest.approx(3.0) and to_rating("fluency", -9.0) == 1.0
    assert to_rating("relevance", -0.4) == 1.0 and to_rating("relevance", 2.0) == 5.0  # clipped
    values = [to_rating("relevance", raw) for raw in np.linspace(-1, 1, 41)]
    assert values == sorted(values) and len(set(values)) > 10
    assert math.isnan(to_rating("fluency", float("nan")))


def test_relevance_is_the_cosine_of_instruction_and_answer():
    items = [("how do I cook rice", "rinse the rice then cook it in water"), ("how do I cook rice", "paris is big")]
    close, far = relevance(bag_of_words, items)
    assert close > far and far == pytest.approx(0.0, abs=1e-9)
    expected = (bag_of_words([items[0][0]]) * bag_of_words([items[0][1]])).sum()
    assert close == pytest.approx(expected)


def test_completeness_and_fluency_come_from_the_engines_own_numbers(engine):
    tokenizer = engine.tokenizer
    closing = end_of_turn(tokenizer)
    assert closing == "<|im_end|>"  # what the ChatML template writes after an assistant message
    items = [("write a short poem about math", "a poem about math"), ("explain how to cook rice", "cook rice")]
    measured = answer_logprobs(engine, items)
    for (instruction, answer), (tokens, closing_logprob) in zip(items, measured, strict=True):
        context = answer_context(tokenizer, instruction)
        assert tokens == pytest.approx(engine.continuation_logprobs([context], [answer])[0], abs=1e-4)
        prompt = tokenizer(context + answer, add_special_tokens=False)["input_ids"]
        eot = tokenizer.convert_tokens_to_ids(closing)
        assert closing_logprob == pytest.approx(engine.next_token_logprobs([prompt], [eot])[0][0], abs=1e-4)
    completeness = measure(SignalJudge("completeness", "tiny"), engine, items)
    fluency = measure(SignalJudge("fluency", "tiny"), engine, items)
    assert completeness == pytest.approx([math.exp(closing) for _, closing in measured])
    assert fluency == pytest.approx([np.mean(tokens) for tokens, _ in measured])
    assert all(0 < value < 1 for value in completeness) and all(value < 0 for value in fluency)


def test_a_model_without_a_template_ends_its_turn_with_eos(tiny_base_model_dir, tmp_path):
    base = InProcessEngine(load_model(str(tiny_base_model_dir), tmp_path))
    assert end_of_turn(base.tokenizer) == base.tokenizer.eos_token
    assert answer_context(base.tokenizer, " cook rice ") == "Instruction: cook rice\nResponse: "
    assert len(measure(SignalJudge("fluency", "base"), base, [("cook rice", "rice")])) == 1


@pytest.fixture
def answered(tmp_path: Path, tiny_model_dir: Path):
    store = Store.for_workspace(tmp_path / "ws")
    texts = ["write a short poem about math", "explain how to cook rice", "give me tips to learn python"]
    rows = [InstructionRow(text, 5, "tiny", "<p>", 1.0, 1.0, 32, 0, "seed-job", 0) for text in texts]
    store.add_instruction_batch("seed-job", 0, rows, limit=10, sampled=3, dropped={}, new_tokens=15, seconds=0.1)
    cache = {}

    def load(spec: str):
        return InProcessEngine(cache.setdefault(spec, load_model(spec, tmp_path)))

    run_responses(RespondConfig(models=(str(tiny_model_dir),), k=2, max_new_tokens=8, batch_size=8), store, load)
    return store, load


def test_signals_join_the_consensus_as_judges_and_keep_their_raw_values(answered, tiny_model_dir):
    store, load = answered
    model = str(tiny_model_dir)
    judges = (model, f"completeness:{model}", "relevance:words")
    opened, engines, words = [], [], WordEmbedder()

    def reading(spec: str):
        engines.append(ReadingEngine(load(spec)))
        return engines[-1]

    summary = run_judging(JudgeConfig(judges=judges, batch_size=4), store, reading,
                          embedders=lambda spec: opened.append(spec) or words)
    assert summary["scores"] == 3 * 6 and opened == ["words"]
    # screening's token cost: what each judge's forward passes (or its embedder) were given
    assert [engine.read > 0 for engine in engines] == [True, True]
    assert summary["tokens_read_by_judge"] == {model: engines[0].read, f"completeness:{model}": engines[1].read,
                                               "relevance:words": words.embedded}
    assert summary["tokens_read"] == engines[0].read + engines[1].read + words.embedded
    with store.read() as con:
        rows = con.execute("SELECT judge, prompt_format, engine, count(*), min(score), max(score), count(raw) "
                           "FROM scores GROUP BY ALL ORDER BY judge").fetchall()
        n_judges = con.execute("SELECT min(n_judges), max(n_judges) FROM consensus").fetchone()
        raw, score = con.execute("SELECT raw, score FROM scores WHERE judge = 'relevance:words' LIMIT 1").fetchone()
    by_judge = {row[0]: row[1:] for row in rows}
    assert by_judge[f"completeness:{model}"][:3] == ("signal", "transformers", 6)
    assert by_judge["relevance:words"][:3] == ("signal", "sentence-transformers", 6)
    assert by_judge[model][:2] == ("chat", "transformers") and by_judge[model][5] == 0  # probs keep no raw text
    assert all(1 <= low <= high <= 5 for *_, low, high, _ in by_judge.values())
    assert by_judge["relevance:words"][5] == 6 and to_rating("relevance", float(raw)) == pytest.approx(score)
    assert n_judges == (3, 3)

    # the model's own responses are its own for a signal it measures too
    excluded = run_judging(JudgeConfig(judges=(f"fluency:{model}",), exclude_self=True), store, load)
    assert excluded["scores"] == 0 and excluded["pending_before"] == 0 and excluded["tokens_read"] == 0


def test_a_judge_check_measures_each_side_once_for_every_method(tmp_path, tiny_model_dir):
    model = str(tiny_model_dir)
    store = Store.for_workspace(tmp_path / "ws")
    config = JudgeCheckConfig(judges=(f"fluency:{model}", "relevance:words"), methods=("probs", "generate"),
                              pairs_per_kind=2, max_words=80)
    measured = []

    def embed(texts):
        measured.extend(texts)
        return bag_of_words(texts)

    summary = run_judge_check(config, store, lambda spec: InProcessEngine(load_model(spec, tmp_path)),
                              embedders=lambda spec: embed)
    scores = store.check_scores(summary["job_id"])
    sides = {side for pair in store.check_pairs(summary["job_id"]) for side in (pair.good_side, pair.worse_side)}
    assert len(measured) == 2 * len(sides)  # instruction + answer per side, not per method
    for judge in config.judges:
        assert scores[(judge, "probs")] == scores[(judge, "generate")] and set(scores[(judge, "probs")]) == sides
    assert set(summary["accuracy"]) >= {f"fluency:{model}/probs", "relevance:words/generate", "consensus"}


@pytest.mark.parametrize(("judges", "fragment"), [
    ("relevance:", "needs a model after the colon, e.g. relevance:all-minilm-l6-v2"),
    ("relevance:/no/such/embedder", "embedder '/no/such/embedder' is neither"),
    ("fluency:no-such-model", "unknown model 'no-such-model'"),
])
def test_bad_signal_judges_are_one_line_and_leave_no_job(tmp_path, judges, fragment):
    for command in ("judge", "judge-check"):
        assert_one_line_error(forgetless(command, "--judges", judges, workspace=tmp_path), fragment)
        assert not (tmp_path / "jobs").exists() or not any((tmp_path / "jobs").iterdir())


def test_packaged_signals_order_a_few_check_pairs(real_workspace):
    """Each signal on the degradation it is built for, on 8 AlpacaEval pairs (seed 0)."""
    references = load_references("alpacaeval", max_words=200)
    engine = InProcessEngine(load_model("smollm2-135m-instruct", real_workspace))
    from core.engines.embedder import open_embedder

    scorers = {"relevance": open_embedder(), "completeness": engine, "fluency": engine}
    texts = ["cook rice", "word " * 400]  # the second is cut at the embedder's maximum length when encoded
    fed = scorers["relevance"].model.preprocess(texts)["attention_mask"]
    assert scorers["relevance"].count_tokens(texts) == int(fed.sum()) and fed.shape[1] == 256
    for signal, kind in (("relevance", "off_topic"), ("completeness", "truncated"), ("fluency", "shuffled")):
        pairs = build_pairs(references, (kind,), 8, seed=0)
        judge = SignalJudge(signal, "packaged")
        good = measure(judge, scorers[signal], [(p.instruction, p.good) for p in pairs])
        worse = measure(judge, scorers[signal], [(p.instruction, p.worse) for p in pairs])
        _, _, accuracy, _ = pairwise_accuracy([pair_outcome(g, w) for g, w in zip(good, worse, strict=True)])
        print(f"{signal} on {kind}: {accuracy:.2f} of 8 pairs")
        assert accuracy >= 0.75, (signal, kind, accuracy)


# -- a consensus weighted by the judge check -------------------------------------------------------------------
def checked(store: Store, job: str, accuracies: dict[str, float], method: str = "probs") -> None:
    store.replace_check_results(job, [CheckResult(judge, method, "all", 100, round(100 * a), 0, a,
                                                  math.sqrt(a * (1 - a) / 100)) for judge, a in accuracies.items()])


def test_checked_weights_follow_the_newest_check_and_flag_chance(answered, tiny_model_dir):
    store, load = answered
    model = str(tiny_model_dir)
    judges = (model, f"completeness:{model}")
    plain = run_judging(JudgeConfig(judges=judges), store, load)
    assert plain["weighting"] == "mean" and plain["weights"] is None and plain["no_better_than_chance"] == {}
    with pytest.raises(ForgetlessError, match=f"no judge check of {model} with method probs"):
        run_judging(JudgeConfig(judges=judges, weighting="checked"), store, load)

    checked(store, "check-old", {model: 0.55, judges[1]: 0.95})
    time.sleep(0.01)
    checked(store, "check-new", {model: 0.9, judges[1]: 0.52})  # the newest check counts
    summary = run_judging(JudgeConfig(judges=judges, weighting="checked"), store, load)
    assert summary["weights"] == {model: pytest.approx(0.8), judges[1]: pytest.approx(0.04)}
    assert summary["no_better_than_chance"] == {judges[1]: "check-new"}  # 0.52 - 2 x 0.05 <= 0.5
    with store.read() as con:
        rows = con.execute("""SELECT c.mean, a.score, b.score FROM consensus c
                              JOIN scores a ON a.response_id = c.response_id AND a.judge = ?
                              JOIN scores b ON b.response_id = c.response_id AND b.judge = ?""", judges).fetchall()
    assert len(rows) == 6
    for mean, by_model, by_signal in rows:
        assert mean == pytest.approx((0.8 * by_model + 0.04 * by_signal) / 0.84)

    checked(store, "check-chance", {model: 0.4, judges[1]: 0.5})
    with pytest.raises(ForgetlessError, match="no judge scored above chance"):
        run_judging(JudgeConfig(judges=judges, weighting="checked"), store, load)


def test_cli_weighting_errors_before_a_job_and_reports_weights(tmp_path, tiny_model_dir):
    model = str(tiny_model_dir)
    result = forgetless("judge", "--judges", model, "--weighting", "checked", workspace=tmp_path)
    assert_one_line_error(result, f"no judge check of {model} with method probs")
    assert not (tmp_path / "jobs").exists() or not any((tmp_path / "jobs").iterdir())
    checked(Store.for_workspace(tmp_path), "check-1", {model: 0.5})
    result = forgetless("judge", "--judges", model, workspace=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"warning: {model} is no better than chance in judge check check-1" in result.stdout


def test_the_default_judges_order_every_kind_of_a_held_out_check(real_workspace):
    """The issue's target on a slice of the held-out Arena-Hard check (its default 400-word references): the
    default judges' consensus picks the reference over each degraded copy on at least 80% of every kind."""
    store = Store.for_workspace(real_workspace)
    config = JudgeCheckConfig(source="arenahard", seed=1, pairs_per_kind=20,
                              job_id="default-judges-check")
    assert config.judges == JudgeConfig().judges and all(parse_signal(judge) for judge in config.judges)
    summary = run_judge_check(config, store, lambda spec: InProcessEngine(load_model(spec, real_workspace)))
    consensus = {kind: accuracy["consensus"] for kind, accuracy in summary["by_kind"].items()}
    print(f"default judges' consensus on 20 Arena-Hard pairs per kind: {consensus}")
    assert set(consensus) == {"off_topic", "truncated", "shuffled"}
    assert all(accuracy >= 0.8 for accuracy in consensus.values()), consensus
