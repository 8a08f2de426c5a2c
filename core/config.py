"""YAML round trip for the per-stage config dataclasses, so every run folder keeps what it ran with."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, TypeVar

import yaml

from core.errors import ForgetlessError

ConfigT = TypeVar("ConfigT")


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def to_yaml(config: Any) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False, allow_unicode=True)


def from_dict(cls: type[ConfigT], data: dict[str, Any]) -> ConfigT:
    names = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ForgetlessError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
    for field in dataclasses.fields(cls):  # YAML turns tuples into lists; keep the declared shape
        if field.name in data and isinstance(data[field.name], list) and "tuple" in str(field.type):
            data[field.name] = tuple(data[field.name])
    return cls(**data)


def load_yaml(cls: type[ConfigT], path: Path) -> ConfigT:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ForgetlessError(f"cannot read config {path}: {str(error).splitlines()[0]}") from error
    if not isinstance(data, dict):
        raise ForgetlessError(f"config {path} must be a mapping of field: value")
    return from_dict(cls, data)


def fingerprint(config: Any, exclude: tuple[str, ...] = ()) -> str:
    """A short stable hash of a config's fields: the same command gets the same job id, so it resumes.

    ``serving`` (which engine runs the models) never counts: a rerun on another engine resumes the job."""
    data = {key: value for key, value in to_dict(config).items() if key not in (*exclude, "serving")}
    return hashlib.sha1(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:10]
