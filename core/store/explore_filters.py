"""Explore filters: what the Explore tab (and a Mix selection) narrows the instructions to, validated, as
JSON for saved selections, and as a parameterised WHERE / ORDER BY over ``explore_rows``.

Values are bound parameters; only the user's WHERE clause is inlined, after `validate_where` (sql_safety);
ORDER BY columns come from a fixed list.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any

from core.errors import ForgetlessError
from core.settings import setting
from core.store.schema import table_names
from core.store.sql_safety import validate_where

ORDER_COLUMNS = frozenset({
    "consensus", "std", "margin", "difficulty", "ifd", "n_tokens", "n_chars", "n_responses", "response_tokens",
    "cluster", "category", "response_model", "created_at", "instruction_id", "n_judges",
})


# -- filters ------------------------------------------------------------------------------------------
def _number(name: str, value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError) as error:
        raise ForgetlessError(f"filter {name} must be a number, got {value!r}") from error
    if not math.isfinite(number):
        raise ForgetlessError(f"filter {name} must be finite")
    return number


def _count(name: str, value: Any) -> int | None:
    number = _number(name, value)
    if number is None:
        return None
    if number < 0 or number != int(number):
        raise ForgetlessError(f"filter {name} must be a whole number >= 0, got {value!r}")
    return int(number)


@dataclass(frozen=True)
class ExploreFilters:
    """What the Explore tab narrows the instructions to; every field optional (None/empty: no filter)."""

    consensus_min: float | None = setting(None, flag="--min-score", label="Consensus ≥", step=0.1,
                                          help="best response's consensus score >= this")
    consensus_max: float | None = setting(None, flag="--max-score", label="Consensus ≤", step=0.1,
                                          help="best response's consensus score <= this")
    max_std: float | None = setting(None, flag="--max-std", label="Judges' spread (std) ≤", minimum=0.0,
                                    maximum=2.0, step=0.05, help="judges' spread on the best response <= this")
    difficulty_min: float | None = setting(None, flag="--min-difficulty", label="Difficulty ≥", step=0.1,
                                           help="difficulty (1-5) >= this")
    difficulty_max: float | None = setting(None, flag="--max-difficulty", label="Difficulty ≤", step=0.1,
                                           help="difficulty (1-5) <= this")
    clusters: tuple[int, ...] = setting((), list_form="comma", help="comma-separated cluster ids, e.g. 1,2")
    categories: tuple[str, ...] = setting((), list_form="comma", help="comma-separated categories, e.g. coding,math")
    length_min: int | None = setting(None, flag=None, label="Tokens ≥", minimum=0, help="instruction tokens >= this")
    length_max: int | None = setting(None, flag=None, label="Tokens ≤", minimum=0, help="instruction tokens <= this")
    hide_duplicates: bool = setting(False, label="Hide near-duplicates (keep each group's representative)",
                                    help="keep one instruction per near-duplicate group")
    search: str | None = setting(None, label="Search instructions",
                                 help="instructions containing this text (case-insensitive)")
    where: str | None = setting(None, label="SQL WHERE (read-only, over explore_rows)",
                                help="a read-only SQL condition over the Explore columns")

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for name in ("consensus_min", "consensus_max", "max_std", "difficulty_min", "difficulty_max"):
            set_(self, name, _number(name, getattr(self, name)))
        for name in ("length_min", "length_max"):
            set_(self, name, _count(name, getattr(self, name)))
        for low, high in (("consensus_min", "consensus_max"), ("difficulty_min", "difficulty_max"),
                          ("length_min", "length_max")):
            a, b = getattr(self, low), getattr(self, high)
            if a is not None and b is not None and a > b:
                raise ForgetlessError(f"filter {low} ({a:g}) is above {high} ({b:g})")
        if self.max_std is not None and self.max_std < 0:
            raise ForgetlessError("filter max_std must be >= 0")
        clusters = self.clusters if isinstance(self.clusters, Iterable) else [self.clusters]
        set_(self, "clusters", tuple(sorted({_count("clusters", c) for c in clusters if c is not None})))
        categories = [self.categories] if isinstance(self.categories, str) else self.categories
        set_(self, "categories", tuple(sorted({str(c) for c in categories if c is not None and str(c) != ""})))
        set_(self, "hide_duplicates", bool(self.hide_duplicates))
        search = (self.search or "").strip()
        set_(self, "search", search or None)
        where = (self.where or "").strip()
        set_(self, "where", validate_where(where, table_names()) if where else None)

    def to_json(self) -> str:
        """The fields that are set, as JSON (a saved selection)."""
        values = {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()
                  if not (value is None or value is False or value == ())}
        return json.dumps(values, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ExploreFilters:
        try:
            values = json.loads(text) if text and text.strip() else {}
        except json.JSONDecodeError as error:
            raise ForgetlessError(f"filters are not valid JSON: {error.msg}") from error
        if not isinstance(values, dict):
            raise ForgetlessError("filters must be a JSON object")
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ForgetlessError(f"unknown filter field(s): {', '.join(unknown)}")
        return cls(**values)

    def is_empty(self) -> bool:
        return self == ExploreFilters()


def filter_parts(filters: ExploreFilters) -> tuple[list[str], list[Any], list[str], list[Any]]:
    """Cheap conditions (numbers, lists) and costly ones (text search, the user's SQL), each with its
    bound parameters; only the validated WHERE clause is inlined."""
    clauses: list[str] = []
    params: list[Any] = []
    for column, op, value in (
        ("consensus", ">=", filters.consensus_min), ("consensus", "<=", filters.consensus_max),
        ("std", "<=", filters.max_std), ("difficulty", ">=", filters.difficulty_min),
        ("difficulty", "<=", filters.difficulty_max), ("n_tokens", ">=", filters.length_min),
        ("n_tokens", "<=", filters.length_max),
    ):
        if value is not None:
            clauses.append(f"{column} {op} ?")
            params.append(value)
    # = ANY(list) is evaluated inside the scan; IN (a, b) becomes a filter after it (slower here).
    if filters.clusters:
        clauses.append("cluster = ANY(?::INTEGER[])")
        params.append(list(filters.clusters))
    if filters.categories:
        clauses.append("category = ANY(?::VARCHAR[])")
        params.append(list(filters.categories))
    if filters.hide_duplicates:
        clauses.append("is_representative")
    heavy: list[str] = []
    heavy_params: list[Any] = []
    if filters.search:
        heavy.append("contains(instruction_lc, lower(?))")
        heavy_params.append(filters.search)
    if filters.where:
        heavy.append(f"({filters.where})")
    return clauses, params, heavy, heavy_params


def filter_sql(filters: ExploreFilters) -> tuple[str, list[Any]]:
    """``WHERE ...`` over explore_rows and its bound parameters."""
    clauses, params, heavy, heavy_params = filter_parts(filters)
    clauses += heavy
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), params + heavy_params


def order_parts(order_by: str | None) -> tuple[str, str]:
    """``consensus DESC`` style (one column of ORDER_COLUMNS, optional ASC/DESC) → (column, direction)."""
    parts = (order_by or "consensus DESC").split()
    column = parts[0].lower() if parts else "consensus"
    direction = parts[1].upper() if len(parts) > 1 else "ASC"
    if column.startswith("-"):
        column, direction = column[1:], "DESC"
    if column not in ORDER_COLUMNS or direction not in ("ASC", "DESC") or len(parts) > 2:
        raise ForgetlessError(f"cannot order by {order_by!r}: use one of {', '.join(sorted(ORDER_COLUMNS))} "
                              "with ASC or DESC")
    return column, direction


def order_sql(order_by: str | None) -> str:
    """A safe ORDER BY: the column, NULLs last, ties in row_id (= the stable sample) order."""
    column, direction = order_parts(order_by)
    return f"ORDER BY {column} {direction} NULLS LAST, row_id"
