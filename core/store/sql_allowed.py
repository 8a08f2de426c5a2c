"""What user-typed SQL may contain: the allow-lists that :mod:`core.store.sql_safety` checks a query's syntax tree
(DuckDB's ``json_serialize_sql``) against. Anything not listed here is refused.

Only pure computations over the store's own tables are listed: operators, string, regexp, math, date/time,
list/struct/map and JSON-extraction functions, aggregates and window functions. Nothing that reads or
lists files (``read_*``, ``glob``, ``parquet_*`` ...), runs SQL given as data (``query``,
``json_execute_serialized_sql`` ...), reveals the session (``current_setting``, ``getenv``, ``duckdb_*``,
``pg_*`` ...), changes state (``nextval``, ``setseed``, ``write_log`` ...) or just waits (``sleep_ms``).

Names are DuckDB's, lower case, as the parser writes them: ordinary syntax appears as functions too
(``a + b`` is ``+``, ``a LIKE b`` is ``~~``, ``[1, 2]`` is ``list_value``, ``INTERVAL 2 DAY`` is
``to_days``), so those are listed with the operators. A name that is also a table function (``range``,
``unnest``) is only a scalar here; table functions have their own, much shorter list.
"""

from __future__ import annotations

from typing import Any, NoReturn

from core.errors import ForgetlessError

# -- functions ------------------------------------------------------------------------------------------
# What the parser emits for ordinary syntax: arithmetic, bit operations, string concatenation and
# matching (LIKE ~~, ILIKE ~~*, GLOB ~~~, SIMILAR TO / ~ regexp_full_match), ^@ (starts with),
# list/struct/map literals and comprehensions, ->> (JSON), intervals, EXTRACT, TRIM/SUBSTRING/POSITION/
# OVERLAY, AT TIME ZONE, x! (factorial), ARRAY(subquery) (array_agg), IF/NULLIF/GREATEST/LEAST.
SYNTAX = frozenset({
    "+", "-", "*", "/", "//", "%", "**", "^", "@", "!__postfix", "factorial",
    "&", "|", "~", "<<", ">>", "xor",
    "||", "^@", "@>", "<@", "&&", "->>", "<->", "<=>",
    "~~", "!~~", "~~*", "!~~*", "~~~", "!~~~",
    "like_escape", "not_like_escape", "ilike_escape", "not_ilike_escape", "regexp_full_match",
    "list_value", "struct_pack", "row", "map", "list_apply", "list_filter",
    "to_years", "to_quarters", "to_months", "to_weeks", "to_days", "to_hours", "to_minutes", "to_seconds",
    "to_milliseconds", "to_microseconds", "to_decades", "to_centuries", "to_millennia", "trunc",
    "date_part", "timezone", "trim", "ltrim", "rtrim", "substring", "position", "overlay",
    "if", "nullif", "greatest", "least",
})

STRING = frozenset({
    "length", "len", "char_length", "character_length", "strlen", "octet_length", "bit_length",
    "length_grapheme", "lower", "lcase", "upper", "ucase", "concat", "concat_ws", "substr",
    "substring_grapheme", "left", "right", "left_grapheme", "right_grapheme", "lpad", "rpad", "replace",
    "reverse", "repeat", "translate", "strip_accents", "nfc_normalize", "split_part", "string_split",
    "str_split", "string_to_array", "split", "array_to_string", "starts_with", "prefix", "suffix",
    "ends_with", "contains", "instr", "strpos", "ascii", "chr", "unicode", "ord", "format", "printf",
    "bar", "format_bytes", "levenshtein", "editdist3", "damerau_levenshtein", "hamming", "mismatches",
    "jaccard", "jaro_similarity", "jaro_winkler_similarity",
    "md5", "md5_number", "sha1", "sha256", "hash", "base64", "to_base64", "from_base64", "hex", "to_hex",
    "unhex", "from_hex", "bin", "to_binary", "from_binary", "to_base", "url_encode", "url_decode", "encode",
    "decode",
})

REGEXP = frozenset({
    "regexp_matches", "regexp_extract", "regexp_extract_all", "regexp_replace", "regexp_escape",
    "regexp_split_to_array", "string_split_regex", "str_split_regex",
})

MATH = frozenset({
    "abs", "sign", "signbit", "ceil", "ceiling", "floor", "round", "round_even", "roundbankers", "even",
    "sqrt", "cbrt", "exp", "ln", "log", "log10", "log2", "pow", "power", "pi", "degrees", "radians",
    "sin", "cos", "tan", "cot", "asin", "acos", "atan", "atan2", "sinh", "cosh", "tanh", "asinh", "acosh",
    "atanh", "gamma", "lgamma", "gcd", "lcm", "greatest_common_divisor", "least_common_multiple", "isnan",
    "isinf", "isfinite", "nextafter", "mod", "fdiv", "fmod", "divide", "add", "subtract", "multiply",
    "bit_count", "random",
})

