"""The Mix tab's semantic map: domain rows placed in the same 2-D space as the reconstructed general data.

The overlay always uses PCA, whatever projection profiling chose: a PCA fitted on the stored general
embeddings is a fixed linear map, so new (domain) points can be transformed into it; t-SNE cannot place
new points without refitting. So the general points here are PCA coordinates too and may differ from
the Explore tab's map when that one is t-SNE.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.engines.embedder import DEFAULT_EMBEDDER, Embed, load_embedder, resolve_embedder
from core.errors import ForgetlessError
from core.jobs import REPO_ROOT

MAX_GENERAL_POINTS = 5000
MAX_DOMAIN_POINTS = 2000
LABEL_CHARS = 200



def packaged_embedder_loader(spec: str = DEFAULT_EMBEDDER) -> Callable[[], Embed]:
    """A loader of the embedder profiling used (the packaged all-MiniLM-L6-v2 by default)."""
    return lambda: load_embedder(resolve_embedder(spec))


def subprocess_embedder_loader(cache_dir: Path, spec: str = DEFAULT_EMBEDDER,
                               timeout_s: float = 900) -> Callable[[], Embed]:
    """A loader like :func:`packaged_embedder_loader` for the app: the embedder (a torch model) runs in a
    child process, so the UI process loads none, and the vectors are kept under ``cache_dir`` by content,
    so each domain's texts are embedded once per workspace."""

    def encode(texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        key = hashlib.sha256(json.dumps([spec, texts], ensure_ascii=False).encode()).hexdigest()[:32]
        target = Path(cache_dir) / f"{key}.npy"
        if target.exists():
            return np.load(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".embed-") as scratch:
            source, out = Path(scratch) / "texts.json", Path(scratch) / "vectors.npy"
            source.write_text(json.dumps(texts, ensure_ascii=False), encoding="utf-8")
            root = str(REPO_ROOT)
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
            done = subprocess.run([sys.executable, "-m", "core.mix.domain_map", spec, str(source), str(out)], env=env,
                                  capture_output=True, text=True, timeout=timeout_s, check=False)
            if done.returncode != 0 or not out.exists():
                reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
                raise ForgetlessError(f"embedding the domain rows failed: {reason}")
            os.replace(out, target)  # complete files only: a killed child leaves no cache entry
        return np.load(target)

    return lambda: encode


def map_overlay(store: Any, domain_texts: Sequence[str], embedder_loader: Callable[[], Embed] | None = None, *,
                embedder: str = DEFAULT_EMBEDDER, general_ids: Sequence[str] | None = None,
                seed: int = 0) -> pd.DataFrame:
    """x, y, source ("general" | "domain"), label (the text, cut), cluster (general rows) for one plot.

    A PCA (scikit-learn) is fitted on the general embeddings stored by profiling under ``embedder``
    (optionally only ``general_ids``, e.g. the candidates of a selection) and applied to the domain texts'
    embeddings from ``embedder_loader()`` (the same model, so both live in one space). At most 5,000 general
    and 2,000 domain points are drawn (a seeded sample); the PCA is fitted on all stored general vectors.
    """
    from sklearn.decomposition import PCA

    stored = store.load_embeddings(embedder, list(general_ids) if general_ids is not None else None)
    if len(stored) < 2:
        raise ForgetlessError(f"the map needs the general data's embeddings ({embedder}): run profile first")
    ids = sorted(stored)
    matrix = np.stack([stored[i] for i in ids]).astype(np.float64)
    pca = PCA(n_components=2, random_state=seed).fit(matrix)
    rng = np.random.default_rng(seed)
    shown = np.sort(rng.permutation(len(ids))[:MAX_GENERAL_POINTS])
    general_xy = pca.transform(matrix[shown])
    texts = store.general_texts([ids[i] for i in shown]).set_index("instruction_id")
    shown_ids = [ids[i] for i in shown]
    general = pd.DataFrame({
        "x": general_xy[:, 0], "y": general_xy[:, 1], "source": "general",
        "label": [str(texts.at[i, "instruction"])[:LABEL_CHARS] if i in texts.index else i for i in shown_ids],
        "cluster": pd.array([texts.at[i, "cluster"] if i in texts.index else None for i in shown_ids],
                            dtype="Int64"),
    })
    picked = np.sort(rng.permutation(len(domain_texts))[:MAX_DOMAIN_POINTS])
    if not len(picked):
        return general
    picked_texts = [domain_texts[i] for i in picked]  # only these are read (a lazy sequence stays unread)
    encode = (embedder_loader or packaged_embedder_loader(embedder))()
    vectors = np.asarray(encode(picked_texts), dtype=np.float64)
    if vectors.shape[1] != matrix.shape[1]:
        raise ForgetlessError(f"domain embeddings have {vectors.shape[1]} dimensions, the stored general "
                              f"ones {matrix.shape[1]}: use the embedder profiling used ({embedder})")
    domain_xy = pca.transform(vectors)
    domain = pd.DataFrame({
        "x": domain_xy[:, 0], "y": domain_xy[:, 1], "source": "domain",
        "label": [text[:LABEL_CHARS] for text in picked_texts], "cluster": pd.array([None] * len(picked),
                                                                                        dtype="Int64"),
    })
    return pd.concat([general, domain], ignore_index=True)


def _embed_main(argv: Sequence[str]) -> int:
    """``python -m core.mix.domain_map EMBEDDER TEXTS.json OUT.npy``: the embedder child process."""
    spec, source, out = argv
    try:
        texts = json.loads(Path(source).read_text(encoding="utf-8"))
        np.save(out, load_embedder(resolve_embedder(spec))(texts))
    except ForgetlessError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_embed_main(sys.argv[1:]))
