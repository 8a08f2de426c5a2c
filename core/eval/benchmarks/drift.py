"""Drift: how far a tuned model's next-token distributions moved from its base on general data.

On held-out screened general data (an instruction and its best response, in the chat template), for
every response token: KL(base || tuned) between the two models' next-token distributions, and both
models' negative log-likelihood of the actual token. Sums per text are stored, so the token-weighted
means (mean KL, perplexities) combine over batches and resumed runs.

Which texts: the general candidates the run's mix set aside before sampling (``mix --general-holdout``, listed in
its manifest as ``general.held_out_ids``): screened like the rows it trained on, never trained on. A mix written
before the holdout existed lists none; then the texts are the stored pairs the run did not train on (which,
after a min-score filter, are mostly the rows that failed it), and the result says so.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from core.engines.loglik import pack_continuations
from core.errors import ForgetlessError
from core.eval.task import TaskModels, TaskRun, length_buckets, metric_cell, register, seeded_pick
from core.progress import Progress
from core.store.evaluation import EvalItemRow


@dataclass(frozen=True)
class DriftText:
    item_id: str  # the instruction id
    prompt_ids: tuple[int, ...]  # up to where the response starts
    response_ids: tuple[int, ...]


@dataclass(frozen=True)
class DriftScore:
    item_id: str
    tokens: int
    kl_sum: float
    nll_base: float
    nll_tuned: float


def drift_text(tokenizer: Any, item_id: str, instruction: str, response: str, max_tokens: int) -> DriftText | None:
    """The instruction as the user turn and the response as the assistant's, cut to ``max_tokens``."""
    if tokenizer.chat_template:
        user = [{"role": "user", "content": instruction}]
        prompt = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template([*user, {"role": "assistant", "content": response}], tokenize=False)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        if full_ids[: len(prompt_ids)] != prompt_ids:  # a template that rewrites earlier turns: not scorable
            return None
        response_ids = full_ids[len(prompt_ids) :]
    else:
        prompt_ids = tokenizer(instruction.rstrip() + "\n\n", add_special_tokens=True)["input_ids"]
        response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    room = max_tokens - len(prompt_ids)
    if room < 1 or not response_ids or not prompt_ids:
        return None
    return DriftText(item_id, tuple(prompt_ids), tuple(response_ids[:room]))


# Response tokens per forward pass: each keeps a vocabulary-sized row of log-probabilities for both models
# (SmolLM2: 49k floats = 192 KB), so 1024 keep a pass under ~1 GB with the temporaries.
MAX_DRIFT_TOKENS = 1024


def drift_scores(base: Any, tuned: Any, texts: Sequence[DriftText], pad_id: int = 0) -> list[DriftScore]:
    """Per text: summed KL(base || tuned) and both NLLs over its response tokens.

    Texts go through both models in passes of at most MAX_DRIFT_TOKENS response tokens (right-padded);
    only the positions that predict a response token are projected onto the vocabulary.
    """
    passes: list[list[DriftText]] = []
    for text in texts:
        if passes and sum(len(t.response_ids) for t in passes[-1]) + len(text.response_ids) <= MAX_DRIFT_TOKENS:
            passes[-1].append(text)
        else:
            passes.append([text])
    return [score for group in passes for score in _drift_pass(base, tuned, group, pad_id)]


def _drift_pass(base: Any, tuned: Any, texts: list[DriftText], pad_id: int) -> list[DriftScore]:
    import torch

    ids, mask, keep, targets = pack_continuations([(t.prompt_ids, t.response_ids) for t in texts], pad_id)

    def log_probs(model: Any) -> Any:
        device = getattr(model, "device", "cpu")
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                           logits_to_keep=keep.to(device)).logits
            if logits.dim() == 3:  # a model that ignores a boolean logits_to_keep returns every position
                logits = logits[keep.to(logits.device)]
            return torch.log_softmax(logits.float().cpu(), dim=-1)

    base_lp = log_probs(base)
    tuned_lp = base_lp if tuned is base else log_probs(tuned)
    target = torch.tensor(targets, dtype=torch.long)[:, None]
    nll_base = -base_lp.gather(1, target).squeeze(1)
    nll_tuned = -tuned_lp.gather(1, target).squeeze(1)
    kl = (base_lp.exp() * (base_lp - tuned_lp)).sum(-1).clamp_(min=0.0)  # rounding can dip a hair below 0
    scores, start = [], 0
    for text in texts:
        end = start + len(text.response_ids)
        scores.append(DriftScore(text.item_id, end - start, float(kl[start:end].sum()),
                                 float(nll_base[start:end].sum()), float(nll_tuned[start:end].sum())))
        start = end
    return scores


def drift_metrics(scores: Sequence[DriftScore]) -> dict[str, Any]:
    """Token-weighted mean KL, perplexities of base and tuned, and the standard error of per-text mean KL."""
    tokens = sum(s.tokens for s in scores)
    if not tokens:
        return {"kl": None, "ppl_base": None, "ppl_tuned": None, "kl_stderr": None, "n": len(scores), "tokens": 0}
    per_text = [s.kl_sum / s.tokens for s in scores]
    mean = sum(per_text) / len(per_text)
    stderr = (math.sqrt(sum((v - mean) ** 2 for v in per_text) / (len(per_text) - 1) / len(per_text))
              if len(per_text) > 1 else None)
    return {
        "kl": sum(s.kl_sum for s in scores) / tokens,
        "ppl_base": math.exp(sum(s.nll_base for s in scores) / tokens),
        "ppl_tuned": math.exp(sum(s.nll_tuned for s in scores) / tokens),
        "kl_stderr": stderr, "n": len(scores), "tokens": tokens,
    }


