"""The Explore and screening views: one denormalised row per instruction, filters, charts, selections.

``explore_rows`` joins each instruction with its best response (text, model, consensus mean, spread,
margin), its response count and its profile (difficulty, IFD, cluster, category, map position,
near-duplicate group). It is a table rebuilt by :meth:`ExploreQueries.refresh_explore_rows` after
judging and after profiling, not a view: over the joins a filter took ~450 ms per query on a million
responses, on this table a whole filter change (count, page, charts) takes tens of milliseconds
(``bench/explore.py``). Its layout serves that:

* rows are stored in hash order of the id (``row_id`` = position), so the first rows that match a filter
  are a stable random sample: the plots read ``LIMIT 5000`` with no sort, and points stay put;
* ``score_code`` packs every judge's 0.5-wide bin of the best response into one integer (base 9, digit
  order in ``explore_judges``), so count, category counts and per-judge histograms come from one
  grouped scan; ``explore_scores`` keeps the scores themselves (beyond 20 judges, and for SQL WHERE
  subqueries);
* the texts that are scanned or shown in bulk are stored uncompressed (no decompression per query).

Every Explore read runs on the sandboxed connection of :mod:`core.store.sql_safety` (read-only, no file
access, configuration locked), because a filter may carry the user's own WHERE clause. All other
values are bound parameters; column names in ORDER BY come from a fixed list.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from core.errors import ForgetlessError
from core.store.base import StoreBase, now
from core.store.explore_filters import ExploreFilters, filter_parts, filter_sql, order_sql
from core.store.schema import EXPLORE_SCHEMA
from core.store.sql_safety import readonly_connection

__all__ = ["ExploreFilters", "ExploreQueries", "ExploreResult"]  # ExploreFilters lives in explore_filters

MAX_CODE_JUDGES = 20  # 9**20 < 2**64: up to 20 judges' bins fit one UBIGINT (score_code)
EXPLORE_TABLES = ("explore_scores", "explore_rows", "explore_judges")

# Every judge's score of every kept response, with the method its consensus used.
_BEST_SCORES = """
CREATE OR REPLACE TEMP TABLE explore_best_scores AS
SELECT b.instruction_id, s.judge, s.score,
       (greatest(0, least(7, floor((s.score - 1) * 2)))::INTEGER + 1) AS bin
FROM best_responses b JOIN consensus c ON c.response_id = b.response_id
JOIN scores s ON s.response_id = b.response_id AND s.method = c.method
WHERE NOT s.failed AND s.score IS NOT NULL AND isfinite(s.score)"""
# NaN (e.g. the mean of a response no judge could score) becomes NULL: DuckDB sorts NaN above every
# number, so it would pass "consensus >= x" and top the pages.
_FINITE_MACRO = "CREATE OR REPLACE TEMP MACRO finite(v) AS CASE WHEN isfinite(v) THEN v END"
_FILL_ROWS = """
INSERT INTO explore_rows
SELECT (row_number() OVER (ORDER BY hash(i.id), i.id) - 1)::INTEGER AS row_id, i.id, i.text, lower(i.text),
       i.n_tokens, i.n_chars, i.created_at, coalesce(n.n_responses, 0), b.response_id, r.text, r.model,
       r.n_tokens, finite(b.mean), finite(b.std), finite(b.margin), c.n_judges, sc.score_code, finite(p.difficulty),
       finite(p.ifd), p.cluster, p.cluster_label, p.category, finite(p.x), finite(p.y), p.dup_group,
       coalesce(p.is_representative, true), hash(i.id)
FROM instructions i
LEFT JOIN best_responses b ON b.instruction_id = i.id
LEFT JOIN responses r ON r.id = b.response_id
LEFT JOIN consensus c ON c.response_id = b.response_id
LEFT JOIN instruction_profile p ON p.instruction_id = i.id
LEFT JOIN (SELECT instruction_id, count(*)::INTEGER AS n_responses FROM responses GROUP BY instruction_id) n
       ON n.instruction_id = i.id
