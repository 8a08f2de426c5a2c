"""Judge prompts and parsers: pure functions, checked on hand-written examples and hostile strings."""

from __future__ import annotations

import math

import pytest

from core.screen import prompts as judging
from core.screen.prompts import (
    PLAIN_DIFFICULTY_LEAD,
    PLAIN_RATING_LEAD,
    RATING_LEAD,
    RATING_TOKENS,
    difficulty_messages,
    expected_rating,
    is_informative,
    parse_rating,
    plain_difficulty_prompt,
    plain_judge_prompt,
    plain_response_prompt,
    probabilities_from_logprobs,
    renormalise,
)

INSTRUCTION = "Write a haiku about autumn rain."
RESPONSE = "Cold drops on red leaves\nthe gutter hums a slow song\nsummer washed away"


def test_rating_tokens_and_leads() -> None:
    assert RATING_TOKENS == ("1", "2", "3", "4", "5")
    assert RATING_LEAD == "Rating: "
    assert PLAIN_RATING_LEAD.endswith(": ") and PLAIN_DIFFICULTY_LEAD.endswith(": ")


def test_rubric_names_the_scale_and_criteria() -> None:
    for word in ("1", "3", "5", "helpfulness", "correctness", "instruction", "clarity", "single digit"):
        assert word in judging.RUBRIC
    for word in ("1 (trivial)", "5 (very hard)", "single digit"):
        assert word in judging.DIFFICULTY_RUBRIC


def test_judge_messages_hold_rubric_instruction_and_response_in_one_user_turn() -> None:
    messages = judging.judge_messages(f"  {INSTRUCTION}\n", RESPONSE)
    assert len(messages) == 1 and messages[0]["role"] == "user"
    content = messages[0]["content"]
    assert content.startswith(judging.RUBRIC)
    assert f"<instruction>\n{INSTRUCTION}\n</instruction>" in content
    assert f"<response>\n{RESPONSE}\n</response>" in content
    assert content.index("<instruction>") < content.index("<response>")


def test_plain_judge_prompt_ends_with_the_lead() -> None:
    prompt = plain_judge_prompt(INSTRUCTION, RESPONSE)
    assert INSTRUCTION in prompt and RESPONSE in prompt and judging.RUBRIC in prompt
    assert prompt.endswith("\n\nRating (1-5): ")


def test_difficulty_prompts_hold_the_instruction_only() -> None:
    messages = difficulty_messages(INSTRUCTION)
    assert len(messages) == 1 and messages[0]["role"] == "user"
    assert INSTRUCTION in messages[0]["content"] and "<response>" not in messages[0]["content"]
    prompt = plain_difficulty_prompt(INSTRUCTION)
    assert INSTRUCTION in prompt and judging.DIFFICULTY_RUBRIC in prompt
    assert prompt.endswith("Difficulty (1-5): ")


def test_plain_response_prompt_and_stops() -> None:
    prompt, stops = plain_response_prompt(f"{INSTRUCTION}\n")
    assert prompt.endswith(f"\n\n### Instruction:\n{INSTRUCTION}\n\n### Response:\n")
    assert prompt.startswith("### Instruction:\n")  # one worked example comes first
    assert stops == ("\n### ", "\n\n\n")
    generated = "Cold drops fall.\n### Instruction:\nmore"
    assert generated.split(stops[0], 1)[0] == "Cold drops fall."


@pytest.mark.parametrize(
    ("probabilities", "expected"),
    [
        ([0, 0, 0, 0, 1], 5.0),
        ([1, 0, 0, 0, 0], 1.0),
        ([0.2] * 5, 3.0),
        ([0.5, 0, 0, 0, 0.5], 3.0),
        ([0.01, 0.01, 0.02, 0.04, 0.02], (1 + 2 + 6 + 16 + 10) / 10),  # mass 0.1, renormalised: 3.5
        ([0, 0, 0, 3, 1], 4.25),
        ([0, 0, 0, 0, 0], 3.0),  # no information: the neutral midpoint
        ([float("nan"), 0, 0, 0, 1], 3.0),
        ([0, 0, 0, float("inf"), 1], 3.0),
        ([-0.1, 0, 0, 0, 1], 3.0),
    ],
)
def test_expected_rating(probabilities: list[float], expected: float) -> None:
    assert expected_rating(probabilities) == pytest.approx(expected)


