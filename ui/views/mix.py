"""What the Mix tab shows, computed without Gradio: the MixConfig of the form, the counts line, the
composition chart, the semantic map with the domain overlaid, the snapshot table, the domain preview and
its import report, and a per-process cache that keeps every update after the first one fast.

Pure functions of plain values, plans and DataFrames, unit-tested without a browser, except
:class:`MixCache` (loads domain data and tokenizers once) and the ``read_*``/``keep_upload`` functions,
which read the store or the workspace.
"""

from __future__ import annotations

import html
import re
import shutil
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from core.data_paths import ReadableRoots
from core.errors import ForgetlessError
from core.mix.domain import BUILTIN_MEDMCQA, DomainData, ImportReport, load_domain, preview_frame
from core.mix.domain_map import map_overlay, subprocess_embedder_loader
from core.mix.mixing import DEFAULT_TOKENIZER, MixConfig, MixPlan, first_user_text, load_counter
from core.mix.snapshot import file_sha256, mixes_dir
from core.mix.tokens import TokenCounter
from core.settings import config_from_form, setting_of
from core.store.explore import ExploreFilters
from ui.views.screen import empty_figure, markdown_literal, short_model, shorten

ALL_SCREENED = "all screened data"  # the selection dropdown's entry for every judged instruction
RATIO_MAX = setting_of(MixConfig, "ratio").maximum  # the slider's top: a mix keeps some domain data
TEST_FRACTION_MAX = setting_of(MixConfig, "domain_test_fraction").maximum  # the held-out share of a user's rows
UPLOADS_DIR = "domain-data"  # uploads are copied here, so a snapshot's config.yaml names a lasting file
MAP_CACHE_DIR = Path("cache") / "mix-map"  # domain embeddings, by content
UPLOAD_TYPES = [".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet"]
PREVIEW_ROWS = 20
PREVIEW_HEADERS = ["user", "assistant", "turns"]
REPORTED_BAD_ROWS = 50  # bad rows listed one per line; the summary counts all of them
SNAPSHOT_HEADERS = ["name", "created", "general", "domain", "total", "ratio (asked → got)", "balance", "domain data",
                    "folder"]
CHART_HEIGHT = 380
GENERAL_COLOUR, DOMAIN_COLOUR = "#4f6bed", "#e4572e"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_CACHED_DOMAINS = 4  # loaded domain sets kept per process: an index in memory, a user's rows in a spool file


# -- the form -------------------------------------------------------------------------------------------
def selection_choices(names: Iterable[str]) -> list[str]:
    """The selection dropdown: every judged instruction first, then the saved Explore selections."""
    return [ALL_SCREENED, *(name for name in names if name != ALL_SCREENED)]


def mix_config(values: Mapping[str, Any]) -> MixConfig:
    """The form (values by MixConfig field name, ``domain`` the loaded spec) as a MixConfig (ForgetlessError
    on a bad value). ``domain_test_fraction`` is the share of a user's domain rows held out for evaluation;
    builtin:medmcqa has its own fixed split, so it is sent as 0 there."""
    form = dict(values)
    domain = str(form.get("domain") or "").strip()
    if not domain:
        raise ForgetlessError("pick domain data: builtin:medmcqa, an uploaded file or a path")
    ratio = form.get("ratio", 0.5)
    if ratio is None or not 0.0 <= float(ratio) <= RATIO_MAX:
        raise ForgetlessError(f"ratio must be between 0 and {RATIO_MAX}")
    fraction = 0.0 if domain.startswith("builtin:") else float(form.get("domain_test_fraction") or 0.0)
    if not 0.0 <= fraction <= TEST_FRACTION_MAX:
        raise ForgetlessError(f"the held-out share must be between 0 and {TEST_FRACTION_MAX}")
    form |= {"domain": domain, "ratio": round(float(ratio), 4), "domain_test_fraction": round(fraction, 4),
             "selection": _selection(form.get("selection")),
             "tokenizer_model": form.get("tokenizer_model") or DEFAULT_TOKENIZER}
    return config_from_form(MixConfig, form)


def _selection(value: str | None) -> str | None:
    return None if not value or value == ALL_SCREENED else value


def domain_choices(workspace: Path) -> list[tuple[str, str]]:
    """(label, spec) of the built-in set and of every file uploaded into this workspace."""
    uploads = sorted(p for p in (Path(workspace) / UPLOADS_DIR).glob("*") if p.is_file())
    return [(f"{BUILTIN_MEDMCQA} (medical multiple choice)", BUILTIN_MEDMCQA),
            *((f"uploaded: {p.name}", str(p)) for p in uploads)]


