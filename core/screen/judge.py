"""Judging: every judge model scores every response 1-5; consensus and agreement are rebuilt after.

``probs`` (default) reads the judge's next-token probabilities of "1".."5" after the rating lead in one
forward pass: the score is their renormalised expected value, and the distribution is stored, so it
cannot fail to parse. ``generate`` lets the judge write its rating (greedy) and parses it; a reply
without a usable rating is stored as a failure, which ``retry_failed`` reruns.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from core.config import fingerprint, to_yaml
from core.engines.base import Engine, OpenEngine, SampleSettings, answer_probabilities
from core.engines.choice import serving_fields, serving_setting
from core.engines.embedder import DEFAULT_EMBEDDER, open_embedder
from core.engines.next_token import rating_lead
from core.errors import ForgetlessError
from core.progress import Progress
from core.screen.check_pairs import no_better_than_chance
from core.screen.model_batches import model_by_model
from core.screen.prompts import (
    RATING_LEAD,
    RATING_TOKENS,
    expected_rating,
    judge_messages,
    parse_rating,
    plain_judge_prompt,
    renormalise,
)
from core.screen.signals import (
    SIGNAL_FORMAT,
    SIGNALS,
    Embed,
    measure,
    parse_signal,
    scorer_opener,
    signal_tokens_read,
    to_rating,
)
from core.settings import setting
from core.store import Store
from core.store.screening import PendingScore, ScoreRow

METHODS = ("probs", "generate")
WEIGHTINGS = ("mean", "checked")
# The packaged judges whose consensus orders known pairs best (`forgetless judge-check`, README): relevance
# and completeness. SmolLM2-135M's own 1-5 rating and Gemma-3-270M base's were near or below chance, and the
# fluency signal, though strong on degradations, prefers the measuring model's own answers to better ones.
DEFAULT_JUDGES = (f"relevance:{DEFAULT_EMBEDDER}", "completeness:smollm2-135m-instruct")
JUDGES_HELP = ("comma-separated MODEL specs, and signals SIGNAL:MODEL "
               f"({', '.join(SIGNALS)}; relevance takes an embedder), e.g. "
               "smollm2-135m-instruct,relevance:all-minilm-l6-v2,completeness:smollm2-135m-instruct")


@dataclass
class JudgeConfig:
    """Settings of one judging job (the YAML in its job folder)."""

    judges: tuple[str, ...] = setting(DEFAULT_JUDGES, list_form="comma",
                                      label="Judges", help=JUDGES_HELP)
    method: str = setting("probs", choices=METHODS, label="Scoring",
                          help="probs: expected rating from the rating-token probabilities; "
                               "generate: the judge writes its rating, parsed")
    weighting: str = setting("mean", choices=WEIGHTINGS, label="Consensus",
                             help="mean: the plain mean of the judges' scores (the paper's); checked: each judge "
                                  "weighted by its accuracy above chance in the newest `forgetless judge-check` "
                                  "with this method (2 x (accuracy - 0.5), 0 at or below chance)")
    exclude_self: bool = setting(False, help="a model does not judge its own responses (same model spec)",
                                 label="A model does not judge its own responses")
    retry_failed: bool = setting(False, help="generate: rerun only the ratings that failed to parse",
                                 label="Retry failed ratings (generate)")
    batch_size: int = setting(16, help="responses scored together")
    max_new_tokens: int = setting(8, help="generate: room for the judge's rating", flag=None)
    job_id: str | None = setting(None, help="name the job (default: derived from the settings, so reruns resume)")
    serving: dict[str, Any] = serving_setting()

    def __post_init__(self) -> None:
        self.serving = serving_fields(self.serving)
        self.judges = tuple(j.strip() for j in self.judges if j.strip())
        checks = [
            (bool(self.judges), "give at least one judge"),
            (len(set(self.judges)) == len(self.judges), "a judge is listed twice"),
            *judge_spec_checks(self.judges),
            (self.method in METHODS, f"method must be one of {', '.join(METHODS)}"),
            (self.weighting in WEIGHTINGS, f"weighting must be one of {', '.join(WEIGHTINGS)}"),
            (self.batch_size >= 1, "batch size must be at least 1"),
            (1 <= self.max_new_tokens <= 256, "max new tokens must be between 1 and 256"),
        ]
        for ok, message in checks:
            if not ok:
                raise ForgetlessError(message)

    def resolved_job_id(self) -> str:
        return self.job_id or "judge-" + fingerprint(self, exclude=("job_id", "retry_failed"))


def judge_spec_checks(judges: Sequence[str]) -> list[tuple[bool, str]]:
    """A signal judge names its measuring model (``SIGNAL:MODEL``)."""
    return [(bool(signal.model), f"signal judge '{spec}' needs a model after the colon, e.g. {signal.signal}:"
                                 + ("all-minilm-l6-v2" if signal.needs_embedder else "smollm2-135m-instruct"))
            for spec in judges if (signal := parse_signal(spec)) is not None]


def judge_prompt(tokenizer: Any, instruction: str, response: str) -> tuple[str, str]:
    """The judge's prompt text (ending where the rating digit comes) and its format name."""
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(judge_messages(instruction, response), tokenize=False,
                                             add_generation_prompt=True)
        return text + rating_lead(tokenizer, RATING_LEAD), "chat"
    return rating_lead(tokenizer, plain_judge_prompt(instruction, response)), "plain"


