"""Pipeline tab: pick a preset, adjust its YAML or the few fields that matter, run every stage in one job, follow it.

Wiring only: the views (presets, YAML <-> fields, the stage table) are ui/views/pipeline.py, the run is the
``forgetless pipeline`` worker (core/pipeline) started in the background, so it survives a reload or an app
restart, and the page re-attaches by reading its job folder.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import gradio as gr

from core.data_paths import ReadableRoots
from core.engines.models import ALIASES
from core.errors import ForgetlessError
from core.mix.domain import BUILTIN_MEDMCQA
from core.pipeline.runner import TABS
from ui.alerts import warn
from ui.job_controls import QUIET, JobControls, job_controls, start_job
from ui.views.pipeline import (
    DEFAULT_PRESET,
    IDLE,
    KEY_FIELDS,
    STAGE_HEADERS,
    PipelineJobs,
    check_readable,
    key_fields,
    pipeline_config,
    pipeline_marker,
    pipeline_status_line,
    preset_choices,
    preset_text,
    results_markdown,
    stage_rows,
    with_key_fields,
)

INTRO = (
    "Run the whole method with one button: reconstruct the model's instructions, answer and judge them, profile "
    "them, mix the best with your domain data, train, and evaluate the tuned model against the base. Start from a "
    "preset, change the fields below or any setting in the YAML (one section per stage, the same keys as "
    "`forgetless <stage>`), and press Start. Each stage runs as the job its own tab would start, so every tab "
    "shows its result; a stage that already finished with the same settings is skipped. The pipeline runs in the "
    "background: reload the page or restart the app and it is still here."
)
# The tab each "Open" button selects (its button in the tab strip, found by its label).
OPEN_JS = ("() => { const tab = [...document.querySelectorAll('button[role=\"tab\"]')]"
           ".find(b => b.textContent.trim().startsWith(%r)); if (tab) tab.click(); }")


def _fields() -> dict[str, Any]:
    """The key fields (names as in KEY_FIELDS), valued from the default preset."""
    values = key_fields(preset_text(DEFAULT_PRESET))
    with gr.Row():
        model = gr.Dropdown(list(ALIASES), value=values["model"], allow_custom_value=True, label="Model to tune",
                            info="an alias, a model folder or a hub id", elem_id="pipe-model")
        n = gr.Number(value=values["n"], precision=0, label="Instructions to reconstruct (N)", elem_id="pipe-n")
    with gr.Row():
        domain = gr.Dropdown([BUILTIN_MEDMCQA], value=values["domain"], allow_custom_value=True, label="Domain data",
                             info="builtin:medmcqa, or a file path (workspace or --data-dir)", elem_id="pipe-domain")
        ratio = gr.Textbox(value=values["ratio"], label="Ratio: share of general data",
                           info="e.g. 0.5; several separated by commas sweep them", elem_id="pipe-ratio")
    with gr.Row():
        steps = gr.Number(value=values["max_steps"], precision=0, label="Training steps",
                          info="empty: train by epochs", elem_id="pipe-max-steps")
        limit = gr.Number(value=values["limit"], precision=0, label="Items per benchmark",
                          info="empty: every item (slow)", elem_id="pipe-limit")
    return {"model": model, "n": n, "domain": domain, "ratio": ratio, "max_steps": steps, "limit": limit}


def load_preset(workspace: Path, editor: Any, fields: dict[str, Any], name: str) -> dict[Any, Any]:
    """A preset picked: its YAML in the editor, its values in the fields."""
    try:
        text = preset_text(name, workspace)
    except ForgetlessError as error:
        warn(error)
        return {}
    return {editor: text, **{fields[key]: value for key, value in key_fields(text).items()}}


def field_edited(name: str, text: str, value: Any) -> Any:
    """A key field changed: the YAML follows (a value the YAML cannot take is a warning, the YAML unchanged)."""
    try:
        return with_key_fields(text, {name: value})
    except ForgetlessError as error:
        warn(error)
        return gr.skip()


def yaml_edited(fields: dict[str, Any], text: str) -> dict[Any, Any]:
    """The YAML changed by hand: the fields follow while it parses (mid-edit it may not)."""
    try:
        values = key_fields(text)
    except ForgetlessError:
        return {widget: gr.skip() for widget in fields.values()}
    return {fields[name]: value for name, value in values.items()}


def build(workspace: Path, roots: ReadableRoots, text: str, *values: Any) -> Any:
    """Start's config: the YAML with the fields applied, validated, its paths checked against what the app reads."""
    names = [name for name, _, _ in KEY_FIELDS]
    return check_readable(pipeline_config(with_key_fields(text, dict(zip(names, values, strict=True))), workspace),
                          roots)


