"""One Start on the Evaluate tab as plain data: a base, tuned runs and shared settings, turned into EvalConfigs.

One Start evaluates the base and then each tuned run with the same suite, limit and seed, so their
numbers compare item for item. Each target becomes one EvalConfig whose job id is its fingerprint (as
``forgetless eval`` computes it), so a repeated Start resumes and reuses what is already scored.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.engines.choice import serving_fields, serving_setting
from core.engines.models import DEFAULT_MODEL
from core.errors import ForgetlessError
from core.eval.evaluation import EvalConfig, resolve_target
from core.mix.domain import BUILTIN_MEDMCQA
from core.settings import setting

DEFAULT_TEST_FRACTION = 0.2  # EvalConfig's default held-out share of a user's domain data


def _as_evaluated(name: str) -> Any:
    """A plan field every target's EvalConfig takes as is: its default, help and widget hints are declared
    there, once (the plan has no CLI of its own: ``forgetless eval`` runs one target)."""
    field = next(field for field in dataclasses.fields(EvalConfig) if field.name == name)
    found = dataclasses.replace(field.metadata["setting"], flag=None)
    return dataclasses.field(default=field.default, metadata={"setting": found})


@dataclass
class EvalPlan:
    """What one Start on the Evaluate tab asks for (the YAML of its background job)."""

    base: str = setting(DEFAULT_MODEL, flag=None, label="Base model",
                        help="the MODEL spec the tuned runs are compared with (evaluated first)")
    runs: tuple[str, ...] = setting((), flag=None, label="Tuned runs",
                                    help="training run folders (or model folders) to evaluate after the base")
    suite: tuple[str, ...] = setting(
        ("general", "domain"), flag=None, label="Suites", choices=("general", "domain", "drift", "ifeval"),
        help="general: 4 benchmarks · domain: answer fit and letter accuracy on MedMCQA test (or your held-out "
             "rows) · drift: KL and perplexity vs the run's base (runs only) · ifeval: 541 instruction prompts "
             "answered and rule-checked (slow: set a limit).")
    limit: int | None = _as_evaluated("limit")
    seed: int = _as_evaluated("seed")
    batch_size: int = _as_evaluated("batch_size")
    dtype: str = _as_evaluated("dtype")  # auto: the measured choice per machine (not part of the job ids)
    job_id: str | None = setting(None, flag=None, help="the plan's own job (eval-queue-...); each target's eval "
                                                       "job has its own id")
    domain: str = _as_evaluated("domain")  # builtin:medmcqa, or a user's file/folder (domain_ppl)
    domain_test_fraction: float = _as_evaluated("domain_test_fraction")  # user data: the held-out share scored
    serving: dict[str, Any] = serving_setting()  # every target's engine (the app's Engine panel sets it)

    def __post_init__(self) -> None:
        self.serving = serving_fields(self.serving)
        self.base = str(self.base or "").strip()
        domain = str(self.domain or "").strip()  # empty: MedMCQA (not the current folder, which "" names as a path)
        self.domain = normalised_spec(domain) if domain else BUILTIN_MEDMCQA
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
        shared: dict[str, Any] = {"limit": self.limit, "seed": self.seed, "batch_size": self.batch_size,
                                  "dtype": self.dtype, "serving": self.serving}
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


def target_label(spec: str) -> str:
    """How a target is named in tables and charts: a folder by its name, an alias as itself."""
    spec = str(spec)
    return Path(spec).name if spec.startswith(("/", ".", "~")) else spec
