"""Where a stage's models run: in this process (transformers, the default), on a vLLM server Forgetless starts
and reuses (``--engine vllm``), or on one someone already runs (``--engine-url``).

Every model-facing config holds these settings in its ``serving`` field; how a job is served does not change
what it computes, so it is not part of the job's id (a rerun on another engine resumes the same job) and
each batch records the engine that made it instead.

Drift and held-out perplexity compare whole next-token distributions, which a server does not return: they
(and a LoRA run's merged adapter) stay in-process whatever the engine.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.engines.base import OpenEngine
from core.engines.in_process import in_process_engines
from core.engines.models import load_tokenizer
from core.engines.server import ensure_server
from core.engines.vllm import VllmEngine, vllm_engines
from core.errors import ForgetlessError
from core.settings import setting

ENGINES = ("transformers", "vllm")


@dataclass(frozen=True)
class EngineChoice:
    """The engine settings every model-facing stage takes (``--engine``, ``--engine-url``)."""

    engine: str = setting("transformers", choices=ENGINES, label="Engine",
                          help="where the models run: transformers (in this process) or vllm (a vLLM server "
                               "Forgetless starts from .venv-vllm and reuses; drift stays in-process)")
    engine_url: str | None = setting(None, label="vLLM server URL",
                                     help="use the vLLM server already running at http://HOST:PORT/v1 "
                                          "(implies --engine vllm)")

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ForgetlessError(f"unknown engine '{self.engine}': choose {' or '.join(ENGINES)}")
        if self.engine_url is not None and not self.engine_url.startswith(("http://", "https://")):
            raise ForgetlessError(f"engine URL must look like http://HOST:PORT/v1, got '{self.engine_url}'")

    @property
    def in_process(self) -> bool:
        return self.engine == "transformers" and not self.engine_url

    def describe(self) -> str:
        if self.engine_url:
            return f"vLLM at {self.engine_url}"
        return "managed vLLM" if self.engine == "vllm" else "in-process transformers"


def serving_fields(value: Any) -> dict[str, Any]:
    """A config's ``serving`` value (a dict from YAML or flags, or an EngineChoice) as its set fields, checked."""
    if isinstance(value, EngineChoice):
        choice = value
    elif isinstance(value, Mapping):
        known = {field.name for field in dataclasses.fields(EngineChoice)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ForgetlessError(f"serving has no settings {unknown}: use {sorted(known)}")
        choice = EngineChoice(**{key: item for key, item in value.items() if item is not None})
    else:
        raise ForgetlessError("serving must be a mapping such as {engine: vllm} or {engine_url: http://HOST:PORT/v1}")
    defaults = EngineChoice()
    return {field.name: getattr(choice, field.name) for field in dataclasses.fields(EngineChoice)
            if getattr(choice, field.name) != getattr(defaults, field.name)}


def serving_setting() -> Any:
    """The ``serving`` field of a model-facing config (declared here once; its flags come from EngineChoice)."""
    return setting(default_factory=dict, nested=EngineChoice, flag=None,
                   help="where the models run (engine, engine_url); not part of the job id")


def engine_choice(config: Any) -> EngineChoice:
    return EngineChoice(**getattr(config, "serving", None) or {})


CHOICE_FILE = "engine.json"  # the app's engine choice, per workspace: jobs started from any tab use it


def saved_choice(workspace: Path) -> EngineChoice:
    """The engine the app starts jobs with (in-process until one is chosen; an unreadable file counts as none)."""
    try:
        return EngineChoice(**serving_fields(json.loads((workspace / CHOICE_FILE).read_text(encoding="utf-8"))))
    except (OSError, ValueError, ForgetlessError):
        return EngineChoice()


def save_choice(workspace: Path, choice: EngineChoice) -> None:
    path = workspace / CHOICE_FILE
    staging = path.with_suffix(".tmp")
    staging.write_text(json.dumps(serving_fields(choice)), encoding="utf-8")
    staging.replace(path)  # atomic: a job starting now reads the old choice or the new one, never half


def open_engines(choice: EngineChoice, workspace: Path, *, sampling: bool = False, dtype: str = "auto",
                 on_phase: Callable[[str], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> OpenEngine:
    """Opens an engine per MODEL spec the way ``choice`` says (``sampling``, ``dtype``: see
    `in_process_engines`; a served model's dtype is its server's).

    A managed server is started (or found running) when its model is first opened, reporting ``on_phase``
    while it starts; ``should_stop`` abandons the start.
    """
    if choice.engine_url:
        return vllm_engines(choice.engine_url, workspace)
    if choice.in_process:
        return in_process_engines(workspace, sampling=sampling, dtype=dtype)

    def open_managed(spec: str) -> VllmEngine:
        server = ensure_server(workspace, spec, on_phase=on_phase, should_stop=should_stop)
        return VllmEngine(server.url, server.served, load_tokenizer(spec, workspace))

    return open_managed