def restore(jobs: PipelineJobs, fields: dict[str, Any]) -> tuple[Any, ...]:
    """On page load: the newest pipeline's YAML and fields, so a reload shows what runs, not the preset."""
    text = jobs.yaml(jobs.newest())
    if text is None:
        return (gr.skip(),) * (1 + len(fields))
    values = key_fields(text)
    return (text, *(values[name] for name in fields))


def refresh(jobs: PipelineJobs, controls: JobControls, seen: str) -> tuple[Any, ...]:
    """Timer tick and page load: status and buttons always; the table and results when something changed."""
    job = jobs.newest()
    head = controls.show(job, pipeline_status_line(job))
    rows = stage_rows(job)
    marker = pipeline_marker(job, rows)
    if marker == seen:
        return (*head, gr.skip(), gr.skip(), seen)
    return (*head, {"headers": STAGE_HEADERS, "data": rows}, results_markdown(job), marker)


def build_pipeline_tab(demo: gr.Blocks, workspace: Path, roots: ReadableRoots | None = None) -> None:
    """Render the tab inside ``demo`` and wire its events, including the page load. Paths typed into the YAML are
    read only under ``roots`` (by default the workspace)."""
    workspace = Path(workspace)
    roots = roots or ReadableRoots.for_app(workspace)
    jobs = PipelineJobs(workspace)
    gr.Markdown(INTRO)
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=320, elem_classes=["launcher"]):
            preset = gr.Dropdown(preset_choices(workspace), value=DEFAULT_PRESET, label="Preset", elem_id="pipe-preset",
                                 info="quickstart: the packaged SmolLM2 on MedMCQA, minutes on a CPU · paper: the "
                                      "paper's shape, for a GPU with vLLM · your own: <workspace>/pipelines/*.yaml")
            fields = _fields()
            controls = job_controls("pipe", jobs, "stages", IDLE, command_label="The pipeline as a CLI command")
        with gr.Column(scale=3, min_width=360):
            editor = gr.Code(value=preset_text(DEFAULT_PRESET), language="yaml", lines=22, max_lines=40,
                             label="Pipeline YAML", interactive=True, elem_id="pipe-yaml")
    table = gr.Dataframe(headers=STAGE_HEADERS, value={"headers": STAGE_HEADERS, "data": []}, interactive=False,
                         wrap=True, elem_id="pipe-stages")
    with gr.Row(elem_id="pipe-open"):
        opens = {tab: gr.Button(f"Open {tab}", size="sm", elem_id=f"pipe-open-{index}")
                 for index, tab in enumerate(dict.fromkeys(TABS.values()), start=1)}
    results = gr.Markdown("", elem_id="pipe-results")
    seen = gr.State("")
    timer = gr.Timer(1.0)

    preset.input(partial(load_preset, workspace, editor, fields), preset, {editor, *fields.values()}, **QUIET)
    for name, widget in fields.items():
        widget.input(partial(field_edited, name), [editor, widget], editor, **QUIET)
    editor.input(partial(yaml_edited, fields), editor, set(fields.values()), **QUIET)
    controls.start.click(partial(start_job, jobs, partial(build, workspace, roots)), [editor, *fields.values()],
                         controls.message, **QUIET)
    controls.cancel.click(jobs.cancel, None, controls.message, **QUIET)
    demo.load(partial(restore, jobs, fields), None, [editor, *fields.values()], **QUIET)
    # Presets saved in <workspace>/pipelines since the app started are offered after a reload.
    demo.load(lambda: gr.update(choices=preset_choices(workspace)), None, preset, **QUIET)
    for tab, button in opens.items():
        button.click(None, js=OPEN_JS % tab)
    handler = partial(refresh, jobs, controls)
    outputs = [*controls.outputs, table, results, seen]
    timer.tick(handler, seen, outputs, **QUIET)
    demo.load(handler, seen, outputs, **QUIET)
