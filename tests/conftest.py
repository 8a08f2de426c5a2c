"""Shared offline fixtures: a tiny chat tokenizer and a 2-layer random Llama saved as a model folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = [
    "1", "2", "3", "4", "5",  # rating digits, so judges score by real token probabilities
    "please", "write", "explain", "how", "why", "what", "a", "the", "poem", "story", "code", "list",
    "recipe", "plan", "for", "about", "my", "to", "of", "in", "python", "math", "history", "short", "simple",
    "tips", "email", "summary", "and", "is", "can", "you", "give", "me", "best", "way", "learn", "cook",
    "travel", "health", "money",
]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML_WITH_SYSTEM = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a tiny test assistant<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tiny_tokenizer(chat_template: str | None = CHATML_WITH_SYSTEM, words: tuple[str, ...] | list[str] = WORDS):
    """A real fast tokenizer: word-level over a few dozen words, ChatML specials, a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate([*SPECIALS, "[UNK]", "\n", "system", "user", "assistant"])}
    for word in words:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##")  # joins word tokens with spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="[UNK]",
        additional_special_tokens=SPECIALS[1:],
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def build_tiny_model_folder(folder: Path, seed: int = 0, chat_template: str | None = CHATML_WITH_SYSTEM,
                            words: tuple[str, ...] | list[str] = WORDS) -> Path:
    """Save a 2-layer random Llama plus the tiny tokenizer as a Hugging Face folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer(chat_template, words)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model_folder(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_base_model_dir(tmp_path_factory) -> Path:
    """A second tiny model without a chat template, like a base model (plain prompt formats)."""
    return build_tiny_model_folder(tmp_path_factory.mktemp("tiny-base"), seed=1, chat_template=None)


@pytest.fixture(scope="session")
def real_workspace(tmp_path_factory) -> Path:
    """One workspace per test session for the packaged models, so each GGUF converts once."""
    shared = os.environ.get("FORGETLESS_TEST_WORKSPACE")
    return Path(shared) if shared else tmp_path_factory.mktemp("real-workspace")
