"""The Evaluate tab's form as plain data: widget values to an EvalPlan and back, and the runs to pick from."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from core.eval.plan import EvalPlan
from core.settings import config_from_form, form_values, setting_of
from core.train.runs import list_runs

UI_SUITES = setting_of(EvalPlan, "suite").choices  # the checkbox choices; single tasks stay a CLI feature


def plan_from_form(values: Mapping[str, Any]) -> EvalPlan:
    """The widgets' values, by field name, as a validated plan (an empty limit means every item; an empty
    domain, MedMCQA; an emptied held-out share, 0)."""
    form = dict(values)
    if "domain" in form:
        form["domain"] = form["domain"] or ""
    if "domain_test_fraction" in form:
        form["domain_test_fraction"] = form["domain_test_fraction"] or 0.0
    return config_from_form(EvalPlan, form)


def plan_form(plan: EvalPlan, names: Iterable[str]) -> dict[str, Any]:
    """A plan's ``names`` fields back as widget values (the page shows what a job runs with); suites the
    checkboxes do not offer (single tasks) are left out."""
    form = form_values(plan, names)
    if "suite" in form:
        form["suite"] = [part for part in plan.suite if part in UI_SUITES]
    return form


def evaluable(folder: Path) -> bool:
    """A run with something to evaluate: a saved LoRA adapter or a full model."""
    return (folder / "adapter").is_dir() or (folder / "model" / "config.json").exists()


def run_choices(workspace: Path) -> list[tuple[str, str]]:
    """(label, folder) of every finished run under ``<workspace>/runs``, newest first, for the runs picker."""
    runs = list_runs(workspace)
    return [(f"{row.name} · {row.method} · {row.status}", str(Path(row.folder).resolve()))
            for row in runs.itertuples(index=False)
            if row.status not in ("starting", "running") and evaluable(Path(row.folder))]
