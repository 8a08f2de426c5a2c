"""The Mix tab's views without a browser: form → MixConfig, counts, charts, the map, snapshots, uploads, cache."""

from __future__ import annotations

import hashlib
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.engines.embedder import DEFAULT_EMBEDDER
from core.errors import ForgetlessError
from core.mix.domain import BUILTIN_MEDMCQA, load_domain
from core.mix.domain_map import subprocess_embedder_loader
from core.mix.mixing import freeze_mix, plan_mix
from core.mix.snapshot import list_snapshots
from core.mix.tokens import TokenCounter
from core.store import ExploreFilters, Store
from tests.helpers import FAKE_EMBEDDER, N_DOMAIN, N_GENERAL, build_mix_store, write_domain
from ui.views.mix import (
    ALL_SCREENED,
    PREVIEW_HEADERS,
    SNAPSHOT_HEADERS,
    MixCache,
    composition_figure,
    counts_markdown,
    domain_choices,
    freeze_message,
    import_report_markdown,
    keep_upload,
    map_figure,
    mix_config,
    preview_rows,
    read_map,
    selection_choices,
    snapshot_folder,
    snapshot_names,
    snapshot_rows,
    suggest_snapshot_name,
)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("mix-views-ws")
    store = build_mix_store(folder / "forgetless.duckdb")
    # The map reads the packaged embedder's vectors: stand in fake ones under its name.
    stored = store.load_embeddings(FAKE_EMBEDDER)
    store.save_embeddings(DEFAULT_EMBEDDER, list(stored), np.stack(list(stored.values())))
    store.save_selection("good", ExploreFilters(consensus_min=4))
    store.save_selection("none", ExploreFilters(consensus_min=4.9, consensus_max=4.95))
    return folder


@pytest.fixture(scope="module")
def store(workspace: Path) -> Store:
    return Store.for_workspace(workspace)


@pytest.fixture(scope="module")
def domain_file(workspace: Path) -> Path:
    return write_domain(workspace / "health.jsonl")


@pytest.fixture(scope="module")
def cache(workspace: Path) -> MixCache:
    return MixCache(workspace)


def form(tokenizer: Path, **values):
    """The tab's MixConfig widgets' values by field name (the domain comes from the loaded spec)."""
    return {"selection": ALL_SCREENED, "ratio": 0.5, "by": "examples", "balance": "proportional", "seed": 0,
            "tokenizer_model": str(tokenizer), "domain_test_fraction": 0, **values}


def mix_form(tokenizer: Path, domain: str, **values):
    """mix_config of the form with ``domain`` loaded."""
    return mix_config({**form(tokenizer, **values), "domain": domain})


def fake_loader():
    rng = np.random.default_rng(3)
    return lambda: (lambda texts: rng.normal(size=(len(texts), 8)))


def test_mix_config_from_the_form(tiny_model_dir):
    config = mix_form(tiny_model_dir, "d.jsonl", seed=3.0, ratio=0.35000000001)
    assert config.selection is None and config.seed == 3 and config.ratio == 0.35
    assert config.tokenizer_model == str(tiny_model_dir)
    assert mix_form(tiny_model_dir, "d.jsonl", selection="good").selection == "good"
    assert mix_config({"domain": "d.jsonl", "selection": "good", "by": "tokens", "balance": "clusters",
                       "tokenizer_model": None}).tokenizer_model == "smollm2-135m-instruct"
    for domain, values, match in ((" ", {}, "pick domain data"), ("d", {"seed": 1.5}, "whole number"),
                                  ("d", {"seed": None}, "Seed is empty"), ("d", {"ratio": 0.96}, "between 0 and"),
                                  ("d", {"balance": "x"}, "balance must be")):
        with pytest.raises(ForgetlessError, match=match):
            mix_form(tiny_model_dir, domain, **values)


