"""Mix tab: pick domain data and the general selection, set the ratio, watch the counts, freeze a snapshot.

Every form change re-plans the mix (``plan_mix``, nothing written): the domain data and the tokenizer are
loaded once per process (``MixCache``), so an update is a store query and cached token counts. The map
is its own event, so embedding the domain rows for it (a child process, once per domain) never holds up
the counts. "Freeze mix" writes ``<workspace>/mixes/<name>``, the folder the Train tab reads.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import gradio as gr

from core.data_paths import ReadableRoots
from core.engines.models import ALIASES
from core.errors import ForgetlessError
from core.mix.mixing import MixConfig, freeze_mix, plan_mix
from core.mix.snapshot import list_snapshots
from ui.alerts import warn
from ui.forms import Form, setting_widget
from ui.job_controls import QUIET
from ui.views.jobs import LazyStore
from ui.views.mix import (
    ALL_SCREENED,
    PREVIEW_HEADERS,
    SNAPSHOT_HEADERS,
    UPLOAD_TYPES,
    MixCache,
    composition_figure,
    counts_markdown,
    domain_choices,
    freeze_message,
    import_report_markdown,
    keep_upload,
    map_unavailable,
    mix_config,
    preview_rows,
    read_map,
    selection_choices,
    snapshot_folder,
    snapshot_names,
    snapshot_rows,
    suggest_snapshot_name,
)
from ui.views.screen import empty_figure

_FAILURES = (ForgetlessError, OSError, ValueError)  # shown as a message; anything else is a bug
# A burst of changes plans once, with the last values; a small spinner says a (first, slow) plan is under way.
_LATEST = {"show_progress": "minimal", "trigger_mode": "always_last"}
_NO_DOMAIN = "Pick domain data above to see the mix."
_NO_COMPOSITION, _NO_MAP = "Composition (no domain data yet)", "pick domain data to overlay it"


def _failed(error: Exception, width: int) -> tuple[Any, ...]:
    """A refused action: a toast and the message line say why; the other outputs keep their state."""
    return (f"⚠️ {warn(error)}", *(gr.skip(),) * width)


def load_domain_view(cache: MixCache, spec: str | None) -> tuple[Any, ...]:
    """message, import report, preview, and the spec that loaded (the plan and map read that state)."""
    empty = {"headers": PREVIEW_HEADERS, "data": []}
    if not (spec or "").strip():
        return "", _NO_DOMAIN, empty, None
    try:
        spec = cache.roots.check(spec)  # the resolved path: the plan, map and snapshot read what was checked
        data = cache.domain(spec)
    except _FAILURES as error:
        line = warn(error)
        return f"⚠️ {line}", f"**Import failed:** {line}", empty, None
    return "", import_report_markdown(data.report, data), {"headers": PREVIEW_HEADERS, "data": preview_rows(data)}, spec


def update_plan(cache: MixCache, store: LazyStore, spec: str | None, group_by: str, **form: Any) -> tuple[Any, ...]:
    """message, counts, composition chart and the suggested snapshot name of the form's mix (``form``: the
    MixConfig widgets' values by field name)."""
    if not spec:  # the message line keeps the import failure, if that is why
        return gr.skip(), _NO_DOMAIN, empty_figure(_NO_COMPOSITION), gr.skip()
    started = time.perf_counter()
    try:
        config = mix_config({**form, "domain": spec})
        data = cache.domain(config.domain)
        plan = plan_mix(config, store.get(), cache.workspace, domain=data, counter=cache.counter(config))
    except _FAILURES as error:
        line = warn(error)
        return f"⚠️ {line}", f"**No mix:** {line}", empty_figure("Composition (no mix)"), gr.skip()
    seconds = time.perf_counter() - started
    name = suggest_snapshot_name(config, data.name, snapshot_names(cache.workspace))
    return ("", counts_markdown(plan, seconds), composition_figure(plan.composition(group_by), group_by, config.by),
            gr.update(placeholder=name))


def update_map(cache: MixCache, store: LazyStore, spec: str | None, selection: str | None) -> Iterator[Any]:
    if not spec:
        yield map_unavailable(_NO_MAP)
        return
    try:
        data = cache.domain(spec)
        yield from read_map(store.get(), selection, data, cache.workspace)
    except _FAILURES as error:
        yield map_unavailable(str(error))


