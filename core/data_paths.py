"""Which files the app may read when someone types a path into it.

The CLI reads any path its user gives: that user already owns the shell. The app serves whoever reaches
its port, so a path typed into it (domain data in the Mix and Evaluate tabs, a model folder or ``.gguf``
file in any tab, training data, a run to evaluate) is read only when it lies, after symbolic links are
followed, under the workspace (uploads are kept in ``<workspace>/domain-data``) or under a folder the
person who started the app listed with ``launch.py --data-dir DIR``. Built-in data, model aliases and hub
ids name no local file and pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from core.engines.models import ALIASES
from core.errors import ForgetlessError

Config = TypeVar("Config")


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

    def check_model(self, spec: str | None) -> str | None:
        """A MODEL spec unchanged when it is an alias, a hub id or ``none``; a local folder or file is checked
        like any path (see :meth:`check`), also after a ``NAME:`` prefix (a signal judge's model)."""
        text = (spec or "").strip()
        if not text or text in ALIASES or text.lower() == "none":
            return spec
        name, colon, rest = text.partition(":")
        if colon and name.isidentifier():
            self.check_model(rest)
            return spec
        local = text.startswith((".", "/", "~")) or text.endswith(".gguf") or Path(text).expanduser().exists()
        if local:
            self.check(text)
        return spec

    def confine(self, build: Callable[..., Config], *fields: str) -> Callable[..., Config]:
        """``build`` (a form's values -> a stage config) whose named fields, each a MODEL spec, a path or a
        sequence of them, are checked with :meth:`check_model` before the config is used."""

        def built(*form: Any) -> Config:
            config = build(*form)
            for name in fields:
                value = getattr(config, name)
                for spec in value if isinstance(value, list | tuple) else (value,):
                    self.check_model(None if spec is None else str(spec))
            return config

        return built
