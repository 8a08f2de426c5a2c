"""Showing an error in the page: as a toast and as a Markdown line, with its text shown literally.

Error text can carry what a user typed (a path, a name, a query), and Gradio renders a toast's message
as HTML and a Markdown component's HTML tags, so both are escaped here rather than trusted to Gradio's
sanitiser.
"""

from __future__ import annotations

import html

import gradio as gr

from ui.views.screen import markdown_literal

__all__ = ["markdown_literal", "warn"]


def warn(error: object) -> str:
    """Toast ``error`` (escaped) and return it as a literal Markdown line for the tab's message."""
    gr.Warning(html.escape(str(error)))
    return markdown_literal(error)
