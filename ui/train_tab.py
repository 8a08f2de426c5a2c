"""Train tab: fine-tune a model on a frozen mix (LoRA or full) as a background run, follow it, cancel, resume.

The UI process never loads torch: Start writes a run folder under ``<workspace>/runs`` and spawns
``forgetless train`` (core.train.runs). The status line, loss curve and run list are read from the run
folders on a timer, so a reloaded page or a second browser follows the same runs. "Export selected run" writes
a finished run as one model folder with a model card, as a background ``forgetless export`` job.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import gradio as gr

from core.data_paths import ReadableRoots
from core.engines.models import ALIASES
from core.errors import ForgetlessError
from core.jobs import job_info
from core.mix.snapshot import list_snapshots, mixes_dir
from core.train.runs import list_runs, new_run_dir
from core.train.training import TrainConfig
from ui.alerts import markdown_literal, warn
from ui.forms import Form, by_name, setting_widget, to_widgets
from ui.job_controls import QUIET, JobControls, job_controls
from ui.views.train import (
    EXPORT_IDLE,
    IDLE_LINE,
    RUN_HEADERS,
    TrainRuns,
    config_form,
    export_status_line,
    followed_run,
    loss_figure,
    newest_export,
    read_run_view,
    resolve_data,
    run_command,
    run_label,
    run_rows,
    snapshot_choices,
    start_export,
    train_config,
)


class _Runs:
    """The tab's handlers over one workspace; each reads the run folders afresh (no state kept here)."""

    def __init__(self, workspace: Path, roots: ReadableRoots | None = None) -> None:
        self.root = Path(workspace)
        self.roots = roots or ReadableRoots.for_app(self.root)  # where typed data and model paths may point
        self.jobs = TrainRuns(self.root)
        self.form: Form = {}  # {field name: widget}, set when the tab is built
        self.controls: JobControls | None = None
        self.run_picker: Any = None  # the Run dropdown

    # -- the form ------------------------------------------------------------------------------------------
    def config(self, values: dict[str, Any]) -> TrainConfig:
        """The form as a config for a fresh folder under runs/ (named after the model and method)."""
        draft = train_config({**values, "data": resolve_data(values.get("data"), mixes_dir(self.root))}, "-")
        return dataclasses.replace(draft, out=str(new_run_dir(self.root, run_label(draft))))

    def data_choices(self) -> list[tuple[str, str]]:
        return snapshot_choices(list_snapshots(self.root))

    def refresh_data(self) -> Any:
        return gr.update(choices=self.data_choices())

    def show_command(self, values: dict[Any, Any]) -> tuple[Any, str]:
        try:
            return gr.update(value=run_command(self.config(by_name(self.form, values)), self.root), visible=True), ""
        except ForgetlessError as error:
            return gr.skip(), f"No command: {warn(error)}"

    # -- runs ----------------------------------------------------------------------------------------------
    def start(self, values: dict[Any, Any]) -> tuple[Any, ...]:
        try:
            config = self.roots.confine(self.config, "data", "model")(by_name(self.form, values))
            message = self.jobs.start(config)
        except ForgetlessError as error:
            return f"Not started: {warn(error)}", gr.skip(), gr.skip(), gr.skip()
        names = list(list_runs(self.root)["name"])
        return (message, gr.update(choices=names, value=Path(config.out).name), gr.update(interactive=False),
                gr.update(value=run_command(config, self.root), visible=True))

    def cancel(self, name: str | None) -> str:
        try:
            return self.jobs.cancel(name)
        except ForgetlessError as error:
            return f"Not cancelled: {warn(error)}"

    def resume(self, name: str | None) -> str:
        try:
            return self.jobs.resume(name)
        except ForgetlessError as error:
            return f"Not resumed: {warn(error)}"

    def poll(self, name: str | None, plot_marker: str, runs_marker: str) -> tuple[Any, ...]:
        """Timer tick: the followed run's line, buttons and (when it moved) curve; the run list when it changed.

        With no run followed yet, the newest active run (else the newest) is picked up, so a page opened
        before a run started, or a run started from the CLI, is followed without a click.
        """
        try:
            return self._poll(name, plot_marker, runs_marker)
        except (ForgetlessError, OSError) as error:  # e.g. a run folder deleted while it was read
            return (f"Cannot read the runs: {markdown_literal(error)}", *(gr.skip(),) * 9)

    def _poll(self, name: str | None, plot_marker: str, runs_marker: str) -> tuple[Any, ...]:
        assert self.controls is not None, "build_train_tab sets the controls"
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
                return (*(gr.skip(),) * 7, table, gr.update(choices=names, value=name), marker)
            return (*self.controls.show(None), gr.update(interactive=False), gr.skip(), plot_marker, table,
                    gr.skip(), marker)
        view = read_run_view(self.jobs.run(name).folder)
        status, start, cancel, command = self.controls.show(view.job, view.line)
        if plot_marker.split("|")[0] == name:  # the same run: "Show CLI command" may be showing the form's
            command = gr.skip()
        figure = gr.skip() if view.marker == plot_marker else view.figure
        return (status, start, cancel, command, gr.update(interactive=view.resumable), figure, view.marker, table,
                gr.skip() if same_names else gr.update(choices=names), marker)

    # -- export --------------------------------------------------------------------------------------------
    def export(self, name: str | None, typed_out: str | None) -> tuple[str, str]:
        """Start exporting the picked run; (the line, the export job folder the timer follows: none on an error,
        so the error stays on the line)."""
        try:
            message, folder = start_export(self.root, name, typed_out, self.roots)
        except ForgetlessError as error:
            return f"Not exported: {warn(error)}", ""
        return message, str(folder)

    def export_poll(self, folder: str) -> tuple[Any, str]:
        """Timer tick: the followed export's line, followed until it ends (no redraw while none is followed)."""
        if not folder:
            return gr.skip(), ""
        job = job_info(Path(folder))
        return export_status_line(job), folder if job.active else ""

    def export_on_load(self) -> tuple[str, str]:
        """A fresh page follows the newest export, so one started before a reload or restart shows its end."""
        job = newest_export(self.root)
        return export_status_line(job), str(job.folder) if job is not None else ""

    def on_load(self) -> dict[Any, Any]:
        """A fresh page: the snapshot list, and the followed run's settings in the form (defaults without one)."""
        choices = self.data_choices()
        job = self.jobs.newest()
        config = self.jobs.config(job)
        values = config_form(config) if config is not None else {"data": choices[0][1] if choices else None}
        return {**to_widgets(self.form, values), self.form["data"]: gr.update(choices=choices, value=values["data"]),
                self.run_picker: gr.update(value=job.job_id if job is not None else None)}