def freeze(cache: MixCache, store: LazyStore, spec: str | None, name: str | None, **form: Any) -> tuple[Any, ...]:
    """Write the form's mix as ``<workspace>/mixes/<name>``: message, snapshot table, name box."""
    try:
        if not spec:
            raise ForgetlessError("pick domain data before freezing a mix")
        config = mix_config({**form, "domain": spec})
        data = cache.domain(config.domain)
        suggested = suggest_snapshot_name(config, data.name, snapshot_names(cache.workspace))
        config = dataclasses.replace(config, out=str(snapshot_folder(cache.workspace, name, suggested)))
        summary = freeze_mix(config, store.get(), cache.workspace, domain=data, counter=cache.counter(config))
    except _FAILURES as error:
        return _failed(error, 2)
    gr.Info(f"Froze mix {Path(summary['out']).name}")
    following = suggest_snapshot_name(config, data.name, snapshot_names(cache.workspace))
    return (freeze_message(summary), _snapshot_table(cache.workspace),
            gr.update(value="", placeholder=following))


def _snapshot_table(workspace: Path) -> dict[str, Any]:
    return {"headers": SNAPSHOT_HEADERS, "data": snapshot_rows(list_snapshots(workspace))}


def refresh(store: LazyStore, workspace: Path) -> tuple[Any, ...]:
    """Page load or ↻: the saved selections, the uploaded files and the snapshots, read again."""
    try:
        names = [str(name) for name in store.get().list_selections()["name"]]
        selections = gr.update(choices=selection_choices(names))
    except ForgetlessError:  # a writer held the store past the lock wait: keep the old choices
        selections = gr.skip()
    return selections, gr.update(choices=domain_choices(workspace)), _snapshot_table(workspace)


def uploaded(workspace: Path, path: str | None) -> tuple[Any, ...]:
    """Keep an uploaded file in the workspace and pick it (the domain's change event loads it); the upload
    box empties, ready for the next file (this one is listed in the dropdown from now on)."""
    if not path:
        return gr.skip(), gr.skip(), gr.skip()
    try:
        kept = keep_upload(path, workspace)
    except OSError as error:
        return _failed(error, 2)
    return gr.skip(), gr.update(choices=domain_choices(workspace), value=str(kept)), None


def _mix_form() -> tuple[Form, gr.Button]:
    """The MixConfig widgets by field name, and the ↻ button beside the selection (it reads the choices again)."""
    with gr.Row(equal_height=False, elem_id="mix-selection-row"):
        selection = setting_widget(gr.Dropdown, MixConfig, "selection", choices=selection_choices([]),
                                   value=ALL_SCREENED, scale=4, elem_id="mix-selection",
                                   info="a saved Explore selection, or every judged instruction")
        reload = gr.Button("↻", scale=0, min_width=50, elem_id="mix-refresh")
    form = {"selection": selection,
            "ratio": setting_widget(gr.Slider, MixConfig, "ratio", elem_id="mix-ratio"),
            "by": setting_widget(gr.Radio, MixConfig, "by", elem_id="mix-by"),
            "balance": setting_widget(gr.Radio, MixConfig, "balance", elem_id="mix-balance"),
            "domain_test_fraction": setting_widget(gr.Number, MixConfig, "domain_test_fraction",
                                                   elem_id="mix-test-fraction"),
            "general_holdout": setting_widget(gr.Number, MixConfig, "general_holdout", elem_id="mix-general-holdout")}
    with gr.Row():
        form["seed"] = setting_widget(gr.Number, MixConfig, "seed", precision=0, min_width=90, elem_id="mix-seed")
        form["tokenizer_model"] = setting_widget(gr.Dropdown, MixConfig, "tokenizer_model", choices=list(ALIASES),
                                                 allow_custom_value=True, scale=3, elem_id="mix-tokenizer")
    return form, reload


