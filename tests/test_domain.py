"""Domain import: format detection per container, the bad-input matrix, MedMCQA from the installed package."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from core.errors import ForgetlessError
from core.mix import domain
from core.mix.domain import (
    BUILTIN_MEDMCQA,
    ImportReport,
    load_domain,
    mcq_prompt,
    medmcqa_items,
    preview_frame,
    render_mcq,
)

CHAT = [{"role": "user", "content": "What is a fever?"}, {"role": "assistant", "content": "A raised temperature."}]
RECORDS = {
    "messages": [{"messages": CHAT}, {"messages": [{"role": "system", "content": "Be brief."}, *CHAT]}],
    "sharegpt": [{"conversations": [{"from": "human", "value": "What is a fever?"},
                                    {"from": "gpt", "value": "A raised temperature."}]},
                 {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                                    {"from": "gpt", "value": "Hello."}]}],
    "alpaca": [{"instruction": "What is a fever?", "input": "", "output": "A raised temperature."},
               {"instruction": "Define the term.", "input": "tachycardia", "output": "A fast heart rate."}],
    "prompt_completion": [{"prompt": "What is a fever?", "completion": "A raised temperature."},
                          {"prompt": [{"role": "user", "content": "Hi"}],
                           "completion": [{"role": "assistant", "content": "Hello."}]}],
}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def error_of(spec, **kwargs) -> str:
    with pytest.raises(ForgetlessError) as caught:
        load_domain(spec, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- formats and containers


@pytest.mark.parametrize("format_name", list(RECORDS))
def test_each_format_is_detected_from_jsonl(tmp_path, format_name):
    data = load_domain(write_jsonl(tmp_path / "chat.jsonl", RECORDS[format_name]))
    assert data.name == "chat"
    assert data.report.format == format_name
    assert (data.report.rows_read, data.report.rows_kept, data.report.bad_rows) == (2, 2, ())
    assert data.test == [] and data.test_items == []
    for messages in data.train:
        assert messages[-1]["role"] == "assistant"
        assert {message["role"] for message in messages} <= {"system", "user", "assistant"}
    assert data.train[0] == CHAT


def test_sharegpt_roles_and_alpaca_input_are_converted(tmp_path):
    sharegpt = load_domain(write_jsonl(tmp_path / "s.jsonl", RECORDS["sharegpt"]))
    assert sharegpt.train[1] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                                 {"role": "assistant", "content": "Hello."}]
    alpaca = load_domain(write_jsonl(tmp_path / "a.jsonl", RECORDS["alpaca"]))
    assert alpaca.train[0][0]["content"] == "What is a fever?"  # empty input adds nothing
    assert alpaca.train[1][0] == {"role": "user", "content": "Define the term.\n\ntachycardia"}


def test_sharegpt_chatbot_role_names_count_as_assistant(tmp_path):
    row = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "bing", "value": "Hello."},
                             {"from": "user", "value": "Bye"}, {"from": "chatgpt", "value": "Bye."}]}
    data = load_domain(write_jsonl(tmp_path / "bots.jsonl", [row]))
    assert [message["role"] for message in data.train[0]] == ["user", "assistant", "user", "assistant"]


def test_trl_conversational_prompt_completion_is_joined(tmp_path):
    data = load_domain(write_jsonl(tmp_path / "pc.jsonl", RECORDS["prompt_completion"]))
    assert data.train[1] == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]


@pytest.mark.parametrize("wrapper", ["list", "data", "train"])
def test_json_list_or_wrapped_object(tmp_path, wrapper):
    rows = RECORDS["sharegpt"]
    document = rows if wrapper == "list" else {"version": 1, wrapper: rows}
    (tmp_path / "d.json").write_text(json.dumps(document), encoding="utf-8")
    data = load_domain(tmp_path / "d.json")
    assert data.report.format == "sharegpt" and data.report.rows_kept == 2 and data.report.unit == "record"


def test_json_named_file_with_one_object_per_line_reads_as_jsonl(tmp_path):
    write_jsonl(tmp_path / "lines.json", RECORDS["messages"])
    assert load_domain(tmp_path / "lines.json").report.rows_kept == 2


def test_csv_alpaca_and_messages_as_json_text(tmp_path):
    path = tmp_path / "a.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["instruction", "input", "output"])
        writer.writeheader()
        writer.writerows(RECORDS["alpaca"])
    data = load_domain(path)
    assert data.report.format == "alpaca" and data.train[1][0]["content"].endswith("tachycardia")

    path = tmp_path / "m.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "messages"])
        writer.writerows([[index, json.dumps(row["messages"])] for index, row in enumerate(RECORDS["messages"])])
    data = load_domain(path)
    assert data.report.format == "messages" and data.train[0] == CHAT


def test_csv_cells_longer_than_the_stdlib_default_limit(tmp_path):
    long_answer = "word " * 40_000  # 200 kB, over csv's default 128 KiB field limit
    (tmp_path / "long.csv").write_text(f"instruction,output\nq,{long_answer}\n", encoding="utf-8")
    assert load_domain(tmp_path / "long.csv").train[0][1]["content"] == long_answer


def test_csv_line_numbers_survive_multiline_cells(tmp_path):
    path = tmp_path / "multi.csv"
    path.write_text('instruction,output\n"line one\nline two",fine\n"ok",""\n', encoding="utf-8")
    data = load_domain(path)
    assert data.train[0][0]["content"] == "line one\nline two"
    assert [(bad.line, bad.reason) for bad in data.report.bad_rows] == [(4, "empty output")]


def test_parquet_with_nested_messages(tmp_path):
    import pandas

    pandas.DataFrame(RECORDS["messages"]).to_parquet(tmp_path / "chat.parquet")
    data = load_domain(tmp_path / "chat.parquet")
    assert data.report.format == "messages" and data.train[0] == CHAT and len(data.train[1]) == 3


def test_save_to_disk_dataset_dict_and_folder_with_train_parquet(tmp_path):
    from datasets import Dataset, DatasetDict

    train = Dataset.from_list(RECORDS["alpaca"])
    DatasetDict({"train": train, "test": Dataset.from_list(RECORDS["alpaca"][:1])}).save_to_disk(tmp_path / "dd")
    data = load_domain(tmp_path / "dd")
    assert data.name == "dd" and data.report.format == "alpaca" and data.report.rows_read == 2
    train.save_to_disk(tmp_path / "single")
    assert load_domain(tmp_path / "single").report.rows_kept == 2

    (tmp_path / "mix").mkdir()
    train.to_parquet(tmp_path / "mix" / "train.parquet")
    assert load_domain(tmp_path / "mix").report.format == "alpaca"


# ---------------------------------------------------------------- bad rows


def test_bad_rows_are_skipped_with_line_and_reason(tmp_path):
    lines = [
        json.dumps({"messages": CHAT}),                                                           # 1 ok
        '{"messages": [',                                                                           # 2 bad JSON
        json.dumps({"messages": [CHAT[0], {"role": "assistant", "content": "  "}]}),               # 3
        "",                                                                                         # 4 blank
        json.dumps({"messages": [CHAT[0]]}),                                                      # 5
        json.dumps({"messages": [{"role": "tool", "content": "x"}, *CHAT]}),                      # 6
        json.dumps({"messages": "hello"}),                                                        # 7
        json.dumps({"other": 1}),                                                                 # 8
        json.dumps([1, 2]),                                                                       # 9
        json.dumps({"messages": [CHAT[1]]}),                                                      # 10
        json.dumps({"messages": [*CHAT, {"role": "system", "content": "late"}, *CHAT]}),          # 11
        json.dumps({"messages": [CHAT[0], CHAT[0], CHAT[1]]}),                                    # 12
        json.dumps({"messages": [CHAT[0], {"role": "assistant", "content": 5}]}),                 # 13
        json.dumps({"messages": [{"role": "system", "content": ""}, *CHAT, CHAT[0]]}),           # 14 ok, trimmed
        json.dumps({"messages": [CHAT[1], *CHAT]}),                                               # 15 ok, trimmed
    ]
    (tmp_path / "mixed.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = load_domain(tmp_path / "mixed.jsonl")
    reasons = {bad.line: bad.reason for bad in data.report.bad_rows}
    assert sorted(reasons) == [2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13]
    assert reasons[2].startswith("invalid JSON")
    assert reasons[3] == "empty assistant turn (turn 2)"
    assert reasons[5] == "no assistant turn"
    assert "unknown role 'tool'" in reasons[6]
    assert reasons[7] == "messages is a str, not a list of turns"
    assert reasons[8] == "missing messages"
    assert reasons[9] == "row is a list, not an object"
    assert reasons[10] == "no user turn before an assistant turn"
    assert "system turn 3" in reasons[11]
    assert reasons[12] == "two user turns in a row"
    assert reasons[13] == "turn 2 content is not text"
    assert (data.report.rows_read, data.report.rows_kept) == (14, 3)
    assert data.train == [CHAT, CHAT, CHAT]  # empty system turn dropped, leading assistant/trailing user trimmed
    summary = data.report.summary_line()
    assert summary.startswith("mixed.jsonl: messages, 14 rows read, 3 kept, 11 skipped (line 2: invalid JSON")
    assert "line 3: empty assistant turn (turn 2)" in summary and "and 6 more" in summary


def test_alpaca_row_type_errors(tmp_path):
    rows = [{"instruction": "q", "input": None, "output": "a"}, {"instruction": 3, "output": "a"},
            {"instruction": "q", "output": None}, {"instruction": "q", "input": ["x"], "output": "a"}]
    (tmp_path / "a.json").write_text(json.dumps(rows), encoding="utf-8")
    report = load_domain(tmp_path / "a.json").report
    assert [(bad.line, bad.reason) for bad in report.bad_rows] == [
        (2, "instruction is a int, not text"), (3, "missing output"), (4, "input is a list, not text")]
    assert "record 2: instruction is a int" in report.summary_line()


# ---------------------------------------------------------------- whole-file errors


def test_missing_empty_and_unsupported_files(tmp_path):
    assert "not found" in error_of(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert error_of(tmp_path / "empty.jsonl").endswith("is empty")
    (tmp_path / "blank.jsonl").write_text("\n  \n", encoding="utf-8")
    assert "is empty" in error_of(tmp_path / "blank.jsonl")
    (tmp_path / "blank.json").write_text("  ", encoding="utf-8")
    assert "is empty" in error_of(tmp_path / "blank.json")
    (tmp_path / "header.csv").write_text("instruction,output\n", encoding="utf-8")
    assert "holds no records" in error_of(tmp_path / "header.csv")
    (tmp_path / "data.txt").write_text("hello", encoding="utf-8")
    assert "unsupported file type '.txt'" in error_of(tmp_path / "data.txt")
    (tmp_path / "folder").mkdir()
    assert "not a datasets save_to_disk folder" in error_of(tmp_path / "folder")


def test_non_utf8_names_line_and_column(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(json.dumps({"messages": CHAT}).encode() + b'\n{"messages": "caf\xe9"}\n')
    message = error_of(path)
    assert "not UTF-8" in message and "byte 0xe9 at line 2, column 18" in message
    csv_path = tmp_path / "latin.csv"
    csv_path.write_bytes(b"instruction,output\nq,a\nq,\xff\n")
    assert "line 3, column 3" in error_of(csv_path)


def test_utf8_bom_is_accepted(tmp_path):
    (tmp_path / "bom.csv").write_bytes("\ufeffinstruction,output\nq,a\n".encode())
    assert load_domain(tmp_path / "bom.csv").report.format == "alpaca"


def test_oversized_file_and_folder(tmp_path):
    path = write_jsonl(tmp_path / "big.jsonl", RECORDS["messages"] * 10)
    message = error_of(path, max_bytes=100)
    assert "over the 100 bytes import limit" in message
    assert load_domain(path, max_bytes=path.stat().st_size).report.rows_kept == 20
    (tmp_path / "dir").mkdir()
    write_jsonl(tmp_path / "dir" / "train.jsonl", RECORDS["messages"] * 10)
    assert "import limit" in error_of(tmp_path / "dir", max_bytes=100)


def test_unrecognised_columns_name_found_and_accepted(tmp_path):
    write_jsonl(tmp_path / "q.jsonl", [{"question": "q", "answer": "a"}, {"question": "q", "label": 1}])
    message = error_of(tmp_path / "q.jsonl")
    assert "no recognised columns (found: question, answer, label; accepted: messages" in message
    assert "instruction + output" in message and "prompt + completion" in message
    (tmp_path / "x.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    assert "found: a, b;" in error_of(tmp_path / "x.csv")


def test_invalid_json_documents(tmp_path):
    (tmp_path / "broken.json").write_text('[{"messages": []},\n  {"oops"', encoding="utf-8")
    assert "is not valid JSON: " in error_of(tmp_path / "broken.json")
    assert "at line 2" in error_of(tmp_path / "broken.json")
    (tmp_path / "trailing.json").write_text(json.dumps(RECORDS["messages"]) + "\n[]", encoding="utf-8")
    assert "is not valid JSON: Extra data at line 2, column 1" in error_of(tmp_path / "trailing.json")
    (tmp_path / "obj.json").write_text(json.dumps({"rows": []}), encoding="utf-8")
    assert "found keys: rows" in error_of(tmp_path / "obj.json")
    (tmp_path / "not.parquet").write_text("no", encoding="utf-8")
    assert "not a readable Parquet file" in error_of(tmp_path / "not.parquet")


def test_zero_usable_rows_is_one_error_with_reasons(tmp_path):
    write_jsonl(tmp_path / "bad.jsonl", [{"messages": [CHAT[0]]}, {"messages": []}])
    message = error_of(tmp_path / "bad.jsonl")
    assert "no usable rows" in message and "line 1: no assistant turn" in message and "line 2: no turns" in message


def test_bad_specs(tmp_path):
    assert "unknown built-in domain 'builtin:law'" in error_of("builtin:law")
    assert "test fraction" in error_of(BUILTIN_MEDMCQA, test_fraction=1.0)


# ---------------------------------------------------------------- test_fraction for user data


def test_test_fraction_split_is_deterministic_disjoint_and_order_free(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(50)]
    rows.append(rows[7])  # a duplicate must stay on the side of its twin
    path = write_jsonl(tmp_path / "qa.jsonl", rows)
    first, second = load_domain(path, test_fraction=0.2), load_domain(path, test_fraction=0.2)
    assert (first.train, first.test) == (second.train, second.test)
    assert len(first.test) in (10, 11) and len(first.train) + len(first.test) == 51
    users = lambda part: {messages[0]["content"] for messages in part}  # noqa: E731
    assert not users(first.train) & users(first.test)
    shuffled = write_jsonl(tmp_path / "shuffled.jsonl", rows[::-1])
    assert users(load_domain(shuffled, test_fraction=0.2).test) == users(first.test)
    assert load_domain(path).test == []
    assert len(load_domain(write_jsonl(tmp_path / "two.jsonl", rows[:2]), test_fraction=0.01).test) == 1


# ---------------------------------------------------------------- MedMCQA


def test_medmcqa_items_and_split():
    everything, train, test = medmcqa_items("all"), medmcqa_items("train"), medmcqa_items("test")
    assert len(everything) == 4183 and len({item.id for item in everything}) == 4183
    assert len(train) + len(test) == len(everything)
    assert 0.18 <= len(test) / len(everything) <= 0.22
    assert not {item.id for item in train} & {item.id for item in test}
    assert [item.id for item in medmcqa_items("test")] == [item.id for item in test]
    for item in everything:
        assert len(item.options) == 4 and 0 <= item.answer < 4 and item.question
    assert any(item.explanation for item in everything) and any(item.explanation is None for item in everything)
    with pytest.raises(ForgetlessError):
        medmcqa_items("validation")


def test_medmcqa_rendering():
    items = medmcqa_items("test")
    explained = next(item for item in items if item.explanation)
    plain = next(item for item in items if item.explanation is None and item.answer != 0)
    user, assistant = render_mcq(explained)
    assert user == {"role": "user", "content": mcq_prompt(explained)}
    assert explained.question in user["content"]
    for letter, option in zip("ABCD", explained.options, strict=True):
        assert f"\n{letter}. {option}" in user["content"]
    letter = "ABCD"[explained.answer]
    assert assistant["content"].startswith(f"{letter}. {explained.options[explained.answer]}")
    assert assistant["content"].endswith(f"\n\nExplanation: {explained.explanation}")
    plain_answer = render_mcq(plain)[-1]["content"]
    assert plain_answer == f"{plain.answer_letter}. {plain.options[plain.answer]}" and plain.answer_letter != "A"
    assert render_mcq(plain, with_answer=False) == [{"role": "user", "content": mcq_prompt(plain)}]


def test_load_builtin_medmcqa():
    data = load_domain(BUILTIN_MEDMCQA, test_fraction=0.5)  # the built-in split is fixed
    assert data.name == "medmcqa" and data.report.format == "medmcqa"
    assert len(data.train) + len(data.test) == 4183 == data.report.rows_kept
    assert [item.id for item in data.test_items] == [item.id for item in medmcqa_items("test")]
    assert data.test == [render_mcq(item) for item in data.test_items]
    assert data.report.summary_line() == "builtin:medmcqa: medmcqa, 4183 rows read, 4183 kept, 0 skipped"


def test_medmcqa_without_the_package_says_make_venv(monkeypatch):
    domain._medmcqa_all.cache_clear()
    monkeypatch.setattr(domain.importlib.util, "find_spec", lambda name: None)
    try:
        with pytest.raises(ForgetlessError, match="make venv"):
            medmcqa_items("all")
    finally:
        monkeypatch.undo()
        domain._medmcqa_all.cache_clear()


# ---------------------------------------------------------------- preview


def test_preview_frame(tmp_path):
    data = load_domain(write_jsonl(tmp_path / "s.jsonl", RECORDS["sharegpt"] * 15))
    frame = preview_frame(data, n=20)
    assert list(frame.columns) == ["user", "assistant", "turns"] and len(frame) == 20
    assert frame.iloc[0].to_dict() == {"user": "What is a fever?", "assistant": "A raised temperature.", "turns": 2}
    assert frame.iloc[1]["turns"] == 3


def test_import_report_is_plain_data():
    report = ImportReport("x/data.jsonl", "alpaca", 3, 3, ())
    assert report.summary_line() == "data.jsonl: alpaca, 3 rows read, 3 kept, 0 skipped"
