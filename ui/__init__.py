"""Gradio wiring only: one module per tab; handlers read widgets, call core, format the result."""