def build_mix_tab(demo: gr.Blocks, workspace: Path, roots: ReadableRoots | None = None) -> None:
    """Render the tab's components inside ``demo`` and wire their events, including the page load. Typed paths
    are read only under ``roots`` (the workspace and the app's --data-dir folders)."""
    workspace = Path(workspace)
    store, cache = LazyStore(workspace), MixCache(workspace, roots)
    gr.Markdown("Mix your domain data with the screened general data: the ratio is the share of general "
                "(reconstructed) data in the result. Counts and token totals follow every change; **Freeze mix** "
                "writes the training snapshot (`train.parquet`, `manifest.yaml`, a dataset card) that the Train "
                "tab reads.")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=300):
            domain = setting_widget(gr.Dropdown, MixConfig, "domain", choices=domain_choices(workspace), value=None,
                                    allow_custom_value=True, elem_id="mix-domain",
                                    info="builtin:medmcqa, an uploaded file, or type a path (in the workspace "
                                         "or a --data-dir folder) and press Enter")
            upload = gr.File(label="Upload domain data (JSONL, JSON, CSV, Parquet)", file_types=UPLOAD_TYPES,
                             type="filepath", height=120, elem_id="mix-upload")
            report = gr.Markdown(_NO_DOMAIN, elem_id="mix-report")
        with gr.Column(scale=2, min_width=400):
            preview = gr.Dataframe(value={"headers": PREVIEW_HEADERS, "data": []}, interactive=False, wrap=True,
                                   max_height=330, column_widths=["45%", "47%", "8%"], label="Preview (train rows)",
                                   elem_id="mix-preview")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=300, elem_id="mix-form"):
            form, reload = _mix_form()
            with gr.Row(equal_height=False, elem_id="mix-freeze-row"):
                name = gr.Textbox(label="Snapshot name", placeholder="(suggested from the settings)", scale=3,
                                  elem_id="mix-name")
                freeze_button = gr.Button("Freeze mix", variant="primary", scale=1, min_width=110,
                                          elem_id="mix-freeze")
        with gr.Column(scale=2, min_width=480):
            counts = gr.Markdown(_NO_DOMAIN, elem_id="mix-counts", elem_classes=["status-line"])
            message = gr.Markdown("", elem_id="mix-message")
            with gr.Row(equal_height=True):
                with gr.Column(min_width=300):
                    composition = gr.Plot(empty_figure(_NO_COMPOSITION), show_label=False,
                                          elem_id="mix-composition")
                    group_by = gr.Radio(["category", "cluster"], value="category", label="General rows grouped by",
                                        elem_id="mix-composition-by")
                semantic_map = gr.Plot(map_unavailable(_NO_MAP), show_label=False, elem_id="mix-map")
    gr.Markdown("#### Frozen mixes")
    snapshots = gr.Dataframe(value={"headers": SNAPSHOT_HEADERS, "data": []}, interactive=False, wrap=True,
                             max_height=300, elem_id="mix-snapshots")
    loaded = gr.State(None)  # the domain spec that loaded cleanly: what the plan and the map use

    selection = form["selection"]
    plan_event = {"fn": partial(update_plan, cache, store), "inputs": [loaded, group_by], "inputs_kwargs": form,
                  "outputs": [message, counts, composition, name], **_LATEST}
    map_event = {"fn": partial(update_map, cache, store), "inputs": [loaded, selection], "outputs": semantic_map,
                 **_LATEST}

    domain.change(partial(load_domain_view, cache), domain, [message, report, preview, loaded], **QUIET).then(
        **plan_event).then(**map_event)
    upload.upload(partial(uploaded, workspace), upload, [message, domain, upload], **QUIET)
    form["ratio"].release(**plan_event)
    for choice in (form["by"], form["balance"], group_by):
        choice.input(**plan_event)
    form["tokenizer_model"].change(**plan_event)  # a picked alias or a typed model folder, once committed
    for number in (form["seed"], form["domain_test_fraction"], form["general_holdout"]):
        number.submit(**plan_event)
        number.blur(**plan_event)
    selection.input(**plan_event).then(**map_event)

    refresh_event = {"fn": partial(refresh, store, workspace), "outputs": [selection, domain, snapshots], **QUIET}
    demo.load(**refresh_event)
    reload.click(**refresh_event)
    freeze_button.click(partial(freeze, cache, store), [loaded, name], [message, snapshots, name], inputs_kwargs=form,
                        **QUIET)