def _row_name(event: gr.SelectData) -> Any:
    """A click anywhere in a run-list row follows that run (its name is the first cell)."""
    row = event.row_value or []
    return gr.update(value=row[0]) if row else gr.skip()


def _form() -> tuple[Form, gr.Button]:
    """The run's settings as widgets by field name (labels, help and bounds from TrainConfig's fields), and the
    snapshot list's Refresh button."""
    def widget(kind: Any, name: str, **options: Any) -> Any:
        return setting_widget(kind, TrainConfig, name, **{"elem_id": f"train-{name.replace('_', '-')}", **options})

    form = {"data": widget(gr.Dropdown, "data", choices=[], value=None, allow_custom_value=True,
                           info="A snapshot from the Mix tab, or type a snapshot folder.")}
    with gr.Row(elem_classes=["job-buttons"]):
        refresh = gr.Button("↻ Refresh snapshot list", size="sm", scale=0, min_width=190,
                            elem_id="train-data-refresh")
    form["model"] = widget(gr.Dropdown, "model", choices=list(ALIASES), allow_custom_value=True,
                           info="An alias, or type a local model folder / .gguf path.")
    form["method"] = widget(gr.Radio, "method")
    with gr.Row():
        form["max_steps"] = widget(gr.Number, "max_steps", value=-1, precision=0,
                                   info="-1: train for the epochs instead")
        form["epochs"] = widget(gr.Number, "epochs")
        form["learning_rate"] = widget(gr.Number, "learning_rate", value=0, elem_id="train-lr",
                                       info="0: the method's default, 2e-4 for LoRA, 2e-5 for full")
    with gr.Row():
        for name in ("batch_size", "grad_accum", "max_length"):
            form[name] = widget(gr.Number, name, precision=0)
    with gr.Group(visible=True) as lora_group:
        with gr.Row():
            form["lora_r"] = widget(gr.Number, "lora_r", precision=0)
            form["lora_alpha"] = widget(gr.Number, "lora_alpha", precision=0)
            form["lora_dropout"] = widget(gr.Slider, "lora_dropout")
        with gr.Row():
            form["lora_target_modules"] = widget(gr.Textbox, "lora_target_modules", scale=3,
                                                 elem_id="train-target-modules")
            form["merge"] = widget(gr.Checkbox, "merge", scale=2)
    with gr.Row():
        form["seed"] = widget(gr.Number, "seed", precision=0)
        form["save_steps"] = widget(gr.Number, "save_steps", precision=0)
        form["dtype"] = widget(gr.Dropdown, "dtype")
    form["method"].change(lambda chosen: gr.update(visible=chosen == "lora"), form["method"], lora_group, **QUIET)
    return form, refresh


