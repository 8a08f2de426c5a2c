"""Profiling the reconstructed instructions: difficulty, IFD, categories, embeddings, clusters, near-duplicates."""
