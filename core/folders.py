"""Output folders written all at once (mix snapshots, exported models): the files go into a hidden staging
folder beside the destination, renamed onto it when complete, so nobody ever reads half a folder and an existing
one is never overwritten."""

from __future__ import annotations

import glob
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core.errors import ForgetlessError


def check_out_free(out: Path) -> None:
    """Refuse an ``out`` that is a file, or a folder with anything in it (never written over)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ForgetlessError(f"{out} is a file: --out must name a folder")
    if out.is_dir() and any(out.iterdir()):
        raise ForgetlessError(f"{out} already exists and is not empty: choose another folder (Forgetless never "
                              "writes over one)")


@contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """Yield a fresh hidden folder beside ``out``; when the block ends it becomes ``out`` (an empty ``out`` is
    replaced; one that filled up meanwhile is refused), and if the block fails it is removed. Staging folders
    that a killed process left for the same ``out`` (their process gone) are removed first."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{glob.escape(out.name)}.partial-*"):
        if not _writer_alive(stale.name.removeprefix(f".{out.name}.partial-")):
            shutil.rmtree(stale, ignore_errors=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
        check_out_free(out)  # again: something may have appeared there while the files were written
        if out.exists():
            out.rmdir()  # empty (checked); a file written into it since makes this fail, and nothing is lost
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _writer_alive(suffix: str) -> bool:
    """Whether the process named in a staging folder's suffix (``<pid>-<hex>``) still runs; a suffix without a
    pid (older folders) counts as alive, since nothing says whose it is."""
    pid = suffix.split("-")[0]
    if not pid.isdigit() or "-" not in suffix:
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True
