from pathlib import Path

import pytest

from core.engines.in_process import InProcessEngine
from core.engines.models import load_model
from core.errors import ForgetlessError
from core.reconstruct.reconstruction import ReconstructConfig, batch_seed, clean_instruction, run_reconstruction
from core.store import Store, text_key

STOP = ("<|im_end|>",)
MARKERS = ("<|im_start|>", "<|im_end|>")


def clean(text: str, stopped: bool = True):
    return clean_instruction(text, stopped, STOP, MARKERS, min_chars=12, max_chars=200)


@pytest.mark.parametrize(
    ("text", "stopped", "expected"),
    [
        ("  Write a haiku about autumn.  ", True, ("Write a haiku about autumn.", None)),
        ("", True, (None, "empty")),
        ("   \n ", True, (None, "empty")),
        ("Write a haiku about", False, (None, "fragment")),
        ("Write a haiku<|im_end|>junk after", False, ("Write a haiku", None)),
        ("Explain <|im_start|>assistant hi there", True, (None, "template_token")),
        ("Hi there", True, (None, "too_short")),
        ("Supercalifragilistic", True, (None, "too_short")),
        ("word " * 100, True, (None, "too_long")),
    ],
)
def test_clean_instruction(text, stopped, expected):
    assert clean(text, stopped) == expected


def test_config_validation_and_stable_job_id():
    with pytest.raises(ForgetlessError, match="top-p"):
        ReconstructConfig(top_p=0)
    with pytest.raises(ForgetlessError, match="n must"):
        ReconstructConfig(n=0)
    assert ReconstructConfig(n=5).resolved_job_id() == ReconstructConfig(n=5).resolved_job_id()
    assert ReconstructConfig(n=5).resolved_job_id() != ReconstructConfig(n=5, seed=1).resolved_job_id()
    assert ReconstructConfig(n=5, job_id="mine").resolved_job_id() == "mine"


def test_batch_seeds_differ_by_job_and_batch():
    assert batch_seed(0, "a", 0) != batch_seed(0, "a", 1) != batch_seed(0, "b", 1)
    assert batch_seed(0, "a", 3) == batch_seed(0, "a", 3)


def serving(lm):
    """An engine opener that serves the one loaded model (loading is not what these tests check)."""
    return lambda spec: InProcessEngine(lm)


def tiny_config(**overrides) -> ReconstructConfig:
    values = {"model": "", "n": 6, "batch_size": 16, "max_new_tokens": 24, "seed": 1, "min_chars": 6}
    return ReconstructConfig(**{**values, **overrides})


def test_run_stores_exactly_n_with_provenance_and_resumes(tiny_model_dir: Path, tmp_path: Path):
    lm = load_model(str(tiny_model_dir), tmp_path)
    store = Store.for_workspace(tmp_path)
    config = tiny_config(model=str(tiny_model_dir), n=4)
    updates = []
    summary = run_reconstruction(config, store, serving(lm), on_progress=updates.append)
    assert summary["stored"] == 4 and summary["new"] == 4 and not summary["cancelled"]
    assert summary["db"] == str(store.path) and summary["tokens_per_s"] > 0
    assert sum(summary["dropped"].values()) + 4 <= summary["sampled"]
    assert updates and updates[-1]["stored"] == 4
    rows = store.page_instructions(job_id=config.resolved_job_id())
    assert len(rows) == 4 and {r["model"] for r in rows} == {lm.name}
    # raising the target continues the same job: earlier rows stay, new ones are not duplicates
    bigger = tiny_config(model=str(tiny_model_dir), n=7, job_id=config.resolved_job_id())
    again = run_reconstruction(bigger, store, serving(lm))
    assert again["stored"] == 7 and again["new"] == 3
    texts = [r["text"] for r in store.page_instructions(job_id=config.resolved_job_id(), page_size=100)]
    assert len(texts) == 7 and len({text_key(t) for t in texts}) == 7


def test_cancel_stops_before_target(tiny_model_dir: Path, tmp_path: Path):
    lm = load_model(str(tiny_model_dir), tmp_path)
    store = Store.for_workspace(tmp_path)
    summary = run_reconstruction(tiny_config(model=str(tiny_model_dir), n=50), store, serving(lm),
                                 should_stop=lambda: True)
    assert summary["cancelled"] and summary["stored"] == 0


def test_barren_sampling_gives_up_with_clear_error(tiny_model_dir: Path, tmp_path: Path):
    lm = load_model(str(tiny_model_dir), tmp_path)
    store = Store.for_workspace(tmp_path)
    impossible = tiny_config(model=str(tiny_model_dir), batch_size=2, max_new_tokens=4, min_chars=1900)
    with pytest.raises(ForgetlessError, match="no new instruction"):
        run_reconstruction(impossible, store, serving(lm))
    assert store.count_instructions() == 0
