"""Train tab: fine-tune a model on a frozen mix (LoRA or full) as a background run, follow it, cancel, resume.

The UI process never loads torch: Start writes a run folder under ``<workspace>/runs`` and spawns
``forgetless train`` (core.train_runs). The status line, loss curve and run list are read from the run
folders on a timer, so a reloaded page or a second browser follows the same runs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import gradio as gr

from core.config import load_yaml
from core.data_paths import ReadableRoots
from core.errors import ForgetlessError
from core.mix_snapshot import list_snapshots, mixes_dir
from core.models import ALIASES, DEFAULT_MODEL
from core.train import TrainConfig
from core.train_runs import cancel_run, list_runs, new_run_dir, resume_training, runs_root, start_training
from core.train_views import (
    IDLE_LINE,
    RUN_HEADERS,
    config_form,
    followed_run,
    loss_figure,
    read_run_view,
    resolve_data,
    run_command,
    run_label,
    run_rows,
    snapshot_choices,
    train_config,
)
from ui.alerts import markdown_literal, warn
from ui.job_controls import QUIET

_DEFAULTS = TrainConfig(data="-", out="-")


class _Runs:
    """The tab's handlers over one workspace; each reads the run folders afresh (no state kept here)."""

    def __init__(self, workspace: Path, roots: ReadableRoots | None = None) -> None:
        self.root = Path(workspace)
        self.roots = roots or ReadableRoots.for_app(self.root)  # where typed data and model paths may point

    # -- the form ------------------------------------------------------------------------------------------
    def config(self, data: str | None, *form: Any) -> TrainConfig:
        """The form as a config for a fresh folder under runs/ (named after the model and method)."""
        draft = train_config("-", resolve_data(data, mixes_dir(self.root)), *form)
        return dataclasses.replace(draft, out=str(new_run_dir(self.root, run_label(draft))))

    def data_choices(self) -> list[tuple[str, str]]:
        return snapshot_choices(list_snapshots(self.root))

    def refresh_data(self) -> Any:
        return gr.update(choices=self.data_choices())

    def show_command(self, *form: Any) -> tuple[Any, str]:
        try:
            return gr.update(value=run_command(self.config(*form), self.root), visible=True), ""
        except ForgetlessError as error:
            return gr.skip(), f"No command: {warn(error)}"

    # -- runs ----------------------------------------------------------------------------------------------
    def folder(self, name: str | None) -> Path:
        if not name:
            raise ForgetlessError("pick a run first (the Run dropdown, or click a row of the run list)")
        return runs_root(self.root) / Path(name).name

    def start(self, *form: Any) -> tuple[Any, ...]:
        try:
            config = self.roots.confine(self.config, "data", "model")(*form)
            folder = start_training(config, self.root)
        except ForgetlessError as error:
            return f"Not started: {warn(error)}", gr.skip(), gr.skip(), gr.skip()
        names = list(list_runs(self.root)["name"])
        return (f"Started **{folder.name}** in the background: loading the model takes a few seconds.",
                gr.update(choices=names, value=folder.name), gr.update(interactive=False),
                gr.update(value=run_command(config, self.root), visible=True))

    def cancel(self, name: str | None) -> str:
        try:
            folder = self.folder(name)
            state = read_run_view(folder).state
            if state == "starting":  # its worker clears the cancel file as it takes the run over
                raise ForgetlessError(f"{folder.name} is still starting; Cancel works once it runs (a few seconds)")
            if state not in ("queued", "running"):
                raise ForgetlessError(f"{folder.name} is not running ({state})")
            cancel_run(folder)
        except ForgetlessError as error:
            return f"Not cancelled: {warn(error)}"
        return f"Cancel requested for **{folder.name}**: it saves a checkpoint after the current step and stops."

    def resume(self, name: str | None) -> str:
        try:
            folder = resume_training(self.folder(name), self.root)
        except ForgetlessError as error:
            return f"Not resumed: {warn(error)}"
        return f"Resuming **{folder.name}** from its last checkpoint."

    def poll(self, name: str | None, plot_marker: str, runs_marker: str) -> tuple[Any, ...]:
        """Timer tick: the followed run's line, buttons and (when it moved) curve; the run list when it changed.

        With no run followed yet, the newest active run (else the newest) is picked up, so a page opened
        before a run started, or a run started from the CLI, is followed without a click.
        """
        try:
            return self._poll(name, plot_marker, runs_marker)
        except (ForgetlessError, OSError) as error:  # e.g. a run folder deleted while it was read
            return (f"Cannot read the runs: {markdown_literal(error)}", *(gr.skip(),) * 8)

    def _poll(self, name: str | None, plot_marker: str, runs_marker: str) -> tuple[Any, ...]:
        runs = list_runs(self.root)
        names = list(runs["name"])
        # "names#states and steps": the table changes on every step, the Run dropdown only with new runs
        # (new choices while its list is open would close it).
        marker = ",".join(names) + "#" + ",".join(f"{row.status}:{row.step}" for row in runs.itertuples(index=False))
        table = gr.skip() if marker == runs_marker else {"headers": RUN_HEADERS, "data": run_rows(runs)}
        same_names = marker.split("#")[0] == runs_marker.split("#")[0] and runs_marker != ""
        if not name or name not in names:
            name = followed_run(runs)
            if name is not None:  # the dropdown's change event redraws everything for this run
                return (*(gr.skip(),) * 6, table, gr.update(choices=names, value=name), marker)
            return (IDLE_LINE, gr.update(interactive=True), gr.update(interactive=False),
                    gr.update(interactive=False), gr.skip(), plot_marker, table, gr.skip(), marker)
        view = read_run_view(self.folder(name))
        figure = gr.skip() if view.marker == plot_marker else view.figure
        # Start waits out "starting" (no double click); Cancel needs "queued" or "running" (the worker clears
        # earlier requests).
        return (view.line, gr.update(interactive=view.state != "starting"),
                gr.update(interactive=view.state in ("queued", "running")), gr.update(interactive=view.resumable),
                figure, view.marker, table, gr.skip() if same_names else gr.update(choices=names), marker)

    def on_load(self) -> tuple[Any, ...]:
        """A fresh page: the snapshot list, and the followed run's settings in the form (defaults without one)."""
        choices = self.data_choices()
        name = followed_run(list_runs(self.root))
        form: tuple[Any, ...] = (gr.skip(),) * 15
        data = choices[0][1] if choices else None
        if name is not None:
            try:
                data, *rest = config_form(load_yaml(TrainConfig, self.folder(name) / "config.yaml"))
                form = tuple(rest)
            except ForgetlessError:
                pass
        return gr.update(choices=choices, value=data), *form, gr.update(value=name)


