"""Corpus-seeded reconstruction (issue 15 item 3): the model writes, through its own chat template, one request
about each seed row of a corpus; every stored row records its corpus, seed row id and prompt id; a bad corpus
is one error line before any job folder or row exists; free Magpie sampling stays the default."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from core.engines.in_process import InProcessEngine
from core.engines.models import load_model
from core.errors import ForgetlessError
from core.reconstruct.corpus import PASSAGE, REQUEST, first_user_turn, load_corpus
from core.reconstruct.reconstruction import ReconstructConfig, run_reconstruction
from core.reconstruct.seeded import (
    PLAIN_LEAD,
    CorpusSeeds,
    copies_seed,
    prompt_id,
    render_seed_prompt,
    seed_messages,
    seed_request,
    unwrap_request,
)
from core.store import InstructionRow, Store, schema, text_key
from tests.helpers import assert_one_line_error, build_tiny_tokenizer, forgetless

SEEDS = [
    "How do I bake sourdough bread at home?",
    "Explain how tides work to a child.",
    "Plan a three day trip to Lisbon on a budget.",
    "Write a python function that reverses a list.",
    "What are good tips to learn history faster?",
    "Give me a simple recipe for lentil soup.",
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def serving(lm):
    return lambda spec: InProcessEngine(lm)


def seeded_config(model: Path, corpus: Path, **overrides) -> ReconstructConfig:
    values = {"model": str(model), "n": 10, "batch_size": 8, "max_new_tokens": 24, "seed": 2, "min_chars": 6,
              "from_corpus": str(corpus)}
    return ReconstructConfig(**{**values, **overrides})


# -- the prompt builder and the output parser: pure ---------------------------------------------------------
def test_the_prompt_holds_the_seed_text_and_asks_for_one_request_only():
    for kind in (REQUEST, PASSAGE):
        asked = seed_request("  Plan a trip to {Lisbon}  ", kind)
        assert "Plan a trip to {Lisbon}" in asked  # braces in a seed stay as written
        assert "only" in asked and "own words" in asked
        assert seed_request("  Plan a trip to {Lisbon}  ", kind) == asked  # the same seed, the same prompt
        assert seed_messages("Plan a trip", kind) == [{"role": "user", "content": seed_request("Plan a trip", kind)}]
    assert seed_request("x", REQUEST) != seed_request("x", PASSAGE)
    assert prompt_id(REQUEST, chat=True) == "corpus-request-v1"
    assert prompt_id(PASSAGE, chat=False) == "corpus-passage-v1-plain"


def test_the_prompt_goes_through_the_models_chat_template_or_a_plain_one():
    chat = build_tiny_tokenizer()
    rendered = render_seed_prompt(chat, "Explain the tides", REQUEST)
    assert rendered.startswith("<|im_start|>system\nYou are a tiny test assistant<|im_end|>\n<|im_start|>user\n")
    assert "Explain the tides" in rendered and rendered.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert render_seed_prompt(chat, "Explain the tides", REQUEST) == rendered
    bare = build_tiny_tokenizer(chat_template=None)
    plain = render_seed_prompt(bare, "Explain the tides", PASSAGE)
    assert plain == seed_request("Explain the tides", PASSAGE) + PLAIN_LEAD and "<|im_start|>" not in plain


@pytest.mark.parametrize(("raw", "expected"), [
    ("How do tides work?", "How do tides work?"),
    ('"How do tides work?"', "How do tides work?"),
    ("\u201cHow do tides work?\u201d", "How do tides work?"),
    ("Sure! Here is a new message:\nHow do tides work?", "How do tides work?"),
    ("A user might send:\nHow do tides work?", "How do tides work?"),
    ("Translate this into French:\nHow do tides work?", "Translate this into French:\nHow do tides work?"),
    ("New message: How do tides work?", "How do tides work?"),
    ("**Request:** How do tides work?", "How do tides work?"),
    ("<message>\nHow do tides work?\n</message>", "How do tides work?"),
    ('"Tides" and "waves": how do they differ?', '"Tides" and "waves": how do they differ?'),
    ("", ""),
])
def test_unwrap_request_takes_off_what_models_wrap_a_request_in(raw, expected):
    assert unwrap_request(raw) == expected


def test_a_request_that_repeats_the_seed_is_a_copy():
    seed = "Write a python function that reverses a list, and explain it."
    assert copies_seed("write a Python function that reverses a list, and explain it", seed)
    assert copies_seed("Write a python function that reverses a list", seed)  # a run of the seed's own words
    assert not copies_seed("Reverse a list", seed)  # too short to call a copy
    assert not copies_seed("How can I flip the order of a Python list?", seed)
    assert not copies_seed("", seed)


# -- corpora ------------------------------------------------------------------------------------------------
def test_file_corpora_take_the_first_text_column_and_number_their_rows(tmp_path: Path):
    texts = write_jsonl(tmp_path / "t.jsonl", [{"text": "A passage about tides.", "instruction": "ignored"},
                                               {"text": "  "}, {"text": "A passage about tides."},
                                               {"text": "one two three four five six"}])
    corpus = load_corpus(str(texts), max_words=4)
    assert corpus.kind == PASSAGE and corpus.name == str(texts.resolve())
    assert [(row.row_id, row.text) for row in corpus.rows] == [("line:1", "A passage about tides."),
                                                               ("line:4", "one two three four")]
    assert corpus.skipped == 2  # the blank one and the repeat

    alpaca = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Summarise this", "input": "The sea rose.",
                                                 "output": "x"}])
    assert load_corpus(str(alpaca), 50).rows[0].text == "Summarise this\n\nThe sea rose."
    chats = write_jsonl(tmp_path / "c.jsonl", [
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "Hi, plan my week"},
                      {"role": "assistant", "content": "ok"}]},
        {"conversations": [{"from": "gpt", "value": "mid-dialogue"}, {"from": "human", "value": "continue"}]}])
    chat_corpus = load_corpus(str(chats), 50)
    assert chat_corpus.kind == REQUEST and [row.text for row in chat_corpus.rows] == ["Hi, plan my week"]
    assert first_user_turn('[{"from": "human", "value": "from a CSV cell"}]') == "from a CSV cell"

    pd.DataFrame({"prompt": SEEDS[:3], "other": [1, 2, 3]}).to_parquet(tmp_path / "p.parquet")
    parquet = load_corpus(str(tmp_path / "p.parquet"), 50)
    assert [row.row_id for row in parquet.rows] == ["record:1", "record:2", "record:3"]
    pd.DataFrame({"instruction": SEEDS[:2]}).to_csv(tmp_path / "s.csv", index=False)
    assert [row.text for row in load_corpus(str(tmp_path / "s.csv"), 50).rows] == SEEDS[:2]
    (tmp_path / "d.json").write_text(json.dumps({"data": [{"text": "From a JSON document."}]}))
    assert load_corpus(str(tmp_path / "d.json"), 50).rows[0].row_id == "record:1"


def test_text_files_give_paragraphs_or_lines(tmp_path: Path):
    (tmp_path / "p.txt").write_text("\n\nFirst paragraph,\nstill the first.\n\n\nSecond one.\n", encoding="utf-8")
    paragraphs = load_corpus(str(tmp_path / "p.txt"), 50)
    assert paragraphs.column == "paragraphs" and paragraphs.kind == PASSAGE
    assert [(r.row_id, r.text) for r in paragraphs.rows] == [("line:3", "First paragraph,\nstill the first."),
                                                             ("line:7", "Second one.")]
    (tmp_path / "l.txt").write_text("\n".join(SEEDS[:3]) + "\n", encoding="utf-8")
    lines = load_corpus(str(tmp_path / "l.txt"), 50)
    assert lines.column == "lines" and [r.row_id for r in lines.rows] == ["line:1", "line:2", "line:3"]


def test_the_packaged_corpora_load():
    alpaca = load_corpus("builtin:alpacaeval", 200)
    assert alpaca.kind == REQUEST and len(alpaca.rows) >= 800
    assert alpaca.rows[0].row_id == "alpacaeval:0" and "Broadway" in alpaca.rows[0].text
    sharegpt = load_corpus("builtin:sharegpt", 200)
    assert len(sharegpt.rows) > 10_000 and all(row.row_id.startswith("sharegpt:") for row in sharegpt.rows)
    assert max(len(row.text.split()) for row in sharegpt.rows) == 200  # cut to the word limit
    assert sharegpt.describe()["sha256"] == load_corpus("builtin:sharegpt", 200).describe()["sha256"]


def test_each_batch_gets_the_same_seed_rows_from_a_seeded_order(tmp_path: Path):
    corpus = load_corpus(str(write_jsonl(tmp_path / "s.jsonl", [{"instruction": s} for s in SEEDS])), 50)
    tokenizer = build_tiny_tokenizer()
    seeds = CorpusSeeds(corpus, tokenizer, seed=3)
    first_pass = seeds.rows(0, 3) + seeds.rows(1, 3)
    assert first_pass == seeds.rows(0, 6)
    assert sorted(row.row_id for row in first_pass) == sorted(row.row_id for row in corpus.rows)  # all, once
    assert seeds.rows(2, 3) == first_pass[:3]  # then the order begins again
    assert seeds.rows(1, 4) == CorpusSeeds(corpus, tokenizer, seed=3).rows(1, 4)  # a rerun asks about the same
    assert [r.row_id for r in seeds.rows(0, 6)] != [r.row_id for r in CorpusSeeds(corpus, tokenizer, seed=4).rows(0, 6)]
    limited = CorpusSeeds(corpus, tokenizer, seed=3, limit=2)
    assert len({row.row_id for row in limited.rows(0, 6)}) == 2 and limited.describe()["rows_used"] == 2
    assert limited.describe()["prompt_id"] == "corpus-request-v1" and limited.describe()["rows"] == 6


# -- the config ---------------------------------------------------------------------------------------------
def test_config_checks_and_job_ids():
    assert ReconstructConfig(n=5).from_corpus is None  # free Magpie sampling stays the default
    # Free sampling keeps the job ids it had before the corpus settings existed, so old jobs still resume.
    assert ReconstructConfig(n=5).resolved_job_id() == "reconstruct-635ec13fa0"
    assert ReconstructConfig(n=5, corpus_rows=9).resolved_job_id() == "reconstruct-635ec13fa0"
    seeded = ReconstructConfig(n=5, from_corpus="builtin:alpacaeval")
    assert seeded.resolved_job_id() != ReconstructConfig(n=5, from_corpus="builtin:sharegpt").resolved_job_id()
    assert seeded.resolved_job_id() != ReconstructConfig(n=5, from_corpus="builtin:alpacaeval",
                                                         corpus_rows=9).resolved_job_id()
    assert ReconstructConfig(n=5, from_corpus="  ").from_corpus is None
    with pytest.raises(ForgetlessError, match="unknown corpus 'builtin:nope'"):
        ReconstructConfig(from_corpus="builtin:nope")
    with pytest.raises(ForgetlessError, match="drop --prefix or --from-corpus"):
        ReconstructConfig(from_corpus="builtin:sharegpt", prefix="USER:")
    with pytest.raises(ForgetlessError, match="corpus rows"):
        ReconstructConfig(corpus_rows=-1)
    with pytest.raises(ForgetlessError, match="passage max words"):
        ReconstructConfig(passage_max_words=0)


# -- runs with the tiny model ---------------------------------------------------------------------------------
def steering_of(store: Store, job_id: str) -> list[dict]:
    return store.instruction_steering(job_id=job_id)


def test_a_seeded_run_stores_exactly_n_each_row_with_its_seed(tiny_model_dir: Path, tmp_path: Path):
    corpus_file = write_jsonl(tmp_path / "seeds.jsonl", [{"instruction": s, "id": i} for i, s in enumerate(SEEDS)])
    lm = load_model(str(tiny_model_dir), tmp_path)
    store = Store.for_workspace(tmp_path)
    config = seeded_config(tiny_model_dir, corpus_file)
    summary = run_reconstruction(config, store, serving(lm))
    assert summary["stored"] == 10 and summary["mode"] == "corpus" and summary["prefix"] is None
    assert summary["corpus"]["name"] == str(corpus_file.resolve()) and summary["corpus"]["rows"] == 6
    assert summary["corpus"]["prompt_id"] == "corpus-request-v1" and "{seed}" in summary["corpus"]["prompt"]
    rows = steering_of(store, config.resolved_job_id())
    assert len(rows) == 10 and len({text_key(row["text"]) for row in rows}) == 10
    texts_by_id = {f"line:{i + 1}": s for i, s in enumerate(SEEDS)}
    for row in rows:
        assert row["steer_mode"] == "corpus" and row["steer_source"] == str(corpus_file.resolve())
        assert row["steer_prompt"] == "corpus-request-v1"
        [seed_id] = row["steer_seed_ids"]
        assert seed_id in texts_by_id
        # the stored prompt is what the model continued: the seed through the chat template
        assert row["prefix"] == render_seed_prompt(lm.tokenizer, texts_by_id[seed_id], REQUEST)
    with store.read() as con:
        assert con.execute("SELECT count(*) FROM reconstruct_batches WHERE job_id = ?",
                           [config.resolved_job_id()]).fetchone()[0] == summary["batches"]


def test_a_cancelled_seeded_run_resumes_to_exactly_n_without_duplicates(tiny_model_dir: Path, tmp_path: Path):
    corpus_file = write_jsonl(tmp_path / "seeds.jsonl", [{"text": s} for s in SEEDS])
    lm = load_model(str(tiny_model_dir), tmp_path)
    config = seeded_config(tiny_model_dir, corpus_file, n=12, batch_size=4)
    straight = Store.for_workspace(tmp_path / "straight")
    run_reconstruction(config, straight, serving(lm))

    resumed = Store.for_workspace(tmp_path / "resumed")
    committed = []  # cancel once a batch has stored rows (progress reports each committed batch)
    first = run_reconstruction(config, resumed, serving(lm), should_stop=lambda: bool(committed),
                               on_progress=lambda values: committed.append(1) if values.get("stored") else None)
    assert first["cancelled"] and 0 < first["stored"] < 12
    second = run_reconstruction(config, resumed, serving(lm))
    assert second["stored"] == 12 and second["new"] == 12 - first["stored"] and not second["cancelled"]
    rows = steering_of(resumed, config.resolved_job_id())
    assert len(rows) == 12 and len({text_key(row["text"]) for row in rows}) == 12
    assert all(row["steer_mode"] == "corpus" and row["steer_prompt"] == "corpus-passage-v1" for row in rows)
    # batch by batch the same seed rows and samples: the resumed job holds what the uninterrupted one does
    key = ("text", "batch", "steer_seed_ids")
    assert sorted(tuple(map(str, (r[k] for k in key))) for r in rows) == sorted(
        tuple(map(str, (r[k] for k in key))) for r in steering_of(straight, config.resolved_job_id()))


def test_free_sampling_rows_are_plain(tiny_model_dir: Path, tmp_path: Path):
    lm = load_model(str(tiny_model_dir), tmp_path)
    store = Store.for_workspace(tmp_path)
    config = ReconstructConfig(model=str(tiny_model_dir), n=3, batch_size=16, max_new_tokens=24, seed=1, min_chars=6)
    summary = run_reconstruction(config, store, serving(lm))
    assert summary["mode"] == "plain" and "corpus" not in summary
    rows = steering_of(store, config.resolved_job_id())
    assert len(rows) == 3
    assert all((r["steer_mode"], r["steer_source"], r["steer_seed_ids"], r["steer_prompt"]) == ("plain", None, None,
                                                                                                  None) for r in rows)
    assert {r["prefix"] for r in rows} == {summary["prefix"]}


def test_rows_of_an_older_store_become_plain(tmp_path: Path):
    path = tmp_path / "forgetless.duckdb"
    with duckdb.connect(str(path)) as con:  # a store as version 5 left it
        con.execute(schema.VERSION_TABLE)
        for migration in schema.MIGRATIONS[:5]:
            migration(con)
        con.execute("INSERT INTO schema_version VALUES (5)")
        con.execute("INSERT INTO instructions VALUES (?, ?, 12, 3, 'tiny', '<p>', 1.0, 1.0, 32, 7, 'old', 0, now())",
                    [text_key("Write a poem"), "Write a poem"])
    store = Store(path)
    [old] = store.instruction_steering()
    assert (old["steer_mode"], old["steer_source"], old["steer_seed_ids"], old["steer_prompt"]) == ("plain", None,
                                                                                                   None, None)
    steered = InstructionRow("Plan a trip to Lisbon", 5, "tiny", "<prompt>", 1.0, 1.0, 32, 7, "new", 0,
                             steer_mode="corpus", steer_source="builtin:alpacaeval", steer_seed_ids=("alpacaeval:3",),
                             steer_prompt="corpus-request-v1")
    store.add_instruction_batch("new", 0, [steered], limit=5, sampled=1, dropped={}, new_tokens=5, seconds=0.1)
    [new] = store.instruction_steering(job_id="new")
    assert new["steer_seed_ids"] == ["alpacaeval:3"] and new["steer_source"] == "builtin:alpacaeval"


# -- the CLI: bad corpora are one line and leave nothing behind ------------------------------------------------
def bad_corpora(folder: Path) -> list[tuple[str, str]]:
    (folder / "empty.jsonl").write_text("")
    (folder / "blank.txt").write_text("\n \n")
    (folder / "binary.jsonl").write_bytes(b'{"text": "fine"}\n' + bytes(range(256)) * 4)
    (folder / "binary.txt").write_bytes(b"PK\x03\x04\x00\x00" + bytes(range(256)))
    (folder / "weights.bin").write_bytes(b"\x00" * 64)
    write_jsonl(folder / "columns.jsonl", [{"question": "no text column here", "answer": "4"}])
    write_jsonl(folder / "hollow.jsonl", [{"text": " "}, {"text": None}])
    (folder / "broken.json").write_text('{"data": [1, 2')
    return [
        (str(folder / "missing.jsonl"), f"corpus file not found: {folder / 'missing.jsonl'}"),
        (str(folder / "empty.jsonl"), f"{folder / 'empty.jsonl'} is empty"),
        (str(folder / "blank.txt"), f"{folder / 'blank.txt'} is empty"),
        (str(folder / "binary.jsonl"), "holds NUL bytes (binary data"),
        (str(folder / "binary.txt"), "holds NUL bytes (binary data)"),
        (str(folder / "weights.bin"), "unsupported corpus file type '.bin'"),
        (str(folder / "columns.jsonl"), "has no text column: expected one of text, instruction, prompt, messages, "
                                        "conversations (found: question, answer)"),
        (str(folder / "hollow.jsonl"), "holds no usable text in 'text' (2 rows read"),
        (str(folder / "broken.json"), "is not valid JSON"),
        ("builtin:nope", "unknown corpus 'builtin:nope'"),
    ]


def test_a_bad_corpus_is_one_line_with_no_job_folder_or_row(tiny_model_dir: Path, tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    for spec, fragment in bad_corpora(data):
        workspace = tmp_path / f"ws-{Path(spec).name}"
        result = forgetless("reconstruct", "--model", str(tiny_model_dir), "--n", "2", "--from-corpus", spec,
                            workspace=workspace)
        assert_one_line_error(result, fragment)
        assert not (workspace / "jobs").exists() and not (workspace / "forgetless.duckdb").exists(), spec


def test_the_cli_runs_a_seeded_job_and_says_where_its_seeds_came_from(tiny_model_dir: Path, tmp_path: Path):
    corpus_file = tmp_path / "seeds.txt"
    corpus_file.write_text("\n".join(SEEDS) + "\n", encoding="utf-8")
    args = ["reconstruct", "--model", str(tiny_model_dir), "--n", "5", "--batch-size", "8", "--max-new-tokens", "24",
            "--from-corpus", str(corpus_file), "--corpus-rows", "4"]
    result = forgetless(*args, "--json", workspace=tmp_path / "ws")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["stored"] == 5 and summary["corpus"]["rows_used"] == 4
    assert summary["corpus"]["prompt_id"] == "corpus-passage-v1" and summary["corpus"]["column"] == "lines"
    rows = Store.for_workspace(tmp_path / "ws").instruction_steering(job_id=summary["job_id"])
    assert len(rows) == 5 and len({row["steer_seed_ids"][0] for row in rows}) <= 4
    human = forgetless(*args, workspace=tmp_path / "ws")  # finished: resumes with nothing to do
    assert human.returncode == 0 and f"seeded from {corpus_file.resolve()} (4 of 6 rows" in human.stdout


# -- the packaged aligned model ---------------------------------------------------------------------------------
@pytest.mark.integration
def test_smollm2_writes_requests_seeded_by_alpacaeval(real_workspace: Path, tmp_path: Path):
    lm = load_model("smollm2-135m-instruct", real_workspace)
    store = Store.for_workspace(tmp_path)
    config = ReconstructConfig(n=4, batch_size=8, seed=5, temperature=0.7, max_new_tokens=96,
                               from_corpus="builtin:alpacaeval", job_id="corpus-smollm2")
    summary = run_reconstruction(config, store, serving(lm))
    assert summary["stored"] == 4 and summary["corpus"]["prompt_format"] == "chat"
    instructions = {row.row_id: row.text for row in load_corpus("builtin:alpacaeval", 200).rows}
    for row in store.instruction_steering(job_id="corpus-smollm2"):
        assert row["steer_source"] == "builtin:alpacaeval" and row["steer_prompt"] == "corpus-request-v1"
        assert row["prefix"].startswith("<|im_start|>system\n") and row["prefix"].endswith("<|im_start|>assistant\n")
        assert "<|" not in row["text"] and len(row["text"].split()) >= 3
        [seed_id] = row["steer_seed_ids"]
        assert seed_id.startswith("alpacaeval:") and instructions[seed_id] in row["prefix"]
