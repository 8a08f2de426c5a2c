"""One pipeline YAML: a few shared settings, then one section per stage whose keys are that stage's config fields.

```yaml
name: quickstart                 # names the pipeline's job and its mix and run folders
model: smollm2-135m-instruct     # the model to tune: every stage's model unless its section names another
engine: transformers             # or vllm (a managed server), or engine_url: http://HOST:PORT/v1
reconstruct: {n: 24}             # ReconstructConfig fields
respond: {k: 1}                  # RespondConfig (models default to [model])
judge: {method: probs}           # JudgeConfig
profile: {}                      # ProfileConfig (its models default to model); false: no profiling
mix: {domain: builtin:medmcqa, ratio: 0.5}   # MixConfig; a list of ratios sweeps (one mix and run each)
train: {max_steps: 8}            # TrainConfig
eval: {suite: [general], limit: 20}          # EvalPlan: the base and every run, item for item
```

Each section is checked by its stage's dataclass itself (so the rules live in one place), and a key the stage does
not have, or one the pipeline fills itself (where outputs go, job ids, the engine), is one error line naming it.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from core.config import fingerprint, from_dict
from core.engines.choice import EngineChoice, serving_fields
from core.engines.models import DEFAULT_MODEL
from core.errors import ForgetlessError
from core.eval.plan import EvalPlan
from core.mix.domain import BUILTIN_MEDMCQA
from core.mix.mixing import MixConfig
from core.profile.profiling import ProfileConfig
from core.reconstruct.reconstruction import ReconstructConfig
from core.screen.judge import JudgeConfig
from core.screen.respond import RespondConfig
from core.screen.signals import loaded_models
from core.settings import setting
from core.train.training import TrainConfig

PRESETS_DIR = Path(__file__).resolve().parents[2] / "assets" / "pipelines"
WORKSPACE_PRESETS = "pipelines"  # <workspace>/pipelines/*.yaml: a workspace's own presets
SECTIONS: dict[str, type] = {
    "reconstruct": ReconstructConfig, "respond": RespondConfig, "judge": JudgeConfig, "profile": ProfileConfig,
    "mix": MixConfig, "train": TrainConfig, "eval": EvalPlan,
}
# Keys a section may not set: the pipeline fills them (and says why, so the error line tells what to do instead).
OWNED: dict[str, dict[str, str]] = {
    **{section: {"job_id": "derived from the settings, so a rerun resumes",
                 "serving": "set for every stage by the top-level engine / engine_url"}
       for section in ("reconstruct", "respond", "judge", "profile")},
    "mix": {"out": "the pipeline writes each mix to <workspace>/mixes/<name>-r<ratio>-<hash>"},
    "train": {"data": "the pipeline trains on the mix it froze",
              "out": "the pipeline trains into <workspace>/runs/<name>-r<ratio>-<hash>"},
    "eval": {"base": "the base is the top-level model", "runs": "the pipeline evaluates the runs it trained",
             "job_id": "derived from the settings, so a rerun resumes",
             "serving": "set for every stage by the top-level engine / engine_url"},
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_PLACEHOLDER = "<set by the pipeline>"


def _section_field(help_text: str) -> Any:
    return setting(default_factory=dict, flag=None, help=help_text)


@dataclass
class PipelineConfig:
    """Every stage's settings for one run of the whole method (the YAML of a pipeline job)."""

    name: str = setting("pipeline", flag=None,
                        help="names the pipeline's job and its mix and run folders (letters, digits, - and _)")
    model: str = setting(DEFAULT_MODEL, flag=None,
                         help="the model to tune: reconstructs, answers, is profiled, tokenizes the mix, is "
                              "trained and is the evaluated base, unless a section names another model")
    engine: str | None = setting(None, flag=None, help="transformers (in-process) or vllm (a managed vLLM server) "
                                                       "for every model-facing stage (default: transformers)")
    engine_url: str | None = setting(None, flag=None, help="a vLLM server already running at http://HOST:PORT/v1")
    threads: int = setting(0, flag=None, help="OMP threads of each stage's process (0: the job's default, every "
                                              "core; on shared cores 1 can be several times faster)")
    reconstruct: dict[str, Any] = _section_field("ReconstructConfig fields: N, sampling")
    respond: dict[str, Any] = _section_field("RespondConfig fields: the responders and K")
    judge: dict[str, Any] = _section_field("JudgeConfig fields: the judges and the method")
    profile: dict[str, Any] | bool = _section_field("ProfileConfig fields, or false to skip profiling")
    mix: dict[str, Any] = _section_field("MixConfig fields: domain source, held-out shares, filters, ratio (a "
                                         "list of ratios sweeps)")
    train: dict[str, Any] = _section_field("TrainConfig fields: method, steps, batch, learning rate, LoRA")
    eval: dict[str, Any] = _section_field("EvalPlan fields: suites, limit, seed")

    def __post_init__(self) -> None:
        self.name = str(self.name or "").strip()
        self.model = str(self.model or "").strip()
        if not _NAME.match(self.name):
            raise ForgetlessError(f"name '{self.name}' must be 1-64 letters, digits, - or _ (it names folders)")
        if not self.model:
            raise ForgetlessError("model must be given: an alias, a model folder, a .gguf file or a hub id")
        if not isinstance(self.threads, int) or isinstance(self.threads, bool) or self.threads < 0:
            raise ForgetlessError("threads must be a whole number >= 0 (0: every core)")
        self.engine = (str(self.engine).strip() or None) if self.engine is not None else None
        self.engine_url = (str(self.engine_url).strip() or None) if self.engine_url is not None else None
        self.serving()  # a bad engine is one line now, not a failed stage later
        for section in SECTIONS:
            value = getattr(self, section)
            if value is None:
                value = {}
            if section == "profile" and value is False:
                continue
            if not isinstance(value, dict):
                raise ForgetlessError(f"section '{section}' must be a mapping of {SECTIONS[section].__name__} "
                                      "fields" + (" (or false)" if section == "profile" else ""))
            _check_keys(section, value)
            setattr(self, section, dict(value))
        self.ratios()
        self.validate()

    # -- what each stage runs with ----------------------------------------------------------------------------
    def serving(self) -> dict[str, Any]:
        """Every model-facing stage's ``serving`` value."""
        try:
            return serving_fields(EngineChoice(engine=self.engine or "transformers", engine_url=self.engine_url))
        except ForgetlessError as error:
            raise ForgetlessError(f"engine: {error}") from None

    def reconstruct_config(self) -> ReconstructConfig:
        return _build("reconstruct", {"model": self.model}, self.reconstruct, {"serving": self.serving()})

    def respond_config(self) -> RespondConfig:
        return _build("respond", {"models": (self.model,)}, self.respond, {"serving": self.serving()})

    def judge_config(self) -> JudgeConfig:
        return _build("judge", {}, self.judge, {"serving": self.serving()})

    def profile_config(self) -> ProfileConfig | None:
        """None when the YAML says ``profile: false``."""
        if self.profile is False:
            return None
        defaults = {"difficulty_judge": self.model, "category_model": self.model, "target_model": self.model}
        return _build("profile", defaults, self.profile, {"serving": self.serving()})

    def ratios(self) -> tuple[float, ...]:
        """The mix ratios: one, or a sweep (a list in the YAML), each in [0, 1)."""
        value = self.mix.get("ratio", 0.5)
        values = value if isinstance(value, list | tuple) else [value]
        try:
            ratios = tuple(float(item) for item in values)
        except (TypeError, ValueError):
            raise ForgetlessError(f"mix: ratio must be a number or a list of numbers, got {value!r}") from None
        if not ratios:
            raise ForgetlessError("mix: give at least one ratio")
        if len(set(ratios)) != len(ratios):
            raise ForgetlessError("mix: a ratio is listed twice")
        return ratios

    def mix_config(self, ratio: float, out: str | Path = _PLACEHOLDER) -> MixConfig:
        defaults = {"domain": BUILTIN_MEDMCQA, "tokenizer_model": self.model}
        return _build("mix", defaults, {**self.mix, "ratio": ratio}, {"out": str(out)})

    def train_config(self, data: str | Path = _PLACEHOLDER, out: str | Path = _PLACEHOLDER) -> TrainConfig:
        return _build("train", {"model": self.model}, self.train, {"data": str(data), "out": str(out)})

    def eval_plan(self, runs: tuple[str, ...] = (), job_id: str | None = None) -> EvalPlan:
        """The base and ``runs`` with one suite, limit and seed; the domain is the mix's, with its held-out share."""
        mix = self.mix_config(self.ratios()[0])
        defaults: dict[str, Any] = {"domain": mix.domain}
        if mix.domain_test_fraction > 0:  # the rows the mix left out are the ones scored
            defaults["domain_test_fraction"] = mix.domain_test_fraction
        owned = {"base": self.model, "runs": tuple(str(run) for run in runs), "job_id": job_id,
                 "serving": self.serving()}
        return _build("eval", defaults, self.eval, owned)

    def validate(self) -> None:
        """Build every stage's config once (outputs not known yet are placeholders): each checks its own rules."""
        self.reconstruct_config(), self.respond_config(), self.judge_config(), self.profile_config()
        for ratio in self.ratios():
            self.mix_config(ratio)
        self.train_config(), self.eval_plan()

    def model_specs(self) -> list[str]:
        """Every MODEL spec a stage loads (checked before the pipeline's job folder is written)."""
        profile = self.profile_config()
        specs = [self.reconstruct_config().model, *self.respond_config().models,
                 *loaded_models(self.judge_config().judges), self.train_config().model,
                 *(self.mix_config(ratio).tokenizer_model for ratio in self.ratios())]
        if profile is not None:
            specs += [spec for spec in (profile.difficulty_judge, profile.category_model, profile.target_model)
                      if spec]
        return list(dict.fromkeys(specs))

    def resolved_job_id(self) -> str:
        """The same YAML is the same pipeline job, so a rerun re-attaches to it and skips what finished."""
        return f"pipeline-{self.name}-{fingerprint(self)}"