def test_held_out_share_leaves_the_mix(cache, store, workspace, domain_file, tiny_model_dir):
    config = mix_form(tiny_model_dir, str(domain_file), ratio=0.25, domain_test_fraction=0.25)
    assert config.domain_test_fraction == 0.25
    plan = plan_mix(config, store, workspace, domain=cache.domain(str(domain_file)), counter=cache.counter(config))
    held_out = len(plan.domain.test)
    assert held_out == 10 and plan.counts["domain"] == N_DOMAIN - held_out  # the held-out rows are not mixed
    text = counts_markdown(plan)
    assert f"| domain (health) | {N_DOMAIN - held_out} |" in text and f"{held_out} domain rows held out" in text
    # MedMCQA keeps its fixed split: the box is ignored, not refused.
    assert mix_form(tiny_model_dir, BUILTIN_MEDMCQA, domain_test_fraction=0.3).domain_test_fraction == 0.0
    assert mix_form(tiny_model_dir, "d.jsonl", domain_test_fraction=None).domain_test_fraction == 0.0
    with pytest.raises(ForgetlessError, match="held-out share"):
        mix_form(tiny_model_dir, "d.jsonl", domain_test_fraction=0.95)


def test_selection_choices_start_with_all_screened():
    assert selection_choices([]) == [ALL_SCREENED]
    assert selection_choices(["b", ALL_SCREENED, "a"]) == [ALL_SCREENED, "b", "a"]


def test_counts_and_composition_follow_the_plan(cache, store, workspace, domain_file, tiny_model_dir):
    config = mix_form(tiny_model_dir, str(domain_file), ratio=0.25)
    plan = plan_mix(config, store, workspace, domain=cache.domain(str(domain_file)), counter=cache.counter(config))
    text = counts_markdown(plan, 0.0123)
    assert text.startswith(f"**{13 + N_DOMAIN}** examples")  # G = round(40 * 0.25 / 0.75) = 13
    assert "| general (reconstructed) | 13 |" in text and f"| domain (health) | {N_DOMAIN} |" in text
    held = len(plan.general_held_out)  # the default holdout sets a few aside for drift
    assert held >= 1 and plan.candidates == N_GENERAL - held
    assert (f"{N_GENERAL - held} general candidates (all screened data; {held} more held out for drift)" in text
            and "planned in 0.01 s" in text)
    assert "⚠️" not in text

    limited = plan_mix(mix_form(tiny_model_dir, str(domain_file), ratio=0.9, selection="good"), store,
                       workspace, domain=cache.domain(str(domain_file)), counter=cache.counter(config))
    assert "selection “good”" in counts_markdown(limited) and "⚠️ general-limited" in counts_markdown(limited)

    figure = composition_figure(plan.composition("category"), "category", "examples")
    assert [trace.name for trace in figure.data] == ["general", "domain"]
    assert sum(sum(trace.x) for trace in figure.data) == plan.counts["total"]
    assert set(figure.data[0].y) == {"general: coding", "general: math"} and list(figure.data[1].y) == ["domain"]
    by_tokens = composition_figure(plan.composition("cluster"), "cluster", "tokens")
    assert sum(sum(trace.x) for trace in by_tokens.data) == plan.tokens["total"]
    assert "by cluster (tokens)" in by_tokens.layout.title.text
    empty = composition_figure(plan.composition("category").iloc[0:0], "category", "examples")
    assert not empty.data and "empty" in empty.layout.title.text


def test_an_update_after_the_first_reads_no_file_and_tokenizes_nothing(cache, store, workspace, tiny_model_dir,
                                                                       monkeypatch):
    """What keeps the tab interactive (bench/mix_update.py times it): after the first update, the domain data
    and the token counts come from the cache."""
    def update(ratio: float) -> dict[str, int]:
        config = mix_form(tiny_model_dir, BUILTIN_MEDMCQA, ratio=ratio)
        plan = plan_mix(config, store, workspace, domain=cache.domain(BUILTIN_MEDMCQA), counter=cache.counter(config))
        composition_figure(plan.composition("category"), "category", config.by)
        return plan.counts

    first = update(0.1)  # loads MedMCQA and tokenizes the rows it mixes (the most domain rows of these ratios)
    monkeypatch.setattr("ui.views.mix.load_domain", lambda *_: pytest.fail("read the domain data again"))
    monkeypatch.setattr(TokenCounter, "_encode", lambda *_: pytest.fail("tokenized again"))
    for ratio in (0.3, 0.6, 0.9, 0.1):  # each mixes a seeded prefix of the same rows: all counted already
        assert update(ratio)["total"] <= first["total"]


