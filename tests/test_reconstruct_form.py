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


def test_corpus_fields_reach_the_config_and_a_bad_file_is_one_message(tmp_path):
    from core.data_paths import ReadableRoots
    from ui.views.reconstruct import with_readable_corpus

    config = reconstruct_config({**FORM, "mode": "corpus", "from_corpus": "builtin:sharegpt", "corpus_rows": 50.0,
                                 "passage_max_words": 80.0})
    assert (config.from_corpus, config.corpus_rows, config.passage_max_words) == ("builtin:sharegpt", 50, 80)
    back = reconstruct_form(config)
    assert (back["mode"], back["from_corpus"], back["corpus_rows"]) == ("corpus", "builtin:sharegpt", 50)
    # the corpus box counts only in corpus mode: free sampling ignores what the hidden box holds
    assert reconstruct_config({**FORM, "mode": "free", "from_corpus": "builtin:sharegpt"}).from_corpus is None
    assert reconstruct_form(reconstruct_config(FORM))["from_corpus"] == ""
    with pytest.raises(ForgetlessError, match="needs a corpus"):
        reconstruct_config({**FORM, "mode": "corpus", "from_corpus": " "})
    FORM_CORPUS = {**FORM, "mode": "corpus"}

    good, empty = tmp_path / "seeds.txt", tmp_path / "empty.jsonl"
    good.write_text("How do tides work?\nWhat is a prime number?\n")
    empty.write_text("")
    assert with_readable_corpus(reconstruct_config({**FORM_CORPUS, "from_corpus": str(good)})).from_corpus == str(good)
    with pytest.raises(ForgetlessError) as error:
        with_readable_corpus(reconstruct_config({**FORM_CORPUS, "from_corpus": str(empty)}))
    assert "\n" not in str(error.value) and "empty" in str(error.value)
    roots = ReadableRoots.for_app(tmp_path / "ws")  # the file lies outside the app's folders: refused first
    with pytest.raises(ForgetlessError, match="outside the folders this app reads"):
        roots.confine(reconstruct_config, "model", "from_corpus")({**FORM_CORPUS, "from_corpus": str(good)})


def test_the_mode_picks_free_steered_or_corpus_and_only_its_own_fields_count(tmp_path):
    from core.store import Store
    from ui.views.reconstruct import mode_fields, with_steerable

    steered = reconstruct_config({**FORM, "mode": "steered", "steer_examples": 4.0, "steer_keep_all": True,
                                  "prefix": "<|user|>\n", "from_corpus": "builtin:sharegpt"})
    assert (steered.steer, steered.steer_examples, steered.steer_keep_all) == ("coverage", 4, True)
    assert steered.prefix is None and steered.from_corpus is None  # the hidden boxes of the other modes
    back = reconstruct_form(steered)
    assert (back["mode"], back["steer_examples"], back["steer_keep_all"]) == ("steered", 4, True)
    assert reconstruct_config({**FORM, "prefix": "<|user|>\n"}).steer is None  # free: the prefix counts
    assert mode_fields("steered") == {"override": False, "corpus": False, "steer": True}
    assert mode_fields("free") == {"override": True, "corpus": False, "steer": False}
    with pytest.raises(ForgetlessError, match="mode must be one of"):
        reconstruct_config({**FORM, "mode": "sideways"})
    # a steered start on a store without a profile is one message before any job
    with pytest.raises(ForgetlessError, match="needs a profile") as error:
        with_steerable(steered, Store.for_workspace(tmp_path))
    assert "\n" not in str(error.value)
    assert with_steerable(reconstruct_config(FORM), Store.for_workspace(tmp_path)).steer is None