HELD_OUT = "held out by the mix"
NOT_TRAINED = "stored pairs the run did not train on (its mix holds none out)"
ANY_PAIRS = "stored pairs (no mix known)"


def _manifest_general(run_config: dict[str, Any]) -> dict[str, Any] | None:
    data = run_config.get("data")
    if not data:
        return None
    try:
        manifest = yaml.safe_load((Path(str(data)) / "manifest.yaml").read_text(encoding="utf-8")) or {}
        general = manifest["general"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    return general if isinstance(general, dict) else None


def _id_set(value: Any) -> set[str] | None:
    return {str(i) for i in value} if isinstance(value, list) else None


def mix_general_ids(run_config: dict[str, Any]) -> set[str] | None:
    """The general instruction ids a run trained on: its mix snapshot's ``general.instruction_ids`` (None: unknown)."""
    general = _manifest_general(run_config)
    return None if general is None else _id_set(general.get("instruction_ids"))


def mix_held_out_ids(run_config: dict[str, Any]) -> set[str] | None:
    """The general instruction ids the run's mix set aside for drift (None: its manifest lists none)."""
    general = _manifest_general(run_config)
    return None if general is None else _id_set(general.get("held_out_ids"))


def drift_source(run: TaskRun) -> tuple[str, set[str] | None, set[str] | None]:
    """Which texts drift scores for this run: (what they are, the ids to keep or None, the ids to leave out)."""
    if not run.target.data_dir:
        return ANY_PAIRS, None, None
    run_config = {"data": run.target.data_dir}
    held, used = mix_held_out_ids(run_config), mix_general_ids(run_config)
    if held is not None:
        return HELD_OUT, held, used
    return NOT_TRAINED, None, used


def in_process_model(engine: Any, task: str) -> Any:
    """The transformers model behind an in-process engine: the engine protocol gives chosen tokens' log-probabilities,
    not the whole next-token distributions that KL needs (and domain_ppl reuses drift's pass)."""
    lm = getattr(engine, "lm", None)
    if lm is None:
        raise ForgetlessError(f"{task} compares whole next-token distributions: it needs a model loaded in this "
                              "process (an in-process engine)")
    return lm.model


def held_out_texts(run: TaskRun, tokenizer: Any) -> list[DriftText]:
    """A seeded pick of the general pairs the run's mix held out (see the module's docstring), as drift texts."""
    config = run.config
    pairs = run.store.general_pairs()
    _, keep, used = drift_source(run)
    if keep is not None:
        pairs = pairs[pairs["id"].isin(keep)]
    if used:
        pairs = pairs[~pairs["id"].isin(used)]
    rows = seeded_pick(list(pairs.itertuples(index=False)), config.drift_n, config.seed)
    texts = (drift_text(tokenizer, row.id, row.instruction, row.response, config.drift_max_tokens) for row in rows)
    return [text for text in texts if text is not None]


def text_batches(texts: Sequence[DriftText], batch_size: int) -> list[list[DriftText]]:
    return length_buckets(texts, lambda text: len(text.prompt_ids) + len(text.response_ids), batch_size)


def text_tokens(texts: Sequence[DriftText]) -> int:
    return sum(len(text.prompt_ids) + len(text.response_ids) for text in texts)


@dataclass(frozen=True)
class DriftTask:
    """KL(base || tuned) and both perplexities on held-out general texts."""

    name: str = "drift"
    suite: str = "drift"
    needs_base: bool = True
    in_process: bool = True

    def in_suite(self, config: Any) -> bool:
        return True

    def check(self, run: TaskRun) -> bool:
        return True

    def items(self, run: TaskRun, tokenizer: Any) -> list[DriftText]:
        return held_out_texts(run, tokenizer)

    def item_id(self, item: DriftText) -> str:
        return str(item.item_id)

    def batches(self, items: Sequence[DriftText], batch_size: int) -> list[list[DriftText]]:
        return text_batches(items, batch_size)

    def score(self, batch: list[DriftText], models: TaskModels,
              progress: Progress) -> tuple[list[EvalItemRow], int]:
        base, tuned = (in_process_model(engine, self.name) for engine in (models.base, models.model))
        drift = drift_scores(base, tuned, batch, pad_id=models.model.tokenizer.pad_token_id or 0)
        rows = [EvalItemRow(s.item_id, None, None, None, None, dataclasses.asdict(s)) for s in drift]
        return rows, text_tokens(batch)

    def metrics(self, rows: Sequence[EvalItemRow], run: TaskRun) -> dict[str, Any]:
        return {**drift_metrics([DriftScore(**(r.extra or {})) for r in rows]), "texts": drift_source(run)[0]}

    def headline(self, metrics: dict[str, Any]) -> dict[str, Any]:
        return {key: metrics.get(key) for key in ("kl", "ppl_base", "ppl_tuned", "kl_stderr", "n", "tokens", "texts")}

    def table_cells(self, metrics: dict[str, Any]) -> tuple[Any, Any, Any, str]:
        notes = (f"kl={metric_cell(metrics.get('kl'))} ppl base={metric_cell(metrics.get('ppl_base'))} "
                 f"tuned={metric_cell(metrics.get('ppl_tuned'))}")
        return None, None, metrics.get("kl_stderr"), notes


register(DriftTask())