def keep_upload(path: str | Path, workspace: Path) -> Path:
    """Copy an uploaded file (a temporary path) into ``<workspace>/domain-data`` under its own name; a
    different file of the same name gets its content hash appended. Returns the kept path."""
    source = Path(path)
    folder = Path(workspace) / UPLOADS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / source.name
    if target.exists() and file_sha256(target) != file_sha256(source):
        target = folder / f"{source.stem}-{file_sha256(source)[:8]}{source.suffix}"
    if not target.exists():
        shutil.copyfile(source, target)
    return target


# -- the domain data ------------------------------------------------------------------------------------
def preview_rows(data: DomainData, n: int = PREVIEW_ROWS) -> list[list[Any]]:
    """The first ``n`` training conversations as PREVIEW_HEADERS rows (long texts cut)."""
    return [[shorten(row.user, 300), shorten(row.assistant, 300), int(row.turns)]
            for row in preview_frame(data, n).itertuples(index=False)]


def import_report_markdown(report: ImportReport, data: DomainData | None = None) -> str:
    """The import report: format, rows read/kept/skipped, then each bad row with its line and reason."""
    skipped = report.rows_read - report.rows_kept
    lines = [f"**{markdown_literal(_source_name(report.source))}** · format `{report.format}` · "
             f"{report.rows_read:,} rows read · {report.rows_kept:,} kept · {skipped:,} skipped"]
    if data is not None:
        lines[0] += f" · {len(data.train):,} train" + (f" / {len(data.test):,} held-out test" if data.test else "")
    if report.bad_rows:
        lines.append("")
        lines.extend(f"- {report.unit} {bad.line}: {markdown_literal(shorten(bad.reason, 200))}"
                     for bad in report.bad_rows[:REPORTED_BAD_ROWS])
        if report.skipped > REPORTED_BAD_ROWS:
            lines.append(f"- … and {report.skipped - REPORTED_BAD_ROWS:,} more")
    return "\n".join(lines)


def _source_name(source: str) -> str:
    return source if source.startswith("builtin:") else Path(source).name


# -- the plan -------------------------------------------------------------------------------------------
def counts_markdown(plan: MixPlan, seconds: float | None = None) -> str:
    """The live counts: totals, the achieved share, a general/domain/total table, candidates and notes."""
    counts, tokens, config = plan.counts, plan.tokens, plan.config
    source = f"selection “{markdown_literal(config.selection)}”" if config.selection else ALL_SCREENED
    lines = [
        f"**{counts['total']:,}** examples · **{tokens['total']:,}** tokens · general share "
        f"**{plan.ratio_achieved:.1%}** by {config.by} (asked {config.ratio:.0%})",
        "",
        f"| | examples | tokens ({markdown_literal(short_model(tokens['tokenizer']))}) |",
        "|---|---:|---:|",
        f"| general (reconstructed) | {counts['general']:,} | {tokens['general']:,} |",
        f"| domain ({markdown_literal(getattr(plan.domain, 'name', 'domain'))}) | {counts['domain']:,} | "
        f"{tokens['domain']:,} |",
        f"| total | {counts['total']:,} | {tokens['total']:,} |",
        "",
        f"{plan.candidates:,} general candidates ({source}" + (
            f"; {len(plan.general_held_out):,} more held out for drift" if plan.general_held_out else "") +
        f") · {plan.domain_available:,} domain train rows · "
        f"balance {config.balance} · seed {config.seed}" + _timing(seconds),
    ]
    lines.extend(f"\n⚠️ {note}" for note in plan.notes)  # notes are our own text
    return "\n".join(lines)


def _timing(seconds: float | None) -> str:
    return "" if seconds is None else f" · planned in {seconds:.2f} s"


