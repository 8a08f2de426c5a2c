"""Settings declared once: field metadata read back, and widget values turned into a config by field name."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from core.errors import ForgetlessError
from core.settings import config_from_form, declared, flag_of, form_values, setting, setting_of, widget_hints


@dataclass
class Toy:
    n: int = setting(10, help="how many", minimum=1)
    limit: int | None = setting(None, help="items per task")
    rate: float = setting(0.5, help="a share", flag="--share")
    models: tuple[str, ...] = setting(("a",), help="model specs", list_form="comma")
    hidden: int = setting(3, help="not on the CLI", flag=None)
    plain: int = 0  # declares no setting


def test_declared_reads_every_setting_in_order_and_derives_flags() -> None:
    names = [field.name for field, _ in declared(Toy)]
    assert names == ["n", "limit", "rate", "models", "hidden"]
    flags = {field.name: flag_of(field, found) for field, found in declared(Toy)}
    assert flags == {"n": "--n", "limit": "--limit", "rate": "--share", "models": "--models", "hidden": None}
    assert setting_of(Toy, "rate").help == "a share"
    with pytest.raises(KeyError):
        setting_of(Toy, "plain")


def test_widget_hints_carry_label_help_and_bounds() -> None:
    assert widget_hints(Toy, "n") == {"label": "N", "info": "how many", "minimum": 1}


def test_config_from_form_coerces_widget_values_by_field_type() -> None:
    config = config_from_form(Toy, {"n": 4.0, "limit": None, "rate": 0.25, "models": "x, y,"})
    assert (config.n, config.limit, config.rate, config.models) == (4, None, 0.25, ("x", "y"))
    assert isinstance(config.n, int)
    assert form_values(config, ["n", "models"]) == {"n": 4, "models": ["x", "y"]}


def test_config_from_form_refuses_empty_and_fractional_whole_numbers() -> None:
    with pytest.raises(ForgetlessError, match="N is empty"):
        config_from_form(Toy, {"n": None})
    with pytest.raises(ForgetlessError, match="whole number"):
        config_from_form(Toy, {"n": 2.5})
    with pytest.raises(KeyError):
        config_from_form(Toy, {"plain": 1})
