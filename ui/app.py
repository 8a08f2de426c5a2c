"""The Forgetless app: a title, what the method does, and one tab per pipeline stage."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gradio as gr

from core.data_paths import ReadableRoots
from ui.compare_tab import build_compare_tab
from ui.engine_panel import build_engine_panel
from ui.evaluate_tab import build_evaluate_tab
from ui.explore_tab import build_explore_tab
from ui.mix_tab import build_mix_tab
from ui.pipeline_tab import build_pipeline_tab
from ui.reconstruct_tab import build_reconstruct_tab
from ui.screen_tab import build_screen_tab
from ui.train_tab import build_train_tab

CSS_PATH = Path(__file__).resolve().parent.parent / "assets" / "app.css"

INTRO = """# Forgetless
Fine-tune an aligned model on your domain data **without it forgetting what it already knows** (Ding &
Wang, arXiv 2506.09428). The training data the model was aligned on is not public, so Forgetless
rebuilds an approximation of it from the model itself: prompted with only the opening of its chat
template, the model writes the kind of user instructions it was tuned on. Those instructions get
answers, the answers are screened by judge models, and the best are mixed with your domain data for
training, so the fine-tune keeps rehearsing the model's own general skills. Each stage below is a step
of that pipeline; every job runs in the background and can also be run headless with the `forgetless`
CLI."""


def build_app(workspace: Path, data_dirs: Sequence[Path] = ()) -> gr.Blocks:
    """The whole UI for one workspace (DuckDB store, model cache and job folders live under it); paths typed
    into it are read only in the workspace and ``data_dirs``."""
    workspace = Path(workspace).resolve()
    roots = ReadableRoots.for_app(workspace, data_dirs)
    with gr.Blocks(title="Forgetless") as demo:
        gr.Markdown(INTRO, elem_id="app-intro")
        gr.Markdown(f"Workspace: `{workspace}`", elem_id="app-workspace")
        build_engine_panel(demo, workspace, roots)  # where every tab's jobs run: one choice per workspace
        with gr.Tabs(elem_id="stages"):
            with gr.Tab("0 · Pipeline", elem_id="tab-pipeline"):
                build_pipeline_tab(demo, workspace, roots)
            with gr.Tab("1 · Reconstruct", elem_id="tab-reconstruct"):
                build_reconstruct_tab(demo, workspace, roots)
            with gr.Tab("2 · Screen", elem_id="tab-screen"):
                build_screen_tab(demo, workspace, roots)
            with gr.Tab("3 · Explore", elem_id="tab-explore"):
                build_explore_tab(demo, workspace, roots)
            with gr.Tab("4 · Mix", elem_id="tab-mix"):
                build_mix_tab(demo, workspace, roots)
            with gr.Tab("5 · Train", elem_id="tab-train"):
                build_train_tab(demo, workspace, roots)
            with gr.Tab("6 · Evaluate", elem_id="tab-evaluate"):
                build_evaluate_tab(demo, workspace, roots)
            with gr.Tab("7 · Compare", elem_id="tab-compare"):
                build_compare_tab(demo, workspace, roots)
    return demo


def launch_style() -> dict[str, Any]:
    """Theme and CSS, which Gradio 6 takes in ``launch()`` rather than in ``gr.Blocks``."""
    return {"theme": gr.themes.Soft(), "css_paths": [CSS_PATH] if CSS_PATH.exists() else None}
