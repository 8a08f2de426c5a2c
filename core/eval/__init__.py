"""Measuring forgetting: general benchmarks, the domain test, drift; run for a model or a training run."""
