from pathlib import Path

import pytest
import torch

from core.engines.models import load_model
from core.engines.next_token import answer_token_groups, next_token_probs, shared_prefix_length


def test_shared_prefix_length_leaves_a_token_per_prompt():
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5]]) == 3
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2
    assert shared_prefix_length([[9, 2], [1, 2]]) == 0


def test_prefix_sharing_gives_the_same_probabilities_as_separate_passes(tiny_model_dir: Path, tmp_path: Path):
    lm = load_model(str(tiny_model_dir), tmp_path)
    head = lm.tokenizer("please write a poem about math and history for my email " * 2,
                        add_special_tokens=False)["input_ids"]
    tails = [[5, 7], [9, 11, 13, 15, 17], [20]]
    prompts = [head + tail for tail in tails]
    groups = answer_token_groups(lm.tokenizer, ("1", "2", "3", "4", "5"))
    together = next_token_probs(lm.model, prompts, groups, pad_id=lm.tokenizer.pad_token_id)
    alone = torch.cat([next_token_probs(lm.model, [prompt], groups) for prompt in prompts])
    assert shared_prefix_length(prompts) >= 16
    assert torch.allclose(together, alone, atol=1e-5)


def test_answers_without_a_single_token_are_refused(tiny_model_dir: Path, tmp_path: Path):
    lm = load_model(str(tiny_model_dir), tmp_path)
    with pytest.raises(ValueError, match="no single token"):
        answer_token_groups(lm.tokenizer, ("zebra",))