def test_map_overlays_the_domain_and_says_when_it_cannot(store, workspace, domain_file, tmp_path):
    data = load_domain(domain_file)
    figures = list(read_map(store, ALL_SCREENED, data, workspace, embedder_loader=fake_loader()))
    assert len(figures) == 2 and "embedding the domain rows" in figures[0].layout.title.text
    assert [trace.name for trace in figures[0].data] == [f"general ({N_GENERAL})"]
    assert [trace.name for trace in figures[1].data] == [f"general ({N_GENERAL})", f"domain ({N_DOMAIN})"]
    assert figures[1].data[1].text[0].startswith("explain health")

    chosen = list(read_map(store, "good", data, workspace, embedder_loader=fake_loader()))[-1]
    assert chosen.data[0].name == f"general ({store.explore_count(ExploreFilters(consensus_min=4))})"
    [nothing] = read_map(store, "none", data, workspace, embedder_loader=fake_loader())
    assert "no general candidates match" in nothing.layout.title.text

    unprofiled = Store(tmp_path / "forgetless.duckdb")  # nothing embedded yet
    [figure] = read_map(unprofiled, ALL_SCREENED, data, tmp_path, embedder_loader=fake_loader())
    assert "needs profiling" in figure.layout.title.text and not figure.data
    assert "nothing to show" in map_figure(pd.DataFrame()).layout.title.text


def test_subprocess_embedder_caches_by_content_and_reports_failures(tmp_path):
    encode = subprocess_embedder_loader(tmp_path / "cache", "no-such-embedder")()
    with pytest.raises(ForgetlessError, match="embedding the domain rows failed: error: embedder 'no-such-embedder'"):
        encode(["a"])
    assert not list((tmp_path / "cache").glob("*.npy"))  # a failure leaves no cache entry
    # A cached entry is used as is, without starting the child (which would fail on this embedder).
    key = hashlib.sha256(json.dumps(["no-such-embedder", ["a", "b"]]).encode()).hexdigest()[:32]
    np.save(tmp_path / "cache" / f"{key}.npy", np.ones((2, 3), dtype=np.float32))
    assert encode(["a", "b"]).shape == (2, 3)


def test_preview_and_import_report_list_bad_rows(tmp_path):
    path = tmp_path / "mixed.jsonl"
    good = {"messages": [{"role": "user", "content": "hi " * 200}, {"role": "assistant", "content": "hello"}]}
    path.write_text("\n".join([json.dumps(good), "{not json", json.dumps({"messages": []}), json.dumps(good)]) + "\n")
    data = load_domain(path)
    rows = preview_rows(data)
    assert len(rows) == 2 and len(rows[0]) == len(PREVIEW_HEADERS) and rows[0][1:] == ["hello", 2]
    assert len(rows[0][0]) <= 300
    text = import_report_markdown(data.report, data)
    assert text.startswith("**mixed.jsonl** · format `messages` · 4 rows read · 2 kept · 2 skipped · 2 train")
    assert "\n- line 2: " in text and "\n- line 3: " in text
    medmcqa = import_report_markdown(load_domain(BUILTIN_MEDMCQA).report)
    assert medmcqa.startswith("**builtin:medmcqa** · format `medmcqa`") and "- " not in medmcqa


def test_uploads_are_kept_in_the_workspace(tmp_path):
    workspace, upload = tmp_path / "ws", tmp_path / "tmp-upload" / "notes.jsonl"
    upload.parent.mkdir()
    upload.write_text("one\n")
    kept = keep_upload(upload, workspace)
    assert kept == workspace / "domain-data" / "notes.jsonl" and kept.read_text() == "one\n"
    assert keep_upload(upload, workspace) == kept  # the same file again: the same copy
    upload.write_text("two\n")
    other = keep_upload(upload, workspace)
    assert other != kept and other.name.startswith("notes-") and kept.read_text() == "one\n"
    choices = [value for _, value in domain_choices(workspace)]
    assert choices[0] == BUILTIN_MEDMCQA and sorted(choices[1:]) == sorted([str(kept), str(other)])


