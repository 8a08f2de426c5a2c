"""Judge and response prompts, and parsers of what judges return: pure functions, no model, no torch.

Judges are read two ways. Preferred: the prompt ends just before the rating digit, the backend reads
the probabilities of the five tokens "1".."5" there, and `expected_rating` turns them into a score
(smooth, no sampling noise). Fallback: the judge generates text and `parse_rating` reads a digit out of
it. Parsers never raise on bad model output; they return None and the caller marks the row.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

RATING_TOKENS = ("1", "2", "3", "4", "5")
# Appended by the caller after the chat template's generation prompt; it ends with a space so that the
# next token is a bare digit, one of RATING_TOKENS.
RATING_LEAD = "Rating: "
PLAIN_RATING_LEAD = "Rating (1-5): "
PLAIN_DIFFICULTY_LEAD = "Difficulty (1-5): "
# The score used when the five probabilities carry no information (all zero, NaN, negative, inf):
# the scale's midpoint, which is what a uniform distribution gives. Callers mark such rows.
NEUTRAL_RATING = 3.0
# A verdict sits in a judge's first lines; longer text is read only this far, which also bounds the cost
# of a pathological generation.
MAX_PARSE_CHARS = 4096

RUBRIC = (
    "Rate how well the response answers the user's instruction, from 1 (poor) to 5 (excellent).\n"
    "Consider helpfulness, correctness, how closely it follows the instruction, and clarity.\n"
    "1 = poor: unhelpful, wrong, or ignores the instruction.\n"
    "3 = acceptable: addresses the instruction but has errors, gaps or unclear parts.\n"
    "5 = excellent: correct, complete, follows every part of the instruction, clearly written.\n"
    "Reply with a single digit from 1 to 5."
)
DIFFICULTY_RUBRIC = (
    "Rate how difficult the user's instruction is for an AI assistant to answer well, "
    "from 1 (trivial) to 5 (very hard).\n"
    "1 = trivial: a greeting, a simple fact, or a short rewrite.\n"
    "3 = moderate: needs some knowledge, reasoning, or several steps.\n"
    "5 = very hard: expert knowledge, long multi-step reasoning, or exacting precision.\n"
    "Reply with a single digit from 1 to 5."
)


def _judge_body(instruction: str, response: str) -> str:
    # Tags rather than "###" headers: responses often contain markdown headers of their own.
    return (f"{RUBRIC}\n\n<instruction>\n{instruction.strip()}\n</instruction>\n\n"
            f"<response>\n{response.strip()}\n</response>")


def _difficulty_body(instruction: str) -> str:
    return f"{DIFFICULTY_RUBRIC}\n\n<instruction>\n{instruction.strip()}\n</instruction>"


def judge_messages(instruction: str, response: str) -> list[dict[str, str]]:
    """One user message with rubric, instruction and response, for judges that have a chat template.

    The caller applies the template with add_generation_prompt=True and appends RATING_LEAD, so the
    judge's next token is the rating digit. A single user turn works with templates that reject a
    system role.
    """
    return [{"role": "user", "content": _judge_body(instruction, response)}]


def plain_judge_prompt(instruction: str, response: str) -> str:
    """The judge prompt for base models without a chat template (e.g. Gemma-3-270M base).

    Format: the rubric, a blank line, the instruction between <instruction> tags, a blank line, the
    response between <response> tags, a blank line, then PLAIN_RATING_LEAD ("Rating (1-5): "), so the
    next token is the digit. Surrounding whitespace of instruction and response is dropped.
    """
    return f"{_judge_body(instruction, response)}\n\n{PLAIN_RATING_LEAD}"


def difficulty_messages(instruction: str) -> list[dict[str, str]]:
    """One user message asking how hard the instruction is (1 trivial .. 5 very hard); append RATING_LEAD."""
    return [{"role": "user", "content": _difficulty_body(instruction)}]


def plain_difficulty_prompt(instruction: str) -> str:
    """Difficulty prompt for base models: rubric, the tagged instruction, then PLAIN_DIFFICULTY_LEAD."""
    return f"{_difficulty_body(instruction)}\n\n{PLAIN_DIFFICULTY_LEAD}"


PLAIN_RESPONSE_EXAMPLE = (
    "### Instruction:\nName three primary colors.\n\n### Response:\nThe three primary colors are red, yellow and "
    "blue.\n\n"
)


def plain_response_prompt(instruction: str) -> tuple[str, tuple[str, ...]]:
    """The prompt a base model (no chat template) answers, and the strings that end its answer.

    Format: one worked example, then "### Instruction:\\n{instruction}\\n\\n### Response:\\n" (the Alpaca
    layout base models have seen most). Without the example, Gemma-3-270M base often answers with another
    header or nothing; with it, it mostly answers. Generation stops at the next "### " header the model
    starts on its own, or at two blank lines; the caller cuts the text at the first stop string.
    """
    prompt = PLAIN_RESPONSE_EXAMPLE + f"### Instruction:\n{instruction.strip()}\n\n### Response:\n"
    return prompt, ("\n### ", "\n\n\n")


def _finite_nonnegative(values: Sequence[float]) -> list[float] | None:
    try:
        floats = [float(v) for v in values]
    except (TypeError, ValueError):
        return None
    if not floats or any(not math.isfinite(v) or v < 0 for v in floats) or sum(floats) <= 0:
        return None
    return floats


def is_informative(probabilities: Sequence[float]) -> bool:
    """True when the probabilities can be renormalised: finite, non-negative, not all zero.

    Callers check this to mark a row whose score fell back to NEUTRAL_RATING.
    """
    return _finite_nonnegative(probabilities) is not None


def renormalise(probabilities: Sequence[float]) -> list[float]:
    """Scale the probabilities to sum to 1: the rating tokens hold only part of the judge's mass.

    Uninformative input (see `is_informative`) gives the uniform distribution: no evidence for any rating.
    """
    floats = _finite_nonnegative(probabilities)
    if floats is None:
        n = len(probabilities)
        return [1.0 / n] * n if n else []
    total = sum(floats)
    return [v / total for v in floats]


def expected_rating(probabilities: Sequence[float]) -> float:
    """Expected rating over 1..5 under the renormalised probabilities of RATING_TOKENS.

    Uninformative input returns NEUTRAL_RATING (3.0, the uniform expectation) rather than NaN, so that
    means and plots stay defined; `is_informative` tells the caller to mark the row.
    Raises ValueError when not given exactly five values: that is a caller bug, not model output.
    """
    if len(probabilities) != len(RATING_TOKENS):
        raise ValueError(f"expected {len(RATING_TOKENS)} probabilities, got {len(probabilities)}")
    if not is_informative(probabilities):
        return NEUTRAL_RATING
    return sum(rating * p for rating, p in enumerate(renormalise(probabilities), start=1))


def probabilities_from_logprobs(logprobs: Sequence[float]) -> list[float]:
    """Softmax over the rating tokens' log-probabilities, stable where exp() of each would underflow.

    -inf entries get 0; all -inf, or any NaN/+inf, gives the uniform distribution.
    """
    values = [float(v) for v in logprobs]
    if not values or any(math.isnan(v) or v == math.inf for v in values) or max(values) == -math.inf:
        return [1.0 / len(values)] * len(values) if values else []
    top = max(values)
    weights = [math.exp(v - top) for v in values]
    return [w / sum(weights) for w in weights]


# --- parsing generated text -------------------------------------------------------------------------------
_FLAGS = re.IGNORECASE | re.ASCII  # ASCII: only 0-9 are digits; the judge's rating tokens are ASCII
_NUM = r"(?<![0-9A-Za-z./\-])(-?\d+(?:\.\d+)?)(?![0-9A-Za-z])"
_DEN = r"(?:\s{0,3}(?:/|out\s+of)\s{0,3}(-?\d+(?:\.\d+)?)(?![0-9.]))"
_SCALE = re.compile(r"\(\s*(?:out\s+of|/)\s*5\s*\)|(?<![0-9.])1\s{0,3}(?:-|\u2013|\u2014|to|through)\s{0,3}5(?![0-9])",
                    _FLAGS)
_AMBIGUOUS = re.compile(r"(?<![0-9.])[1-5]\s{0,3}(?:or|-|\u2013|to|and|~)\s{0,3}[1-5](?![0-9.])", _FLAGS)
# A number opening the text counts when it stands alone: then the end, a line break or punctuation.
_LEADING = re.compile(r"\A[\s:=]*" + _NUM + _DEN + r"?[ \t]*(\Z|\r?\n|[.,;:!)\]])", _FLAGS)
_LABELLED = re.compile(r"\b(?:rating|rated?|score[sd]?|grade[sd]?|give|gave|verdict|overall)\b[^0-9]{0,30}?"
                       + _NUM + _DEN + "?", _FLAGS)
_FRACTION = re.compile(_NUM + _DEN, _FLAGS)
_ANY_NUMBER = re.compile(_NUM, _FLAGS)
_LIST_ITEM_2 = re.compile(r"^\s*2[.)]\s", _FLAGS | re.MULTILINE)


def _value(number: str, denominator: str | None) -> int | None:
    """A rating when the number is a whole 1..5 on a 5-point scale, else None (wrong scale, range, fraction)."""
    if denominator is not None and float(denominator) != 5:
        return None
    value = float(number)
    if not value.is_integer() or not 1 <= value <= 5:
        return None
    return int(value)


def _agreed(values: list[int | None]) -> int | None:
    return values[0] if len(set(values)) == 1 else None


def parse_rating(text: object) -> int | None:
    """Read a 1..5 rating from a judge's generated text, or None when there is none to trust.

    In order: a number opening the text and standing alone ("4", "**4**", "  3\\n", "4/5", "4. Good"),
    then explicit ratings anywhere ("Rating: 4", "Score: 5.", "give it a 4", "4 out of 5"), then the only
    number in the text. The first rule that applies decides; if its readings disagree, or any is off the
    5-point scale ("6/10", "10/10", "0", "4.5", "-3"), the result is None. Hedges ("3 or 4", "between 2
    and 4", "3-4") give None. Scale mentions ("1-5", "1 to 5", "(out of 5)") are ignored. Only ASCII
    digits count (not "４" or "٤"); number words are not read. Text past MAX_PARSE_CHARS is not read.
    Non-str input gives None. Never raises.
    """
    if not isinstance(text, str):
        return None
    cleaned = re.sub(r"[*_`#]", "", text[:MAX_PARSE_CHARS])
    cleaned = _SCALE.sub(" ", cleaned)
    if _AMBIGUOUS.search(cleaned):
        return None
    leading = _LEADING.match(cleaned)
    if leading:
        # "1. Helpfulness ... 2. Clarity ..." is a numbered list, not a rating of 1.
        if leading.group(3) in (".", ")") and _LIST_ITEM_2.search(cleaned):
            return None
        return _value(leading.group(1), leading.group(2))
    labelled = [_value(m.group(1), m.group(2)) for m in _LABELLED.finditer(cleaned)]
    labelled += [_value(m.group(1), m.group(2)) for m in _FRACTION.finditer(cleaned)]
    if labelled:
        return _agreed(labelled)
    numbers = _ANY_NUMBER.findall(cleaned)
    return _value(numbers[0], None) if len(numbers) == 1 else None
