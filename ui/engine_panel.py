"""The Engine panel: where every tab's jobs run (in-process, a managed vLLM server, a server at a URL), with a
status line a timer keeps current. Wiring only: what it shows and does lives in ui/views/engine.py.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import gradio as gr

from core.data_paths import ReadableRoots
from core.engines.choice import EngineChoice, save_choice, saved_choice
from core.errors import ForgetlessError
from ui.alerts import markdown_literal, warn
from ui.job_controls import QUIET
from ui.views.engine import (
    CHOICES,
    DEFAULT_SERVER_MODEL,
    MANAGED,
    URL,
    choice_from_form,
    choice_key,
    engine_status_line,
    start_server_in_background,
    stop_everything,
    stopped_message,
)

HELP = """Where the models of every job started from the tabs run. **In-process** loads them with transformers
in each job's own process. **Managed vLLM** runs them on a vLLM server that Forgetless starts from `.venv-vllm`
for each model and reuses (a job starts it if it is not running; Start server does it ahead of time).
**vLLM server URL** uses a server someone already runs (`http://HOST:PORT/v1`). The CLI takes the same
choice as `--engine vllm` or `--engine-url URL`; `forgetless engine status` and `forgetless engine stop`
list and stop the servers. Closing the app stops the managed servers of this workspace. Drift, held-out
perplexity and the evaluation of LoRA runs stay in-process whatever the choice (they need whole next-token
distributions, or the adapter loaded on its base)."""


def _label(choice: EngineChoice) -> str:
    return f"Engine · {choice.describe()}"


def _shown(workspace: Path, choice: EngineChoice, key: str | None = None) -> tuple[Any, ...]:
    """(accordion, url, managed row, status) updates for the option ``key`` (default: the choice's own)."""
    key = key or choice_key(choice)
    return (gr.update(label=_label(choice)), gr.update(visible=key == URL), gr.update(visible=key == MANAGED),
            engine_status_line(workspace, choice))


def show_saved(workspace: Path) -> tuple[Any, ...]:
    """Page load: the saved choice in the radio and URL box (another session may have changed it)."""
    choice = saved_choice(workspace)
    accordion, _, managed, status = _shown(workspace, choice)
    return (choice_key(choice), accordion, gr.update(value=choice.engine_url or "", visible=bool(choice.engine_url)),
            managed, status)


def apply_choice(workspace: Path, key: str, url: str) -> tuple[Any, ...]:
    """Save the option picked (with the URL box for the URL option); a bad or missing URL keeps the old
    choice and says so. Returns (message, accordion, url, managed row, status) updates."""
    try:
        choice = choice_from_form(key, url)
        save_choice(workspace, choice)
    except ForgetlessError as error:
        kept = saved_choice(workspace)
        if key == URL and not (url or "").strip():  # just picked: wait for the URL, nothing is wrong yet
            message = f"{markdown_literal(error)}; jobs run on {kept.describe()} until then."
        else:
            message = f"Not changed: {warn(error)}; jobs run on {kept.describe()}."
        return (message, *_shown(workspace, kept, key))
    return (f"Jobs started from now on run on {markdown_literal(choice.describe())}.", *_shown(workspace, choice))


def start_clicked(workspace: Path, roots: ReadableRoots, spec: str) -> tuple[str, str]:
    """Spawn the server's start and return at once: (message, status)."""
    try:
        message = start_server_in_background(workspace, roots.check_model((spec or "").strip()) or "")
    except ForgetlessError as error:
        message = f"Not started: {warn(error)}"
    return message, engine_status_line(workspace, saved_choice(workspace))


def stop_clicked(workspace: Path) -> tuple[str, str]:
    message = stopped_message(stop_everything(workspace))
    return message, engine_status_line(workspace, saved_choice(workspace))


def refresh(workspace: Path) -> str:
    return engine_status_line(workspace, saved_choice(workspace))


def build_engine_panel(demo: gr.Blocks, workspace: Path, roots: ReadableRoots | None = None) -> None:
    """Render the Engine accordion inside ``demo`` and wire it, including the page load. A model typed for
    Start server is read only under ``roots`` (by default the workspace)."""
    workspace = Path(workspace).resolve()
    roots = roots or ReadableRoots.for_app(workspace)
    with gr.Accordion("Engine", open=False, elem_id="engine-panel") as accordion:
        gr.Markdown(HELP, elem_id="engine-help")
        choice = gr.Radio(CHOICES, value=choice_key(EngineChoice()), label="Where the models run",
                          elem_id="engine-choice")
        url = gr.Textbox(label="Server URL", placeholder="http://HOST:PORT/v1 — press Enter to apply",
                         visible=False, elem_id="engine-url")
        with gr.Row(visible=False, equal_height=True) as managed:
            model = gr.Textbox(DEFAULT_SERVER_MODEL, label="Model to start a server for", scale=4,
                               elem_id="engine-model")
            start = gr.Button("Start server", variant="primary", scale=0, min_width=150, elem_id="engine-start")
        status = gr.Markdown("Reading the engine…", elem_id="engine-status", elem_classes=["status-line"])
        with gr.Row():
            stop = gr.Button("Stop servers", variant="stop", scale=0, min_width=150, elem_id="engine-stop")
        message = gr.Markdown("", elem_id="engine-message")
    timer = gr.Timer(2.0)

    shown = [accordion, url, managed, status]
    apply_handler = partial(apply_choice, workspace)
    choice.input(apply_handler, [choice, url], [message, *shown], **QUIET)  # user picks only, not the page load
    url.submit(apply_handler, [choice, url], [message, *shown], **QUIET)
    start.click(partial(start_clicked, workspace, roots), model, [message, status], **QUIET)
    stop.click(partial(stop_clicked, workspace), None, [message, status], **QUIET)
    timer.tick(partial(refresh, workspace), None, status, **QUIET)
    demo.load(partial(show_saved, workspace), None, [choice, *shown], **QUIET)