DATE_TIME = frozenset({
    "now", "today", "get_current_timestamp", "get_current_time", "current_localtimestamp",
    "current_localtime", "transaction_timestamp", "datepart", "date_trunc", "datetrunc", "date_diff",
    "datediff", "date_sub", "datesub", "date_add", "age", "strftime", "strptime", "try_strptime",
    "to_timestamp", "epoch", "epoch_ms", "epoch_us", "epoch_ns", "make_date", "make_time", "make_timestamp",
    "make_timestamptz", "make_timestamp_ms", "make_timestamp_ns", "last_day", "days_in_month", "dayname",
    "monthname", "year", "quarter", "month", "week", "weekofyear", "yearweek", "day", "dayofmonth",
    "dayofweek", "dayofyear", "weekday", "isodow", "isoyear", "hour", "minute", "second", "millisecond",
    "microsecond", "nanosecond", "decade", "century", "millennium", "era", "julian", "timezone_hour",
    "timezone_minute", "time_bucket", "normalized_interval",
})

LIST = frozenset({
    "list_pack", "array_value", "list_extract", "list_element", "array_extract", "list_slice", "array_slice",
    "list_concat", "list_cat", "array_concat", "array_cat", "list_append", "array_append", "array_push_back",
    "list_prepend", "array_prepend", "array_push_front", "array_pop_back", "array_pop_front",
    "list_contains", "list_has", "array_contains", "array_has", "list_has_any", "array_has_any",
    "list_has_all", "array_has_all", "list_position", "list_indexof", "array_position", "array_indexof",
    "list_distinct", "array_distinct", "list_unique", "array_unique", "list_sort", "array_sort",
    "list_reverse_sort", "array_reverse_sort", "list_reverse", "array_reverse", "list_grade_up",
    "array_grade_up", "grade_up", "list_transform", "array_transform", "array_apply", "apply",
    "array_filter", "filter", "list_reduce", "array_reduce", "reduce", "list_aggregate", "list_aggr",
    "array_aggregate", "array_aggr", "aggregate", "list_zip", "array_zip", "list_select", "array_select",
    "list_where", "array_where", "list_intersect", "array_intersect", "list_resize", "array_resize",
    "flatten", "array_length", "cardinality", "range", "generate_series", "unnest",
    "list_sum", "list_avg", "list_min", "list_max", "list_count", "list_median", "list_mode", "list_first",
    "list_last", "list_any_value", "list_product", "list_stddev_samp", "list_stddev_pop", "list_var_samp",
    "list_var_pop", "list_string_agg", "list_bool_and", "list_bool_or", "list_histogram", "list_entropy",
    "list_approx_count_distinct", "list_kurtosis", "list_skewness", "list_sem", "list_mad",
    "list_dot_product", "list_inner_product", "list_cosine_similarity", "list_cosine_distance",
    "list_distance", "array_dot_product", "array_inner_product", "array_cosine_similarity",
    "array_cosine_distance", "array_distance", "array_cross_product",
})

STRUCT_MAP = frozenset({
    "struct_extract", "struct_extract_at", "struct_insert", "struct_concat", "map_extract",
    "map_extract_value", "element_at", "map_keys", "map_values", "map_entries", "map_from_entries",
    "map_concat", "map_contains", "map_contains_value", "map_contains_entry",
})

JSON = frozenset({
    "json", "json_extract", "json_extract_string", "json_extract_path", "json_extract_path_text",
    "json_value", "json_exists", "json_keys", "json_array_length", "json_type", "json_valid",
    "json_contains", "json_structure", "json_array", "json_object", "json_merge_patch", "json_quote",
    "to_json", "array_to_json", "row_to_json", "from_json", "from_json_strict", "json_transform",
    "json_transform_strict", "json_pretty",
})

OTHER_SCALAR = frozenset({"typeof", "uuid", "gen_random_uuid", "uuidv4", "uuidv7"})

