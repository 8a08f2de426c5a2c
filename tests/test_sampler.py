"""Tests for the batched sampler, on tiny randomly initialised Llama / Gemma 3 models (offline, seconds)."""

from __future__ import annotations

import pytest
import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM
from transformers.generation.logits_process import TopPLogitsWarper

from core.engines import sampler as transformers_backend
from core.engines.sampler import TokenSample, _pick, sample

VOCAB = 96
SHARED = [1, 5, 9, 14, 20]
MIXED = [[1, 5, 9, 14, 20], [1, 7], [1, 30, 31, 32, 33, 34, 35, 36], [1, 44, 45]]


def _peaked(model):
    """Larger weights than the default init give peaked next-token distributions, like a trained model's,
    so greedy comparisons are not decided by float rounding between near-equal logits."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.15)
    return model.eval()


def tiny_llama() -> LlamaForCausalLM:
    """A 2-layer Llama with grouped-query attention, randomly initialised from a fixed seed."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return _peaked(LlamaForCausalLM(config))


def tiny_gemma3() -> Gemma3ForCausalLM:
    """A Gemma 3 with sliding-window layers (window 4) between full-attention ones: the hybrid cache path."""
    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention"] * 2,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return _peaked(Gemma3ForCausalLM(config))


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    return tiny_llama()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors gain nothing from threads, and one thread keeps the tests fast on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _generate_greedy(model, prompt: list[int], max_new_tokens: int, eos: int | None = None) -> list[int]:
    ids = torch.tensor([prompt])
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos,
        pad_token_id=0,
    )
    return out[0, len(prompt) :].tolist()


def test_greedy_matches_generate_for_identical_prompts(model):
    expected = _generate_greedy(model, SHARED, 12)
    results = sample(model, [SHARED] * 3, temperature=0, max_new_tokens=12)
    assert [r.token_ids for r in results] == [expected] * 3
    assert not any(r.stopped for r in results)


def test_greedy_matches_generate_for_different_length_prompts(model):
    results = sample(model, MIXED, temperature=0, max_new_tokens=12)
    for prompt, result in zip(MIXED, results, strict=True):
        assert result.token_ids == _generate_greedy(model, prompt, 12)


def test_greedy_stops_like_generate(model):
    # Stop on the 4th greedy token of each prompt: generate ends there too (and emits the stop token).
    for prompts in ([SHARED] * 2, MIXED):
        for prompt in prompts:
            free = _generate_greedy(model, prompt, 12)
            stop = free[3]
            result = sample(
                model, [prompt, *prompts], temperature=0, max_new_tokens=12, stop_token_ids=[stop]
            )[0]
            expected = _generate_greedy(model, prompt, 12, eos=stop)
            assert expected[-1] == stop and result.stopped
            assert result.token_ids == expected[:-1] == free[: free.index(stop)]


def test_rows_leaving_the_batch_leave_the_others_exact(model):
    # four of six rows stop at their 2nd token: the two left move to a smaller cache and must not notice
    stop = _generate_greedy(model, MIXED[0], 12)[1]
    survivors = [MIXED[2], MIXED[3]]
    assert all(stop not in _generate_greedy(model, p, 12) for p in survivors)
    results = sample(
        model, [MIXED[0]] * 4 + survivors, temperature=0, max_new_tokens=12, stop_token_ids=[stop]
    )
    assert [r.stopped for r in results] == [True] * 4 + [False] * 2
    assert [r.token_ids for r in results[4:]] == [_generate_greedy(model, p, 12) for p in survivors]


def test_sliding_window_model_matches_generate():
    gemma = tiny_gemma3()
    for prompts in ([SHARED] * 3, MIXED):
        results = sample(gemma, prompts, temperature=0, max_new_tokens=10)
        for prompt, result in zip(prompts, results, strict=True):
            assert result.token_ids == _generate_greedy(gemma, prompt, 10)
    # dropping a stopped row from the batch keeps the other rows' sliding-window caches aligned
    stop = _generate_greedy(gemma, MIXED[1], 10)[2]
    results = sample(gemma, MIXED, temperature=0, max_new_tokens=10, stop_token_ids=[stop])
    for prompt, result in zip(MIXED, results, strict=True):
        expected = _generate_greedy(gemma, prompt, 10, eos=stop)
        assert result.token_ids == [t for t in expected if t != stop]
        assert result.stopped == (stop in expected)


def test_same_seed_same_samples_and_different_seed_different(model):
    kwargs = {"temperature": 1.0, "max_new_tokens": 10, "stop_token_ids": [2, 3]}
    for prompts in ([SHARED] * 8, MIXED):
        first = [r.token_ids for r in sample(model, prompts, seed=7, **kwargs)]
        again = [r.token_ids for r in sample(model, prompts, seed=7, **kwargs)]
        other = [r.token_ids for r in sample(model, prompts, seed=8, **kwargs)]
        assert first == again
        assert first != other
        assert len({tuple(t) for t in first}) > 1  # rows are independent draws, not copies of one


