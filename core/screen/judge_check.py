"""The judge check: do the judges' scores order answers whose order is known?

Each judge scores both sides of every check pair (`core.screen.check_pairs`) with each method, with the
judge stage's own prompts and scoring (`core.screen.judge.rate_responses`), so what is checked is what
screening runs. A side's score is committed per batch: a rerun of the same settings scores only what is
missing, then recomputes the accuracies (per judge and method, per kind, and for the consensus, the mean
of the judges' scores as the judge stage takes it) into ``judge_checks``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from core.config import fingerprint, to_yaml
from core.engines.base import Engine, OpenEngine
from core.engines.choice import serving_fields, serving_setting
from core.engines.embedder import open_embedder
from core.errors import ForgetlessError
from core.progress import Progress
from core.screen.check_pairs import (
    ALL_KINDS,
    CONSENSUS,
    DEGRADATIONS,
    OWN,
    SOURCES,
    Reference,
    build_pairs,
    check_results,
    load_references,
    no_better_than_chance,
    own_candidates,
    own_pair,
)
from core.screen.judge import JUDGES_HELP, METHODS, JudgeConfig, judge_spec_checks, provenance, rate
from core.screen.model_batches import model_by_model
from core.screen.respond import RespondConfig, sample_answers
from core.screen.signals import Embed, parse_signal, scorer_opener
from core.settings import setting
from core.store import Store
from core.store.judge_checks import CheckResult, CheckScore


@dataclass(frozen=True)
class PendingSide:
    method: str
    side_id: str
    instruction: str
    answer: str


@dataclass
class JudgeCheckConfig:
    """Settings of one judge check (the YAML in its job folder)."""

    judges: tuple[str, ...] = setting(JudgeConfig.judges, list_form="comma", label="Judges",
                                      help=JUDGES_HELP)
    methods: tuple[str, ...] = setting(("probs",), list_form="comma", label="Scoring methods",
                                       help="comma-separated: probs (expected rating from the rating-token "
                                            "probabilities), generate (the judge writes its rating), or both")
    kinds: tuple[str, ...] = setting(DEGRADATIONS, list_form="comma", label="Degradations",
                                     help="comma-separated: off_topic (another instruction's answer), truncated "
                                          "(its first 15 percent of words), shuffled (sentences in random order)")
    pairs_per_kind: int = setting(40, help="pairs of each kind (and own answers, with --own-model)", minimum=1)
    source: str = setting("alpacaeval", choices=SOURCES, label="References",
                          help="alpacaeval (GPT-4 answers), arenahard (o3-mini answers) or both")
    max_words: int = setting(400, help="use only references whose instruction and answer have at most this many "
                                       "words together (longer ones cost CPU judges most)", minimum=20)
    own_model: str | None = setting(None, label="Own answers from",
                                    help="also pair references with this MODEL's own answers (costs generation; "
                                         "reported apart as kind 'own')")
    own_max_new_tokens: int = setting(256, help="room for each own answer")
    seed: int = setting(0, help="picks the references and the degradations")
    batch_size: int = setting(16, help="answers scored together")
    max_new_tokens: int = setting(8, help="generate: room for the judge's rating", flag=None)
    job_id: str | None = setting(None, help="name the job (default: derived from the settings, so reruns resume)")
    serving: dict[str, Any] = serving_setting()

    def __post_init__(self) -> None:
        self.serving = serving_fields(self.serving)
        self.judges = tuple(j.strip() for j in self.judges if j.strip())
        self.methods = tuple(m.strip() for m in self.methods if m.strip())
        self.kinds = tuple(k.strip() for k in self.kinds if k.strip())
        unknown_kinds = [kind for kind in self.kinds if kind not in DEGRADATIONS]
        checks = [
            (bool(self.judges), "give at least one judge"),
            (len(set(self.judges)) == len(self.judges), "a judge is listed twice"),
            *judge_spec_checks(self.judges),
            (bool(self.methods) and all(m in METHODS for m in self.methods),
             f"methods must be among {', '.join(METHODS)}"),
            (len(set(self.methods)) == len(self.methods), "a method is listed twice"),
            (OWN not in self.kinds, "own answers are not a degradation kind: give --own-model MODEL instead"),
            (not unknown_kinds, f"unknown kind '{(unknown_kinds or [''])[0]}': choose {', '.join(DEGRADATIONS)}"),
            (bool(self.kinds) or bool(self.own_model), "give at least one kind (or --own-model)"),
            (len(set(self.kinds)) == len(self.kinds), "a kind is listed twice"),
            (self.source in SOURCES, f"source must be one of {', '.join(SOURCES)}"),
            (1 <= self.pairs_per_kind <= 10_000, "pairs per kind must be between 1 and 10000"),
            (self.max_words >= 20, "max words must be at least 20"),
            (1 <= self.own_max_new_tokens <= 8192, "own max new tokens must be between 1 and 8192"),
            (self.batch_size >= 1, "batch size must be at least 1"),
            (1 <= self.max_new_tokens <= 256, "max new tokens must be between 1 and 256"),
        ]
        for ok, message in checks:
            if not ok:
                raise ForgetlessError(message)

    def resolved_job_id(self) -> str:
        return self.job_id or "judge-check-" + fingerprint(self, exclude=("job_id",))


def label(judge: str, method: str) -> str:
    """How results name a judge and method: "<judge>/<method>"."""
    return f"{judge}/{method}"


def _own_answers(config: JudgeCheckConfig, engine: Engine, batch: Sequence[Reference],
                 progress: Progress) -> tuple[list[str], int]:
    """The answer model's answers, sampled as the respond stage samples (its prompt format and defaults)."""
    respond = RespondConfig()
    seed = int.from_bytes(hashlib.sha256(f"{config.seed}:{batch[0].reference_id}".encode()).digest()[:4], "little")
    _, samples = sample_answers(engine, [ref.instruction for ref in batch], max_new_tokens=config.own_max_new_tokens,
                                temperature=respond.temperature, top_p=respond.top_p, seed=seed,
                                on_tokens=progress.on_token)
    return [sample.text.strip() for sample in samples], sum(len(sample.token_ids) for sample in samples)