LEFT JOIN (SELECT s.instruction_id, sum(j.weight * s.bin)::UBIGINT AS score_code
           FROM explore_best_scores s JOIN explore_judges j ON j.judge = s.judge GROUP BY s.instruction_id) sc
       ON sc.instruction_id = i.id
ORDER BY row_id"""
_FILL_SCORES = """
INSERT INTO explore_scores
SELECT e.row_id, s.judge, s.score FROM explore_best_scores s JOIN explore_rows e ON e.instruction_id = s.instruction_id
ORDER BY e.row_id, s.judge"""

PAGE_COLUMNS = (
    "instruction_id", "instruction", "response_id", "response", "response_model", "consensus", "std", "margin",
    "n_judges", "n_responses", "difficulty", "ifd", "cluster", "cluster_label", "category", "n_tokens", "n_chars",
    "response_tokens", "dup_group", "is_representative",
)
SCATTER_COLUMNS = ("instruction_id", "difficulty", "consensus", "category", "cluster")
MAP_COLUMNS = ("instruction_id", "x", "y", "cluster", "cluster_label", "consensus", "instruction")
HIST_BINS = np.arange(1.0, 5.0, 0.5)  # bin starts: [1, 1.5), ..., [4.5, 5]
SAMPLE_POINTS = 5000
MAP_TEXT_CHARS = 200
MAX_PAGE_SIZE = 1000
WHERE_TIMEOUT_S = 30.0


@dataclass
class ExploreResult:
    """Everything one filter change shows: the match count, one page of rows, the charts."""

    count: int
    page: pd.DataFrame
    charts: dict[str, pd.DataFrame] = field(default_factory=dict)


def _empty_page() -> pd.DataFrame:
    return pd.DataFrame({column: [] for column in PAGE_COLUMNS})


def _empty_charts() -> dict[str, pd.DataFrame]:
    return {
        "judge_histogram": pd.DataFrame({"judge": [], "bin_start": [], "bin_end": [], "count": []}),
        "difficulty_consensus": pd.DataFrame({column: [] for column in SCATTER_COLUMNS}),
        "semantic_map": pd.DataFrame({column: [] for column in MAP_COLUMNS}),
        "categories": pd.DataFrame({"category": [], "count": []}),
    }


def _histogram(per_judge: dict[str, np.ndarray]) -> pd.DataFrame:
    """Per judge (name order), every 0.5-wide bin from 1 to 5, empty bins as 0."""
    rows = [(judge, float(start), float(start) + 0.5, int(count))
            for judge in sorted(per_judge) for start, count in zip(HIST_BINS, per_judge[judge], strict=True)]
    if not rows:
        return _empty_charts()["judge_histogram"]
    return pd.DataFrame(rows, columns=["judge", "bin_start", "bin_end", "count"])


def _decode_codes(groups: list[tuple[Any, ...]], judges: list[tuple[str, int]]) -> dict[str, np.ndarray]:
    """(score_code, count) groups → per judge, counts per bin; a code's base-9 digit i is judge i's bin."""
    codes = np.array([code for code, _ in groups if code is not None], dtype=np.uint64)
    counts = np.array([count for code, count in groups if code is not None], dtype=np.int64)
    result = {}
    for judge, position in judges:
        digits = (codes // np.uint64(9**position)) % np.uint64(9) if len(codes) else codes
        scored = digits > 0
        result[judge] = np.bincount(digits[scored].astype(np.int64) - 1, weights=counts[scored],
                                    minlength=len(HIST_BINS)).astype(np.int64)
    return result


class ExploreQueries(StoreBase):
    # -- the materialised tables -----------------------------------------------------------------------
    def refresh_explore_rows(self) -> int:
        """Rebuild explore_rows, explore_scores and explore_judges from the current tables in one
        transaction; return the row count. Idempotent; readers see the old tables or the new, never half.
        Call after judging (consensus) and after profiling."""
        with self.write() as con:
            for table in EXPLORE_TABLES:
                con.execute(f"DROP TABLE IF EXISTS {table}")
            for statement in EXPLORE_SCHEMA:
                con.execute(statement)
            con.execute(_FINITE_MACRO)
            con.execute(_BEST_SCORES)
            judges = [judge for (judge,) in con.execute(
                "SELECT DISTINCT judge FROM explore_best_scores ORDER BY judge").fetchall()]
            coded = len(judges) <= MAX_CODE_JUDGES
            if judges:  # profiling may run before any judging
                con.executemany("INSERT INTO explore_judges VALUES (?, ?, ?)",
                                [(i, judge, 9**i if coded else None) for i, judge in enumerate(judges)])
            con.execute(_FILL_ROWS)
            con.execute(_FILL_SCORES)
            con.execute("DROP TABLE explore_best_scores")
            return con.execute("SELECT count(*) FROM explore_rows").fetchone()[0]

    @contextmanager
    def _explore_read(self, filters: ExploreFilters | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        """The sandboxed read connection (a filter may hold user SQL, which gets a time limit); DuckDB
        errors become one line."""
        timeout = WHERE_TIMEOUT_S if filters is not None and filters.where else None
        with readonly_connection(self.path, timeout_s=timeout) as con:
            try:
                yield con
            except duckdb.InterruptException as error:
                raise ForgetlessError(f"explore query cancelled: SQL WHERE ran over {timeout:g} s") from error
            except duckdb.Error as error:
                message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise ForgetlessError(f"explore query failed: {message}") from error

    @contextmanager
    def _matching(self, con: duckdb.DuckDBPyConnection, filters: ExploreFilters) -> Iterator[tuple[str, list[Any]]]:
        """The WHERE of one filter setting for several queries: a text search or the user's SQL is
        evaluated once into a temporary list of row ids, the cheap conditions are repeated."""
        clauses, params, heavy, heavy_params = filter_parts(filters)
        if not heavy:
            yield ("WHERE " + " AND ".join(clauses) if clauses else ""), params
            return
        con.execute(f"CREATE OR REPLACE TEMP TABLE explore_match AS SELECT row_id FROM explore_rows "
                    f"WHERE {' AND '.join(clauses + heavy)}", params + heavy_params)
        try:
            yield "WHERE row_id IN (SELECT row_id FROM temp.explore_match)", []
        finally:
            with suppress(duckdb.Error):  # after an interrupt the sandbox is discarded anyway
                con.execute("DROP TABLE IF EXISTS temp.explore_match")

    # -- the queries of one filter change ----------------------------------------------------------------
    @staticmethod
    def _count(con: duckdb.DuckDBPyConnection, where: str, params: list[Any]) -> int:
        return con.execute(f"SELECT count(*) FROM explore_rows {where}", params).fetchone()[0]

    @staticmethod
    def _page(con: duckdb.DuckDBPyConnection, where: str, params: list[Any], page: int, page_size: int,
              order_by: str | None) -> pd.DataFrame:
        """Sort the matching rows on the narrow columns first, then fetch the page's wide columns (texts)."""
        if page < 1 or not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ForgetlessError(f"page must be >= 1 and page_size between 1 and {MAX_PAGE_SIZE}")
        ids = [row_id for (row_id,) in con.execute(
            f"SELECT row_id FROM explore_rows {where} {order_sql(order_by)} LIMIT ? OFFSET ?",
            [*params, page_size, (page - 1) * page_size],
        ).fetchall()]
        if not ids:
            return _empty_page()
        rows = con.execute(
            f"SELECT row_id, {', '.join(PAGE_COLUMNS)} FROM explore_rows WHERE row_id IN (SELECT unnest(?::INTEGER[]))",
            [ids],
        ).df()
        rows = rows.set_index("row_id").loc[ids].reset_index(drop=True)
        return rows

    @staticmethod
    def _judges(con: duckdb.DuckDBPyConnection) -> list[tuple[str, int, int | None]] | None:
        """(judge, position, weight) of the explore tables, or None when they were never built."""
        try:
            return con.execute("SELECT judge, position, weight FROM explore_judges ORDER BY position").fetchall()
        except duckdb.CatalogException:
            return None

    @staticmethod
    def _summary(con: duckdb.DuckDBPyConnection, where: str, params: list[Any],
                 judges: list[tuple[str, int, int | None]]) -> tuple[int, pd.DataFrame, pd.DataFrame]:
        """count, category counts and the per-judge histogram from one grouped scan."""
        groups = con.execute(
            f"SELECT category, score_code, count(*) FROM explore_rows {where} GROUP BY ALL", params).fetchall()
        by_category: dict[str, int] = {}
        by_code: dict[Any, int] = {}
        for category, code, count in groups:
            name = "(unprofiled)" if category is None else category
            by_category[name] = by_category.get(name, 0) + count
            by_code[code] = by_code.get(code, 0) + count
        total = sum(by_category.values())
        categories = pd.DataFrame(sorted(by_category.items(), key=lambda item: (-item[1], item[0])),
                                  columns=["category", "count"])
        if judges and all(weight is not None for _, _, weight in judges):
            per_judge = _decode_codes(list(by_code.items()), [(judge, position) for judge, position, _ in judges])
        else:  # more judges than one code holds: count explore_scores instead
            rows = con.execute(
                f"""SELECT judge, greatest(0, least(7, floor((score - 1) * 2)))::INTEGER AS bin, count(*)
                    FROM explore_scores WHERE row_id IN (SELECT row_id FROM explore_rows {where})
                    GROUP BY ALL""", params).fetchall()
            per_judge = {judge: np.zeros(len(HIST_BINS), dtype=np.int64) for judge, _, _ in judges}
            for judge, index, count in rows:
                per_judge.setdefault(judge, np.zeros(len(HIST_BINS), dtype=np.int64))[index] += count
        return total, categories, _histogram(per_judge)

    @staticmethod
    def _points(con: duckdb.DuckDBPyConnection, where: str, params: list[Any]) -> dict[str, pd.DataFrame]:
        """The two scatter plots from one scan: the first SAMPLE_POINTS matches in storage (= hash) order
        that can be drawn in either plot, a stable sample (points stay put as filters narrow). Each plot
        gets the rows it can draw; after a full pipeline run that is all of them."""
        both = "AND" if where else "WHERE"
        frame = con.execute(
            f"""SELECT instruction_id, difficulty, consensus, category, cluster, cluster_label, x, y,
                       left(instruction, ?) AS instruction
                FROM explore_rows {where}
                {both} ((difficulty IS NOT NULL AND consensus IS NOT NULL) OR (x IS NOT NULL AND y IS NOT NULL))
                LIMIT ?""",
            [MAP_TEXT_CHARS, *params, SAMPLE_POINTS],
        ).df()
        scatter = frame.loc[frame["difficulty"].notna() & frame["consensus"].notna(), list(SCATTER_COLUMNS)]
        semantic = frame.loc[frame["x"].notna() & frame["y"].notna(), list(MAP_COLUMNS)]
        return {"difficulty_consensus": scatter.reset_index(drop=True), "semantic_map": semantic.reset_index(drop=True)}

    def explore(self, filters: ExploreFilters | None = None, page: int = 1, page_size: int = 50,
                order_by: str | None = "consensus DESC") -> ExploreResult:
        """Count, one page and the charts of one filter setting on one read connection: what a filter
        change in the app runs (see :meth:`explore_charts` for the charts)."""
        filters = filters or ExploreFilters()
        order_sql(order_by)  # refuse a bad order before opening anything
        with self._explore_read(filters) as con:
            judges = self._judges(con)
            if judges is None:
                return ExploreResult(0, _empty_page(), _empty_charts())
            with self._matching(con, filters) as (where, params):
                count, categories, histogram = self._summary(con, where, params, judges)
                rows = self._page(con, where, params, page, page_size, order_by)
                points = self._points(con, where, params)
        return ExploreResult(count, rows, {"judge_histogram": histogram, **points, "categories": categories})

    def explore_count(self, filters: ExploreFilters | None = None) -> int:
        filters = filters or ExploreFilters()
        where, params = filter_sql(filters)
        with self._explore_read(filters) as con:
            return self._count(con, where, params) if self._judges(con) is not None else 0

    def explore_page(self, filters: ExploreFilters | None = None, page: int = 1, page_size: int = 50,
                     order_by: str | None = "consensus DESC") -> pd.DataFrame:
        """One page of matching instructions with their best response; ``order_by`` is a column of
        ORDER_COLUMNS with optional ASC/DESC (NULLs last; ties in sample order)."""
        filters = filters or ExploreFilters()
        where, params = filter_sql(filters)
        order_sql(order_by)
        with self._explore_read(filters) as con:
            if self._judges(con) is None:
                return _empty_page()
            return self._page(con, where, params, page, page_size, order_by)

    def explore_charts(self, filters: ExploreFilters | None = None) -> dict[str, pd.DataFrame]:
        """``judge_histogram`` (judge, bin_start, bin_end, count: each judge's scores of the matching best
        responses in 0.5-wide bins from 1 to 5, the last bin closed), ``difficulty_consensus`` and
        ``semantic_map`` (at most 5,000 points each: a stable sample, the same points stay as filters
        narrow), ``categories`` (category, count; unprofiled rows as "(unprofiled)")."""
        filters = filters or ExploreFilters()
        with self._explore_read(filters) as con:
            judges = self._judges(con)
            if judges is None:
                return _empty_charts()
            with self._matching(con, filters) as (where, params):
                _, categories, histogram = self._summary(con, where, params, judges)
                points = self._points(con, where, params)
        return {"judge_histogram": histogram, **points, "categories": categories}

    def explore_ids(self, filters: ExploreFilters | None = None) -> list[str]:
        """The ids of every matching instruction, in instruction order (for mixing a saved selection)."""
        filters = filters or ExploreFilters()
        where, params = filter_sql(filters)
        with self._explore_read(filters) as con:
            if self._judges(con) is None:
                return []
            rows = con.execute(f"SELECT instruction_id FROM explore_rows {where} ORDER BY created_at, instruction_id",
                               params)
            return [value for (value,) in rows.fetchall()]

    # -- saved selections ------------------------------------------------------------------------------
    def explore_clusters(self) -> pd.DataFrame:
        """cluster, label, n of every profiled cluster (empty before profiling or before the first refresh)."""
        with self.read() as con:
            if not con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'explore_rows'").fetchone()[0]:
                return pd.DataFrame({"cluster": [], "label": [], "n": []})
            return con.execute(
                "SELECT cluster, any_value(cluster_label) AS label, count(*) AS n FROM explore_rows "
                "WHERE cluster IS NOT NULL GROUP BY cluster ORDER BY cluster").df()

    def save_selection(self, name: str, filters: ExploreFilters) -> None:
        """Save (or overwrite) a named filter setting."""
        name = (name or "").strip()
        if not name or len(name) > 200:
            raise ForgetlessError("a selection needs a name of 1 to 200 characters")
        with self.write() as con:
            con.execute("INSERT OR REPLACE INTO selections VALUES (?, ?, ?)", [name, filters.to_json(), now()])

    def load_selection(self, name: str) -> ExploreFilters:
        with self.read() as con:
            row = con.execute("SELECT filters_json FROM selections WHERE name = ?", [(name or "").strip()]).fetchone()
        if row is None:
            raise ForgetlessError(f"no saved selection named {name!r}")
        return ExploreFilters.from_json(row[0])

    def list_selections(self) -> pd.DataFrame:
        """name, filters_json, created_at (naive UTC) of every saved selection, by name."""
        with self.read() as con:
            return con.execute("SELECT name, filters_json, timezone('UTC', created_at) AS created_at FROM selections "
                               "ORDER BY name").df()

    def delete_selection(self, name: str) -> bool:
        with self.write() as con:
            found = con.execute("SELECT count(*) FROM selections WHERE name = ?", [name]).fetchone()[0]
            con.execute("DELETE FROM selections WHERE name = ?", [name])
        return bool(found)