def test_stop_tokens_end_rows_and_are_excluded(model):
    stops = list(range(10, 25))  # a sixth of the vocabulary: many rows stop within a few tokens
    counted: list[int] = []
    for prompts in ([SHARED] * 16, MIXED * 4):
        results = sample(
            model, prompts, max_new_tokens=6, stop_token_ids=stops, seed=3, on_token=counted.append
        )
        assert any(r.stopped for r in results) and any(not r.stopped for r in results)
        for r in results:
            assert not set(r.token_ids) & set(stops)
            assert len(r.token_ids) <= 6
            if not r.stopped:
                assert len(r.token_ids) == 6
        assert len(counted) <= 6  # one call per decode step, never past max_new_tokens
        assert sum(counted) == sum(len(r.token_ids) for r in results)
        counted.clear()


def test_max_new_tokens_and_on_token_without_stops(model):
    counted: list[int] = []
    results = sample(model, MIXED, max_new_tokens=9, seed=1, on_token=counted.append)
    assert [len(r.token_ids) for r in results] == [9] * len(MIXED)
    assert not any(r.stopped for r in results)
    assert counted == [len(MIXED)] * 9
    assert sample(model, MIXED, max_new_tokens=0) == [TokenSample([], False)] * len(MIXED)
    assert sample(model, [], max_new_tokens=4) == []


def test_tiny_top_p_is_greedy(model):
    greedy = [r.token_ids for r in sample(model, MIXED, temperature=0, max_new_tokens=10)]
    nucleus = [
        r.token_ids for r in sample(model, MIXED, temperature=1.0, top_p=1e-6, max_new_tokens=10, seed=5)
    ]
    assert nucleus == greedy


def _frequencies(logits: torch.Tensor, temperature: float, top_p: float, draws: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    picks = _pick(logits.expand(draws, -1).clone(), temperature, top_p, generator, draws)
    return torch.bincount(picks, minlength=logits.shape[-1]).double() / draws


def test_pick_follows_the_tempered_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
    for temperature in (1.0, 0.5, 2.0):
        expected = torch.softmax(logits[0].double() / temperature, -1)
        assert torch.allclose(_frequencies(logits, temperature, 1.0, 40_000), expected, atol=0.01)
    # the shared single row (prefill of one prompt for the whole batch) draws independently per row
    shared = _pick(logits.clone(), 1.0, 1.0, torch.Generator().manual_seed(0), 40_000)
    freq = torch.bincount(shared, minlength=6).double() / 40_000
    assert torch.allclose(freq, torch.softmax(logits[0].double(), -1), atol=0.01)


def test_pick_keeps_exactly_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    # mass before each token: 0, .5, .8, .95 -> top_p 0.7 keeps the first two, renormalised
    freq = _frequencies(logits, 1.0, 0.7, 40_000)
    assert freq[2] == freq[3] == 0
    assert abs(freq[0] - 0.5 / 0.8) < 0.01
    # the same distribution as transformers' TopPLogitsWarper (after temperature) on random logits
    torch.manual_seed(1)
    logits = torch.randn(1, 40) * 2
    for temperature, top_p in ((1.0, 0.9), (0.7, 0.5), (1.5, 0.95)):
        warped = TopPLogitsWarper(top_p)(None, logits / temperature)
        expected = torch.softmax(warped[0].double(), -1)
        freq = _frequencies(logits, temperature, top_p, 40_000)
        assert bool((freq[expected == 0] == 0).all())
        assert torch.allclose(freq, expected, atol=0.01)
    # a nucleus wider than the top-k candidates falls back to sorting the whole vocabulary
    flat = torch.zeros(1, 1000)
    flat[0, :600] = 1.0  # 600 equally likely tokens hold ~80% of the mass: ~370 make the nucleus
    picks = _pick(flat.expand(5000, -1).clone(), 1.0, 0.5, torch.Generator().manual_seed(0), 5000)
    assert bool((picks < 600).all()) and len(set(picks.tolist())) > 256


def test_pick_nucleus_of_any_width_in_one_batch(monkeypatch):
    # candidates 4, then 64, then the whole vocabulary: rows needing each level are drawn in one batch
    monkeypatch.setattr(transformers_backend, "_TOP_P_CANDIDATES", 4)
    torch.manual_seed(2)
    logits = torch.randn(3, 100) * torch.tensor([[6.0], [1.5], [0.2]])
    warped = TopPLogitsWarper(0.9)(None, logits.clone())
    assert (warped > -float("inf")).sum(-1).tolist() == [1, 47, 86]  # nucleus sizes: one per level
    draws = 20_000
    picks = _pick(logits.repeat_interleave(draws, 0), 1.0, 0.9, torch.Generator().manual_seed(0), 3 * draws)
    for row, row_picks in enumerate(picks.view(3, draws)):
        freq = torch.bincount(row_picks, minlength=100).double() / draws
        expected = torch.softmax(warped[row].double(), -1)
        assert bool((freq[expected == 0] == 0).all())
        assert torch.allclose(freq, expected, atol=0.01)


def test_greedy_is_argmax():
    logits = torch.tensor([[0.1, 3.0, 2.0], [5.0, 1.0, 0.0]])
    assert _pick(logits, 0.0, 1.0, torch.Generator(), 2).tolist() == [1, 0]
