"""Steered reconstruction (``reconstruct --steer coverage``): aim new samples at the clusters of the stored profile
that lack rows against a uniform spread, instead of sampling the pre-query prefix freely (still the default).

Each prompt asks the model, through its own chat template, for one new request of the same kind as ``k`` stored
instructions of one under-filled cluster (template ``cell-v1``); a batch's clusters are drawn in proportion to
their deficits. Every sample is then placed in the cluster of its nearest centroid (the profile's embedder, the
centroids the profile's clusters have: k-means' own rule, no refit), and, unless ``keep_all``, kept only while
that cluster still lacks rows in this batch: rejection against the centroids, so the rows land where they are
wanted even when the model ignores the examples. Deficits are counted over the profile's representatives plus
this job's rows not profiled yet; the job stops when no cluster lacks rows or it holds ``n`` rows.

Everything a batch does follows from the rows committed before it and its seed, so a resumed job asks the same
prompts and stores exactly ``n``. Prompt building and parsing are pure; each row keeps its cluster
(``steer_source`` ``cluster:<c>``), its example instruction ids and the template id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.engines.embedder import Embed, open_embedder
from core.errors import ForgetlessError
from core.profile.coverage import deficits, nearest_centroid, profiled_clusters, uniform_shares
from core.reconstruct.seeded import PLAIN_LEAD, copies_seed
from core.store.base import text_key

COVERAGE = "coverage"
STEER_MODES = (COVERAGE,)
PROMPT_VERSION = 1
# Curly braces are the only placeholder syntax: examples holding braces are inserted by replace(), not format().
CELL_TEMPLATE = (
    "Here are some messages that users sent to an AI assistant:\n\n{examples}\n\n"
    "Write one new message of the same kind that a user might send to an AI assistant: the same sort of topic and "
    "task, but a different request from all of the above. Write it as the user would type it. Reply with the new "
    "message only, nothing else."
)
_EXAMPLE_STREAM = 16  # the examples' draw gets its own random stream (the number is arbitrary, fixed)
_EXAMPLE_CHARS = 600  # a long example is cut here: k of them must fit the prompt


def cell_prompt_id(chat: bool) -> str:
    """The stored id of the template: version and format (``cell-v1``, ``cell-v1-plain`` without a chat template)."""
    return f"cell-v{PROMPT_VERSION}" + ("" if chat else "-plain")


def cell_key(cluster: int) -> str:
    """What ``steer_source`` holds for a row aimed at a cluster."""
    return f"cluster:{cluster}"


def cell_request(examples: Sequence[str]) -> str:
    """The user turn that shows ``examples`` and asks for one new request of the same kind."""
    shown = "\n".join(f"<message>\n{text.strip()[:_EXAMPLE_CHARS]}\n</message>" for text in examples)
    return CELL_TEMPLATE.replace("{examples}", shown)


def render_cell_prompt(tokenizer: Any, examples: Sequence[str]) -> str:
    """The prompt through the model's chat template with the assistant's turn opened, or plain without one."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": cell_request(examples)}], tokenize=False,
                                             add_generation_prompt=True)
    return cell_request(examples) + PLAIN_LEAD


def pick_cells(lacking: dict[int, int], count: int, rng: np.random.Generator) -> list[int]:
    """``count`` clusters drawn with probability proportional to the rows each lacks (only clusters lacking rows)."""
    cells = sorted(cell for cell, deficit in lacking.items() if deficit > 0)
    if not cells:
        return []
    weights = np.array([lacking[cell] for cell in cells], dtype=np.float64)
    return [cells[i] for i in rng.choice(len(cells), size=count, p=weights / weights.sum())]


def copies_an_example(request: str, examples: Sequence[str]) -> bool:
    return any(copies_seed(request, example) for example in examples)


@dataclass(frozen=True)
class CellPrompt:
    text: str  # the rendered prompt
    cell: int
    example_ids: tuple[str, ...]
    examples: tuple[str, ...]


def check_steerable(store: Any) -> tuple[dict[str, Any], str, dict[int, np.ndarray]]:
    """One error line unless the store holds a profile with clusters and their embeddings (call before a job
    folder is written); else what it read: the coverage counts, the profile's embedder and its cluster centroids."""
    if not Path(store.path).exists():
        raise ForgetlessError("--steer coverage needs a profile: no store yet; run `forgetless reconstruct` and "
                              "`forgetless profile` first")
    counts = store.coverage_counts()
    if not counts["profiled"]:
        raise ForgetlessError("--steer coverage needs a profile: run `forgetless profile` first")
    if not counts["cluster"]["cluster"].notna().any():
        raise ForgetlessError("--steer coverage needs clusters: the profile has none; run `forgetless profile` again")
    embedder = store.profiled_embedder()
    centroids = store.cluster_centroids(embedder) if embedder is not None else {}
    if not centroids:
        raise ForgetlessError("--steer coverage needs the profile's embeddings: run `forgetless profile` again")
    return counts, embedder, centroids


