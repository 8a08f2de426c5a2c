"""Experiments that run the Forgetless pipeline end to end, headless (see experiments/forgetting.py)."""