def judge_prompt_ids(tokenizer: Any, items: Sequence[tuple[str, str]]) -> tuple[list[list[int]], list[str]]:
    """Each (instruction, response)'s judge prompt as token ids, and its format name."""
    prompts, formats = [], []
    for instruction, response in items:
        text, fmt = judge_prompt(tokenizer, instruction, response)
        # A chat template writes its own BOS text; a plain prompt needs the tokenizer's.
        prompts.append(tokenizer(text, add_special_tokens=fmt == "plain")["input_ids"])
        formats.append(fmt)
    return prompts, formats


@dataclass(frozen=True)
class Rating:
    """One judge's verdict on one response, as a scores row stores it."""

    score: float | None  # None when a generated rating could not be parsed
    probs: list[float] | None  # probs: renormalised P("1".."5")
    raw: str | None  # generate: the judge's own words
    failed: bool
    prompt_format: str  # chat | plain


def rate_responses(engine: Engine, method: str, items: Sequence[tuple[str, str]], *, max_new_tokens: int,
                   on_tokens: Callable[[int], None]) -> list[Rating]:
    """Rate each (instruction, response) with the judge behind ``engine``, by ``method`` (probs | generate),
    as one batch. ``on_tokens`` is the progress callback (it may raise `Cancelled` to abandon the batch)."""
    tokenizer = engine.tokenizer
    prompts, formats = judge_prompt_ids(tokenizer, items)
    if method == "probs":
        rows = answer_probabilities(engine, prompts, RATING_TOKENS)
        on_tokens(0)  # lets a cancel request interrupt between batches of forward passes
        return [Rating(expected_rating(row), renormalise(row), None, False, fmt)
                for fmt, row in zip(formats, rows, strict=True)]
    greedy = SampleSettings(max_new_tokens=max_new_tokens, temperature=0.0,
                            stop_token_ids=(tokenizer.eos_token_id,) if tokenizer.eos_token_id is not None else ())
    replies = engine.sample(prompts, greedy, on_tokens=on_tokens)
    ratings = []
    for fmt, reply in zip(formats, replies, strict=True):
        rating = parse_rating(reply.text)
        ratings.append(Rating(None if rating is None else float(rating), None, reply.text, rating is None, fmt))
    return ratings


def rate(judge: str, scorer: Any, method: str, items: Sequence[tuple[str, str]], *, max_new_tokens: int,
         on_tokens: Callable[[int], None]) -> list[Rating]:
    """Rate each (instruction, response) by ``judge``: a model judge by ``method`` (`rate_responses`), a signal
    judge by its measurement (the same whatever the method; the raw value is kept as ``raw``, in full, so that
    it gives back the stored score exactly)."""
    signal = parse_signal(judge)
    if signal is None:
        return rate_responses(scorer, method, items, max_new_tokens=max_new_tokens, on_tokens=on_tokens)
    raws = measure(signal, scorer, items)
    on_tokens(0)
    return [Rating(to_rating(signal.signal, raw), None, repr(float(raw)), not math.isfinite(raw), SIGNAL_FORMAT)
            for raw in raws]


def tokens_read(judge: str, scorer: Any, items: Sequence[tuple[str, str]]) -> int:
    """The tokens ``judge`` reads to rate ``items`` (screening's token cost): a model judge's prompts (the same
    whatever the method: a generated rating adds a few tokens at most), a signal's measured texts."""
    signal = parse_signal(judge)
    if signal is None:
        return sum(len(ids) for ids in judge_prompt_ids(scorer.tokenizer, items)[0])
    return signal_tokens_read(signal, scorer, items)


def provenance(scorer: Any) -> tuple[str, str | None]:
    """(engine, url) stored with a score: an embedder runs in-process with sentence-transformers."""
    return getattr(scorer, "served_by", "sentence-transformers"), getattr(scorer, "url", None)


def _score_batch(config: JudgeConfig, scorer: Any, judge: str, batch: Sequence[PendingScore], job_id: str,
                 progress: Progress) -> list[ScoreRow]:
    ratings = rate(judge, scorer, config.method, [(item.instruction, item.response) for item in batch],
                   max_new_tokens=config.max_new_tokens, on_tokens=progress.on_token)
    return [ScoreRow(item.response_id, judge, config.method, rating.score, rating.probs, rating.raw, rating.failed,
                     rating.prompt_format, job_id, *provenance(scorer))
            for item, rating in zip(batch, ratings, strict=True)]


