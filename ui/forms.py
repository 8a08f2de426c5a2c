"""Settings forms: each widget built from its config field's declared setting and keyed by the field's name.

A tab keeps a form as ``{field_name: widget}``. A widget's label, help (as its info), bounds and choices come
from the field's ``setting(...)`` metadata (``core.settings.widget_hints``) and its value from the field's
default, so a setting is described once, on its dataclass. Handlers read a form by name: as keyword
arguments (``inputs_kwargs=form``) or, given the widgets as a Gradio input set, as ``{widget: value}`` read
back with :func:`by_name` (how the shared job controls pass a form on: :func:`wire_form`); they show values
in it as ``{widget: value}`` updates (:func:`to_widgets`), so no list of widgets has to match an argument order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import gradio as gr

from core.errors import ForgetlessError
from core.settings import declared, field_default, form_values, widget_hints
from ui.alerts import warn
from ui.job_controls import JobControls, wire_job
from ui.views.eval_form import run_choices

Form = dict[str, Any]  # field name -> its widget (a gradio component)


def default_value(cls: type, name: str) -> Any:
    """A field's default as a widget holds it (a tuple as the list a multiselect holds)."""
    value = field_default(next(field for field in dataclasses.fields(cls) if field.name == name))
    return list(value) if isinstance(value, tuple) else value


def setting_widget(kind: Callable[..., Any], cls: type, name: str, **options: Any) -> Any:
    """A ``kind`` widget (gr.Number, gr.Slider, ...) for the setting ``cls.<name>``: the field's label, help,
    bounds, choices and default; ``options`` add the widget's own arguments (elem_id, precision) or replace
    a hint where the widget differs from the setting (the aliases a model dropdown offers, how to type in it)."""
    hints = widget_hints(cls, name)
    if kind in (gr.Checkbox, gr.Textbox):  # no bounds or choices on these
        hints = {key: value for key, value in hints.items() if key in ("label", "info")}
    return kind(**{"value": default_value(cls, name), **hints, **options})


def by_name(form: Mapping[str, Any], values: Mapping[Any, Any]) -> dict[str, Any]:
    """A Gradio input set's values (``{widget: value}``) by field name."""
    return {name: values[widget] for name, widget in form.items()}


def to_widgets(form: Mapping[str, Any], values: Mapping[str, Any]) -> dict[Any, Any]:
    """Values by field name as ``{widget: value}`` updates (a handler's return for outputs holding them)."""
    return {form[name]: value for name, value in values.items()}


def settings_of(config: Any) -> dict[str, Any]:
    """Every declared setting of ``config`` as widget values by field name (a form shows the ones it holds)."""
    return form_values(config, [field.name for field, _ in declared(type(config))])


def wire_form(demo: gr.Blocks, controls: JobControls, form: Form, build_config: Callable[[dict[str, Any]], Any],
              to_form: Callable[[Any], Mapping[str, Any]] = settings_of) -> None:
    """A stage's job form wired by name: Start builds the config from the form's values by field name, and a
    page load shows the newest job's settings (``to_form``: a config's values by field name) in the form."""
    wire_job(demo, controls, set(form.values()), lambda values: build_config(by_name(form, values)),
             lambda config: to_widgets(form, {name: value for name, value in to_form(config).items() if name in form}))


def run_picker(workspace: Path, value: Any = None) -> Any:
    """A runs dropdown with fresh choices (and, when given, a value to show); unchanged when listing fails."""
    try:
        choices = run_choices(workspace)
    except (ForgetlessError, OSError) as error:  # e.g. a run folder removed while listing
        warn(f"Could not list the runs: {error}")
        return gr.skip()
    return gr.update(choices=choices) if value is None else gr.update(choices=choices, value=value)
