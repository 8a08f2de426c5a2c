"""Forgetless: fine-tune an aligned LLM on domain data without forgetting (arXiv 2506.09428)."""

__version__ = "0.1.0"