AGGREGATE = frozenset({
    "count", "count_star", "count_if", "countif", "sum", "fsum", "sumkahan", "kahan_sum", "product", "avg",
    "mean", "favg", "min", "max", "median", "mode", "quantile", "quantile_cont", "quantile_disc",
    "approx_quantile", "reservoir_quantile", "approx_count_distinct", "approx_top_k", "histogram",
    "histogram_exact", "stddev", "stddev_pop", "stddev_samp", "variance", "var_pop", "var_samp", "sem",
    "mad", "skewness", "kurtosis", "kurtosis_pop", "entropy", "corr", "covar_pop", "covar_samp",
    "regr_avgx", "regr_avgy", "regr_count", "regr_intercept", "regr_r2", "regr_slope", "regr_sxx",
    "regr_sxy", "regr_syy", "geomean", "geometric_mean", "weighted_avg", "wavg", "string_agg",
    "group_concat", "listagg", "list", "array_agg", "first", "last", "any_value", "arbitrary", "arg_max",
    "arg_min", "argmax", "argmin", "max_by", "min_by", "arg_max_null", "arg_min_null", "bool_and",
    "bool_or", "bit_and", "bit_or", "bit_xor", "json_group_array", "json_group_object",
})

WINDOW = frozenset({
    "row_number", "rank", "dense_rank", "rank_dense", "percent_rank", "cume_dist", "ntile", "lag", "lead",
    "first_value", "last_value", "nth_value", "fill",
})

FUNCTIONS = SYNTAX | STRING | REGEXP | MATH | DATE_TIME | LIST | STRUCT_MAP | JSON | OTHER_SCALAR | AGGREGATE
WINDOW_FUNCTIONS = WINDOW | AGGREGATE  # an aggregate may run OVER a window
# The only table functions: generators that compute rows from their arguments and touch nothing else.
TABLE_FUNCTIONS = frozenset({"range", "generate_series", "unnest"})

# -- node kinds of the syntax tree ------------------------------------------------------------------------
# Expressions ("class"). Left out: PARAMETER (nothing is bound), DEFAULT, and anything new.
EXPRESSION_CLASSES = frozenset({
    "BETWEEN", "CASE", "CAST", "COLLATE", "COLUMN_REF", "COMPARISON", "CONJUNCTION", "CONSTANT", "FUNCTION",
    "LAMBDA", "OPERATOR", "POSITIONAL_REFERENCE", "STAR", "SUBQUERY", "TYPE", "WINDOW",
})
# OPERATOR expressions ("type"): NOT, IS [NOT] NULL, [NOT] IN, COALESCE/IFNULL, [] and [a:b], struct.field,
# ARRAY[...], GROUPING(), TRY(...), *COLUMNS(...).
OPERATOR_TYPES = frozenset({
    "OPERATOR_NOT", "OPERATOR_IS_NULL", "OPERATOR_IS_NOT_NULL", "COMPARE_IN", "COMPARE_NOT_IN",
    "OPERATOR_COALESCE", "ARRAY_EXTRACT", "ARRAY_SLICE", "STRUCT_EXTRACT", "ARRAY_CONSTRUCTOR",
    "GROUPING_FUNCTION", "OPERATOR_TRY", "OPERATOR_UNPACK",
})
QUERY_NODES = frozenset({"SELECT_NODE", "SET_OPERATION_NODE", "RECURSIVE_CTE_NODE"})
# FROM items. TABLE_FUNCTION and SHOW_REF are further restricted by the check below.
TABLE_REFS = frozenset({"BASE_TABLE", "JOIN", "SUBQUERY", "EXPRESSION_LIST", "EMPTY", "PIVOT", "TABLE_FUNCTION",
                        "SHOW_REF"})
# Other typed parts of a query: ORDER BY / LIMIT / DISTINCT and the direction of each sort key.
MODIFIER_TYPES = frozenset({"ORDER_MODIFIER", "LIMIT_MODIFIER", "LIMIT_PERCENT_MODIFIER", "DISTINCT_MODIFIER",
                            "ORDER_DEFAULT", "ASCENDING", "DESCENDING"})


# -- the check -------------------------------------------------------------------------------------------
TableName = tuple[str, str, str]  # (catalog, schema, table) as written in a FROM


def refuse(what: str) -> NoReturn:
    raise ForgetlessError(f"SQL refused: {what} is not allowed (user SQL may call only built-in computations "
                          f"over the store's tables)")


def check_tree(tree: dict[str, Any]) -> list[TableName]:
    """Refuse (one-line :class:`ForgetlessError`) every node of a ``json_serialize_sql`` tree that the lists
    above do not allow; return the tables it reads, CTE references left out (their names are checked
    against the store by the caller)."""
    check = _TreeCheck()
    try:
        for statement in tree.get("statements") or []:
            check.node(statement.get("node"), frozenset())
    except RecursionError:
        raise ForgetlessError("SQL refused: nested too deeply") from None
    return check.tables


