"""The Reconstruct tab's form → ReconstructConfig, including the pre-query override fields."""

import pytest

from core.errors import ForgetlessError
from ui.reconstruct_tab import _config_from_form


def test_empty_override_fields_mean_derive_from_template():
    config = _config_from_form("smollm2-135m-instruct", 8, 4, 1.0, 1.0, 64, 0, "  ", "")
    assert config.prefix is None and config.stop is None


def test_override_fields_reach_the_config():
    config = _config_from_form("m", 8, 4, 1.0, 1.0, 64, 0, "<|user|>\n", "<|end|>\n\n</s>\n")
    assert config.prefix == "<|user|>\n"
    assert config.stop == ("<|end|>", "</s>")


def test_missing_number_is_one_clear_error():
    with pytest.raises(ForgetlessError, match="N is empty"):
        _config_from_form("m", None, 4, 1.0, 1.0, 64, 0, "", "")