def _row_name(event: gr.SelectData) -> Any:
    """A click anywhere in a run-list row follows that run (its name is the first cell)."""
    row = event.row_value or []
    return gr.update(value=row[0]) if row else gr.skip()


def _form() -> list[Any]:
    """The config widgets in core.train_views.train_config's order (after the run folder), then Refresh."""
    data = gr.Dropdown([], value=None, allow_custom_value=True, label="Training data (frozen mix)",
                       elem_id="train-data", info="A snapshot from the Mix tab, or type a snapshot folder.")
    with gr.Row(elem_classes=["job-buttons"]):
        refresh = gr.Button("↻ Refresh snapshot list", size="sm", scale=0, min_width=190,
                            elem_id="train-data-refresh")
    model = gr.Dropdown(list(ALIASES), value=DEFAULT_MODEL, allow_custom_value=True, label="Base model",
                        elem_id="train-model", info="An alias, or type a local model folder / .gguf path.")
    method = gr.Radio(["lora", "full"], value=_DEFAULTS.method, label="Method", elem_id="train-method",
                      info="lora: train small adapter matrices (PEFT); full: train every weight.")
    with gr.Row():
        max_steps = gr.Number(value=-1, precision=0, label="Max steps", elem_id="train-max-steps",
                              info="-1: train for the epochs instead")
        epochs = gr.Number(value=_DEFAULTS.epochs, minimum=0, label="Epochs", elem_id="train-epochs")
        learning_rate = gr.Number(value=0, minimum=0, label="Learning rate", elem_id="train-lr",
                                  info="0: the method's default, 2e-4 for LoRA, 2e-5 for full")
    with gr.Row():
        batch_size = gr.Number(value=_DEFAULTS.batch_size, precision=0, label="Batch size",
                               elem_id="train-batch-size")
        grad_accum = gr.Number(value=_DEFAULTS.grad_accum, precision=0, label="Grad accumulation",
                               elem_id="train-grad-accum", info="forward passes per optimizer step")
        max_length = gr.Number(value=_DEFAULTS.max_length, precision=0, label="Max length (tokens)",
                               elem_id="train-max-length")
    with gr.Group(visible=True) as lora_group:
        with gr.Row():
            lora_r = gr.Number(value=_DEFAULTS.lora_r, precision=0, label="LoRA r", elem_id="train-lora-r")
            lora_alpha = gr.Number(value=_DEFAULTS.lora_alpha, precision=0, label="LoRA alpha",
                                   elem_id="train-lora-alpha")
            lora_dropout = gr.Slider(0.0, 0.5, value=_DEFAULTS.lora_dropout, step=0.01, label="LoRA dropout",
                                     elem_id="train-lora-dropout")
        with gr.Row():
            target_modules = gr.Textbox(value=_DEFAULTS.lora_target_modules, label="LoRA target modules",
                                        elem_id="train-target-modules", scale=3,
                                        info="all-linear, or module names such as q_proj,v_proj")
            merge = gr.Checkbox(value=_DEFAULTS.merge, label="Also save base + adapter merged", scale=2,
                                elem_id="train-merge")
    with gr.Row():
        seed = gr.Number(value=_DEFAULTS.seed, precision=0, label="Seed", elem_id="train-seed")
        save_steps = gr.Number(value=_DEFAULTS.save_steps, precision=0, label="Checkpoint every N steps",
                               elem_id="train-save-steps")
    method.change(lambda chosen: gr.update(visible=chosen == "lora"), method, lora_group, **QUIET)
    return [data, model, method, max_steps, epochs, learning_rate, batch_size, grad_accum, max_length, lora_r,
            lora_alpha, lora_dropout, target_modules, seed, save_steps, merge, refresh]


