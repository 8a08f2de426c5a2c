"""The in-process engine: a transformers model loaded into this process (the embedded default).

It keeps the fast paths of its internals: the batched sampler (`core.engines.sampler`: one prefill for
identical prompts, rows leave the batch as they stop), the judge's shared-prefix KV cache
(`core.engines.next_token`), and continuation scoring that sorts by length and shares a context's forward
pass among its options (`core.engines.loglik`). Model specs, loading and dtype choice are in
`core.engines.models`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from core.engines import loglik, next_token
from core.engines.base import Sample, SampleSettings, cut_at_stop
from core.engines.models import LoadedModel, choose_device, generation_dtype, load_model

# Continuations longer than this are scored whole: sharing a context's cache pays off for short options, and
# its one padded pass over every option has no bound on the tokens it scores.
SHARED_OPTION_MAX_CHARS = 400


class InProcessEngine:
    """An engine over a loaded model and its tokenizer. One call runs as one batch (see `core.engines.base`).

    ``close()`` only drops this engine's reference to the model: whoever loaded it may keep it (tests
    share one loaded model among many engines). ``lm`` is there for what needs the model itself (training,
    and eval's drift, which compares whole next-token distributions).
    """

    def __init__(self, lm: LoadedModel) -> None:
        self.lm: LoadedModel | None = lm
        self.served_by, self.url = "transformers", None
        self.name = lm.name
        self.tokenizer = lm.tokenizer

    def _model(self) -> object:
        if self.lm is None:
            raise RuntimeError(f"the engine of '{self.name}' is closed")
        return self.lm.model

    def sample(self, prompts: Sequence[Sequence[int]], settings: SampleSettings, *,
               on_tokens: Callable[[int], None] | None = None) -> list[Sample]:
        """Decodes all ``len(prompts) * n`` rows as one batch and stops each row on a stop token only: the
        text is then cut at the first stop string, but ``token_ids`` keeps every token decoded."""
        from core.engines import sampler  # imports torch: opening the CLI or the app must not

        rows = [list(prompt) for prompt in prompts for _ in range(settings.n)]
        drawn = sampler.sample(
            self._model(), rows, temperature=settings.temperature, top_p=settings.top_p,
            max_new_tokens=settings.max_new_tokens, stop_token_ids=settings.stop_token_ids, seed=settings.seed,
            on_token=on_tokens,
        )
        samples = []
        for item in drawn:
            decoded = self.tokenizer.decode(item.token_ids, skip_special_tokens=settings.skip_special_tokens)
            text, found_stop = cut_at_stop(decoded, settings.stop)
            samples.append(Sample(text, item.token_ids, item.stopped or found_stop))
        return samples

    def next_token_logprobs(self, prompts: Sequence[Sequence[int]],
                            token_ids: Sequence[int]) -> list[list[float]]:
        if not prompts:
            return []
        values = next_token.next_token_logprobs(self._model(), prompts, token_ids, pad_id=_pad_id(self.tokenizer))
        return values.tolist()

    def continuation_logprobs(self, contexts: Sequence[str],
                              continuations: Sequence[str]) -> list[list[float]]:
        """Runs of adjacent pairs with one context and short continuations (multiple-choice options, zero-shot
        labels) share its forward pass (`loglik.option_logprobs`); otherwise every pair is scored whole, in
        batches bounded by the tokens scored (long answers: one padded pass over all of them would not be)."""
        if len(contexts) != len(continuations):
            raise ValueError("contexts and continuations differ in length")
        if not contexts:
            return []
        runs: list[tuple[str, list[str]]] = []
        for context, continuation in zip(contexts, continuations, strict=True):
            if runs and runs[-1][0] == context:
                runs[-1][1].append(continuation)
            else:
                runs.append((context, [continuation]))
        model = self._model()
        if len(runs) == len(contexts) or any(len(text) > SHARED_OPTION_MAX_CHARS for text in continuations):
            return loglik.continuation_logprobs(model, self.tokenizer, contexts, continuations,
                                                batch_size=len(contexts))
        shared = loglik.option_logprobs(model, self.tokenizer, [context for context, _ in runs],
                                        [options for _, options in runs], batch_size=len(runs))
        return [values for per_option in shared for values in per_option]

    def close(self) -> None:
        self.lm = None

    def __enter__(self) -> InProcessEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def in_process_engines(workspace: Path, *, sampling: bool = False,
                       dtype: str = "auto") -> Callable[[str], InProcessEngine]:
    """Opens an in-process engine per MODEL spec (loading it each time; GGUFs convert once per workspace).

    ``sampling`` stages (reconstruct, respond) get the dtype that decodes fastest (fp32 on a CPU), the
    others the one the hardware runs best (`core.engines.models`); a ``dtype`` other than auto pins it.
    """
    import torch

    chosen = (getattr(torch, dtype) if dtype != "auto" else
              generation_dtype(choose_device()) if sampling else None)
    return lambda spec: InProcessEngine(load_model(spec, workspace, dtype=chosen))


def _pad_id(tokenizer: object) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    return pad if pad is not None else 0
