"""The engine seam's in-process engine on a tiny random model: sampling, next-token and continuation scores."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from core.engines.base import SampleSettings, answer_probabilities, cut_at_stop, group_probabilities
from core.engines.in_process import InProcessEngine, in_process_engines
from core.engines.models import generation_dtype, load_model
from core.engines.next_token import answer_token_groups, next_token_probs, shared_prefix_length


@pytest.fixture(scope="module")
def lm(tiny_model_dir: Path, tmp_path_factory):
    return load_model(str(tiny_model_dir), tmp_path_factory.mktemp("ws"), dtype=torch.float32)


@pytest.fixture
def engine(lm) -> InProcessEngine:
    return InProcessEngine(lm)


def _ids(lm, text: str) -> list[int]:
    return lm.tokenizer(text, add_special_tokens=False)["input_ids"]


def test_sample_gives_n_samples_per_prompt_in_prompt_order_and_a_seed_repeats_them(engine, lm) -> None:
    prompts = [_ids(lm, "please write a poem"), _ids(lm, "how to cook")]
    settings = SampleSettings(max_new_tokens=6, n=3, seed=7, stop_token_ids=(lm.tokenizer.eos_token_id,))
    first = engine.sample(prompts, settings)
    assert len(first) == 6
    assert first == engine.sample(prompts, settings)
    other = engine.sample(prompts, SampleSettings(max_new_tokens=6, n=3, seed=8))
    assert [s.token_ids for s in other] != [s.token_ids for s in first]
    # each prompt's samples are its own: the same rows sampled one prompt at a time come out the same way
    from core.engines import sampler

    rows = [prompts[0]] * 3 + [prompts[1]] * 3
    direct = sampler.sample(lm.model, rows, max_new_tokens=6, seed=7, stop_token_ids=[lm.tokenizer.eos_token_id])
    assert [s.token_ids for s in first] == [d.token_ids for d in direct]
    for item in first:
        assert item.text == lm.tokenizer.decode(item.token_ids, skip_special_tokens=True)
        assert len(item.token_ids) <= 6


def test_sample_cuts_text_at_the_first_stop_string_and_marks_it_stopped(engine, lm) -> None:
    prompt = [_ids(lm, "write a story about")]
    free = engine.sample(prompt, SampleSettings(max_new_tokens=24, n=4, seed=3))
    words = [item.text.split() for item in free]
    row, word = next((r, w[2]) for r, w in enumerate(words) if len(w) >= 4)
    cut = engine.sample(prompt, SampleSettings(max_new_tokens=24, n=4, seed=3, stop=(word, "no-such-stop")))
    assert cut[row].text == free[row].text[: free[row].text.index(word)]
    assert cut[row].stopped and word not in cut[row].text
    assert cut[row].token_ids == free[row].token_ids  # in-process decoding stops on stop tokens only


def test_sample_keeps_special_tokens_when_asked(engine, lm) -> None:
    prompt = [_ids(lm, "<|im_start|> user")]
    kept = engine.sample(prompt, SampleSettings(max_new_tokens=30, n=8, seed=1, skip_special_tokens=False))
    decoded = [lm.tokenizer.decode(item.token_ids, skip_special_tokens=False) for item in kept]
    assert [item.text for item in kept] == decoded


def test_next_token_logprobs_match_a_direct_forward_pass(engine, lm) -> None:
    head = _ids(lm, "please write a poem about math and history for my email " * 2)
    prompts = [head + _ids(lm, "and tips"), head + _ids(lm, "give me the best way to learn python"), head]
    tokens = [lm.tokenizer.convert_tokens_to_ids(digit) for digit in "12345"]
    assert shared_prefix_length(prompts) >= 16  # the judge's path: the shared head runs once
    got = engine.next_token_logprobs(prompts, tokens)
    mixed = prompts[:2] + [_ids(lm, "why")]
    for prompt, row in [*zip(prompts, got, strict=True), *zip(mixed, engine.next_token_logprobs(mixed, tokens),
                                                             strict=True)]:
        with torch.inference_mode():
            logits = lm.model(input_ids=torch.tensor([prompt])).logits[0, -1].double()
        want = logits.log_softmax(-1)[tokens].tolist()
        assert row == pytest.approx(want, abs=1e-5)
    probs = group_probabilities(got[0], tokens, [[t] for t in tokens])
    assert probs == pytest.approx([math.exp(v) for v in got[0]])
    assert engine.next_token_logprobs([], tokens) == []


def test_answer_probabilities_are_the_old_next_token_probs(engine, lm) -> None:
    prompts = [_ids(lm, "please rate the poem"), _ids(lm, "how")]
    groups = answer_token_groups(lm.tokenizer, list("12345"))
    want = next_token_probs(lm.model, prompts, groups, pad_id=lm.tokenizer.pad_token_id).tolist()
    got = answer_probabilities(engine, prompts, list("12345"))
    for got_row, want_row in zip(got, want, strict=True):
        assert got_row == pytest.approx(want_row, rel=1e-5)


def _direct_continuation(lm, context: str, continuation: str) -> list[float]:
    context_ids, continuation_ids = _ids(lm, context), _ids(lm, continuation)
    ids = torch.tensor([context_ids + continuation_ids])
    with torch.inference_mode():
        logprobs = lm.model(input_ids=ids).logits[0].float().log_softmax(-1)
    return [float(logprobs[len(context_ids) - 1 + k, token]) for k, token in enumerate(continuation_ids)]


def test_continuation_logprobs_match_a_direct_forward_pass(engine, lm) -> None:
    contexts = ["please write a poem", "how to cook", "explain the history of math for my", "why"]
    continuations = [" about math", " a recipe for my health", " summary", " is the story short"]
    got = engine.continuation_logprobs(contexts, continuations)
    for context, continuation, values in zip(contexts, continuations, got, strict=True):
        want = _direct_continuation(lm, context, continuation)
        assert len(values) == len(want)
        assert sum(values) == pytest.approx(sum(want), abs=1e-4)


def test_options_of_one_context_share_its_pass_and_score_the_same(engine, lm) -> None:
    contexts = ["the task is"] * 3 + ["give me a"] * 2
    options = [" code", " a poem about math", " math", " recipe", " list of tips"]
    got = engine.continuation_logprobs(contexts, options)
    for context, option, values in zip(contexts, options, got, strict=True):
        assert sum(values) == pytest.approx(sum(_direct_continuation(lm, context, option)), abs=1e-4)
    assert engine.continuation_logprobs([], []) == []
    with pytest.raises(ValueError, match="differ in length"):
        engine.continuation_logprobs(["a"], [])


def test_closed_engine_refuses_work_and_opener_loads_by_spec(lm, tiny_model_dir: Path, tmp_path: Path) -> None:
    with InProcessEngine(lm) as engine:
        assert engine.name == lm.name and engine.tokenizer is lm.tokenizer
    with pytest.raises(RuntimeError, match="closed"):
        engine.sample([[1]], SampleSettings(max_new_tokens=1))
    opened = in_process_engines(tmp_path, sampling=True)(str(tiny_model_dir))
    assert opened.name == tiny_model_dir.name and opened.lm.dtype == generation_dtype("cpu")  # sampling's dtype
    opened.close()
    for dtype in ("float32", "bfloat16"):  # a pinned dtype wins over sampling's and the hardware's
        opened = in_process_engines(tmp_path, sampling=True, dtype=dtype)(str(tiny_model_dir))
        assert opened.lm.dtype == getattr(torch, dtype) and next(opened.lm.model.parameters()).dtype == opened.lm.dtype
        opened.close()


def test_cut_at_stop_and_group_probabilities() -> None:
    assert cut_at_stop("answer\n### Instruction: more", ("\n### ",)) == ("answer", True)
    assert cut_at_stop("answer", ("\n### ",)) == ("answer", False)
    assert cut_at_stop("a STOP b END", ("END", "STOP")) == ("a ", True)
    assert group_probabilities([math.log(0.25), math.log(0.5)], [4, 9], [[9], [4, 9]]) == pytest.approx([0.5, 0.75])


class _SpacedDigits:
    """A tokenizer whose " 4" is one token (GPT-2 style) or a lone space and then the digit (SmolLM2, Gemma)."""

    def __init__(self, space_is_own_token: bool) -> None:
        self.split = space_is_own_token

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        if self.split:
            return {"input_ids": [ord(ch) for ch in text]}
        return {"input_ids": [hash(word) % 1000 for word in text.replace(" ", " _").split()]}


def test_the_rating_lead_ends_where_the_digit_is_the_next_token() -> None:
    from core.engines.next_token import rating_lead

    assert rating_lead(_SpacedDigits(space_is_own_token=True), "Rating: ") == "Rating: "
    assert rating_lead(_SpacedDigits(space_is_own_token=False), "Rating: ") == "Rating:"
    assert rating_lead(_SpacedDigits(space_is_own_token=True), "Rating (1-5): ") == "Rating (1-5): "


def test_the_packaged_judges_prompts_keep_the_space_before_the_digit(real_workspace: Path) -> None:
    from core.engines.models import load_tokenizer
    from core.screen.judge import judge_prompt

    for spec in ("smollm2-135m-instruct", "gemma-3-270m"):  # both spell " 4" as a lone space, then "4"
        text, _ = judge_prompt(load_tokenizer(spec, real_workspace), "Say hi.", "Hi!")
        assert text.endswith(": "), (spec, text[-20:])