def test_expected_rating_rejects_wrong_length() -> None:
    with pytest.raises(ValueError):
        expected_rating([0.5, 0.5])


def test_renormalise_and_informative() -> None:
    assert renormalise([1, 1, 2]) == pytest.approx([0.25, 0.25, 0.5])
    assert renormalise([0, 0, 0, 0]) == [0.25] * 4
    assert renormalise([]) == []
    assert is_informative([0, 0, 0, 0, 1e-30])
    assert not is_informative([0, 0, 0, 0, 0])
    assert not is_informative([float("nan")] * 5)
    assert not is_informative(["a", 1, 1, 1, 1])  # type: ignore[list-item]


def test_probabilities_from_logprobs_survive_underflow() -> None:
    probs = probabilities_from_logprobs([-1000.0, -1000.0, -1000.0, -1000.0 + math.log(2), -math.inf])
    assert probs == pytest.approx([0.2, 0.2, 0.2, 0.4, 0.0])
    assert expected_rating(probs) == pytest.approx(2.8)
    assert probabilities_from_logprobs([-math.inf] * 5) == [0.2] * 5
    assert probabilities_from_logprobs([float("nan"), 0, 0, 0, 0]) == [0.2] * 5


RATED = [
    ("4", 4), ("Rating: 4", 4), ("4/5", 4), ("**4**", 4), ("I'd give it a 4 out of 5", 4), ("Score: 5.", 5),
    ("  3\n", 3), ("1", 1), ("5", 5), ("4.", 4), ("4.0", 4), ("4 / 5", 4), ("rating:3", 3), ("RATING: 2", 2),
    ("Rating (1-5): 4", 4), ("Rating: 4 (on a 1-5 scale)", 4), ("Rating (out of 5): 4", 4),
    ("4\nThe response gave 2 examples and 3 tips.", 4), ("2 steps are missing, so the rating is 3.", 3),
    ("I rate this response 5/5.", 5), ("`3`", 3), ("## 5", 5), ("4 stars", 4), ("Overall: 2", 2),
    ("The answer is correct and clear. Score: 5", 5), ("Score: 3\n\nExplanation: it covers 3 points.", 3),
    ("4" + " " * 100_000, 4), ("Rating: 4" + "\n" * 50_000 + "padding", 4), ("5 ٤", 5),
    ("4\n" + "blah " * 20_000, 4), ("\ufeff4", 4), ("3/", 3),
]
UNRATED = [
    "", " ", "\n\n", "none", "N/A", "Rating:", "excellent", "four", "I'd give it four out of five",
    "3 or 4", "between 2 and 4", "3-4", "3 to 4", "2 and 4", "3~4", "Rating: 3 or 4", "somewhere 3 – 4",
    "6/10", "0", "6", "10", "10/10", "8/10", "4/10", "3/4", "0/5", "-3", "Rating: -3", "4.5", "4.5/5", "100",
    "Rating: 4. Actually, score: 2.", "Helpfulness 4/5, clarity 3/5", "1. Helpfulness: 4\n2. Clarity: 3",
    "GPT-4 is good", "４", "٤", "⁴", "Rating: ４", "x" * 100_000 + "4", "4" * 5000, "9" * 400 + "/5",
    "the 2 answers differ in 3 ways", "\x00\x01\x02", "\ud800", "🙂🙂🙂", "<|im_end|>", "Rating: 5e3",
    "Score: 0x4", "Rating: 4x", "v4", "4th", "/5", "12345",
]


@pytest.mark.parametrize(("text", "expected"), RATED)
def test_parse_rating_reads_ratings(text: str, expected: int | None) -> None:
    assert parse_rating(text) == expected


@pytest.mark.parametrize("text", UNRATED)
def test_parse_rating_refuses_what_it_cannot_trust(text: str) -> None:
    assert parse_rating(text) is None


@pytest.mark.parametrize("value", [None, 4, 4.0, b"4", ["4"], {"rating": 4}, object(), True])
def test_parse_rating_takes_only_strings(value: object) -> None:
    assert parse_rating(value) is None


def test_parse_rating_never_raises_on_generated_noise() -> None:
    import random

    rng = random.Random(0)
    alphabet = "0123456789 /.-:*_#\n\tor and to Rating Score out of 5 10 \u2013 ٤ ４ é 🙂"
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        result = parse_rating(text)
        assert result is None or result in range(1, 6)
