"""The inference seam: one protocol (`base`: sample, next-token and continuation log-probabilities) and its
engines (`in_process`: transformers in this process), with model specs, loading and dtype choice (`models`)."""
