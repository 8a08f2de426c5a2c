"""Reading user domain files into numbered records, detecting their chat format, and turning rows into messages.

Every problem with the whole file is one ForgetlessError line; a problem with one row is a RowError whose
message becomes that row's reason in the import report.
"""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import ForgetlessError

Messages = list[dict[str, str]]
Record = tuple[int, Any]  # (1-based line or record number, the parsed row)

TEXT_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "csv"}
ACCEPTED_SUFFIXES = (*TEXT_SUFFIXES, ".parquet")
# A folder written by `forgetless mix` (or by hand) holding one of these is read like that file.
FOLDER_DATA_FILES = ("train.parquet", "train.jsonl", "train.json", "train.csv")

# ShareGPT dumps also name the replying chatbot (chatgpt, bing, bard) in the assistant's place.
ROLE_NAMES = {"user": "user", "human": "user", "system": "system", "assistant": "assistant", "gpt": "assistant",
              "model": "assistant", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant"}
ACCEPTED_COLUMNS = ("messages (role/content turns) | conversations (ShareGPT from/value turns) | "
                    "instruction + output [+ input] (Alpaca) | prompt + completion")


class RowError(ValueError):
    """One row cannot be used; the message is the reason shown in the import report."""


@dataclass
class RawTable:
    """What a file holds before format detection: its rows, their column names and how rows are numbered.

    ``records`` is read lazily, once: a file is streamed as its records are consumed, so importing holds one
    row at a time (a JSON document, which cannot be streamed, is the exception: see JSON_DOCUMENT_MAX_BYTES).
    """

    records: Iterable[Record]
    columns: list[str]
    unit: str  # "line" for JSONL/CSV, "record" for JSON/Parquet/datasets


# A JSON document is parsed whole (~10x its size in memory): larger data must come as JSON lines.
JSON_DOCUMENT_MAX_BYTES = 256 * 1024**2
MAX_LINE_BYTES = 32 * 1024**2  # longer lines are not a conversation but a broken or binary file
DETECT_RECORDS = 1000  # JSON lines: the columns of the first this many objects name the format
_DETECT_LINES = 10_000  # ... looked for in at most this many lines


# ---------------------------------------------------------------- reading


def read_table(path: Path, max_bytes: int) -> RawTable:
    """Open a file or folder as numbered records; raises ForgetlessError for whole-file problems (also while the
    records are read, e.g. a non-UTF-8 byte or NUL bytes on a later line)."""
    if not path.exists():
        raise ForgetlessError(f"domain data not found: {path}")
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
    if size > max_bytes:
        raise ForgetlessError(f"{path} is {_human_bytes(size)}, over the {_human_bytes(max_bytes)} import limit: "
                              "split it or raise max_bytes")
    if path.is_dir():
        return _read_folder(path, max_bytes)
    if size == 0:
        raise ForgetlessError(f"{path} is empty")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _read_parquet(path)
    if suffix not in TEXT_SUFFIXES:
        raise ForgetlessError(f"{path}: unsupported file type '{suffix or path.name}'; accepted: "
                              f"{', '.join(ACCEPTED_SUFFIXES)} or a datasets save_to_disk folder")
    reader = {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv}[TEXT_SUFFIXES[suffix]]
    return reader(path)


def _read_folder(path: Path, max_bytes: int) -> RawTable:
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return _read_saved_dataset(path)
    for name in FOLDER_DATA_FILES:
        if (path / name).is_file():
            return read_table(path / name, max_bytes)
    raise ForgetlessError(f"{path} is a folder but not a datasets save_to_disk folder (no dataset_dict.json or "
                          f"state.json) and holds none of {', '.join(FOLDER_DATA_FILES)}")


def _utf8_lines(path: Path, kind: str) -> Iterator[str]:
    """Decoded lines (endings kept), one in memory at a time. A byte that is not UTF-8, a NUL byte (binary data)
    or a line over MAX_LINE_BYTES is one error naming the line; ``kind`` names what the file should be."""
    with path.open("rb") as handle:
        for number, raw in enumerate(iter(lambda: handle.readline(MAX_LINE_BYTES + 1), b""), start=1):
            if b"\0" in raw:
                raise ForgetlessError(f"{path} is not valid {kind}: line {number} holds NUL bytes (binary data, "
                                      "not text)")
            if len(raw) > MAX_LINE_BYTES:
                raise ForgetlessError(f"{path} is not valid {kind}: line {number} is longer than "
                                      f"{_human_bytes(MAX_LINE_BYTES)}")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ForgetlessError(
                    f"{path} is not UTF-8 text: byte 0x{raw[error.start]:02x} at line {number}, column "
                    f"{error.start + 1}; re-save the file as UTF-8") from None
            yield line.removeprefix("\ufeff") if number == 1 else line


def _jsonl_records(path: Path) -> Iterator[Record]:
    for number, line in enumerate(_utf8_lines(path, "JSON lines"), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as error:
            yield number, RowError(f"invalid JSON ({error.msg} at column {error.colno})")


def _read_jsonl(path: Path) -> RawTable:
    """JSON lines, streamed: the format is named by the columns of the first DETECT_RECORDS objects."""
    records = _jsonl_records(path)
    head: list[Record] = []
    objects = 0
    for record in records:
        head.append(record)
        objects += isinstance(record[1], dict)
        if objects >= DETECT_RECORDS or len(head) >= _DETECT_LINES:
            break
    if not head:
        raise ForgetlessError(f"{path} is empty (only blank lines)")
    first_error = next((record for record in head if isinstance(record[1], RowError)), None)
    if first_error is not None and all(isinstance(value, RowError) for _, value in head):
        raise ForgetlessError(f"{path} is not valid JSON lines: line {first_error[0]}: {first_error[1]}")
    return RawTable(itertools.chain(head, records), _keys_in_order(value for _, value in head), "line")


def _read_json(path: Path) -> RawTable:
    if path.stat().st_size > JSON_DOCUMENT_MAX_BYTES:
        raise ForgetlessError(f"{path} is a JSON document over {_human_bytes(JSON_DOCUMENT_MAX_BYTES)}, which would be "
                              "read whole: save it as JSON lines (.jsonl, one record per line), which is streamed")
    text = "".join(_utf8_lines(path, "JSON"))
    if not text.strip():
        raise ForgetlessError(f"{path} is empty (only whitespace)")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        if error.msg == "Extra data" and text.lstrip().startswith("{"):  # JSONL under a .json name
            return _read_jsonl(path)
        raise ForgetlessError(f"{path} is not valid JSON: {error.msg} at line {error.lineno}, "
                              f"column {error.colno}") from None
    del text
    if isinstance(document, dict):
        key = next((key for key in ("data", "train") if isinstance(document.get(key), list)), None)
        if key is None:
            raise ForgetlessError(f"{path}: a JSON object must hold the records under 'data' or 'train' as a list; "
                                  f"found keys: {', '.join(map(str, document)) or 'none'}")
        document = document[key]
    if not isinstance(document, list):
        raise ForgetlessError(f"{path}: JSON must be a list of records or an object with a 'data'/'train' list, "
                              f"not {type(document).__name__}")
    return RawTable(enumerate(document, start=1), _keys_in_order(document), "record")


def _read_csv(path: Path) -> RawTable:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    csv.field_size_limit(2**31 - 1)  # the default 128 KiB per cell is too small for long conversations
    reader = csv.reader(_utf8_lines(path, "CSV"), delimiter=delimiter, strict=True)
    try:
        header = next(reader, None)
    except csv.Error as error:
        raise ForgetlessError(f"{path} is not valid CSV at line {reader.line_num}: {error}") from None
    if header is None or not any(name.strip() for name in header):
        raise ForgetlessError(f"{path} is empty (no header row)")
    columns = [name.strip() for name in header]

    def records() -> Iterator[Record]:
        first_line = reader.line_num + 1
        try:
            for values in reader:
                if any(value.strip() for value in values):
                    yield first_line, _csv_row(columns, values)
                first_line = reader.line_num + 1
        except csv.Error as error:
            raise ForgetlessError(f"{path} is not valid CSV at line {reader.line_num}: {error}") from None

    return RawTable(records(), columns, "line")


def _csv_row(columns: list[str], values: list[str]) -> dict[str, str] | RowError:
    if len(values) != len(columns):
        return RowError(f"{len(values)} fields where the header has {len(columns)}")
    return dict(zip(columns, values, strict=True))


def _read_parquet(path: Path) -> RawTable:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def unreadable(error: BaseException) -> ForgetlessError:
        return ForgetlessError(f"{path} is not a readable Parquet file: {str(error).splitlines()[0]}")

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as error:
        raise unreadable(error) from None

    def records() -> Iterator[Record]:
        number = 0
        try:
            for batch in parquet.iter_batches(batch_size=1024):
                for row in batch.to_pylist():
                    number += 1
                    yield number, row
        except (pa.ArrowException, OSError) as error:
            raise unreadable(error) from None

    return RawTable(records(), list(parquet.schema_arrow.names), "record")


def _read_saved_dataset(path: Path) -> RawTable:
    from datasets import DatasetDict, load_from_disk

    try:
        dataset = load_from_disk(str(path))
    except Exception as error:  # datasets raises many types for a damaged folder; all mean the same to the user
        raise ForgetlessError(f"{path}: cannot load the datasets folder: {str(error).splitlines()[0]}") from None
    if isinstance(dataset, DatasetDict):
        splits = list(dataset)
        if "train" not in dataset and len(splits) != 1:
            raise ForgetlessError(f"{path}: the dataset has no 'train' split (splits: {', '.join(splits)})")
        dataset = dataset["train" if "train" in dataset else splits[0]]
    return RawTable(enumerate(dataset, start=1), list(dataset.column_names), "record")


def _keys_in_order(rows: Any) -> list[str]:
    keys: dict[str, None] = {}
    for row in rows:
        if isinstance(row, dict):
            keys.update(dict.fromkeys(map(str, row)))
    return list(keys)


def _human_bytes(size: int) -> str:
    for unit in ("bytes", "KB", "MB"):
        if size < 1024:
            return f"{size} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


# ---------------------------------------------------------------- format detection and row conversion


def detect_format(columns: list[str]) -> str | None:
    """The chat format named by the columns, most specific first; None when no format matches."""
    names = set(columns)
    if "messages" in names:
        return "messages"
    if "conversations" in names:
        return "sharegpt"
    if {"instruction", "output"} <= names:
        return "alpaca"
    if {"prompt", "completion"} <= names:
        return "prompt_completion"
    return None


def row_to_messages(row: Any, format_name: str) -> Messages:
    """One row as validated chat turns ending with an assistant turn; raises RowError with the reason."""
    if isinstance(row, RowError):
        raise row
    if not isinstance(row, dict):
        raise RowError(f"row is a {type(row).__name__}, not an object")
    if format_name == "messages":
        return validate_turns(_turn_list(row, "messages"))
    if format_name == "sharegpt":
        return validate_turns(_turn_list(row, "conversations"))
    if format_name == "alpaca":
        instruction, output = _text(row, "instruction"), _text(row, "output")
        extra = row.get("input")
        if extra is not None and not isinstance(extra, str):
            raise RowError(f"input is a {type(extra).__name__}, not text")
        user = f"{instruction}\n\n{extra.strip()}" if extra and extra.strip() else instruction
        system = row.get("system")
        head = [{"role": "system", "content": system}] if isinstance(system, str) and system.strip() else []
        return validate_turns([*head, {"role": "user", "content": user}, {"role": "assistant", "content": output}])
    if format_name == "prompt_completion":
        prompt, completion = row.get("prompt"), row.get("completion")
        if isinstance(prompt, str) and isinstance(completion, str):
            return validate_turns([{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}])
        return validate_turns(_turn_list(row, "prompt") + _turn_list(row, "completion"))
    raise ValueError(f"unknown format {format_name}")


def _text(row: dict, key: str) -> str:
    value = row.get(key)
    if value is None:
        raise RowError(f"missing {key}")
    if not isinstance(value, str):
        raise RowError(f"{key} is a {type(value).__name__}, not text")
    if not value.strip():
        raise RowError(f"empty {key}")
    return value


def _turn_list(row: dict, key: str) -> list:
    value = row.get(key)
    if isinstance(value, str) and value.lstrip().startswith("["):  # CSV cells hold turn lists as JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise RowError(f"{key} is not valid JSON") from None
    if value is None:
        raise RowError(f"missing {key}")
    if not isinstance(value, list):
        raise RowError(f"{key} is a {type(value).__name__}, not a list of turns")
    return value


def validate_turns(turns: list) -> Messages:
    """Normalise roles (ShareGPT's human/gpt too) and check the shape every chat template accepts.

    System only first, then user and assistant alternating from a user turn. Empty system turns are dropped,
    and so are leading assistant turns (no prompt: ShareGPT's split conversations start mid-dialogue) and
    trailing user turns (no reply to learn from); everything else wrong rejects the row.
    """
    messages: Messages = []
    for number, turn in enumerate(turns, start=1):
        if not isinstance(turn, dict):
            raise RowError(f"turn {number} is a {type(turn).__name__}, not an object")
        role_key, content_key = ("role", "content") if "role" in turn or "content" in turn else ("from", "value")
        role, content = turn.get(role_key), turn.get(content_key)
        if not isinstance(role, str) or role.strip().lower() not in ROLE_NAMES:
            raise RowError(f"unknown role {role!r} in turn {number} (accepted: {', '.join(ROLE_NAMES)})")
        role = ROLE_NAMES[role.strip().lower()]
        if not isinstance(content, str):
            raise RowError(f"turn {number} content is {'missing' if content is None else 'not text'}")
        if not content.strip():
            if role == "system":
                continue
            raise RowError(f"empty {role} turn (turn {number})")
        if role == "system" and messages:
            raise RowError(f"system turn {number} comes after the conversation started")
        messages.append({"role": role, "content": content})
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    dialogue = messages[len(system):]
    had_assistant = any(message["role"] == "assistant" for message in dialogue)
    while dialogue and dialogue[0]["role"] == "assistant":
        dialogue.pop(0)
    while dialogue and dialogue[-1]["role"] == "user":
        dialogue.pop()
    if not dialogue:
        raise RowError("no user turn before an assistant turn" if had_assistant
                       else "no assistant turn" if turns else "no turns")
    for index, message in enumerate(dialogue):
        if message["role"] != ("user" if index % 2 == 0 else "assistant"):
            raise RowError(f"two {message['role']} turns in a row")
    return system + dialogue