def composition_figure(composition: pd.DataFrame, group_by: str, unit: str) -> go.Figure:
    """Horizontal bars of ``MixPlan.composition(group_by)``: each general category/cluster and the domain,
    sized in ``unit`` (examples or tokens), with each bar's share of the mix."""
    if composition.empty or int(composition[unit].sum()) == 0:
        return empty_figure("Composition (the mix is empty)", CHART_HEIGHT)
    total = int(composition[unit].sum())
    figure = go.Figure()
    for source, colour in (("general", GENERAL_COLOUR), ("domain", DOMAIN_COLOUR)):
        part = composition[composition["source"] == source].iloc[::-1]  # largest on top
        if part.empty:
            continue
        labels = [f"{source}: {group}" if source == "general" else str(group) for group in part["group"]]
        shares = [f"{value / total:.1%}" for value in part[unit]]
        figure.add_trace(go.Bar(x=part[unit], y=labels, orientation="h", name=source, marker_color=colour,
                                text=shares, textposition="auto", customdata=shares,
                                hovertemplate=f"%{{y}}: %{{x:,}} {unit} (%{{customdata}})<extra></extra>"))
    figure.update_layout(title=f"Composition by {group_by} ({unit})", height=CHART_HEIGHT, template="plotly_white",
                         margin={"l": 150, "r": 20, "t": 55, "b": 45}, xaxis_title=unit, legend={"font": {"size": 10}},
                         yaxis={"categoryorder": "trace", "automargin": True})
    return figure


def map_figure(points: pd.DataFrame, note: str = "") -> go.Figure:
    """The general rows and the domain rows in one PCA plane (``mix_map.map_overlay``'s frame); hovering a
    point shows its text. ``note`` goes in the title (e.g. that the domain is still being embedded)."""
    if points.empty:
        return empty_figure("Semantic map (nothing to show)", CHART_HEIGHT)
    figure = go.Figure()
    for source, colour, size in (("general", GENERAL_COLOUR, 6), ("domain", DOMAIN_COLOUR, 5)):
        part = points[points["source"] == source]
        if part.empty:
            continue
        hover = [shorten(label, 160) + ("" if pd.isna(cluster) else f"<br>cluster {int(cluster)}")
                 for label, cluster in zip(part["label"], part["cluster"], strict=True)]
        figure.add_trace(go.Scattergl(x=part["x"], y=part["y"], mode="markers", name=f"{source} ({len(part):,})",
                                      text=hover, hoverinfo="text",
                                      marker={"size": size, "opacity": 0.65, "color": colour}))
    figure.update_xaxes(showticklabels=False)
    figure.update_yaxes(showticklabels=False)
    title = f"Semantic map (PCA)<br><sup>domain rows over the reconstructed data{f' · {note}' if note else ''}</sup>"
    figure.update_layout(title=title, height=CHART_HEIGHT, template="plotly_white",
                         margin={"l": 20, "r": 20, "t": 55, "b": 20}, legend={"font": {"size": 10}})
    return figure


def map_unavailable(reason: str) -> go.Figure:
    """The map's place when it cannot be drawn; the title says why (and what to run)."""
    return empty_figure(f"Semantic map<br><sup>{html.escape(reason)}</sup>", CHART_HEIGHT)


def read_map(store: Any, selection: str | None, data: DomainData, workspace: Path,
             embedder_loader: Any = None) -> Iterator[go.Figure]:
    """The map of the selection's candidates and the domain rows: first the general points alone (a
    store read and a PCA), then with the domain overlaid once its rows are embedded (a child process,
    cached on disk). Yields a ``map_unavailable`` figure instead when profiling has not run."""
    try:
        name = _selection(selection)
        filters = store.load_selection(name) if name else ExploreFilters()
        ids = store.explore_ids(filters)
        if not ids and not filters.is_empty():
            yield map_unavailable("no general candidates match the selection")
            return
        general_ids = ids or None  # nothing judged yet: every profiled instruction
        yield map_figure(map_overlay(store, [], general_ids=general_ids), "embedding the domain rows…")
        loader = embedder_loader or subprocess_embedder_loader(Path(workspace) / MAP_CACHE_DIR)
        texts = _FirstUserTexts(data.train)
        yield map_figure(map_overlay(store, texts, loader, general_ids=general_ids))
    except ForgetlessError as error:
        if "run profile" in str(error):
            yield map_unavailable("needs profiling first: Explore tab → Profile")
        else:
            yield map_unavailable(shorten(str(error), 90))


class _FirstUserTexts(Sequence[str]):
    """The first user turn of each domain row, read only for the rows the map samples."""

    def __init__(self, rows: Sequence[Any]) -> None:
        self._rows = rows

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index: Any) -> Any:
        return first_user_text(self._rows[index])