class _TreeCheck:
    """Walks a serialized SELECT and refuses every node that the allow-lists do not name; collects the
    tables it reads (CTE references resolved by scope).

    Nodes are told apart by shape: expressions carry ``class``, query nodes ``cte_map``, FROM items
    ``alias`` and ``sample``; any other part with a ``type`` must be an ORDER BY/LIMIT/DISTINCT modifier."""

    def __init__(self) -> None:
        self.tables: list[TableName] = []

    def node(self, item: Any, scope: frozenset[str]) -> None:
        if isinstance(item, list):
            for child in item:
                self.node(child, scope)
        elif isinstance(item, dict):
            if "class" in item:
                self.expression(item, scope)
            elif "cte_map" in item:
                self.query(item, scope)
            elif "sample" in item and "alias" in item:
                self.table_ref(item, scope)
            else:
                kind = item.get("type")
                if isinstance(kind, str) and kind not in MODIFIER_TYPES:
                    refuse(f"{kind}")
                self.children(item, scope)

    def children(self, item: dict[str, Any], scope: frozenset[str], skip: tuple[str, ...] = ()) -> None:
        for key, value in item.items():
            if key not in skip and isinstance(value, (dict, list)):
                self.node(value, scope)

    def query(self, item: dict[str, Any], scope: frozenset[str]) -> None:
        kind = item.get("type")
        if kind not in QUERY_NODES:
            refuse(f"query kind {kind}")
        visible = set(scope)
        for entry in (item.get("cte_map") or {}).get("map") or []:  # a CTE sees the CTEs defined before it
            self.node(entry.get("value"), frozenset(visible))
            visible.add(str(entry.get("key", "")).lower())
        inner = frozenset(visible)
        if kind == "RECURSIVE_CTE_NODE":  # only its recursive part reads the CTE itself
            self.node(item.get("left"), inner)
            self.node(item.get("right"), inner | {str(item.get("cte_name", "")).lower()})
            self.children(item, inner, skip=("cte_map", "left", "right"))
        else:
            self.children(item, inner, skip=("cte_map",))

    def expression(self, item: dict[str, Any], scope: frozenset[str]) -> None:
        kind = item.get("class")
        if kind not in EXPRESSION_CLASSES:
            refuse(f"expression kind {kind}")
        if kind == "FUNCTION":
            self.function(item, FUNCTIONS, "function")
        elif kind == "WINDOW":
            self.function(item, WINDOW_FUNCTIONS, "window function")
        elif kind == "OPERATOR" and item.get("type") not in OPERATOR_TYPES:
            refuse(f"operator {item.get('type')}")
        elif kind == "TYPE" and (item.get("catalog") or item.get("schema")):
            refuse(f"type {'.'.join(item.get('qualified_name', {}).get('path') or [])}")
        self.children(item, scope)

    @staticmethod
    def function(item: dict[str, Any], names: frozenset[str], what: str) -> None:
        name = str(item.get("function_name", ""))
        if item.get("catalog") or item.get("schema"):
            refuse(f"{what} {'.'.join(filter(None, (item.get('catalog'), item.get('schema'), name)))}()")
        if name.lower() not in names:
            refuse(f"{what} {name}()")
        if item.get("export_state"):
            refuse("EXPORT_STATE")

    def table_ref(self, item: dict[str, Any], scope: frozenset[str]) -> None:
        kind = item.get("type")
        if kind not in TABLE_REFS:
            refuse(f"FROM item {kind}")
        skip: tuple[str, ...] = ()
        if kind == "BASE_TABLE":
            if item.get("at_clause") is not None:
                refuse("AT (...)")
            self.table(item, scope)
        elif kind == "TABLE_FUNCTION":
            function = item.get("function") or {}
            if function.get("class") != "FUNCTION":
                refuse("this table function")
            self.function(function, TABLE_FUNCTIONS, "table function")
            self.children(function, scope)  # its arguments
            skip = ("function",)
        elif kind == "SHOW_REF":
            show, name = item.get("show_type"), item.get("table_name")
            if show == "SHOW" and name:  # SHOW t: the columns of table t
                self.table(item, scope)
            elif not ((show == "SHOW_SPECIAL" and name == '"tables"')  # SHOW TABLES: the store's own
                      or (show in ("DESCRIBE", "SUMMARY") and not name and item.get("query"))):
                refuse("this SHOW/DESCRIBE")
        self.children(item, scope, skip)

    def table(self, item: dict[str, Any], scope: frozenset[str]) -> None:
        catalog, schema = str(item.get("catalog_name") or ""), str(item.get("schema_name") or "")
        name = str(item.get("table_name") or "")
        if not catalog and not schema and name.lower() in scope:
            return  # a CTE
        self.tables.append((catalog, schema, name))

