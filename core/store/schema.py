"""The store's tables and its migrations: an ordered list of functions, the schema version kept in the store.

``MIGRATIONS[n]`` takes a store from version n to version n + 1; a fresh store runs them all, an older one
the ones it lacks, in order, inside the transaction that opens it (all of them commit, or none). A change
of the tables (a new table, a new column, a new index) is a new function appended to ``MIGRATIONS``:
never edit one that a release has shipped, because stores written by that release already ran it. (A new
column also goes into the INSERTs that fill its table: they give values by position.)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

import duckdb

from core.errors import ForgetlessError

VERSION_TABLE = """CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"""

# -- version 1: reconstruction --
RECONSTRUCT_TABLES = [
    """CREATE TABLE IF NOT EXISTS jobs (
        job_id VARCHAR PRIMARY KEY, kind VARCHAR NOT NULL, config_yaml VARCHAR NOT NULL,
        created_at TIMESTAMPTZ NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS instructions (
        id VARCHAR PRIMARY KEY,              -- hash of the normalised text: the exact-dedup key
        text VARCHAR NOT NULL,
        n_chars INTEGER NOT NULL,
        n_tokens INTEGER NOT NULL,
        model VARCHAR NOT NULL,
        prefix VARCHAR NOT NULL,
        temperature DOUBLE NOT NULL,
        top_p DOUBLE NOT NULL,
        max_new_tokens INTEGER NOT NULL,
        seed BIGINT NOT NULL,                -- the seed of the batch that sampled it
        job_id VARCHAR NOT NULL,
        batch INTEGER NOT NULL,
        created_at TIMESTAMPTZ NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS reconstruct_batches (
        job_id VARCHAR NOT NULL, batch INTEGER NOT NULL, sampled INTEGER NOT NULL, stored INTEGER NOT NULL,
        dropped_json VARCHAR NOT NULL, new_tokens INTEGER NOT NULL, seconds DOUBLE NOT NULL,
        created_at TIMESTAMPTZ NOT NULL, PRIMARY KEY (job_id, batch))""",
]

# -- version 2: screening, profile and exploration --
SCREENING_AND_PROFILE_TABLES = [
    """CREATE TABLE IF NOT EXISTS responses (
        id VARCHAR PRIMARY KEY,              -- hash of (instruction, model, sample index)
        instruction_id VARCHAR NOT NULL,
        model VARCHAR NOT NULL,
        sample_index INTEGER NOT NULL,
        text VARCHAR NOT NULL,
        n_tokens INTEGER NOT NULL,
        stopped BOOLEAN NOT NULL,            -- ended at the end of turn (false: cut at max new tokens)
        prompt_format VARCHAR NOT NULL,      -- chat (the model's template) or plain (base models)
        temperature DOUBLE NOT NULL,
        top_p DOUBLE NOT NULL,
        max_new_tokens INTEGER NOT NULL,
        seed BIGINT NOT NULL,
        job_id VARCHAR NOT NULL,
        created_at TIMESTAMPTZ NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS scores (
        response_id VARCHAR NOT NULL,
        judge VARCHAR NOT NULL,
        method VARCHAR NOT NULL,             -- probs | generate
        score DOUBLE,                        -- NULL when a generated rating could not be parsed
        probs DOUBLE[],                      -- probs: renormalised P("1".."5")
        raw VARCHAR,                         -- generate: the judge's own words
        failed BOOLEAN NOT NULL,
        prompt_format VARCHAR NOT NULL,
        job_id VARCHAR NOT NULL,
        created_at TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (response_id, judge, method))""",
    """CREATE TABLE IF NOT EXISTS consensus (
        response_id VARCHAR PRIMARY KEY, instruction_id VARCHAR NOT NULL, method VARCHAR NOT NULL,
        mean DOUBLE, median DOUBLE, std DOUBLE, min DOUBLE, max DOUBLE, n_judges INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS best_responses (
        instruction_id VARCHAR PRIMARY KEY, response_id VARCHAR NOT NULL, mean DOUBLE, std DOUBLE,
        margin DOUBLE)                       -- best mean minus the runner-up's; NULL with one response""",
    """CREATE TABLE IF NOT EXISTS judge_agreement (
        judge_a VARCHAR NOT NULL, judge_b VARCHAR NOT NULL, method VARCHAR NOT NULL, n INTEGER NOT NULL,
        spearman DOUBLE, kendall DOUBLE)""",
    """CREATE TABLE IF NOT EXISTS instruction_profile (
        instruction_id VARCHAR PRIMARY KEY,
        difficulty DOUBLE,                   -- judge-rated 1-5: expected value over rating-token probabilities
        difficulty_probs DOUBLE[],
        ifd DOUBLE,                          -- loss(response | instruction) / loss(response), target model
        cluster INTEGER,                     -- k-means cluster of the embedding
        cluster_label VARCHAR,               -- the cluster's distinctive terms
        x DOUBLE, y DOUBLE,                  -- 2-D projection of the embedding (semantic map)
        dup_group INTEGER,                   -- near-duplicate group (NULL: none)
        is_representative BOOLEAN NOT NULL,  -- false for the group members that are not kept
        category VARCHAR,                    -- zero-shot task category
        category_probs DOUBLE[],             -- in core.profile.profiling.CATEGORIES order
        updated_at TIMESTAMPTZ NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS embeddings (
        instruction_id VARCHAR PRIMARY KEY, model VARCHAR NOT NULL, vector FLOAT[] NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS selections (
        name VARCHAR PRIMARY KEY, filters_json VARCHAR NOT NULL, created_at TIMESTAMPTZ NOT NULL)""",
]

# -- version 3: evaluation --
EVALUATION_TABLES = [
    """CREATE TABLE IF NOT EXISTS eval_items (
        job_id VARCHAR NOT NULL,             -- the evaluation (same model, base, limit, seed: same id, resumes)
        task VARCHAR NOT NULL,               -- arc_easy | piqa | hellaswag | sciq | medmcqa | drift
        item_id VARCHAR NOT NULL,
        gold INTEGER,                        -- index of the right option (NULL for drift)
        pred INTEGER,                        -- option with the highest log-likelihood (domain: letter probability)
        pred_norm INTEGER,                   -- ... per character of the option
        scores DOUBLE[],                     -- per option: summed log-likelihood (domain: letter probability)
        extra_json VARCHAR,                  -- task-specific numbers (drift: token count, KL and NLL sums)
        created_at TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (job_id, task, item_id))""",
    """CREATE TABLE IF NOT EXISTS eval_results (
        job_id VARCHAR NOT NULL,
        task VARCHAR NOT NULL,
        suite VARCHAR NOT NULL,              -- general | domain | drift
        model VARCHAR NOT NULL,              -- the MODEL spec or run folder evaluated
        run_dir VARCHAR,                     -- the training run folder (NULL for a plain model)
        base_model VARCHAR,                  -- the run's base, or --base (drift's reference)
        acc DOUBLE, acc_norm DOUBLE, stderr DOUBLE, n INTEGER NOT NULL,
        extra_json VARCHAR NOT NULL,         -- every other metric (drift: kl, ppl_base, ppl_tuned, ...)
        item_limit INTEGER,                  -- --limit (NULL: all items)
        seed BIGINT NOT NULL,
        created_at TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (job_id, task))""",
]


# -- version 4: which engine made each batch (transformers in-process, or a vLLM server at engine_url) --
ENGINE_PROVENANCE = [
    f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column}"
    for table in ("reconstruct_batches", "responses", "scores")
    for column in ("engine VARCHAR DEFAULT 'transformers'", "engine_url VARCHAR")
]


# -- version 5: judge checks (each judge against pairs whose better side is known; see core/screen/judge_check.py) --
JUDGE_CHECK_TABLES = [
    """CREATE TABLE IF NOT EXISTS judge_check_pairs (
        job_id VARCHAR NOT NULL,
        pair_id VARCHAR NOT NULL,            -- kind:reference_id
        kind VARCHAR NOT NULL,               -- off_topic | truncated | shuffled | own
        source VARCHAR NOT NULL,             -- alpacaeval | arenahard
        reference_id VARCHAR NOT NULL,
        instruction VARCHAR NOT NULL,
        good VARCHAR NOT NULL,               -- the reference answer
        worse VARCHAR NOT NULL,              -- the degraded answer (own: the answer model's)
        answer_model VARCHAR,                -- own: the model that wrote the worse side (NULL otherwise)
        created_at TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (job_id, pair_id))""",
    """CREATE TABLE IF NOT EXISTS judge_check_scores (
        job_id VARCHAR NOT NULL,
        judge VARCHAR NOT NULL,
        method VARCHAR NOT NULL,             -- probs | generate
        side_id VARCHAR NOT NULL,            -- hash of (instruction, answer): a side shared by pairs is scored once
        score DOUBLE,                        -- NULL when a generated rating could not be parsed
        probs DOUBLE[],
        raw VARCHAR,
        failed BOOLEAN NOT NULL,
        prompt_format VARCHAR NOT NULL,
        engine VARCHAR NOT NULL,
        engine_url VARCHAR,
        created_at TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (job_id, judge, method, side_id))""",
    """CREATE TABLE IF NOT EXISTS judge_checks (
        job_id VARCHAR NOT NULL,
        judge VARCHAR NOT NULL,              -- a judge model, or 'consensus' (the mean of the judges' scores)
        method VARCHAR NOT NULL,
        kind VARCHAR NOT NULL,               -- a pair kind, or 'all' (every degradation kind; own apart)
        pairs INTEGER NOT NULL,
        wins INTEGER NOT NULL,               -- good side scored higher
        ties INTEGER NOT NULL,               -- equal, or a side without a score: counts half
        accuracy DOUBLE,                     -- (wins + ties / 2) / pairs
        stderr DOUBLE,                       -- sqrt(accuracy (1 - accuracy) / pairs)
        created_at TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (job_id, judge, method, kind))""",
]


# -- version 6: how each instruction was steered (issue 15). Rows of earlier stores were sampled freely: 'plain'. --
STEERING_PROVENANCE = [
    f"ALTER TABLE instructions ADD COLUMN IF NOT EXISTS {column}"
    for column in (
        "steer_mode VARCHAR DEFAULT 'plain'",  # plain: free Magpie sampling | corpus: about a corpus row |
                                               # cell: aimed at a profile cell (issue 15 item 2)
        "steer_source VARCHAR",                # corpus: builtin:NAME or the corpus file's path; cell: the cell's key;
                                               # NULL when plain
        "steer_seed_ids VARCHAR[]",            # corpus: the seed rows' ids (sharegpt:<id>, alpacaeval:<n>, line:<n>,
                                               # record:<n>); cell: the example instructions' ids; NULL when plain
        "steer_prompt VARCHAR",                # the steering prompt template's id with its version
                                               # (corpus-request-v1, corpus-passage-v1-plain); NULL when plain
    )
]


# -- version 7: comparisons (each model's reply to one prompt, side by side; see core/eval/compare.py) --
COMPARE_TABLES = [
    """CREATE TABLE IF NOT EXISTS comparisons (
        id VARCHAR PRIMARY KEY,              -- hash of (job id, model): a rerun of the job adds no second reply
        job_id VARCHAR NOT NULL,             -- the compare job (same models, prompt and settings: same id, resumes)
        position INTEGER NOT NULL,           -- the model's place in the job's list (the base first)
        prompt VARCHAR NOT NULL,
        source VARCHAR NOT NULL,             -- typed | held-out (a general instruction the mix held out) | domain
        source_id VARCHAR,                   -- held-out: the instruction id; domain: the test row's id; NULL when typed
        model VARCHAR NOT NULL,              -- the MODEL spec or run folder that answered
        run_dir VARCHAR,                     -- the training run folder (NULL for a plain model)
        base_model VARCHAR,                  -- a run's base model (NULL for a plain model)
        reply VARCHAR NOT NULL,
        n_tokens INTEGER NOT NULL,
        stopped BOOLEAN NOT NULL,            -- ended at its end of turn (false: cut at max new tokens)
        sampling_json VARCHAR NOT NULL,      -- temperature, top_p, max_new_tokens, seed, prompt_format (chat | plain)
        seed BIGINT NOT NULL,
        seconds DOUBLE NOT NULL,             -- generating the reply (loading the model not counted)
        engine VARCHAR NOT NULL,
        engine_url VARCHAR,
        created_at TIMESTAMPTZ NOT NULL)""",
]


def _create(statements: Sequence[str]) -> Callable[[duckdb.DuckDBPyConnection], None]:
    """A migration that runs DDL statements (IF NOT EXISTS: stores written before versions were counted have some)."""
    def migration(con: duckdb.DuckDBPyConnection) -> None:
        for statement in statements:
            con.execute(statement)
    return migration


MIGRATIONS: list[Callable[[duckdb.DuckDBPyConnection], None]] = [
    _create(RECONSTRUCT_TABLES),  # -> 1
    _create(SCREENING_AND_PROFILE_TABLES),  # -> 2
    _create(EVALUATION_TABLES),  # -> 3
    _create(ENGINE_PROVENANCE),  # -> 4
    _create(JUDGE_CHECK_TABLES),  # -> 5
    _create(STEERING_PROVENANCE),  # -> 6
    _create(COMPARE_TABLES),  # -> 7
]
SCHEMA_VERSION = len(MIGRATIONS)


def stored_version(con: duckdb.DuckDBPyConnection) -> int:
    """The schema version a store records (0: a fresh file)."""
    con.execute(VERSION_TABLE)
    version = con.execute("SELECT max(version) FROM schema_version").fetchone()[0]
    return int(version or 0)


def migrate(con: duckdb.DuckDBPyConnection, path: Path) -> int:
    """Bring the store on ``con`` (inside the caller's transaction) to the latest version, one step at a
    time, recording each; return the version it was at. A store newer than this code is refused."""
    latest = len(MIGRATIONS)
    found = stored_version(con)
    if found > latest:
        raise ForgetlessError(f"{path} was written by a newer Forgetless (store schema {found}, this version "
                              f"reads up to {latest}): upgrade Forgetless to open it")
    for version, migration in enumerate(MIGRATIONS[found:], start=found + 1):
        migration(con)
        con.execute("DELETE FROM schema_version")
        con.execute("INSERT INTO schema_version VALUES (?)", [version])
    return found


# The denormalised tables behind the Explore tab, rebuilt (dropped and created) by refresh_explore_rows.
EXPLORE_SCHEMA = [
    """CREATE TABLE explore_judges (
        position INTEGER NOT NULL,           -- digit of score_code (judges in name order)
        judge VARCHAR NOT NULL,
        weight UBIGINT)                      -- 9 ** position; NULL beyond 20 judges (explore.MAX_CODE_JUDGES)""",
    """CREATE TABLE explore_rows (
        row_id INTEGER NOT NULL,             -- dense 0..n-1 in sample order (hash of the id) = storage order,
                                             -- so the first rows that match a filter are a stable random sample
        instruction_id VARCHAR NOT NULL USING COMPRESSION uncompressed,  -- random hex: compresses badly anyway
        instruction VARCHAR NOT NULL USING COMPRESSION uncompressed,  -- plot hover text: no decompression
        instruction_lc VARCHAR NOT NULL USING COMPRESSION uncompressed,  -- lower(instruction), for search
        n_tokens INTEGER NOT NULL,           -- of the instruction
        n_chars INTEGER NOT NULL,
        created_at TIMESTAMPTZ NOT NULL,
        n_responses INTEGER NOT NULL,
        response_id VARCHAR,                 -- the best response (NULL until judged)
        response VARCHAR,
        response_model VARCHAR,
        response_tokens INTEGER,
        consensus DOUBLE,                    -- the best response's consensus mean
        std DOUBLE,                          -- its judges' spread
        margin DOUBLE,                       -- best mean minus the runner-up's
        n_judges INTEGER,
        score_code UBIGINT,                  -- each judge's 0.5-wide score bin (1-8, 0: none) as base-9 digits
        difficulty DOUBLE,                   -- NULL until profiled
        ifd DOUBLE,
        cluster INTEGER,
        cluster_label VARCHAR,
        category VARCHAR,
        x DOUBLE,
        y DOUBLE,
        dup_group INTEGER,
        is_representative BOOLEAN NOT NULL,  -- true when unprofiled or not a dropped near-duplicate
        sample_key UBIGINT NOT NULL)         -- hash(instruction_id)""",
    """CREATE TABLE explore_scores (
        row_id INTEGER NOT NULL,             -- explore_rows.row_id
        judge VARCHAR NOT NULL,
        score DOUBLE NOT NULL)               -- the judge's score of the best response (its consensus method)""",
]


def table_names() -> frozenset[str]:
    """Every table a store holds, from the definitions above (what user SQL may read, checked without a store);
    a migration that creates a table adds its statement here too."""
    pattern = re.compile(r"CREATE\s+(?:OR\s+REPLACE\s+)?(?:TABLE|VIEW)\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)", re.I)
    statements = (VERSION_TABLE, *RECONSTRUCT_TABLES, *SCREENING_AND_PROFILE_TABLES, *EVALUATION_TABLES,
                  *JUDGE_CHECK_TABLES, *COMPARE_TABLES, *EXPLORE_SCHEMA)
    return frozenset(name.lower() for statement in statements for name in pattern.findall(statement))
