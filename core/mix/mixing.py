"""Mixing: the screened general data and the user's domain data at an exact, seeded ratio.

The counting rule (``R`` = the share of general data in the result, ``0 <= R < 1``):

* by examples: all ``D`` domain train rows (a seeded sample of ``max_domain`` when that cap is set) and
  ``G = round(D * R / (1 - R))`` general rows. When fewer general candidates ``G_avail < G`` match the
  selection, the ratio is kept and the domain side gives way: all ``G_avail`` general rows and a seeded
  sample of ``round(G_avail * (1 - R) / R)`` domain rows ("general-limited", said in the summary and the
  manifest).
* by tokens: the same rule on token totals (the chat-formatted conversation tokenized with the target
  model's tokenizer). The general budget is ``round(T_domain * R / (1 - R))`` tokens, filled by the
  shortest prefix of the general rows in their seeded order that reaches it (so the achieved share is at
  most one row above R). General-limited: all general rows, and the shortest seeded prefix of the domain
  rows that reaches ``round(T_general * (1 - R) / R)`` tokens.

``round`` is Python's (halves to even). Which general rows come first depends on ``balance``
(``core.mix.order``: seeded, one random stream per decision); the final mix is shuffled with its own stream. The
same config, store and domain data give the same rows.

``domain_test_fraction`` holds out that share of a user's domain rows before anything is sampled
(``core.mix.domain.split_by_content``: by content hash, independent of the seed and the row order), so the mix
never trains on them and ``forgetless eval --domain <same data> --domain-test-fraction <same F>`` scores
exactly them. builtin:medmcqa has a fixed test split already (never mixed), so a fraction is rejected for it.

``general_holdout`` sets aside that share of the general candidates before anything is sampled, by a hash of the
instruction id (:func:`held_out_general`: independent of the seed, the filters and the ratio, so every mix of a
store holds out the same instructions); the snapshot lists them and ``eval --suite drift`` measures drift and
held-out perplexity on exactly them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.engines.models import load_tokenizer
from core.errors import ForgetlessError
from core.folders import check_out_free
from core.mix.domain import load_domain, split_by_content
from core.mix.order import STREAM_DOMAIN, STREAM_SHUFFLE, general_order, held_out_general, prefix_reaching, seeded_rng
from core.mix.rows import Messages, join_rows, take_rows
from core.mix.snapshot import write_snapshot
from core.mix.tokens import TokenCounter
from core.settings import setting
from core.store.explore import ExploreFilters

BY_CHOICES = ("examples", "tokens")
BALANCE_CHOICES = ("proportional", "clusters", "difficulty")
DEFAULT_TOKENIZER = "smollm2-135m-instruct"


def _filters_dict(value: Any) -> dict[str, Any]:
    """ExploreFilters, its JSON (a saved selection's filters_json) or a dict of its fields → the set fields,
    validated and normalised by ExploreFilters itself."""
    if value is None or value == "":
        return {}
    if isinstance(value, ExploreFilters):
        filters = value
    elif isinstance(value, str):
        filters = ExploreFilters.from_json(value)
    elif isinstance(value, dict):
        filters = ExploreFilters.from_json(json.dumps(value))
    else:
        raise ForgetlessError("filters must be a mapping of Explore filter fields or their JSON")
    return json.loads(filters.to_json())


@dataclass
class MixConfig:
    """Settings of one mix (the YAML a snapshot folder keeps as config.yaml)."""

    domain: str = setting("", label="Domain data",
                          help="domain data: a JSONL/JSON/CSV/Parquet file, a datasets folder, or builtin:medmcqa")
    ratio: float = setting(0.5, label="Ratio: share of general data", minimum=0.0, maximum=0.95, step=0.05,
                           help="share of general (reconstructed) data in the result, in [0, 1)")
    selection: str | None = setting(None, label="General data",
                                    help="a saved Explore selection naming the general data (or use filters)")
    filters: dict[str, Any] = setting(default_factory=dict, nested=ExploreFilters, flag=None,
                                      help="Explore filter fields (or their JSON) naming the general data; "
                                           "not together with a selection")
    by: str = setting("examples", choices=BY_CHOICES, label="Ratio counts", help="what the ratio counts")
    balance: str = setting("proportional", choices=BALANCE_CHOICES, label="Balance the general rows by",
                           help="how general rows are picked")
    seed: int = setting(0, minimum=0, help="every sampling decision and the final shuffle")
    out: str | None = setting(None, help="the snapshot folder to write (must not exist or be empty)")
    tokenizer_model: str = setting(DEFAULT_TOKENIZER, label="Tokenizer (the model to tune)",
                                   help="MODEL whose tokenizer counts tokens (the model to tune)")
    max_domain: int | None = setting(None, help="use at most this many domain rows (a seeded sample)")
    domain_test_fraction: float = setting(
        0.0, label="Hold out for testing (share of your domain rows)", minimum=0.0, maximum=0.9, step=0.05,
        help="hold out this share of your own domain rows (by content hash) and never train on them; "
             "`eval --domain` with the same fraction scores them (not for builtin:medmcqa)")
    general_holdout: float = setting(
        0.1, label="Hold out for drift (share of general rows)", minimum=0.0, maximum=0.9, step=0.05,
        help="set aside this share of the general candidates (by instruction id hash: the same instructions in "
             "every mix) and never train on them; `eval --suite drift` measures drift and held-out perplexity on "
             "them")

    def __post_init__(self) -> None:
        self.domain = str(self.domain or "").strip()
        self.selection = (self.selection or "").strip() or None
        self.filters = _filters_dict(self.filters)
        self.out = str(self.out) if self.out not in (None, "") else None
        self.tokenizer_model = str(self.tokenizer_model or "").strip()
        try:
            self.ratio = float(self.ratio)
            self.domain_test_fraction = float(self.domain_test_fraction or 0.0)
            self.general_holdout = float(self.general_holdout or 0.0)
            self.seed = int(self.seed)
            self.max_domain = None if self.max_domain in (None, "", 0) else int(self.max_domain)
        except (TypeError, ValueError) as error:
            raise ForgetlessError(f"ratio, seed and max_domain must be numbers: {error}") from error
        checks = [
            (bool(self.domain), "give the domain data: a file, a folder or builtin:medmcqa"),
            (0.0 <= self.ratio < 1.0, f"ratio must be in [0, 1) (the share of general data), got {self.ratio:g}"),
            (self.by in BY_CHOICES, f"by must be one of {', '.join(BY_CHOICES)}"),
            (self.balance in BALANCE_CHOICES, f"balance must be one of {', '.join(BALANCE_CHOICES)}"),
            (self.seed >= 0, "seed must be >= 0"),
            (self.max_domain is None or self.max_domain >= 1, "max_domain must be at least 1"),
            (0.0 <= self.domain_test_fraction < 1.0, "domain test fraction must be in [0, 1)"),
            (0.0 <= self.general_holdout < 1.0, "general holdout must be in [0, 1)"),
            (not (self.domain.startswith("builtin:") and self.domain_test_fraction > 0),
             "builtin:medmcqa has a fixed test split: a domain test fraction applies to your own data only"),
            (bool(self.tokenizer_model), "give a tokenizer model"),
            (not (self.selection and self.filters), "give a saved selection or filters, not both"),
        ]
        for ok, message in checks:
            if not ok:
                raise ForgetlessError(message)

    def general_filters(self, store: Any) -> ExploreFilters:
        """The filters naming the general candidates: the saved selection's, or this config's own."""
        if self.selection:
            return store.load_selection(self.selection)
        return ExploreFilters(**self.filters)


def load_counter(config: MixConfig, workspace: Path) -> TokenCounter:
    return TokenCounter(load_tokenizer(config.tokenizer_model, Path(workspace)), config.tokenizer_model)


def general_messages(instruction: str, response: str) -> Messages:
    return [{"role": "user", "content": instruction}, {"role": "assistant", "content": response}]


def first_user_text(messages: Messages) -> str:
    """The first user turn of a conversation (what the semantic map embeds for a domain row)."""
    return next((m["content"] for m in messages if m.get("role") == "user"), messages[0]["content"] if messages else "")


@dataclass
class MixPlan:
    """What a mix would hold, computed without writing anything (the Mix tab's live view).

    ``rows`` holds each row's provenance and token count, not its text: a row's conversation is
    ``general_conversations[side_index]`` or ``domain_rows[side_index]`` (spooled for a user's file), read by
    :meth:`conversation_batches` when a snapshot is written, so a mix of a large file is never all in memory."""

    config: MixConfig
    filters: ExploreFilters  # the filters the general candidates were read with (a selection's, resolved)
    rows: pd.DataFrame  # the mix in its final shuffled order (see MIX_COLUMNS)
    candidates: int  # general rows that match the filters and have a best response (held-out ones excluded)
    domain_available: int  # domain train rows before any cap or downsampling
    limited_by: str | None  # "general" when too few general candidates made the domain side give way
    notes: list[str]
    tokenizer: str
    domain: Any  # the DomainData the rows came from
    general_conversations: Sequence[Messages] = ()  # the general rows' conversations, by side_index
    domain_rows: Sequence[Messages] = ()  # the domain rows' conversations, by side_index
    general_held_out: list[str] = dataclasses.field(default_factory=list)  # candidates' ids set aside for drift

    def conversation_batches(self, size: int = 1024) -> Iterator[list[Messages]]:
        """The conversations in row order, ``size`` rows at a time (one spool read per batch)."""
        for start in range(0, len(self.rows), size):
            part = self.rows.iloc[start:start + size]
            is_general = (part["source"] == "general").to_numpy()
            index = part["side_index"].to_numpy()
            domain = iter(take_rows(self.domain_rows, index[~is_general]))
            yield [self.general_conversations[i] if general else next(domain)
                   for i, general in zip(index, is_general, strict=True)]

    def messages(self) -> list[Messages]:
        """Every conversation of the mix in row order (small mixes and tests)."""
        return [conversation for batch in self.conversation_batches() for conversation in batch]

    def _side(self, source: str) -> pd.DataFrame:
        return self.rows[self.rows["source"] == source]

    @property
    def counts(self) -> dict[str, int]:
        general, domain = len(self._side("general")), len(self._side("domain"))
        return {"general": general, "domain": domain, "total": general + domain}

    @property
    def tokens(self) -> dict[str, Any]:
        general, domain = int(self._side("general")["n_tokens"].sum()), int(self._side("domain")["n_tokens"].sum())
        return {"general": general, "domain": domain, "total": general + domain, "tokenizer": self.tokenizer}

    @property
    def ratio_achieved(self) -> float:
        """The general share in the config's unit (examples or tokens)."""
        values = self.counts if self.config.by == "examples" else self.tokens
        return values["general"] / values["total"] if values["total"] else 0.0

    def general_ids(self) -> list[str]:
        return sorted(self._side("general")["origin_id"])

    def composition(self, by: str = "category") -> pd.DataFrame:
        """source, group, examples, tokens: the general rows by category or cluster, the domain as one group."""
        if by not in ("category", "cluster"):
            raise ForgetlessError("composition is by category or cluster")
        general = self._side("general")
        if by == "category":
            groups = general["category"].fillna("(unprofiled)")
        else:
            labels = general["cluster_label"].where(general["cluster_label"].notna(),
                                                    "cluster " + general["cluster"].astype("string"))
            groups = labels.fillna("(unprofiled)")
        parts = [general.assign(group=groups.astype(str)), self._side("domain").assign(group="domain")]
        frame = pd.concat(parts, ignore_index=True)
        if not len(frame):
            return pd.DataFrame({"source": [], "group": [], "examples": [], "tokens": []})
        table = (frame.groupby(["source", "group"], sort=False)
                 .agg(examples=("origin_id", "size"), tokens=("n_tokens", "sum")).reset_index())
        return table.sort_values(["source", "examples", "group"], ascending=[False, False, True], ignore_index=True)

    def summary(self) -> dict[str, Any]:
        return {
            "domain": self.config.domain, "domain_name": getattr(self.domain, "name", None),
            "counts": self.counts, "tokens": self.tokens, "ratio": self.config.ratio,
            "ratio_achieved": round(self.ratio_achieved, 6), "by": self.config.by, "balance": self.config.balance,
            "seed": self.config.seed, "selection": self.config.selection, "candidates": self.candidates,
            "domain_available": self.domain_available, "limited_by": self.limited_by, "notes": list(self.notes),
            "general_held_out": len(self.general_held_out),
        }


def hold_out(domain: Any, fraction: float) -> Any:
    """User domain data with ``fraction`` of its rows moved to ``test`` by content hash; unchanged at 0.

    The split runs on all rows (train + test), so it gives the same sides whatever fraction the data was
    loaded with: those of ``load_domain(spec, test_fraction=fraction)``, which is what evaluation scores.
    """
    if fraction <= 0:
        return domain
    train, test = split_by_content(join_rows(domain.train, domain.test), fraction)
    return dataclasses.replace(domain, train=train, test=test)


MIX_COLUMNS = ("source", "origin_id", "side_index", "cluster", "cluster_label", "category", "consensus", "difficulty",
               "n_tokens")


def plan_mix(config: MixConfig, store: Any, workspace: Path, *, domain: Any = None,
             counter: TokenCounter | None = None,
             on_progress: Callable[[int, int], None] | None = None) -> MixPlan:
    """Choose the rows of a mix without writing anything. ``domain`` (a loaded DomainData) and ``counter``
    (a TokenCounter) may be passed in to reuse them across calls; ``on_progress`` sees tokenizing."""
    if domain is None:
        domain = load_domain(config.domain)
    domain = hold_out(domain, config.domain_test_fraction)
    if not domain.train:
        raise ForgetlessError(f"domain data {config.domain} has no training rows")
    filters = config.general_filters(store)
    general = store.general_rows(store.explore_ids(filters))
    held = held_out_general(general["instruction_id"], config.general_holdout)
    held_out_ids = sorted(general["instruction_id"][held].astype(str))
    general = general[~held].reset_index(drop=True)
    if config.ratio > 0 and not len(general):
        raise ForgetlessError("no general candidates: nothing judged matches the selection/filters "
                              "(run judge, or widen the filters)" + (
                                  f"; {len(held_out_ids)} are held out for drift" if held_out_ids else ""))
    counter = counter or load_counter(config, workspace)
    notes: list[str] = []
    r = config.ratio

    if domain.test and config.domain_test_fraction > 0:
        notes.append(f"{len(domain.test)} domain rows held out for evaluation (domain test fraction "
                     f"{config.domain_test_fraction:g}), never mixed")
    domain_order = seeded_rng(config.seed, STREAM_DOMAIN).permutation(len(domain.train))
    if config.max_domain is not None and config.max_domain < len(domain_order):
        domain_order = domain_order[:config.max_domain]
        notes.append(f"domain capped at {config.max_domain} of {len(domain.train)} rows (max_domain)")
    order = general_order(general, config.balance, config.seed)
    general_conversations = [general_messages(general["instruction"].iat[i], general["response"].iat[i])
                             for i in order]
    domain_tokens = None
    limited_by = None
    if config.by == "examples":
        n_domain = len(domain_order)
        n_general = round(n_domain * r / (1 - r))
        if n_general > len(order):
            n_general, limited_by = len(order), "general"
            n_domain = round(n_general * (1 - r) / r)
    else:
        domain_tokens = counter.count(take_rows(domain.train, domain_order), on_progress)
        general_tokens = counter.count(general_conversations, on_progress)
        budget = round(int(domain_tokens.sum()) * r / (1 - r))
        n_domain = len(domain_order)
        if int(general_tokens.sum()) >= budget:
            n_general = prefix_reaching(general_tokens, budget)
        else:
            n_general, limited_by = len(order), "general"
            n_domain = prefix_reaching(domain_tokens, round(int(general_tokens.sum()) * (1 - r) / r))
    if limited_by:
        if n_domain == 0:
            raise ForgetlessError(f"only {len(order)} general candidates: too few to mix at ratio {r:g}")
        notes.append(f"general-limited: only {len(order)} general candidates, so the domain side was "
                     f"downsampled to {n_domain} of {len(domain_order)} rows to keep ratio {r:g}")

    general_conversations = general_conversations[:n_general]
    domain_rows = take_rows(domain.train, domain_order[:n_domain])
    chosen = general.iloc[order[:n_general]]
    general_rows = pd.DataFrame({
        "source": "general", "origin_id": chosen["instruction_id"].astype(str).to_numpy(),
        "side_index": np.arange(n_general), "cluster": pd.array(chosen["cluster"].to_numpy(), dtype="Int64"),
        "cluster_label": chosen["cluster_label"].to_numpy(), "category": chosen["category"].to_numpy(),
        "consensus": chosen["consensus"].astype(float).to_numpy(), "difficulty": chosen["difficulty"].astype(float)
        .to_numpy(),
        "n_tokens": counter.count(general_conversations, on_progress),
    })
    domain_rows_frame = pd.DataFrame({
        "source": "domain", "origin_id": [f"{domain.name}:{i}" for i in domain_order[:n_domain]],
        "side_index": np.arange(n_domain),
        "n_tokens": domain_tokens[:n_domain] if domain_tokens is not None else counter.count(domain_rows, on_progress),
    })
    rows = pd.concat([general_rows, domain_rows_frame], ignore_index=True)
    rows = rows.iloc[seeded_rng(config.seed, STREAM_SHUFFLE).permutation(len(rows))].reset_index(drop=True)
    rows["cluster"] = rows["cluster"].astype("Int64")
    rows["side_index"] = rows["side_index"].astype(np.int64)
    rows["n_tokens"] = rows["n_tokens"].astype(np.int64)
    for column in ("cluster_label", "category"):
        rows[column] = rows[column].astype(object).where(rows[column].notna(), None)
    return MixPlan(config, filters, rows[list(MIX_COLUMNS)], len(general), len(domain.train), limited_by, notes,
                   counter.name, domain, general_conversations, domain_rows, held_out_ids)


def freeze_mix(config: MixConfig, store: Any, workspace: Path, *, domain: Any = None,
               counter: TokenCounter | None = None,
               on_progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Plan the mix and write its snapshot to ``config.out``; return the summary (with ``out``)."""
    if not config.out:
        raise ForgetlessError("give the snapshot folder to write (--out)")
    check_out_free(Path(config.out))  # before any slow work
    plan = plan_mix(config, store, workspace, domain=domain, counter=counter, on_progress=on_progress)
    return write_snapshot(plan, Path(config.out))