def _check_keys(section: str, values: dict[str, Any]) -> None:
    cls = SECTIONS[section]
    known = [field.name for field in dataclasses.fields(cls) if field.name not in OWNED.get(section, {})]
    for key in values:
        if key in OWNED.get(section, {}):
            raise ForgetlessError(f"key '{section}.{key}' is set by the pipeline ({OWNED[section][key]}): remove it")
        if key not in known:
            raise ForgetlessError(f"unknown key '{section}.{key}': {cls.__name__} has {', '.join(known)}")


def _as_declared(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """YAML shapes as the dataclass takes them: "a,b" for a comma-list field, one string for a repeat-list one."""
    shaped = dict(values)
    for field in dataclasses.fields(cls):
        found = field.metadata.get("setting")
        value = shaped.get(field.name)
        if found is None or not isinstance(value, str) or found.list_form is None:
            continue
        shaped[field.name] = (tuple(part.strip() for part in value.split(",") if part.strip())
                              if found.list_form == "comma" else (value,))
    return shaped


def _build(section: str, defaults: dict[str, Any], values: dict[str, Any], owned: dict[str, Any]) -> Any:
    """The section's stage config: the pipeline's defaults, the YAML's keys on top, then what the pipeline owns."""
    cls = SECTIONS[section]
    try:
        return from_dict(cls, _as_declared(cls, {**defaults, **values, **owned}))
    except ForgetlessError as error:
        raise ForgetlessError(f"{section}: {error}") from None
    except (TypeError, ValueError) as error:  # a value of the wrong type reached a comparison
        raise ForgetlessError(f"{section}: a value has the wrong type ({str(error).splitlines()[0]})") from None


def pipeline_from_text(text: str, source: str = "the pipeline YAML") -> PipelineConfig:
    """Parse and validate a pipeline YAML; every problem is one ForgetlessError line naming ``source``."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ForgetlessError(f"cannot parse {source}: {' '.join(str(error).split())}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ForgetlessError(f"{source} must be a mapping of settings and stage sections")
    known = [field.name for field in dataclasses.fields(PipelineConfig)]
    unknown = [str(key) for key in data if key not in known]
    if unknown:
        raise ForgetlessError(f"unknown key '{unknown[0]}' in {source}: a pipeline has {', '.join(known)}")
    try:
        return PipelineConfig(**data)
    except ForgetlessError as error:
        raise ForgetlessError(f"{source}: {error}") from None


def load_pipeline(path: Path) -> PipelineConfig:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ForgetlessError(f"cannot read pipeline {path}: {error.strerror or error}") from None
    return pipeline_from_text(text, Path(path).name)


def preset_paths(workspace: Path | None = None) -> dict[str, Path]:
    """The presets by name: the shipped ones (assets/pipelines/*.yaml), then the workspace's own
    (``<workspace>/pipelines/*.yaml``; one with a shipped preset's name replaces it)."""
    folders = [PRESETS_DIR, *([Path(workspace) / WORKSPACE_PRESETS] if workspace is not None else [])]
    return {path.stem: path for folder in folders for path in sorted(folder.glob("*.yaml"))}
