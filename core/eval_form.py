"""The Evaluate tab's form as plain data: a base, tuned runs and shared settings, turned into EvalConfigs.

One Start evaluates the base and then each tuned run with the same suite, limit and seed, so their
numbers compare item for item. Each target becomes one EvalConfig whose job id is its fingerprint (as
``forgetless eval`` computes it), so a repeated Start resumes and reuses what is already scored.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.dashboard import required_int
from core.domain import BUILTIN_MEDMCQA
from core.errors import ForgetlessError
from core.evaluate import EvalConfig, resolve_target
from core.models import DEFAULT_MODEL
from core.train_runs import list_runs

UI_SUITES = ("general", "domain", "drift", "ifeval")  # the checkbox choices; single tasks stay a CLI feature
DEFAULT_TEST_FRACTION = 0.2  # EvalConfig's default held-out share of a user's domain data


@dataclass
class EvalPlan:
    """What one Start on the Evaluate tab asks for (the YAML of its background job)."""

    base: str = DEFAULT_MODEL  # MODEL spec the tuned runs are compared with (evaluated first)
    runs: tuple[str, ...] = ()  # training run folders (or model folders) to evaluate after the base
    suite: tuple[str, ...] = ("general", "domain")  # general, domain, drift
    limit: int | None = None  # items per task (a seeded subsample); None: all
    seed: int = 0
    batch_size: int = 16
    job_id: str | None = None  # the plan's own job (eval-queue-...); each target's eval job has its own id
    domain: str = BUILTIN_MEDMCQA  # the domain suite's data: builtin:medmcqa, or a user's file/folder (domain_ppl)
    domain_test_fraction: float = DEFAULT_TEST_FRACTION  # user data: the held-out share scored (as mixed with)

    def __post_init__(self) -> None:
        self.base = str(self.base or "").strip()
        self.domain = normalised_spec(str(self.domain or "")) or BUILTIN_MEDMCQA
        # builtin:medmcqa has its fixed split: the share is ignored there (kept at the default, as the CLI does).
        self.domain_test_fraction = (DEFAULT_TEST_FRACTION if self.domain == BUILTIN_MEDMCQA
                                     else float(self.domain_test_fraction or 0.0))
        if isinstance(self.runs, str):
            self.runs = (self.runs,)
        self.runs = tuple(dict.fromkeys(normalised_spec(str(run)) for run in self.runs if str(run).strip()))
        if isinstance(self.suite, str):
            self.suite = tuple(self.suite.split(","))
        self.suite = tuple(dict.fromkeys(part.strip().lower() for part in self.suite if part.strip()))
        if not self.base:
            raise ForgetlessError("pick a base model to compare the runs with")
        if not self.suite:
            raise ForgetlessError("pick at least one suite: general, domain, drift or ifeval")
        if self.suite == ("drift",) and not self.runs:
            raise ForgetlessError("drift compares a tuned run with its base: pick at least one run")
        if "domain" in self.suite and self.domain != BUILTIN_MEDMCQA and not Path(self.domain).exists():
            raise ForgetlessError(f"no domain data at {self.domain}: pick builtin:medmcqa or an existing file")
        self.configs()  # every target validated now, so a bad run folder is a message, not a failed job

    def configs(self) -> list[EvalConfig]:
        """One EvalConfig per target: the base (without drift, which needs a tuned model), then each run."""
        shared: dict[str, Any] = {"limit": self.limit, "seed": self.seed, "batch_size": self.batch_size}
        if "domain" in self.suite:  # otherwise the data is unused: left out, so the job ids stay the CLI's default
            shared.update(domain=self.domain, domain_test_fraction=self.domain_test_fraction)
        configs = []
        base_suite = tuple(part for part in self.suite if part != "drift")
        if base_suite:
            configs.append(EvalConfig(model=self.base, suite=base_suite, **shared))
        for run in self.runs:
            config = EvalConfig(model=run, suite=self.suite, **shared)
            target = resolve_target(config)  # raises for a run folder without adapter/ or model/
            if target.run_dir is None:  # a plain model folder: its drift reference is the chosen base
                config = dataclasses.replace(config, base=self.base)
            configs.append(config)
        unique = {config.model: config for config in configs}  # the base picked again as a run: once
        return [dataclasses.replace(config, job_id=config.resolved_job_id()) for config in unique.values()]


def normalised_spec(spec: str) -> str:
    """A spec naming an existing path becomes absolute, as EvalConfig stores it (so results match by model)."""
    path = Path(spec.strip()).expanduser()
    return str(path.resolve()) if path.exists() else spec.strip()


def plan_from_form(base: str | None, runs: list[str] | None, suites: list[str] | None, limit: float | None,
                   seed: float | None, batch_size: float | None, domain: str | None = BUILTIN_MEDMCQA,
                   domain_test_fraction: float | None = DEFAULT_TEST_FRACTION) -> EvalPlan:
    """The widgets' values as a validated plan (an empty limit means every item; an empty domain, MedMCQA)."""
    return EvalPlan(base=base or "", runs=tuple(runs or ()), suite=tuple(suites or ()),
                    limit=None if limit is None else int(limit), seed=required_int(seed, "Seed"),
                    batch_size=required_int(batch_size, "Batch size"), domain=domain or BUILTIN_MEDMCQA,
                    domain_test_fraction=0.0 if domain_test_fraction is None else float(domain_test_fraction))


def plan_form(plan: EvalPlan) -> tuple[Any, ...]:
    """A plan back as widget values, in ``plan_from_form``'s order (the page shows what a job runs with)."""
    return (plan.base, list(plan.runs), [part for part in plan.suite if part in UI_SUITES], plan.limit, plan.seed,
            plan.batch_size, plan.domain, plan.domain_test_fraction)


def target_label(spec: str) -> str:
    """How a target is named in tables and charts: a folder by its name, an alias as itself."""
    spec = str(spec)
    return Path(spec).name if spec.startswith(("/", ".", "~")) else spec


def evaluable(folder: Path) -> bool:
    """A run with something to evaluate: a saved LoRA adapter or a full model."""
    return (folder / "adapter").is_dir() or (folder / "model" / "config.json").exists()


def run_choices(workspace: Path) -> list[tuple[str, str]]:
    """(label, folder) of every finished run under ``<workspace>/runs``, newest first, for the runs picker."""
    runs = list_runs(workspace)
    return [(f"{row.name} · {row.method} · {row.status}", str(Path(row.folder).resolve()))
            for row in runs.itertuples(index=False)
            if row.status not in ("starting", "running") and evaluable(Path(row.folder))]
