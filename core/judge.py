"""Judging: every judge model scores every response 1-5; consensus and agreement are rebuilt after.

``probs`` (default) reads the judge's next-token probabilities of "1".."5" after the rating lead in one
forward pass: the score is their renormalised expected value, and the distribution is stored, so it
cannot fail to parse. ``generate`` lets the judge write its rating (greedy) and parses it; a reply
without a usable rating is stored as a failure, which ``retry_failed`` reruns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.config import fingerprint, to_yaml
from core.errors import ForgetlessError
from core.progress import Cancelled, Progress
from core.store import Store
from core.store.screening import PendingScore, ScoreRow

METHODS = ("probs", "generate")


@dataclass
class JudgeConfig:
    """Settings of one judging job (the YAML in its job folder)."""

    judges: tuple[str, ...] = ("smollm2-135m-instruct", "gemma-3-270m")  # MODEL specs that score
    method: str = "probs"  # probs | generate
    exclude_self: bool = False  # a judge does not score responses written by the same model spec
    retry_failed: bool = False  # generate: rerun only the rows whose rating failed to parse
    batch_size: int = 16
    max_new_tokens: int = 8  # generate: room for the judge's rating
    job_id: str | None = None

    def __post_init__(self) -> None:
        self.judges = tuple(j.strip() for j in self.judges if j.strip())
        checks = [
            (bool(self.judges), "give at least one judge"),
            (len(set(self.judges)) == len(self.judges), "a judge is listed twice"),
            (self.method in METHODS, f"method must be one of {', '.join(METHODS)}"),
            (self.batch_size >= 1, "batch size must be at least 1"),
            (1 <= self.max_new_tokens <= 256, "max new tokens must be between 1 and 256"),
        ]
        for ok, message in checks:
            if not ok:
                raise ForgetlessError(message)

    def resolved_job_id(self) -> str:
        return self.job_id or "judge-" + fingerprint(self, exclude=("job_id", "retry_failed"))


def judge_prompt(tokenizer: Any, instruction: str, response: str) -> tuple[str, str]:
    """The judge's prompt text (ending where the rating digit comes) and its format name."""
    from core.judging import RATING_LEAD, judge_messages, plain_judge_prompt

    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(judge_messages(instruction, response), tokenize=False,
                                             add_generation_prompt=True)
        return text + RATING_LEAD.rstrip(), "chat"
    return plain_judge_prompt(instruction, response).rstrip(), "plain"


def _score_batch(config: JudgeConfig, lm: Any, judge: str, batch: list[PendingScore], job_id: str,
                 progress: Progress) -> list[ScoreRow]:
    from core.backends.scoring import answer_token_groups, next_token_probs
    from core.backends.transformers_backend import sample
    from core.judging import RATING_TOKENS, expected_rating, parse_rating, renormalise

    prompts, formats = [], []
    for item in batch:
        text, fmt = judge_prompt(lm.tokenizer, item.instruction, item.response)
        # A chat template writes its own BOS text; a plain prompt needs the tokenizer's.
        prompts.append(lm.tokenizer(text, add_special_tokens=fmt == "plain")["input_ids"])
        formats.append(fmt)
    rows = []
    if config.method == "probs":
        groups = answer_token_groups(lm.tokenizer, RATING_TOKENS)
        probs = next_token_probs(lm.model, prompts, groups, pad_id=lm.tokenizer.pad_token_id or 0)
        for item, fmt, row in zip(batch, formats, probs.tolist(), strict=True):
            rows.append(ScoreRow(item.response_id, judge, "probs", expected_rating(row), renormalise(row), None,
                                 False, fmt, job_id))
        progress.on_token(0)  # lets a cancel request interrupt between batches of forward passes
        return rows
    replies = sample(lm.model, prompts, temperature=0.0, max_new_tokens=config.max_new_tokens,
                     stop_token_ids=[lm.tokenizer.eos_token_id] if lm.tokenizer.eos_token_id is not None else [],
                     on_token=progress.on_token)
    for item, fmt, reply in zip(batch, formats, replies, strict=True):
        text = lm.tokenizer.decode(reply.token_ids, skip_special_tokens=True)
        rating = parse_rating(text)
        rows.append(ScoreRow(item.response_id, judge, "generate", None if rating is None else float(rating), None,
                             text, rating is None, fmt, job_id))
    return rows


def run_judging(
    config: JudgeConfig,
    store: Store,
    load: Callable[[str], Any],
    *,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> dict[str, Any]:
    """Score every pending response with every judge, then rebuild consensus and agreement."""
    job_id = config.resolved_job_id()
    store.register_job(job_id, "judge", to_yaml(config))

    def pending(judge: str) -> list[PendingScore]:
        return store.pending_scores(judge, config.method, exclude_self=config.exclude_self,
                                    retry_failed=config.retry_failed)

    total = sum(len(pending(judge)) for judge in config.judges)
    progress = Progress(job_id, total, on_progress=on_progress, should_stop=should_stop, unit="done")
    cancelled = False
    for judge in config.judges:
        todo = pending(judge)
        if not todo:
            continue
        lm = load(judge)
        try:
            for start in range(0, len(todo), config.batch_size):
                if progress.stop_requested():
                    raise Cancelled
                rows = _score_batch(config, lm, judge, todo[start : start + config.batch_size], job_id, progress)
                store.add_scores(rows)
                progress.batch_done(len(rows), 0)
        except Cancelled:
            cancelled = True
            break
    consensus = update_consensus(store, config.method)
    return {
        "job_id": job_id, "judges": list(config.judges), "method": config.method, "scores": progress.done_now,
        "failures": store.count_failures(config.method, config.judges), "pending_before": total,
        "responses_with_consensus": consensus["responses"], "instructions_with_best": consensus["instructions"],
        "db": str(store.path), "seconds": round(progress.elapsed, 2), "cancelled": cancelled,
    }


def update_consensus(store: Store, method: str) -> dict[str, int]:
    """Recompute per-response consensus, each instruction's best response, and judge agreement."""
    import pandas as pd

    from core.consensus import Candidate, judge_agreement, pick_best, response_consensus

    scores = store.scores_frame(method)
    consensus_rows, best_rows = [], []
    for (response, instruction), group in scores.groupby(["response_id", "instruction_id"], sort=True):
        stats = response_consensus(group["score"].tolist())
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
