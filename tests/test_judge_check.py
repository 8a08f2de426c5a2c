"""The judge check: pairs with a known order built from the packaged references, the accuracy arithmetic on
hand-made scores, whole runs on tiny models (stored, resumed, rerun), the CLI, and the packaged judges."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from pathlib import Path

import pytest

from core.engines.in_process import InProcessEngine
from core.engines.models import load_model
from core.errors import ForgetlessError
from core.screen.check_pairs import (
    DEGRADATIONS,
    build_pairs,
    check_results,
    load_references,
    no_better_than_chance,
    pair_outcome,
    pairwise_accuracy,
    shuffle_sentences,
    split_sentences,
    truncate_words,
)
from core.screen.judge_check import JudgeCheckConfig, run_judge_check, summarise
from core.store import Store
from core.store.judge_checks import CheckPair, side_id
from tests.helpers import assert_one_line_error, forgetless

PACKAGED_JUDGES = ("smollm2-135m-instruct", "gemma-3-270m")


@pytest.fixture(scope="module")
def references():
    return load_references("alpacaeval", max_words=400)


# -- pairs -----------------------------------------------------------------------------------------------------
def test_every_kind_gets_its_pairs_from_distinct_references(references):
    pairs = build_pairs(references, DEGRADATIONS, 25, seed=0)
    assert Counter(pair.kind for pair in pairs) == {kind: 25 for kind in DEGRADATIONS}
    assert len({pair.pair_id for pair in pairs}) == len(pairs)
    by_id = {ref.reference_id: ref for ref in references}
    for pair in pairs:
        reference = by_id[pair.reference_id]
        assert (pair.instruction, pair.good, pair.source) == (reference.instruction, reference.answer, "alpacaeval")
        assert pair.worse.strip() and pair.worse != pair.good and pair.answer_model is None
    # every kind walks one seeded order: the kinds share most references, so good sides are scored once
    assert len({pair.reference_id for pair in pairs}) < 40


def test_pairs_are_the_same_for_a_seed_and_differ_across_seeds(references):
    first = build_pairs(references, DEGRADATIONS, 10, seed=3)
    assert build_pairs(references, DEGRADATIONS, 10, seed=3) == first
    other = build_pairs(references, DEGRADATIONS, 10, seed=4)
    assert {p.pair_id for p in other} != {p.pair_id for p in first}


def test_truncated_keeps_the_first_15_percent_of_words(references):
    for pair in [p for p in build_pairs(references, ["truncated"], 30, seed=1)]:
        words = pair.good.split()
        assert pair.good.startswith(pair.worse)  # a prefix, layout kept
        assert pair.worse.split() == words[: max(1, math.floor(0.15 * len(words)))]
    assert truncate_words("one two three four five six seven eight nine ten\n11 12 13 14 15 16 17 18 19 20") == \
        "one two three"
    assert truncate_words("a b") == "a"


def test_shuffled_sentences_are_a_permutation_that_differs(references):
    pairs = build_pairs(references, ["shuffled"], 30, seed=2)
    assert len(pairs) == 30
    for pair in pairs:
        assert len(split_sentences(pair.good)[0]) >= 3
        assert pair.worse != pair.good.strip()
        assert sorted(pair.worse.split()) == sorted(pair.good.split())  # the same words, whitespace kept apart
    text = "First comes this. Then that!\n1. An item here.\n2. Another item? Yes. Done."
    sentences, gaps = split_sentences(text)
    assert sentences == ["First comes this.", "Then that!", "1. An item here.", "2. Another item?", "Yes.", "Done."]
    assert sentences[0] + "".join(g + s for g, s in zip(gaps, sentences[1:], strict=True)) == text
    shuffled = shuffle_sentences(text, random.Random(0))
    assert shuffled != text and Counter(split_sentences(shuffled)[0]) == Counter(sentences)
    assert shuffle_sentences("Only one. And two.", random.Random(0)) is None
    assert shuffle_sentences("Same. Same. Same.", random.Random(0)) is None  # no order reads differently


def test_off_topic_never_pairs_an_instruction_with_its_own_reference(references):
    instructions_of: dict[str, set[str]] = {}
    for ref in references:
        instructions_of.setdefault(ref.answer, set()).add(ref.instruction.strip())
    pairs = build_pairs(references, ["off_topic"], 60, seed=5)
    assert len(pairs) == 60
    for pair in pairs:
        assert pair.worse in instructions_of  # another reference's answer, as it is
        assert pair.instruction.strip() not in instructions_of[pair.worse]


def test_sources_and_word_limits():
    arena = load_references("arenahard", max_words=400)
    assert arena and {ref.source for ref in arena} == {"arenahard"}
    assert all(ref.words <= 400 and ref.answer.strip() for ref in arena)
    both = load_references("both", max_words=400)
    assert len(both) == len(arena) + len(load_references("alpacaeval", max_words=400))
    assert len(load_references("alpacaeval")) == 805
    with pytest.raises(ForgetlessError, match="unknown source 'mmlu'"):
        load_references("mmlu")


# -- scoring ---------------------------------------------------------------------------------------------------
def test_outcomes_accuracy_ties_and_stderr():
    assert [pair_outcome(4.0, 2.0), pair_outcome(2.0, 4.0), pair_outcome(3.0, 3.0)] == [1.0, 0.0, 0.5]
    assert pair_outcome(None, 2.0) == 0.5 and pair_outcome(4.0, float("nan")) == 0.5
    wins, ties, accuracy, stderr = pairwise_accuracy([1.0, 0.5, 0.0, 1.0])
    assert (wins, ties, accuracy) == (2, 1, 0.625)
    assert stderr == pytest.approx(math.sqrt(0.625 * 0.375 / 4))
    assert pairwise_accuracy([]) == (0, 0, None, None)
    assert pairwise_accuracy([1.0] * 5)[2:] == (1.0, 0.0)
    assert no_better_than_chance(0.5, 0.1) and no_better_than_chance(0.6, 0.06) and no_better_than_chance(0.3, 0.0)
    assert not no_better_than_chance(0.7, 0.05) and not no_better_than_chance(1.0, 0.0)
    assert not no_better_than_chance(None, None)


def _pair(kind: str, n: int) -> CheckPair:
    return CheckPair(f"{kind}:{n}", kind, "alpacaeval", str(n), f"{kind} instruction {n}", f"good {n}", f"worse {n}")


def test_results_per_judge_kind_and_consensus_on_hand_made_scores():
    pairs = [_pair("truncated", 1), _pair("truncated", 2), _pair("shuffled", 1), _pair("own", 1)]
    a = {}  # judge a: right on truncated, tie on shuffled, wrong on own
    b = {}  # judge b: wrong everywhere by a little, and never scored truncated 2's worse side
    for pair, (good_a, worse_a, good_b, worse_b) in zip(pairs, [(5, 1, 3, 3.5), (4, 2, 3, None), (3, 3, 2, 2.5),
                                                                  (2, 4, 1, 2)], strict=True):
        a[pair.good_side], a[pair.worse_side] = good_a, worse_a
        b[pair.good_side], b[pair.worse_side] = good_b, worse_b
    results = check_results(pairs, {("a", "probs"): a, ("b", "probs"): b}, ["a", "b"], ["probs"])
    found = {(r.judge, r.kind): (r.pairs, r.wins, r.ties, r.accuracy) for r in results}
    assert found[("a", "truncated")] == (2, 2, 0, 1.0)
    assert found[("a", "shuffled")] == (1, 0, 1, 0.5)
    assert found[("a", "all")] == (3, 2, 1, pytest.approx(5 / 6))  # own pairs are not in "all"
    assert found[("a", "own")] == (1, 0, 0, 0.0)
    assert found[("b", "truncated")] == (2, 0, 1, 0.25)  # the unscored side counts half
    # consensus = mean of the judges per side: truncated 1 (4 vs 2.25) right, 2 (3.5 vs 2: b's missing score
    # left out) right, shuffled (2.5 vs 2.75) wrong
    assert found[("consensus", "truncated")] == (2, 2, 0, 1.0)
    assert found[("consensus", "shuffled")] == (1, 0, 0, 0.0)
    stderr = {(r.judge, r.kind): r.stderr for r in results}
    assert stderr[("a", "all")] == pytest.approx(math.sqrt(5 / 6 * 1 / 6 / 3))
    summary = summarise(results, ["probs"])
    assert summary["accuracy"] == {"a/probs": pytest.approx(5 / 6), "b/probs": pytest.approx(1 / 6),
                                   "consensus": pytest.approx(2 / 3)}
    assert summary["by_kind"]["own"] == {"a/probs": 0.0, "b/probs": 0.0, "consensus": 0.0}
    assert summary["no_better_than_chance"]["b/probs"][0] == "all"
    # a: 5/6 on 3 pairs is within 2 stderr (0.22) of chance; 2 of 2 truncated pairs (stderr 0) is not
    assert "all" in summary["no_better_than_chance"]["a/probs"]
    assert "truncated" not in summary["no_better_than_chance"]["a/probs"]
    assert summarise(check_results(pairs, {}, ["a"], ["probs", "generate"]), ["probs", "generate"])["accuracy"] \
        == {"a/probs": 0.5, "consensus": 0.5, "a/generate": 0.5, "consensus/generate": 0.5}


def test_config_checks_are_one_line():
    for values, message in [({"kinds": ("sideways",)}, "unknown kind 'sideways'"),
                            ({"kinds": ("own",)}, "--own-model"),
                            ({"methods": ("vibes",)}, "methods must be among probs, generate"),
                            ({"judges": ("a", "a")}, "a judge is listed twice"),
                            ({"kinds": ()}, "at least one kind"),
                            ({"pairs_per_kind": 0}, "pairs per kind")]:
        with pytest.raises(ForgetlessError, match=message):
            JudgeCheckConfig(**values)
    assert JudgeCheckConfig(kinds=(), own_model="x").kinds == ()


# -- whole runs on tiny models ---------------------------------------------------------------------------------
@pytest.fixture
def loader(tmp_path: Path):
    cache = {}

    def load(spec: str):
        if spec not in cache:
            cache[spec] = load_model(spec, tmp_path)
        return InProcessEngine(cache[spec])

    return load


def test_a_check_on_tiny_judges_is_stored_resumes_and_reruns(tmp_path, loader, tiny_model_dir, tiny_base_model_dir):
    store = Store.for_workspace(tmp_path / "ws")
    judges = (str(tiny_model_dir), str(tiny_base_model_dir))
    config = JudgeCheckConfig(judges=judges, methods=("probs", "generate"), pairs_per_kind=3, max_words=80,
                              batch_size=4, own_model=str(tiny_model_dir), own_max_new_tokens=6)
    calls = []
    cancelled = run_judge_check(config, store, loader, on_progress=calls.append,
                                should_stop=lambda: any(call["done"] >= 7 for call in calls))
    assert cancelled["cancelled"] and cancelled["answers"] == 3 and 0 < cancelled["scores"] < 20
    assert store.judge_check_results().empty  # no accuracies from half a check

    summary = run_judge_check(config, store, loader)
    assert not summary["cancelled"] and summary["answers"] == 0  # own answers were kept
    assert (summary["pairs"], summary["own_pairs"]) == (9, 3)
    pairs = store.check_pairs(summary["job_id"])
    own = [pair for pair in pairs if pair.kind == "own"]
    assert len(own) == 3 and {pair.answer_model for pair in own} == {str(tiny_model_dir)}
    sides = {side for pair in pairs for side in (pair.good_side, pair.worse_side)}
    assert sides == {side_id(p.instruction, p.good) for p in pairs} | {side_id(p.instruction, p.worse) for p in pairs}
    scores = store.check_scores(summary["job_id"])
    assert set(scores) == {(judge, method) for judge in judges for method in ("probs", "generate")}
    assert all(set(by_side) == sides for by_side in scores.values())  # every side once, nothing twice
    assert cancelled["scores"] + summary["scores"] == 4 * len(sides)
    assert all(1 <= s <= 5 for s in scores[(judges[0], "probs")].values())
    with store.read() as con:
        formats = dict(con.execute("SELECT judge, any_value(prompt_format) FROM judge_check_scores GROUP BY judge"
                                   ).fetchall())
    assert formats == {judges[0]: "chat", judges[1]: "plain"}

    results = store.judge_check_results()
    assert set(results["judge"]) == {*judges, "consensus"}
    assert set(results["kind"]) == {"all", "off_topic", "truncated", "shuffled", "own"}
    assert len(results) == 3 * 2 * 5  # (2 judges + consensus) x 2 methods x 5 kinds
    expected = check_results(pairs, scores, judges, ("probs", "generate"))
    for row in expected:
        stored = results[(results.judge == row.judge) & (results.method == row.method) & (results.kind == row.kind)]
        assert stored.iloc[0]["accuracy"] == pytest.approx(row.accuracy)
    assert set(summary["accuracy"]) == {f"{j}/{m}" for j in judges for m in ("probs", "generate")} | {
        "consensus", "consensus/generate"}
    assert summary["accuracy"][f"{judges[0]}/probs"] == pytest.approx(
        results.query("judge == @judges[0] and method == 'probs' and kind == 'all'").iloc[0]["accuracy"])

    again = run_judge_check(config, store, loader)
    assert again["scores"] == 0 and again["answers"] == 0
    assert again["accuracy"] == summary["accuracy"] and again["by_kind"] == summary["by_kind"]
    assert len(store.judge_check_results()) == len(results)


# -- the CLI ---------------------------------------------------------------------------------------------------
def test_cli_json_shape_and_human_table(tmp_path, tiny_model_dir):
    args = ("judge-check", "--judges", str(tiny_model_dir), "--pairs-per-kind", "2", "--max-words", "80")
    result = forgetless(*args, "--json", workspace=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["pairs"] == 6 and summary["own_pairs"] == 0
    assert set(summary["accuracy"]) == {f"{tiny_model_dir}/probs", "consensus"}
    assert set(summary["by_kind"]) == set(DEGRADATIONS)
    assert all(0 <= value <= 1 for value in summary["accuracy"].values())
    assert summary["engine"] == "in-process transformers"
    human = forgetless(*args, workspace=tmp_path)  # the same job: resumes with nothing left, reprints
    assert human.returncode == 0, human.stderr
    lines = human.stdout.strip().splitlines()
    assert lines[0].startswith("judge check judge-check-") and "6 pairs" in lines[0] and "0 new scores" in lines[0]
    assert lines[1].split() == ["judge/method", "all", *summary["by_kind"]]
    assert lines[2].startswith(f"{tiny_model_dir}/probs") and lines[3].startswith("consensus")
    assert lines[-1].startswith(("no better than chance", "every judge beats chance"))


@pytest.mark.parametrize(("extra", "fragment"), [
    (("--judges", "no-such-judge"), "unknown model 'no-such-judge'"),
    (("--kinds", "off_topic,sideways"), "unknown kind 'sideways'"),
    (("--kinds", "own"), "give --own-model MODEL instead"),
    (("--source", "mmlu"), "invalid choice: 'mmlu'"),
])
def test_cli_errors_are_one_line(tmp_path, extra, fragment):
    assert_one_line_error(forgetless("judge-check", *extra, workspace=tmp_path), fragment)


# -- the packaged judges -----------------------------------------------------------------------------------------
def test_packaged_judges_score_every_side_of_a_few_pairs(real_workspace):
    loaded = {}

    def load(spec: str):
        return InProcessEngine(loaded.setdefault(spec, load_model(spec, real_workspace)))

    store = Store.for_workspace(real_workspace)
    config = JudgeCheckConfig(judges=PACKAGED_JUDGES, pairs_per_kind=3, max_words=150, batch_size=8,
                              job_id="integration-judge-check")
    summary = run_judge_check(config, store, load)
    assert summary["pairs"] == 9 and not summary["cancelled"]
    scores = store.check_scores("integration-judge-check")
    for judge in PACKAGED_JUDGES:
        values = list(scores[(judge, "probs")].values())
        assert all(1 <= value <= 5 for value in values)
        assert max(values) - min(values) > 0.05  # real judges tell the answers apart somewhat
    with store.read() as con:
        formats = dict(con.execute("SELECT judge, any_value(prompt_format) FROM judge_check_scores "
                                   "WHERE job_id = 'integration-judge-check' GROUP BY judge").fetchall())
    assert formats == {"smollm2-135m-instruct": "chat", "gemma-3-270m": "plain"}
    results = store.judge_check_results("integration-judge-check")
    assert len(results) == 3 * 4  # (2 judges + consensus) x (all + 3 kinds)
    assert results.query("kind == 'all'")["pairs"].tolist() == [9, 9, 9]
