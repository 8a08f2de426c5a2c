"""The semantic side of profiling: embeddings, k-means topics with readable labels, a 2-D map, near-duplicates.

Everything here is a pure function of texts or embedding arrays (plus the embedder folder), so the app's
semantic map and the CLI compute exactly the same thing, and tests check each step on a handful of texts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from core.errors import ForgetlessError

PROJECTIONS = ("pca", "tsne")
MAX_AUTO_CLUSTERS = 20
# Rows of the cosine-similarity matrix computed at once: bounds memory at _SIM_BLOCK x n floats.
_SIM_BLOCK = 1024
_TSNE_SINGLE_THREAD_BELOW = 2000


def auto_clusters(n: int) -> int:
    """k for n instructions: round(sqrt(n / 2)) clamped to [2, 20], never more than n (the usual rule of thumb)."""
    if n <= 1:
        return n
    return min(n, max(2, min(MAX_AUTO_CLUSTERS, round(math.sqrt(n / 2)))))


def cluster(embeddings: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """K-means labels 0..k-1 (fixed n_init and seed: the same data gives the same clusters).

    k is lowered to the number of distinct embeddings, since k-means cannot fill more clusters than that.
    """
    from sklearn.cluster import KMeans

    n = len(embeddings)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    distinct = len(np.unique(np.round(embeddings, 6), axis=0))
    k = max(1, min(int(k), distinct))
    if k == 1:
        return np.zeros(n, dtype=np.int64)
    model = KMeans(n_clusters=k, n_init=10, random_state=seed)
    return model.fit_predict(np.asarray(embeddings, dtype=np.float64)).astype(np.int64)


def cluster_labels(texts: Sequence[str], labels: Sequence[int], top_n: int = 3) -> dict[int, str]:
    """A readable name per cluster: the terms that most set its texts apart from the rest.

    Score of a term for a cluster = its mean TF-IDF over the cluster's texts minus its mean over all texts
    (English stop words removed), so words common everywhere ("write", "help") do not name every cluster.
    The top ``top_n`` positive terms are joined with ", "; a cluster without any is named "cluster <id>".
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    ids = sorted({int(label) for label in labels})
    fallback = {c: f"cluster {c}" for c in ids}
    if not texts:
        return fallback
    try:
        matrix = TfidfVectorizer(stop_words="english", sublinear_tf=True).fit(texts)
    except ValueError:  # only stop words or no words at all: nothing distinctive to name
        return fallback
    weights = matrix.transform(texts)
    terms = matrix.get_feature_names_out()
    overall = np.asarray(weights.mean(axis=0)).ravel()
    label_array = np.asarray(labels)
    names = {}
    for c in ids:
        inside = np.asarray(weights[label_array == c].mean(axis=0)).ravel() - overall
        order = [i for i in np.argsort(-inside, kind="stable")[:top_n] if inside[i] > 1e-12]
        names[c] = ", ".join(terms[i] for i in order) or fallback[c]
    return names


def project_2d(embeddings: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """x, y per row for the semantic map. PCA: fast and deterministic; t-SNE: keeps local neighbourhoods.

    Fewer than three rows cannot be projected meaningfully: one row sits at the origin, two are placed by
    PCA (t-SNE falls back to it below 4 rows, where its perplexity cannot be set).
    """
    from sklearn.decomposition import PCA

    if method not in PROJECTIONS:
        raise ForgetlessError(f"projection must be one of {', '.join(PROJECTIONS)}")
    data = np.asarray(embeddings, dtype=np.float64)
    n = len(data)
    out = np.zeros((n, 2), dtype=np.float64)
    if n < 2 or data.shape[1] == 0:
        return out
    if method == "tsne" and n >= 4:
        from sklearn.manifold import TSNE
        from threadpoolctl import threadpool_limits

        perplexity = float(min(30.0, max(1.0, (n - 1) / 3)))
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
        # Small maps run on one thread: t-SNE's OpenMP threads spin-wait, and on a busy 2-core machine that
        # made a 12-point map take 20 s instead of 0.2 s.
        with threadpool_limits(1 if n < _TSNE_SINGLE_THREAD_BELOW else None):
            return tsne.fit_transform(data)
    components = min(2, n, data.shape[1])
    out[:, :components] = PCA(n_components=components, random_state=seed).fit_transform(data)
    return out


def near_duplicate_groups(
    embeddings: np.ndarray, threshold: float = 0.92, priority: Sequence[float | None] | None = None,
) -> tuple[list[int | None], list[bool]]:
    """Near-duplicate groups: rows linked by cosine >= threshold, closed transitively (connected components).

    Returns a group id per row (0.. numbered by each group's first row; None for rows without a near
    duplicate) and whether the row is its group's representative, the one kept. The representative is
    the member with the highest ``priority`` (e.g. its best response's consensus score); ties and missing
    priorities go to the earliest row, so with rows in store order (oldest first) the oldest is kept.
    Singletons are always representatives. Rows are scaled to unit length first (a no-op after `embed`).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    data = np.asarray(embeddings, dtype=np.float32)
    n = len(data)
    if n == 0:
        return [], []
    norms = np.linalg.norm(data, axis=1, keepdims=True)
    data = data / np.where(norms > 0, norms, 1.0)
    rows, cols = [], []
    for start in range(0, n, _SIM_BLOCK):
        sims = data[start : start + _SIM_BLOCK] @ data.T
        r, c = np.nonzero(sims >= threshold - 1e-6)  # tolerance: identical texts give 0.9999999
        keep = c > r + start
        rows.append(r[keep] + start)
        cols.append(c[keep])
    r, c = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(r), dtype=np.int8), (r, c)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    sizes = np.bincount(component)
    order: dict[int, int] = {}  # component -> public group id, in order of first appearance
    members: dict[int, list[int]] = {}
    for row, comp in enumerate(component.tolist()):
        if sizes[comp] > 1:
            order.setdefault(comp, len(order))
            members.setdefault(comp, []).append(row)
    groups: list[int | None] = [order.get(comp) for comp in component.tolist()]
    representative = [True] * n

    def rank(row: int) -> tuple[float, int]:
        value = None if priority is None else priority[row]
        usable = value is not None and math.isfinite(float(value))
        return (-float(value) if usable else math.inf, row)

    for rows_in_group in members.values():
        kept = min(rows_in_group, key=rank)
        for row in rows_in_group:
            representative[row] = row == kept
    return groups, representative
