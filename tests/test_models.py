import json
from pathlib import Path

import pytest
import torch

from core.engines import models
from core.engines.models import choose_dtype, load_model, load_tokenizer, resolve_model
from core.errors import ForgetlessError
from tests.helpers import damaged_ggufs


def test_unknown_alias_names_the_known_ones(tmp_path: Path):
    with pytest.raises(ForgetlessError, match="smollm2-135m-instruct"):
        resolve_model("llama-9000", tmp_path)


def test_missing_gguf_and_non_model_paths(tmp_path: Path):
    with pytest.raises(ForgetlessError, match="not found"):
        resolve_model(str(tmp_path / "missing.gguf"), tmp_path)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ForgetlessError, match="not a .gguf"):
        resolve_model(str(tmp_path / "notes.txt"), tmp_path)
    with pytest.raises(ForgetlessError, match="no config.json"):
        resolve_model(str(tmp_path), tmp_path)


def test_hub_ids_are_passed_through(tmp_path: Path):
    source = resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct", tmp_path)
    assert source.location == "HuggingFaceTB/SmolLM2-135M-Instruct" and source.gguf_file is None


# The flags lines of /proc/cpuinfo on the two kinds of CPU (trimmed), and the dtype each must get.
CPUINFO_CASES = [
    pytest.param("flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni\n", torch.float32, id="avx512-no-bf16"),
    pytest.param("flags\t\t: fpu sse2 avx2 fma\n", torch.float32, id="avx2"),
    pytest.param("", torch.float32, id="no-cpuinfo"),
    pytest.param("flags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16 avx512_vbmi2\n", torch.bfloat16,
                 id="avx512-bf16"),
    pytest.param("flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n", torch.bfloat16, id="amx"),
    pytest.param("flags\t\t: fpu avx2 amx_bf16 amx_tile\n", torch.bfloat16, id="amx-only"),
]


def this_machines_cpu_dtype() -> torch.dtype:
    """What this machine's CPU must get: bf16 where its own flags list it (read independently of the code under
    test) and it measures faster than fp32 here."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        flags = set()
    native = bool(flags & {"avx512_bf16", "amx_bf16"})
    return torch.bfloat16 if native and models.cpu_bf16_measures_faster() else torch.float32


@pytest.mark.parametrize(("cpuinfo", "expected"), CPUINFO_CASES)
def test_cpu_dtype_follows_the_cpus_bf16_flags(cpuinfo: str, expected: torch.dtype, monkeypatch):
    def never_measured() -> bool:
        raise AssertionError("measured bf16 on a CPU whose flags do not list it")

    # listed: bf16 only if it measures faster (AVX512-BF16 alone ran ~10x fp32 on one machine, 0.7x on another)
    monkeypatch.setattr(models, "cpu_bf16_measures_faster", lambda: False)
    assert choose_dtype("cpu", cpuinfo) == torch.float32
    monkeypatch.setattr(models, "cpu_bf16_measures_faster", never_measured if expected == torch.float32 else
                        lambda: True)
    assert choose_dtype("cpu", cpuinfo) == expected
    assert models.cpu_has_native_bf16(cpuinfo) == (expected == torch.bfloat16)
    monkeypatch.setattr(models, "_cpuinfo", lambda: cpuinfo)  # as if this machine were that CPU
    assert choose_dtype("cpu") == expected
    # sampling decodes in bf16 only with AMX (measured faster there; slower with AVX512-BF16 alone)
    assert models.generation_dtype("cpu") == (torch.bfloat16 if "amx_bf16" in cpuinfo else torch.float32)
    assert models.generation_dtype("cpu", cpuinfo) == models.generation_dtype("cpu")
    # the name written beside every figure says the same
    assert models.cpu_bf16_support(cpuinfo) == ("AMX bf16" if "amx_bf16" in cpuinfo else "AVX512-BF16"
                                                if "avx512_bf16" in cpuinfo else "no native bf16")


def test_the_cpu_family_and_model_numbers_are_read_from_cpuinfo():
    text = "processor\t: 0\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\nflags\t: avx2\n"
    assert models.cpu_family_model(text) == "25/17"  # not confused by the "model name" line
    assert models.cpu_family_model("model name\t: AMD EPYC\n") is None


def test_the_cpu_model_name_is_read_from_cpuinfo():
    assert models.cpu_model_name("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Gold  \nflags\t: avx2\n") == \
        "Intel(R) Xeon(R) Gold"
    assert models.cpu_model_name("flags\t: avx2\n")  # none listed: the platform's string, never empty


def test_this_machine_gets_the_dtype_of_its_cpu():
    assert choose_dtype("cpu") == this_machines_cpu_dtype()


def test_the_bf16_probe_is_measured_once_and_draws_no_random_numbers():
    models.cpu_bf16_measures_faster.cache_clear()
    rng = torch.get_rng_state()
    assert isinstance(models.cpu_bf16_measures_faster(), bool)
    assert torch.equal(torch.get_rng_state(), rng)  # a seeded run is the same whether or not it measured first
    models.cpu_bf16_measures_faster()
    assert models.cpu_bf16_measures_faster.cache_info().hits == 1


def test_loads_local_folder_in_the_hardware_dtype(tiny_model_dir: Path, tmp_path: Path):
    lm = load_model(str(tiny_model_dir), tmp_path)
    if lm.device == "cpu":
        expected = this_machines_cpu_dtype()
    else:
        expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert lm.dtype == expected and next(lm.model.parameters()).dtype == expected
    assert lm.tokenizer.chat_template and lm.name == tiny_model_dir.name


def test_unsupported_architecture_is_one_clear_error(tiny_model_dir: Path, tmp_path: Path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in tiny_model_dir.iterdir():
        (broken / item.name).write_bytes(item.read_bytes())
    config = json.loads((broken / "config.json").read_text())
    config["model_type"] = "quantum-llm"
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(ForgetlessError) as caught:
        load_model(str(broken), tmp_path)
    assert "quantum-llm" in str(caught.value) and "\n" not in str(caught.value)


def test_corrupt_gguf_is_one_clear_error(tmp_path: Path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all")
    with pytest.raises(ForgetlessError, match="bad.gguf"):
        load_tokenizer(str(bad), tmp_path)


def test_damaged_gguf_names_the_file(tmp_path: Path):
    for bad in damaged_ggufs(tmp_path):
        for load in (load_tokenizer, load_model):
            with pytest.raises(ForgetlessError) as caught:
                load(str(bad), tmp_path / "ws")
            message = str(caught.value)
            assert message.startswith(f"{bad} is not a readable GGUF file (corrupt or truncated): "), message
            assert "\n" not in message
    assert not list((tmp_path / "ws").glob("models/*"))  # no half-converted cache left behind


@pytest.mark.integration
def test_smollm2_gguf_converts_once_then_loads_from_the_cache(real_workspace: Path):
    first = load_model("smollm2-135m-instruct", real_workspace)
    assert first.model.config.model_type == "llama"
    cached = list((real_workspace / "models").glob("SmolLM2-135M-Instruct*"))
    assert cached and (cached[0] / "model.safetensors").exists()
    stamp = (cached[0] / "model.safetensors").stat().st_mtime_ns
    with pytest.MonkeyPatch.context() as patch:  # the second load reads the cache: no conversion
        patch.setattr("core.engines.models._convert_gguf", lambda *_: pytest.fail("converted the GGUF again"))
        again = load_model("smollm2-135m-instruct", real_workspace)
    assert (cached[0] / "model.safetensors").stat().st_mtime_ns == stamp
    assert torch.equal(again.model.model.embed_tokens.weight, first.model.model.embed_tokens.weight)
