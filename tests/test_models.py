import json
from pathlib import Path

import pytest
import torch

from core import models
from core.errors import ForgetlessError
from core.models import choose_dtype, load_model, load_tokenizer, resolve_model


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


def test_dtype_follows_hardware(monkeypatch):
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: False)
    assert choose_dtype("cpu") == torch.float32
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: True)
    assert choose_dtype("cpu") == torch.bfloat16


def test_loads_local_folder_in_fp32(tiny_model_dir: Path, tmp_path: Path):
    lm = load_model(str(tiny_model_dir), tmp_path)
    if not models.cpu_has_native_bf16():
        assert lm.dtype == torch.float32 and next(lm.model.parameters()).dtype == torch.float32
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


def _packaged_gguf() -> Path:
    source = resolve_model("smollm2-135m-instruct", Path("unused"))
    return Path(source.location) / source.gguf_file


def damaged_ggufs(folder: Path) -> list[Path]:
    """A real GGUF v3 header followed by garbage, and the first 2 MB of the packaged SmolLM2 GGUF."""
    import random
    import struct

    garbage = folder / "garbage.gguf"
    garbage.write_bytes(b"GGUF" + struct.pack("<I", 3) + random.Random(0).randbytes(4096))
    truncated = folder / "truncated.gguf"
    with _packaged_gguf().open("rb") as real:
        truncated.write_bytes(real.read(2_000_000))
    return [garbage, truncated]


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
        patch.setattr("core.models._convert_gguf", lambda *_: pytest.fail("converted the GGUF again"))
        again = load_model("smollm2-135m-instruct", real_workspace)
    assert (cached[0] / "model.safetensors").stat().st_mtime_ns == stamp
    assert torch.equal(again.model.model.embed_tokens.weight, first.model.model.embed_tokens.weight)


def test_sampling_decodes_in_fp32_on_any_cpu(monkeypatch):
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: True)
    assert models.generation_dtype("cpu") == torch.float32 and choose_dtype("cpu") == torch.bfloat16
