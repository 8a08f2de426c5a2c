"""Tabs for the pipeline stages that are not built yet: each says what it will do, with no controls."""

from __future__ import annotations

import gradio as gr

# (tab label, element id, what the stage will do); order follows the pipeline.
COMING_STAGES: list[tuple[str, str, str]] = [
    ("4 · Mix", "tab-mix",
     "Import your domain data, filter the general data by score, and mix the two at a chosen ratio into a "
     "training snapshot you can export."),
    ("5 · Train", "tab-train",
     "Fine-tune the model on the mixed data (LoRA or full, TRL SFT) as a background job with live loss, "
     "cancel and resume."),
    ("6 · Evaluate", "tab-evaluate",
     "Measure forgetting: general benchmarks before and after training plus your domain test set, with a "
     "base-vs-tuned comparison."),
]


def build_coming_tabs() -> None:
    """Render one plain tab per stage still to come."""
    for label, elem_id, description in COMING_STAGES:
        with gr.Tab(label, elem_id=elem_id):
            gr.Markdown(f"**Coming soon.** {description}", elem_classes=["coming-soon"])