def run_judging(
    config: JudgeConfig,
    store: Store,
    engines: OpenEngine,
    *,
    embedders: Callable[[str], Embed] = open_embedder,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> dict[str, Any]:
    """Score every pending response with every judge (``embedders`` opens a relevance signal's embedder), then
    rebuild consensus and agreement."""
    job_id = config.resolved_job_id()
    store.register_job(job_id, "judge", to_yaml(config))

    def pending(judge: str) -> list[PendingScore]:
        signal = parse_signal(judge)
        return store.pending_scores(judge, config.method, exclude_self=config.exclude_self,
                                    retry_failed=config.retry_failed, author=signal.model if signal else judge)

    read: dict[str, int] = {}

    def score(scorer: Any, judge: str, batch: Sequence[PendingScore]) -> tuple[int, int]:
        rows = _score_batch(config, scorer, judge, batch, job_id, progress)
        store.add_scores(rows)
        read[judge] = read.get(judge, 0) + tokens_read(judge, scorer, [(item.instruction, item.response)
                                                                       for item in batch])
        return len(rows), 0

    checked = store.checked_accuracies(config.judges, config.method)
    weights = checked_weights(checked, config.judges, config.method) if config.weighting == "checked" else None
    total = sum(len(pending(judge)) for judge in config.judges)
    progress = Progress(job_id, total, on_progress=on_progress, should_stop=should_stop, unit="done")
    finished = model_by_model(config.judges, scorer_opener(engines, embedders), pending, config.batch_size,
                              progress, score)
    consensus = update_consensus(store, config.method, weights)
    stored, failures = store.count_scores(config.method, config.judges)
    return {
        "job_id": job_id, "judges": list(config.judges), "method": config.method, "weighting": config.weighting,
        "weights": weights, "no_better_than_chance": chance_judges(checked), "scores": progress.done_now,
        "failures": failures, "pending_before": total, "stored": stored, "new": progress.done_now,
        "responses_with_consensus": consensus["responses"], "instructions_with_best": consensus["instructions"],
        "tokens_read": sum(read.values()), "tokens_read_by_judge": read,
        "db": str(store.path), "seconds": round(progress.elapsed, 2), "cancelled": not finished,
    }


def checked_weights(checked: dict[str, tuple[float, float, str]], judges: Sequence[str],
                    method: str) -> dict[str, float]:
    """Each judge's weight in a checked consensus: 2 x (accuracy - 0.5), at least 0, from ``checked``
    (`Store.checked_accuracies`); ForgetlessError when a judge was never checked or none beats chance."""
    missing = [judge for judge in judges if judge not in checked]
    if missing:
        raise ForgetlessError(f"no judge check of {missing[0]} with method {method}: run `forgetless judge-check "
                              f"--judges {','.join(missing)} --methods {method}` first, or use --weighting mean")
    weights = {judge: round(max(0.0, 2 * (checked[judge][0] - 0.5)), 6) for judge in judges}
    if not any(weights.values()):
        raise ForgetlessError("no judge scored above chance in its judge check: a checked consensus would "
                              "ignore them all; use --weighting mean or other judges")
    return weights


def chance_judges(checked: dict[str, tuple[float, float, str]]) -> dict[str, str]:
    """The judges whose newest check puts them no better than chance: {judge: its check's job id}."""
    return {judge: job for judge, (accuracy, stderr, job) in sorted(checked.items())
            if no_better_than_chance(accuracy, stderr)}


def update_consensus(store: Store, method: str, weights: dict[str, float] | None = None) -> dict[str, int]:
    """Recompute per-response consensus (the mean weighted by ``weights`` per judge when given), each
    instruction's best response, and judge agreement."""
    import pandas as pd

    # here, not at the top: consensus imports scipy.stats (~0.4 s), which `forgetless` need not load to start
    from core.screen.consensus import Candidate, judge_agreement, pick_best, response_consensus

    scores = store.scores_frame(method)
    consensus_rows, best_rows = [], []
    for (response, instruction), group in scores.groupby(["response_id", "instruction_id"], sort=True):
        stats = response_consensus(group["score"].tolist(),
                                   None if weights is None else group["judge"].map(weights).fillna(0.0).tolist())
        consensus_rows.append({"response_id": response, "instruction_id": instruction, "method": method,
                               "mean": stats.mean, "median": stats.median, "std": stats.std, "min": stats.min,
                               "max": stats.max, "n_judges": stats.n_judges, "length": int(group["length"].iloc[0])})
    consensus = pd.DataFrame(consensus_rows)
    if len(consensus):
        for instruction, group in consensus.groupby("instruction_id", sort=True):
            candidates = [Candidate(r.response_id, r.mean, r.std, r.length) for r in group.itertuples()]
            best = pick_best(candidates)
            if best is None:  # no response of this instruction has a finite consensus
                continue
            chosen = group.set_index("response_id").loc[best.best_id]
            best_rows.append({"instruction_id": instruction, "response_id": best.best_id, "mean": chosen["mean"],
                              "std": chosen["std"], "margin": best.margin})
        consensus = consensus.drop(columns="length")
    agreement = judge_agreement(scores[["response_id", "judge", "score"]]) if len(scores) else pd.DataFrame()
    if len(agreement):
        agreement = agreement.assign(method=method)
    store.replace_consensus(method, consensus, pd.DataFrame(best_rows), agreement)
    store.refresh_explore_rows()
    return {"responses": len(consensus), "instructions": len(best_rows)}
