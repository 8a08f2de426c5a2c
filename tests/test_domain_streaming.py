"""Importing domain data a row at a time: rows live in a spool file, memory holds their index only."""

from __future__ import annotations

import gc
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import ForgetlessError
from core.mix.domain import MAX_BAD_ROWS, content_digest, load_domain, split_by_content
from core.mix.formats import DETECT_RECORDS, JSON_DOCUMENT_MAX_BYTES, MAX_LINE_BYTES
from core.mix.rows import SpooledRows, rows_sha256

REPO = Path(__file__).resolve().parents[1]


def chat(i: int, words: int = 3) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"question {i} é"}, {"role": "assistant", "content": " ".join(["ok"] * words)}]


def write_rows(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"messages": chat(i)}) + "\n" for i in range(n)), encoding="utf-8")
    return path


def test_user_rows_are_spooled_and_read_back_exactly(tmp_path):
    data = load_domain(write_rows(tmp_path / "d.jsonl", 50), spool_dir=tmp_path)
    assert isinstance(data.train, SpooledRows)
    assert list(data.train) == [chat(i) for i in range(50)]
    assert data.train[3] == chat(3) and data.train[-1] == chat(49) and data.train[:2] == [chat(0), chat(1)]
    with pytest.raises(IndexError):
        data.train[50]
    assert data.train.digests == [content_digest(chat(i)) for i in range(50)]


def test_rows_sha256_matches_one_canonical_json_list(tmp_path):
    data = load_domain(write_rows(tmp_path / "d.jsonl", 20), spool_dir=tmp_path)
    whole = hashlib.sha256(json.dumps([chat(i) for i in range(20)], sort_keys=True, ensure_ascii=False)
                           .encode()).hexdigest()
    assert rows_sha256(data.train) == rows_sha256([chat(i) for i in range(20)]) == whole
    assert rows_sha256([]) == hashlib.sha256(b"[]").hexdigest()


def test_split_of_spooled_rows_equals_split_of_the_same_list(tmp_path):
    data = load_domain(write_rows(tmp_path / "d.jsonl", 60), spool_dir=tmp_path)
    spooled = split_by_content(data.train, 0.25)
    listed = split_by_content(list(data.train), 0.25)
    assert [list(side) for side in spooled] == [list(side) for side in listed]
    assert isinstance(spooled[0], SpooledRows) and len(spooled[1]) == 15


def test_spool_file_is_removed_when_the_rows_are_dropped(tmp_path):
    data = load_domain(write_rows(tmp_path / "d.jsonl", 5), spool_dir=tmp_path)
    train_only = data.train.take([0, 1])
    assert len(list(tmp_path.glob("forgetless-rows-*"))) == 1
    del data
    gc.collect()
    assert train_only[1] == chat(1)  # a view keeps the file alive
    del train_only
    gc.collect()
    assert not list(tmp_path.glob("forgetless-rows-*"))


def test_failed_import_leaves_no_spool(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"".join(json.dumps({"messages": chat(i)}).encode() + b"\n" for i in range(3)) + b"\xff\n")
    with pytest.raises(ForgetlessError, match="not UTF-8 text: byte 0xff at line 4"):
        load_domain(path, spool_dir=tmp_path)
    gc.collect()
    assert not list(tmp_path.glob("forgetless-rows-*"))


def test_sparse_all_zero_file_is_not_valid_json_lines(tmp_path):
    path = tmp_path / "zeros.jsonl"
    with path.open("wb") as handle:
        handle.truncate(64 * 1024**2)  # sparse: no disk, all NUL bytes, no newline
    with pytest.raises(ForgetlessError) as error:
        load_domain(path)
    message = str(error.value)
    assert "is not valid JSON lines: line 1 holds NUL bytes" in message and "\n" not in message


def test_every_line_invalid_is_not_valid_json_lines(tmp_path):
    path = tmp_path / "junk.jsonl"
    path.write_text("this is not json\nnor this\n", encoding="utf-8")
    with pytest.raises(ForgetlessError, match="not valid JSON lines: line 1: invalid JSON"):
        load_domain(path)


def test_a_line_longer_than_the_limit_is_one_error(tmp_path):
    path = tmp_path / "long.jsonl"
    with path.open("wb") as handle:
        handle.write(b'{"messages": "' + b"x" * (MAX_LINE_BYTES + 10) + b'"}\n')
    with pytest.raises(ForgetlessError, match="line 1 is longer than 32.0 MB"):
        load_domain(path)


def test_format_is_named_by_the_first_objects(tmp_path):
    path = tmp_path / "d.jsonl"
    lines = [json.dumps({"messages": chat(i)}) for i in range(DETECT_RECORDS)]
    lines.append(json.dumps({"instruction": "late alpaca row", "output": "x"}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = load_domain(path)
    assert data.report.format == "messages" and data.report.rows_kept == DETECT_RECORDS
    assert data.report.bad_rows[0].line == DETECT_RECORDS + 1


def test_bad_rows_are_all_counted_but_only_the_first_kept(tmp_path):
    path = tmp_path / "d.jsonl"
    lines = [json.dumps({"messages": chat(0)})] + ['{"messages": []}'] * (MAX_BAD_ROWS + 5)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = load_domain(path).report
    assert report.rows_read == MAX_BAD_ROWS + 6 and report.skipped == MAX_BAD_ROWS + 5
    assert len(report.bad_rows) == MAX_BAD_ROWS
    assert report.summary_line().endswith(f"and {MAX_BAD_ROWS} more)")


def test_a_json_document_over_the_limit_asks_for_json_lines(tmp_path, monkeypatch):
    monkeypatch.setattr("core.mix.formats.JSON_DOCUMENT_MAX_BYTES", 100)
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"messages": chat(i)} for i in range(5)]), encoding="utf-8")
    with pytest.raises(ForgetlessError, match=r"JSON document over 100 bytes.*save it as JSON lines"):
        load_domain(path)
    assert JSON_DOCUMENT_MAX_BYTES >= 100 * 1024**2


def test_import_memory_does_not_grow_with_the_file(tmp_path):
    """A child process imports 8 MB and 64 MB files; its peak RSS grows by far less than the file."""
    small, large = tmp_path / "small.jsonl", tmp_path / "large.jsonl"
    for path, size in ((small, 8 * 1024**2), (large, 64 * 1024**2)):
        with path.open("w", encoding="utf-8") as handle:
            i = 0
            while handle.tell() < size:
                handle.write(json.dumps({"messages": chat(i, words=150)}) + "\n")
                i += 1
    code = ("import resource, sys; from core.mix.domain import load_domain; d = load_domain(sys.argv[1]); "
            "n = sum(1 for _ in d.train); print(n, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    peaks = []
    for path in (small, large):
        done = subprocess.run([sys.executable, "-c", code, str(path)], cwd=REPO, capture_output=True, text=True,
                              check=True)
        rows, peak_kib = map(int, done.stdout.split())
        assert rows > 1000
        peaks.append(peak_kib * 1024)
    growth = peaks[1] - peaks[0]
    assert growth < 0.25 * (large.stat().st_size - small.stat().st_size), peaks