def run_judge_check(
    config: JudgeCheckConfig,
    store: Store,
    engines: OpenEngine,
    *,
    embedders: Callable[[str], Embed] = open_embedder,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> dict[str, Any]:
    """Build (or find) the check's pairs, score every side with every judge × method (a signal judge's
    measurement once per side, stored under each method), store the accuracies."""
    job_id = config.resolved_job_id()
    store.register_job(job_id, "judge-check", to_yaml(config))
    references = load_references(config.source, config.max_words)
    pairs = build_pairs(references, config.kinds, config.pairs_per_kind, config.seed)
    if config.kinds and not pairs:
        raise ForgetlessError(f"no {config.source} reference fits in {config.max_words} words: raise --max-words")
    store.add_check_pairs(job_id, pairs)
    stored = {pair.pair_id for pair in store.check_pairs(job_id)}
    own_todo = [ref for ref in own_candidates(references, config.pairs_per_kind, config.seed)
                if config.own_model and own_pair(ref, "", config.own_model).pair_id not in stored]
    progress = Progress(job_id, len(own_todo), on_progress=on_progress, should_stop=should_stop, unit="done")

    def answer(engine: Engine, model: str, batch: Sequence[Reference]) -> tuple[int, int]:
        texts, tokens = _own_answers(config, engine, batch, progress)
        store.add_check_pairs(job_id, [own_pair(ref, text, model) for ref, text in zip(batch, texts, strict=True)])
        return len(batch), tokens

    finished = True
    if own_todo:
        finished = model_by_model([config.own_model], engines, lambda _: own_todo, config.batch_size, progress,
                                  answer)
    answers = progress.done_now

    pairs = store.check_pairs(job_id)
    sides = {}
    for pair in pairs:
        sides[pair.good_side] = (pair.instruction, pair.good)
        sides[pair.worse_side] = (pair.instruction, pair.worse)

    def pending(judge: str) -> list[PendingSide]:
        todo = []
        for method in config.methods:
            done = store.scored_sides(job_id, judge, method)
            todo += [PendingSide(method, side, *sides[side]) for side in sorted(sides) if side not in done]
        return todo

    def score(scorer: Any, judge: str, batch: Sequence[PendingSide]) -> tuple[int, int]:
        rows = []
        measured: dict[str, Any] = {}  # a signal's rating of a side, whatever the method
        for method in config.methods:
            items = [item for item in batch if item.method == method]
            if parse_signal(judge) is not None:
                fresh = list({item.side_id: item for item in items if item.side_id not in measured}.values())
                ratings = rate(judge, scorer, method, [(item.instruction, item.answer) for item in fresh],
                               max_new_tokens=config.max_new_tokens, on_tokens=progress.on_token)
                measured.update(zip([item.side_id for item in fresh], ratings, strict=True))
                ratings = [measured[item.side_id] for item in items]
            elif items:
                ratings = rate(judge, scorer, method, [(item.instruction, item.answer) for item in items],
                               max_new_tokens=config.max_new_tokens, on_tokens=progress.on_token)
            else:
                continue
            rows += [CheckScore(judge, method, item.side_id, r.score, r.probs, r.raw, r.failed, r.prompt_format,
                                *provenance(scorer)) for item, r in zip(items, ratings, strict=True)]
        store.add_check_scores(job_id, rows)
        return len(rows), 0

    scores_before = progress.done_now
    if finished:
        progress.total += sum(len(pending(judge)) for judge in config.judges)
        finished = model_by_model(config.judges, scorer_opener(engines, embedders), pending, config.batch_size,
                                  progress, score)
    summary: dict[str, Any] = {
        "job_id": job_id, "judges": list(config.judges), "methods": list(config.methods), "source": config.source,
        "pairs": sum(pair.kind != OWN for pair in pairs), "own_pairs": sum(pair.kind == OWN for pair in pairs),
        "answers": answers, "scores": progress.done_now - scores_before, "db": str(store.path),
        "seconds": round(progress.elapsed, 2), "cancelled": not finished,
    }
    if not finished:
        return summary
    results = check_results(pairs, store.check_scores(job_id), config.judges, config.methods)
    store.replace_check_results(job_id, results)
    return {**summary, **summarise(results, config.methods)}


def summarise(results: Sequence[CheckResult], methods: Sequence[str]) -> dict[str, Any]:
    """The results as ``--json`` reports them: accuracy and stderr per "<judge>/<method>" over all degradation
    kinds, the same by kind, and where each judge (or the consensus) is no better than chance: {name: [kinds]},
    "all" first. The first method's consensus is named "consensus" (the judge stage's default), another
    method's "consensus/<method>"."""
    def name(result: CheckResult) -> str:
        if result.judge == CONSENSUS:
            return CONSENSUS if result.method == methods[0] else label(CONSENSUS, result.method)
        return label(result.judge, result.method)

    accuracy: dict[str, float | None] = {}
    stderr: dict[str, float | None] = {}
    by_kind: dict[str, dict[str, float | None]] = {}
    by_kind_stderr: dict[str, dict[str, float | None]] = {}
    for result in results:
        if result.kind == ALL_KINDS:
            accuracy[name(result)], stderr[name(result)] = result.accuracy, result.stderr
        else:
            by_kind.setdefault(result.kind, {})[name(result)] = result.accuracy
            by_kind_stderr.setdefault(result.kind, {})[name(result)] = result.stderr
    chance: dict[str, list[str]] = {}
    for result in results:
        if no_better_than_chance(result.accuracy, result.stderr):
            chance.setdefault(name(result), []).append(result.kind)
    return {"accuracy": accuracy, "stderr": stderr, "by_kind": by_kind, "by_kind_stderr": by_kind_stderr,
            "no_better_than_chance": chance}