# -- snapshots ------------------------------------------------------------------------------------------
def snapshot_rows(snapshots: pd.DataFrame) -> list[list[Any]]:
    """``mix_snapshot.list_snapshots`` as SNAPSHOT_HEADERS rows, newest first."""
    rows = []
    for row in snapshots.itertuples(index=False):
        ratio = f"{row.ratio:g} → {row.ratio_achieved:.3f} by {row.by}"
        rows.append([row.name, str(row.created).replace("T", " ").removesuffix("+00:00"), int(row.general),
                     int(row.domain), int(row.total), ratio, row.balance, _source_name(str(row.domain_spec)),
                     row.path])
    return rows


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._") or "mix"


def suggest_snapshot_name(config: MixConfig, domain_name: str, taken: Iterable[str] = ()) -> str:
    """``medmcqa-r50-examples-proportional-s0``, with ``-2``, ``-3``… when that name is taken."""
    base = f"{_slug(domain_name)[:40]}-r{round(config.ratio * 100):02d}-{config.by}-{config.balance}-s{config.seed}"
    taken = set(taken)
    name, number = base, 2
    while name in taken:
        name, number = f"{base}-{number}", number + 1
    return name


def snapshot_folder(workspace: Path, name: str | None, suggested: str) -> Path:
    """``<workspace>/mixes/<name>`` (the suggestion when the box is empty); refuses an unsafe or taken name."""
    name = (name or "").strip() or suggested
    if not _NAME.match(name):
        raise ForgetlessError(f"snapshot name {name!r}: use letters, digits, '.', '_' or '-' (at most 100, "
                              "starting with a letter or digit)")
    folder = mixes_dir(workspace) / name
    if folder.exists() and any(folder.iterdir()):
        raise ForgetlessError(f"a snapshot named {name!r} already exists: choose another name")
    return folder


def snapshot_names(workspace: Path) -> list[str]:
    folder = mixes_dir(workspace)
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def freeze_message(summary: dict[str, Any]) -> str:
    counts = summary["counts"]
    return (f"Froze **{Path(summary['out']).name}**: {counts['total']:,} examples ({counts['general']:,} general + "
            f"{counts['domain']:,} domain), {summary['tokens']['total']:,} tokens → `{summary['out']}`")


# -- the per-process cache --------------------------------------------------------------------------------
class _LockedCounter(TokenCounter):
    """A TokenCounter shared by the app's worker threads: a fast tokenizer must not be called from two
    threads at once ("Already borrowed"), so counting is serialised (cached counts make it cheap)."""

    def __init__(self, counter: TokenCounter) -> None:
        super().__init__(counter.tokenizer, counter.name)
        self._lock = threading.Lock()

    def count(self, conversations: Sequence[Any], on_progress: Any = None) -> Any:
        with self._lock:
            return super().count(conversations, on_progress)


class MixCache:
    """Loaded domain data (by spec and file stamp, so an edited file is re-read) and token counters (by
    tokenizer spec), kept for the app process: after the first load an update is one store query and a
    few cached lookups. A typed path is read only under ``roots`` (by default the workspace): see
    ``core.data_paths``."""

    def __init__(self, workspace: Path, roots: ReadableRoots | None = None) -> None:
        self.workspace = Path(workspace)
        self.roots = roots or ReadableRoots.for_app(self.workspace)
        self._domains: OrderedDict[tuple[Any, ...], DomainData] = OrderedDict()
        self._counters: dict[str, TokenCounter] = {}
        # Apart, so that picking other domain data never waits while the first plan loads a tokenizer.
        self._domains_lock, self._counters_lock = threading.Lock(), threading.Lock()

    def domain(self, spec: str) -> DomainData:
        spec = self.roots.check(spec)
        key = _stamp(spec)
        with self._domains_lock:
            if key in self._domains:
                self._domains.move_to_end(key)
                return self._domains[key]
            data = load_domain(spec)
            self._domains[key] = data
            while len(self._domains) > _CACHED_DOMAINS:
                self._domains.popitem(last=False)
            return data

    def counter(self, config: MixConfig) -> TokenCounter:
        with self._counters_lock:
            if config.tokenizer_model not in self._counters:
                self._counters[config.tokenizer_model] = _LockedCounter(load_counter(config, self.workspace))
            return self._counters[config.tokenizer_model]


def _stamp(spec: str) -> tuple[Any, ...]:
    path = Path(spec.strip()).expanduser()
    if spec.strip().startswith("builtin:") or not path.exists():
        return (spec.strip(),)
    stat = path.stat()
    return (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
