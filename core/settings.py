"""Each setting declared once: a config field carries its help, CLI flag and widget hints in its metadata.

A stage's config dataclass declares a field with :func:`setting`; the ``forgetless <stage>`` flags, the
"show CLI command" line (``core.cli.flags``) and the app's form <-> config conversion (below) are all read
from it, so adding a setting is one line on its dataclass.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass
from typing import Any

from core.errors import ForgetlessError

DERIVED = ""  # Setting.flag's default: "--" + the field name with dashes


@dataclass(frozen=True)
class Setting:
    """What the CLI and the app need to know about one config field (its default lives on the field)."""

    help: str
    flag: str | None = DERIVED  # the CLI flag; None: the setting has no flag (YAML and code only)
    list_form: str | None = None  # tuple/list fields on the CLI: "comma" (a,b) or "repeat" (--x a --x b)
    choices: tuple[str, ...] | None = None  # the values the CLI and the app offer
    switches: Mapping[str, str] | None = None  # one flag per value instead of a valued flag: {"--lora": "lora"}
    nested: type | None = None  # a dict field holding this dataclass's settings, each with its own flag
    label: str | None = None  # the widget's label (default: the field name in words)
    minimum: float | None = None  # widget hints for numbers
    maximum: float | None = None
    step: float | None = None


def setting(default: Any = MISSING, *, help: str, default_factory: Any = MISSING, **hints: Any) -> Any:
    """A dataclass field with its :class:`Setting` (``help`` is required: every setting says what it does)."""
    metadata = {"setting": Setting(help=help, **hints)}
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def declared(cls: type) -> list[tuple[dataclasses.Field[Any], Setting]]:
    """The fields of a config class that declare a setting, in declaration order."""
    return [(field, field.metadata["setting"]) for field in dataclasses.fields(cls) if "setting" in field.metadata]


def setting_of(cls: type, name: str) -> Setting:
    for field, found in declared(cls):
        if field.name == name:
            return found
    raise KeyError(f"{cls.__name__}.{name} declares no setting")


def flag_of(field: dataclasses.Field[Any], found: Setting) -> str | None:
    return "--" + field.name.replace("_", "-") if found.flag == DERIVED else found.flag


def label_of(field: dataclasses.Field[Any], found: Setting) -> str:
    return found.label or field.name.replace("_", " ").capitalize()


def field_default(field: dataclasses.Field[Any]) -> Any:
    if field.default is not MISSING:
        return field.default
    if field.default_factory is not MISSING:
        return field.default_factory()
    return MISSING


def value_types(cls: type, name: str) -> tuple[type, ...]:
    """The runtime types a field's annotation allows (``int | None`` -> (int, NoneType))."""
    hint = typing.get_type_hints(cls)[name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return tuple(typing.get_origin(arg) or arg for arg in typing.get_args(hint))
    return (typing.get_origin(hint) or hint,)


def widget_hints(cls: type, name: str) -> dict[str, Any]:
    """Keyword arguments for the field's widget: label, info (the help), and number bounds where declared."""
    field = next(field for field, _ in declared(cls) if field.name == name)
    found = field.metadata["setting"]
    hints = {"label": label_of(field, found), "info": found.help, "minimum": found.minimum,
             "maximum": found.maximum, "step": found.step}
    if found.choices is not None:
        hints["choices"] = list(found.choices)
    return {key: value for key, value in hints.items() if value is not None}


def _form_value(cls: type, field: dataclasses.Field[Any], found: Setting, value: Any) -> Any:
    """A widget's value as the field's type: gr.Number gives floats (or None when cleared), a textbox strings."""
    kinds = value_types(cls, field.name)
    if value is None or (isinstance(value, str) and not value.strip() and str not in kinds):
        if type(None) in kinds:
            return None
        raise ForgetlessError(f"{label_of(field, found)} is empty; type a value")
    if int in kinds and float not in kinds and isinstance(value, float):
        if not value.is_integer():
            raise ForgetlessError(f"{label_of(field, found)} must be a whole number, got {value:g}")
        return int(value)
    if tuple in kinds or list in kinds:
        items = value.split(",") if isinstance(value, str) else value
        return tuple(str(item).strip() for item in items if str(item).strip())
    return value


def config_from_form(cls: type, values: Mapping[str, Any]) -> Any:
    """A config from widget values by field name (fields not in ``values`` keep their defaults)."""
    fields = {field.name: (field, found) for field, found in declared(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise KeyError(f"{cls.__name__} has no settings {unknown}")
    return cls(**{name: _form_value(cls, *fields[name], value) for name, value in values.items()})


def form_values(config: Any, names: typing.Iterable[str]) -> dict[str, Any]:
    """A config's fields as widget values by name (tuples become lists, as multi-selects hold them)."""
    return {name: list(value) if isinstance(value := getattr(config, name), tuple) else value for name in names}