def test_cache_reloads_an_edited_file(tmp_path):
    cache, path = MixCache(tmp_path), write_domain(tmp_path / "d.jsonl", 5)
    first = cache.domain(str(path))
    assert cache.domain(str(path)) is first
    write_domain(path, 7)
    assert len(cache.domain(str(path)).train) == 7
    with pytest.raises(ForgetlessError):
        cache.domain(str(tmp_path / "missing.jsonl"))


def test_loading_domain_data_does_not_wait_for_a_tokenizer_loading(tmp_path, tiny_model_dir, monkeypatch):
    """The first plan loads the tokenizer (seconds, more on a busy machine): picking other data meanwhile
    must show its import report at once, not after that load."""
    loading, release = threading.Event(), threading.Event()

    def slow_load_counter(config, workspace):
        loading.set()
        release.wait(30)
        return TokenCounter(None, "slow")

    monkeypatch.setattr("ui.views.mix.load_counter", slow_load_counter)
    cache, path = MixCache(tmp_path), write_domain(tmp_path / "d.jsonl", 5)
    planning = threading.Thread(target=cache.counter, args=(mix_form(tiny_model_dir, str(path)),))
    planning.start()
    try:
        assert loading.wait(30)
        loaded = ThreadPoolExecutor(1).submit(cache.domain, str(path))
        assert len(loaded.result(timeout=10).train) == 5  # while the tokenizer is still loading
        assert planning.is_alive()
    finally:
        release.set()
        planning.join()


def test_snapshot_names_folders_and_rows(cache, store, workspace, domain_file, tiny_model_dir):
    config = mix_form(tiny_model_dir, str(domain_file), ratio=0.5, seed=7)
    name = suggest_snapshot_name(config, "my data!", snapshot_names(workspace))
    assert name == "my-data-r50-examples-proportional-s7"
    assert suggest_snapshot_name(config, "x", ["x-r50-examples-proportional-s7"]) == "x-r50-examples-proportional-s7-2"
    folder = snapshot_folder(workspace, "", name)
    assert folder == workspace / "mixes" / name
    summary = freeze_mix(config.__class__(**{**config.__dict__, "out": str(folder)}), store, workspace,
                         domain=cache.domain(str(domain_file)), counter=cache.counter(config))
    assert freeze_message(summary).startswith(f"Froze **{name}**: 80 examples (40 general + 40 domain)")
    assert (folder / "train.parquet").exists() and snapshot_names(workspace) == [name]
    with pytest.raises(ForgetlessError, match="already exists"):
        snapshot_folder(workspace, name, "unused")
    for bad in ("../up", ".hidden", "a b", "x" * 101):
        with pytest.raises(ForgetlessError, match="snapshot name"):
            snapshot_folder(workspace, bad, "unused")

    [row] = snapshot_rows(list_snapshots(workspace))
    assert len(row) == len(SNAPSHOT_HEADERS)
    assert row[0] == name and row[2:5] == [40, 40, 80] and row[5] == "0.5 → 0.500 by examples"
    assert row[7] == "health.jsonl" and row[8] == str(folder) and "T" not in row[1]


@pytest.mark.filterwarnings("ignore::UserWarning")  # gr.Warning outside a request: the toast as a warning
def test_tab_handlers_turn_errors_into_messages(tmp_path, tiny_model_dir):
    """No judged data yet and a bad file: a message line, never an exception (the tab's own handlers)."""
    from ui.mix_tab import freeze, load_domain_view, update_plan
    from ui.views.jobs import LazyStore

    cache, store = MixCache(tmp_path), LazyStore(tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    message, report, preview, loaded = load_domain_view(cache, str(bad))
    assert message.startswith("⚠️") and "no recognised columns" in report and not preview["data"] and loaded is None

    domain = str(write_domain(tmp_path / "d.jsonl", 4))
    assert load_domain_view(cache, domain)[3] == domain
    message, counts, _, _ = update_plan(cache, store, domain, "category", **form(tiny_model_dir))
    assert "no general candidates" in message and counts.startswith("**No mix:**")
    message, counts, _, _ = update_plan(cache, store, domain, "category", **form(tiny_model_dir, ratio=0))
    assert message == "" and counts.startswith("**4** examples")  # domain only: nothing judged is needed
    message, *_ = freeze(cache, store, domain, "", **form(tiny_model_dir))
    assert "no general candidates" in message and not (tmp_path / "mixes").exists()
