"""The Reconstruct tab's form → ReconstructConfig by field name, including the pre-query override fields."""

import pytest

from core.errors import ForgetlessError
from ui.views.reconstruct import reconstruct_config, reconstruct_form

FORM = {"model": "smollm2-135m-instruct", "n": 8.0, "batch_size": 4.0, "temperature": 1.0, "top_p": 1.0,
        "max_new_tokens": 64.0, "seed": 0.0, "prefix": "  ", "stop": ""}


def test_empty_override_fields_mean_derive_from_template():
    config = reconstruct_config(FORM)
    assert config.prefix is None and config.stop is None
    assert (config.n, config.batch_size, config.max_new_tokens) == (8, 4, 64)


def test_override_fields_reach_the_config_and_come_back():
    config = reconstruct_config({**FORM, "prefix": "<|user|>\n", "stop": "<|end|>\n\n</s>\n"})
    assert config.prefix == "<|user|>\n"
    assert config.stop == ("<|end|>", "</s>")
    back = reconstruct_form(config)
    assert back["prefix"] == "<|user|>\n" and back["stop"] == "<|end|>\n</s>" and back["n"] == 8


def test_missing_number_is_one_clear_error():
    with pytest.raises(ForgetlessError, match="is empty"):
        reconstruct_config({**FORM, "n": None})