def build_train_tab(demo: gr.Blocks, workspace: Path, roots: ReadableRoots | None = None) -> None:
    """Render the tab's components inside ``demo`` and wire their events, including the page load."""
    runs = _Runs(workspace, roots)
    gr.Markdown("Fine-tune the base model on a frozen mix (domain data plus reconstructed general data) with "
                "TRL's SFT trainer, loss on the assistant's answers only. The run goes on in the background: "
                "follow its loss here, cancel it (a checkpoint is saved) and resume it later.")
    with gr.Row(equal_height=False):
        with gr.Column(min_width=420, elem_classes=["launcher"]):
            *form, refresh = _form()
            with gr.Row(elem_classes=["job-buttons"]):
                start = gr.Button("Start", variant="primary", scale=0, min_width=130, elem_id="train-start")
                show = gr.Button("Show CLI command", scale=0, min_width=200, elem_id="train-show-command")
            message = gr.Markdown("", elem_id="train-message")
            command = gr.Code(label="This run as a CLI command", language="shell", lines=1, interactive=False,
                              wrap_lines=True, show_line_numbers=False, visible=False, elem_id="train-command")
        with gr.Column(min_width=420):
            run = gr.Dropdown([], value=None, label="Run", elem_id="train-run",
                              info="The run followed below; clicking a row of the run list picks it too.")
            with gr.Row(elem_classes=["job-buttons"]):
                cancel = gr.Button("Cancel", variant="stop", interactive=False, scale=0, min_width=130,
                                   elem_id="train-cancel")
                resume = gr.Button("Resume", interactive=False, scale=0, min_width=130, elem_id="train-resume")
            status = gr.Markdown("Reading runs…", elem_id="train-status", elem_classes=["status-line"])
            plot = gr.Plot(value=loss_figure(None), label="Loss curve", elem_id="train-loss-plot")
    gr.Markdown("### Runs")
    table = gr.Dataframe(value={"headers": RUN_HEADERS, "data": []}, interactive=False, wrap=True,
                         max_height=360, elem_id="train-runs")
    plot_marker, runs_marker = gr.State(""), gr.State("")
    timer = gr.Timer(1.0)

    refresh.click(runs.refresh_data, None, form[0], **QUIET)
    show.click(runs.show_command, form, [command, message], **QUIET)
    start.click(runs.start, form, [message, run, start, command], **QUIET)
    cancel.click(runs.cancel, run, message, **QUIET)
    resume.click(runs.resume, run, message, **QUIET)
    table.select(_row_name, None, run, **QUIET)
    poll_outputs = [status, start, cancel, resume, plot, plot_marker, table, run, runs_marker]
    poll_inputs = [run, plot_marker, runs_marker]
    timer.tick(runs.poll, poll_inputs, poll_outputs, **QUIET)
    run.change(runs.poll, poll_inputs, poll_outputs, **QUIET)
    demo.load(runs.on_load, None, [*form, run], **QUIET)
    demo.load(runs.poll, poll_inputs, poll_outputs, **QUIET)