def build_train_tab(demo: gr.Blocks, workspace: Path, roots: ReadableRoots | None = None) -> _Runs:
    """Render the tab's components inside ``demo`` and wire their events, including the page load; return its
    handlers (tests call them without a server)."""
    runs = _Runs(workspace, roots)
    gr.Markdown("Fine-tune the base model on a frozen mix (domain data plus reconstructed general data) with "
                "TRL's SFT trainer, loss on the assistant's answers only. The run goes on in the background: "
                "follow its loss here, cancel it (a checkpoint is saved) and resume it later.")
    with gr.Row(equal_height=False):
        with gr.Column(min_width=420, elem_classes=["launcher"]):
            runs.form, refresh = _form()
            runs.controls = controls = job_controls("train", runs.jobs, "steps", IDLE_LINE,
                                                    command_label="This run as a CLI command")
            with controls.buttons:
                resume = gr.Button("Resume", interactive=False, scale=0, min_width=130, elem_id="train-resume")
                show = gr.Button("Show CLI command", scale=0, min_width=200, elem_id="train-show-command")
        with gr.Column(min_width=420):
            runs.run_picker = run = gr.Dropdown(
                [], value=None, label="Run", elem_id="train-run",
                info="The run followed here and by the status line, Cancel and Resume; clicking a row of the run "
                     "list picks it too.")
            plot = gr.Plot(value=loss_figure(None), label="Loss curve", elem_id="train-loss-plot")
    gr.Markdown("### Runs")
    table = gr.Dataframe(value={"headers": RUN_HEADERS, "data": []}, interactive=False, wrap=True,
                         max_height=360, elem_id="train-runs")
    with gr.Row(equal_height=True):
        export_out = gr.Textbox(label="Export folder", scale=3, elem_id="train-export-out",
                                placeholder="empty: exports/<run> in the workspace; a name: exports/<name>",
                                info="The selected run as one model folder (LoRA merged into its base) with a model "
                                     "card; a path must lie in the workspace or a --data-dir folder.")
        export = gr.Button("Export selected run", scale=1, min_width=200, elem_id="train-export")
    export_line = gr.Markdown(EXPORT_IDLE, elem_id="train-export-line")
    plot_marker, runs_marker, export_job = gr.State(""), gr.State(""), gr.State("")
    timer = gr.Timer(1.0)

    inputs = set(runs.form.values())
    refresh.click(runs.refresh_data, None, runs.form["data"], **QUIET)
    show.click(runs.show_command, inputs, [controls.command, controls.message], **QUIET)
    controls.start.click(runs.start, inputs, [controls.message, run, controls.start, controls.command], **QUIET)
    controls.cancel.click(runs.cancel, run, controls.message, **QUIET)
    resume.click(runs.resume, run, controls.message, **QUIET)
    table.select(_row_name, None, run, **QUIET)
    export.click(runs.export, [run, export_out], [export_line, export_job], **QUIET)
    timer.tick(runs.export_poll, export_job, [export_line, export_job], **QUIET)
    demo.load(runs.export_on_load, None, [export_line, export_job], **QUIET)
    poll_outputs = [*controls.outputs, resume, plot, plot_marker, table, run, runs_marker]
    poll_inputs = [run, plot_marker, runs_marker]
    timer.tick(runs.poll, poll_inputs, poll_outputs, **QUIET)
    run.change(runs.poll, poll_inputs, poll_outputs, **QUIET)
    demo.load(runs.on_load, None, [*runs.form.values(), run], **QUIET)
    demo.load(runs.poll, poll_inputs, poll_outputs, **QUIET)
    return runs
