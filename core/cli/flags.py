"""A config dataclass's settings as ``forgetless <stage>`` flags, and back: the parser, the config a command
line asks for, and the command line of a config (the app's "show CLI command").

Everything is read from the fields' :class:`core.settings.Setting` metadata, so a new setting is one line
on its dataclass. A flag the user did not give parses to None: the config's own value (its default, or
its ``--config`` YAML's) stands.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from core.config import load_yaml, to_dict
from core.settings import Setting, declared, field_default, flag_of, value_types

# Each field's value type on the command line (an ``int | str`` field such as profile's clusters stays text).
_SCALARS = (str, int, float)


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _help(field: dataclasses.Field[Any], found: Setting, asked: bool = False) -> str:
    default = field_default(field)
    unset = default is None or default is False or default is dataclasses.MISSING or default in ((), "", {})
    if unset or asked or "default" in found.help:
        return found.help
    shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
    return f"{found.help} (default {shown})"


def _settings(cls: type) -> Iterator[tuple[type, dataclasses.Field[Any], Setting]]:
    """Every setting of ``cls`` with the class declaring it, a nested class's settings in place of its field."""
    for field, found in declared(cls):
        if found.nested is not None:
            yield from _settings(found.nested)
        else:
            yield cls, field, found


def _is_store_true(cls: type, field: dataclasses.Field[Any]) -> bool:
    """A bool that is off unless asked for is a bare flag; one that may be switched either way (or left
    unset, None) is ``--x/--no-x``."""
    return value_types(cls, field.name) == (bool,) and field_default(field) is False


def add_settings(parser: argparse.ArgumentParser, cls: type, asked: tuple[str, ...] = ()) -> None:
    """``--config`` (a YAML of ``cls``) and one flag per setting of ``cls`` that has one.

    ``asked``: fields the stage wants on its command line (or in the YAML); their help shows no default,
    which is only where the app's form starts.
    """
    parser.add_argument("--config", type=Path, help=f"a {cls.__name__} YAML (flags override its fields)")
    for owner, field, found in _settings(cls):
        help_text = _help(field, found, asked=field.name in asked)
        if found.switches:
            group = parser.add_mutually_exclusive_group()
            default = field_default(field)
            for flag, value in found.switches.items():
                chosen = f"{field.name.replace('_', ' ')} {value}" + (" (default)" if value == default else "")
                group.add_argument(flag, action="store_true", default=None, help=f"{chosen}; {found.help}")
            continue
        flag = flag_of(field, found)
        if flag is None:
            continue
        kinds = value_types(owner, field.name)
        if bool in kinds:
            action = "store_true" if _is_store_true(owner, field) else argparse.BooleanOptionalAction
            parser.add_argument(flag, action=action, default=None, help=help_text)
        elif tuple in kinds or list in kinds:
            if found.list_form == "repeat":
                parser.add_argument(flag, action="append", help=help_text)
            else:
                parser.add_argument(flag, help=help_text)
        else:
            scalar = str if str in kinds else next(kind for kind in kinds if kind in _SCALARS)
            parser.add_argument(flag, type=scalar, choices=found.choices, help=help_text)


def _given(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The settings of ``cls`` whose flags the user gave, as field values."""
    values: dict[str, Any] = {}
    for field, found in declared(cls):
        if found.nested is not None:
            nested = _given(found.nested, args)
            if nested:  # filter flags replace the YAML's filters as a whole
                values[field.name] = nested
            continue
        if found.switches:
            for flag, value in found.switches.items():
                if getattr(args, _dest(flag)):
                    values[field.name] = value
            continue
        flag = flag_of(field, found)
        value = getattr(args, _dest(flag), None) if flag else None
        if value is None:
            continue
        if found.list_form == "comma":
            value = tuple(part.strip() for part in value.split(",") if part.strip())
        elif isinstance(value, list):
            value = tuple(value)
        values[field.name] = value
    return values


def config_values(cls: type, args: argparse.Namespace, start: Path | None = None) -> dict[str, Any]:
    """The fields a command line asks for: its ``--config`` YAML (else ``start``, a YAML to begin from, if it
    exists), then every flag the user gave on top. Stages check what they need before building ``cls``."""
    path = args.config or (start if start is not None and start.exists() else None)
    values = to_dict(load_yaml(cls, path)) if path else {}
    values.update(_given(cls, args))
    return values


def config_from_args(cls: type, args: argparse.Namespace) -> Any:
    return cls(**config_values(cls, args))


def _words(flag: str, value: Any, found: Setting, store_true: bool) -> list[str]:
    if isinstance(value, bool):
        return [flag] if value else [] if store_true else ["--no-" + flag.removeprefix("--")]
    if isinstance(value, tuple | list):
        if found.list_form == "repeat":
            return [word for item in value for word in (flag, str(item))]
        return [flag, ",".join(str(item) for item in value)]
    return [flag, str(value)]


def _config_words(config: Any) -> list[str]:
    cls, words = type(config), []
    for field, found in declared(cls):
        value = getattr(config, field.name)
        if found.nested is not None:  # a dict of the nested settings that are set
            for owner, inner, inner_found in _settings(found.nested):
                flag = flag_of(inner, inner_found)
                if flag and value.get(inner.name) is not None:
                    words += _words(flag, value[inner.name], inner_found, _is_store_true(owner, inner))
            continue
        if found.switches:
            words += [flag for flag, choice in found.switches.items() if choice == value]
            continue
        flag = flag_of(field, found)
        if flag is None:
            continue
        if value is None:
            if field_default(field) in (None, dataclasses.MISSING):
                continue
            value = "none"  # switched off where the default is something: the CLI spells it none
        words += _words(flag, value, found, _is_store_true(cls, field))
    return words


def cli_command(kind: str, config: Any, workspace: Path) -> str:
    """The ``forgetless <kind>`` command that runs the same job headless.

    Fields without a flag (YAML and code only) are left out: the app keeps them at their defaults, so the
    command still reproduces the job.
    """
    return shlex.join(["forgetless", kind, *_config_words(config), "--workspace", str(workspace)])
