"""Folders written all at once (core/folders.py): staging beside the destination, renamed when complete, removed
on failure, never written over an existing folder, and what a killed writer left cleaned up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import ForgetlessError
from core.folders import check_out_free, staged_folder


def test_a_staged_folder_appears_whole_and_replaces_only_an_empty_folder(tmp_path: Path):
    out = tmp_path / "export"
    out.mkdir()
    with staged_folder(out) as staging:
        (staging / "weights.bin").write_text("w")
        assert staging.parent == tmp_path and staging.name.startswith(".export.partial-")
        assert not any(out.iterdir())  # nothing visible until the block ends
    assert [p.name for p in out.iterdir()] == ["weights.bin"]
    assert [p.name for p in tmp_path.iterdir()] == ["export"]
    with pytest.raises(ForgetlessError, match="already exists and is not empty"):
        check_out_free(out)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ForgetlessError, match="is a file"):
        check_out_free(tmp_path / "file")


def test_a_failed_block_leaves_nothing_and_a_folder_filled_meanwhile_is_kept(tmp_path: Path):
    out = tmp_path / "mix"
    with pytest.raises(RuntimeError), staged_folder(out) as staging:
        (staging / "train.parquet").write_text("half")
        raise RuntimeError("killed halfway")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ForgetlessError, match="not empty"), staged_folder(out) as staging:
        (staging / "train.parquet").write_text("mine")
        out.mkdir()
        (out / "theirs.txt").write_text("someone else's")
    assert [p.name for p in tmp_path.iterdir()] == ["mix"] and (out / "theirs.txt").read_text() == "someone else's"


def test_staging_left_by_a_dead_writer_is_removed_and_a_live_one_kept(tmp_path: Path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    dead = tmp_path / f".model.partial-{finished.stdout.strip()}-0123abcd"
    alive = tmp_path / f".model.partial-{os.getpid()}-4567cdef"
    legacy = tmp_path / ".model.partial-89abcdef"  # an older folder: nothing says whose it is
    other = tmp_path / f".model-2.partial-{finished.stdout.strip()}-0123abcd"  # another destination's
    for folder in (dead, alive, legacy, other):
        folder.mkdir()
        (folder / "part").write_text("x")
    with staged_folder(tmp_path / "model") as staging:
        (staging / "done").write_text("y")
    assert not dead.exists() and alive.exists() and legacy.exists() and other.exists()
    assert (tmp_path / "model" / "done").exists()
    bracketed = tmp_path / f".mix[1].partial-{finished.stdout.strip()}-0123abcd"  # a name glob would misread
    bracketed.mkdir()
    with staged_folder(tmp_path / "mix[1]") as staging:
        (staging / "rows").write_text("z")
    assert not bracketed.exists() and (tmp_path / "mix[1]" / "rows").exists()