class CoverageSteering:
    """The clusters, their centroids and examples read once from the profile; this job's rows placed in clusters as
    they are stored; each batch's prompts and which of its samples to keep."""

    def __init__(self, store: Any, job_id: str, tokenizer: Any, *, examples_per_prompt: int,
                 keep_all: bool = False, embed: Embed | None = None) -> None:
        counts, self.embedder, centroids = check_steerable(store)
        self.store, self.job_id, self.tokenizer = store, job_id, tokenizer
        self.examples_per_prompt, self.keep_all = examples_per_prompt, keep_all
        self.chat = bool(getattr(tokenizer, "chat_template", None))
        self.prompt_id = cell_prompt_id(self.chat)
        self.cells = sorted(centroids)
        self.centroids = np.stack([centroids[c] for c in self.cells])
        known = {row["cluster"]: row for row in profiled_clusters(counts)}
        self.base = {cell: known[cell]["rows"] if cell in known else 0 for cell in self.cells}
        self.labels = {cell: known[cell]["label"] if cell in known else None for cell in self.cells}
        frame = store.profile_frame()
        self.profiled = set(frame["instruction_id"])
        # Examples: the cluster's near-duplicate representatives (what the counts count), oldest first.
        shown = frame[frame["cluster"].notna() & frame["is_representative"].fillna(True).astype(bool)]
        self.members = {cell: list(zip(shown.loc[shown["cluster"] == cell, "instruction_id"],
                                       shown.loc[shown["cluster"] == cell, "text"], strict=True))
                        for cell in self.cells}
        if embed is None:
            embed = open_embedder(self.embedder)
        self.embed = embed
        self.placed: dict[str, int] = {}  # this job's stored rows (by id, the text's key) -> their cluster
        self.added = dict.fromkeys(self.cells, 0)  # this job's rows per cluster, as of the last count
        self.before = self.lacking()

    # -- where rows fall ------------------------------------------------------------------------------------
    def assign(self, texts: Sequence[str]) -> list[int]:
        """The cluster of each text's nearest centroid."""
        if not texts:
            return []
        vectors = np.asarray(self.embed(list(texts)), dtype=np.float64)
        if vectors.ndim != 2 or vectors.shape[1] != self.centroids.shape[1]:
            raise ForgetlessError(f"the embedder gives {vectors.shape[-1]}-d vectors, the profile's centroids are "
                                  f"{self.centroids.shape[1]}-d: run `forgetless profile` again")
        return [self.cells[i] for i in nearest_centroid(vectors, self.centroids)]

    def remember(self, texts: Sequence[str], cells: Sequence[int]) -> None:
        """Cells already computed for texts (the ones a batch kept), so they are not embedded again."""
        self.placed.update({text_key(text): cell for text, cell in zip(texts, cells, strict=True)})

    def counts(self) -> dict[int, int]:
        """Rows per cluster: the profile's counts plus this job's rows the profile has not counted."""
        rows = [r for r in self.store.instruction_steering(job_id=self.job_id) if r["id"] not in self.profiled]
        unseen = [r for r in rows if r["id"] not in self.placed]
        self.placed.update(zip((r["id"] for r in unseen), self.assign([r["text"] for r in unseen]), strict=True))
        self.added = dict.fromkeys(self.cells, 0)
        for row in rows:
            self.added[self.placed[row["id"]]] += 1
        return {cell: self.base[cell] + self.added[cell] for cell in self.cells}

    def cluster_rows(self) -> list[dict[str, Any]]:
        """Per cluster, as of the last count: its label, the profile's rows and this job's rows placed in it (what
        the live coverage chart draws)."""
        return [{"cluster": int(cell), "label": self.labels[cell], "profiled": self.base[cell],
                 "added": self.added[cell]} for cell in self.cells]

    def lacking(self) -> dict[int, int]:
        """Rows each cluster lacks against a uniform spread at the current total (0: filled)."""
        counts = self.counts()
        gaps = deficits([counts[c] for c in self.cells], uniform_shares(len(self.cells)))
        return dict(zip(self.cells, gaps, strict=True))

    # -- a batch --------------------------------------------------------------------------------------------
    def prompts(self, lacking: dict[int, int], batch_seed: int, count: int) -> list[CellPrompt]:
        """``count`` prompts, each on a cluster drawn by its deficit, showing up to ``k`` of its examples."""
        rng = np.random.default_rng((batch_seed, _EXAMPLE_STREAM))
        prompts = []
        for cell in pick_cells(lacking, count, rng):
            members = self.members[cell]
            if not members:  # a cluster holding only hidden duplicates: its centroid still steers the rejection
                members = [("", "")]
            chosen = rng.choice(len(members), size=min(self.examples_per_prompt, len(members)), replace=False)
            picked = [members[int(i)] for i in sorted(chosen)]
            ids = tuple(str(i) for i, _ in picked if i)
            texts = tuple(t for _, t in picked if t)
            prompts.append(CellPrompt(render_cell_prompt(self.tokenizer, texts), cell, ids, texts))
        return prompts

    def admit(self, texts: Sequence[str], lacking: dict[int, int]) -> list[tuple[bool, int]]:
        """For each cleaned sample of a batch (in order): whether to keep it, and its cluster. Without ``keep_all``
        a sample is kept only while its cluster still lacks rows in this batch."""
        cells = self.assign(texts)
        left = dict(lacking)
        verdicts = []
        for cell in cells:
            keep = self.keep_all or left.get(cell, 0) > 0
            if keep:
                left[cell] = left.get(cell, 0) - 1
            verdicts.append((keep, cell))
        return verdicts

    def describe(self, lacking_now: dict[int, int]) -> dict[str, Any]:
        """What the job summary records about the steering."""
        return {"mode": COVERAGE, "dimension": "cluster", "target": "uniform", "embedder": self.embedder,
                "prompt_id": self.prompt_id, "examples_per_prompt": self.examples_per_prompt,
                "keep_all": self.keep_all, "prompt": CELL_TEMPLATE,
                "deficits_before": {str(c): d for c, d in self.before.items()},
                "deficits_after": {str(c): d for c, d in lacking_now.items()},
                "clusters": self.cluster_rows(),
                "target_met": not any(lacking_now.values())}
