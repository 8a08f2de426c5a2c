"""Which files the app may read when someone types a path into it.

The CLI reads any path its user gives: that user already owns the shell. The app serves whoever reaches
its port, so a path typed into it (domain data in the Mix and Evaluate tabs) is read only when it lies,
after symbolic links are followed, under the workspace (uploads are kept in ``<workspace>/domain-data``)
or under a folder the person who started the app listed with ``launch.py --data-dir DIR``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from core.errors import ForgetlessError


@dataclass(frozen=True)
class ReadableRoots:
    """The folders (resolved) under which the app reads typed paths."""

    roots: tuple[Path, ...]

    @classmethod
    def for_app(cls, workspace: Path, data_dirs: Iterable[Path] = ()) -> ReadableRoots:
        folders = []
        for folder in (workspace, *data_dirs):
            resolved = Path(folder).expanduser().resolve()
            if resolved != Path(workspace).expanduser().resolve() and not resolved.is_dir():
                raise ForgetlessError(f"--data-dir {folder}: not a folder")
            folders.append(resolved)
        return cls(tuple(dict.fromkeys(folders)))

    def check(self, spec: str | None) -> str:
        """``spec`` unchanged when it names built-in data (``builtin:...``) or nothing; else the resolved path,
        which must lie under one of the roots (a ForgetlessError naming them otherwise)."""
        text = (spec or "").strip()
        if not text or text.startswith("builtin:"):
            return text
        path = Path(text).expanduser().resolve()  # symlinks followed: a link out of the roots is refused
        if not any(path == root or path.is_relative_to(root) for root in self.roots):
            allowed = ", ".join(str(root) for root in self.roots)
            raise ForgetlessError(f"{text} is outside the folders this app reads ({allowed}): upload the file, or "
                                  "restart the app with --data-dir FOLDER to allow its folder")
        return str(path)
