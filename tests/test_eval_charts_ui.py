"""The Evaluate tab's charts without a browser: the change per task, the ratio points, and the history — the
trade-off between forgetting and domain gain with the base at the origin."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from core.store import Store
from tests.eval_results import BASE, add_result, add_two_runs, make_run
from ui.views.eval_charts import (
    CHANGE_COLORS,
    UNKNOWN_RATIO_COLOR,
    delta_figure,
    history_figure,
    point_label,
    short_run_name,
)
from ui.views.evaluate import (
    HEADLINE,
    POINT_COLUMNS,
    eval_deltas,
    eval_history,
    headline_deltas,
    ratio_points,
    read_eval_views,
)


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    return Store.for_workspace(tmp_path / "ws")


@pytest.fixture()
def two_runs(tmp_path: Path, store: Store) -> tuple[str, str]:
    return add_two_runs(store, tmp_path / "ws" / "runs")


def test_delta_chart_colours_losses_red_gains_green_with_two_se_error_bars(store: Store, two_runs):
    good, flat = two_runs
    frames = {"good": headline_deltas(eval_deltas(store, BASE, good)),
              "flat": headline_deltas(eval_deltas(store, BASE, flat))}
    shown = [key for key in HEADLINE if key[0] not in ("domain_mcq", "ifeval")]  # what the fixture stored
    assert list(zip(frames["good"]["task"], frames["good"]["metric"], strict=True)) == shown
    figure = delta_figure(frames, BASE)
    bars = {trace.name: trace for trace in figure.data}
    assert list(bars) == ["good", "flat"] and all(trace.type == "bar" for trace in figure.data)
    good_bars = bars["good"]
    assert list(good_bars.x) == [f"{t}<br>{m}" for t, m in shown]
    assert good_bars.y[0] == pytest.approx(-10.0) and good_bars.y[-1] == pytest.approx(15.0)
    assert good_bars.marker.color[0] == CHANGE_COLORS["loss"] and good_bars.marker.color[-1] == CHANGE_COLORS["gain"]
    assert good_bars.marker.color[1] == CHANGE_COLORS["within noise"]
    assert set(bars["flat"].marker.color) == {CHANGE_COLORS["within noise"]}
    # Two combined standard errors, in percentage points: 2 * sqrt(0.01² + 0.01²) * 100.
    assert good_bars.error_y.array[0] == pytest.approx(2 * (2 * 0.01**2) ** 0.5 * 100)
    assert good_bars.marker.pattern.shape != bars["flat"].marker.pattern.shape  # runs stay apart
    assert "percentage points" in figure.layout.title.text


def test_delta_chart_without_comparable_results_is_labelled_empty():
    figure = delta_figure({}, BASE)
    assert not figure.data and "no run and base" in figure.layout.title.text


def test_ratio_points_carry_each_runs_ratio_and_snapshot(store: Store, two_runs, tmp_path: Path):
    unknown = str(make_run(tmp_path / "ws" / "runs" / "noratio", ratio=None))
    add_result(store, unknown, "piqa", acc_norm=0.7, run_dir=unknown, base=BASE)
    points = ratio_points(eval_history(store)).set_index("run")
    assert list(points.index) == ["good", "flat", "noratio"]  # by ratio, the unknown one last
    assert points.loc["good", "mix_ratio"] == 0.3 and points.loc["flat", "mix_ratio"] == 0.7
    assert points.loc["good", "mix"] == "good-mix" and points.loc["noratio", "mix"] == "noratio-mix"
    assert points.loc["good", "general_change"] == pytest.approx(-0.10 / 4)  # mean over the four benchmarks
    assert points.loc["good", "general_stderr"] == pytest.approx((4 * 2 * 0.01**2) ** 0.5 / 4)
    assert points.loc["good", "domain_gain"] == pytest.approx(0.15)
    assert points.loc["flat", "general_change"] == pytest.approx(0.005) and pd.isna(points.loc["flat", "domain_gain"])


def test_history_is_the_trade_off_with_the_base_at_the_origin(store: Store, two_runs, tmp_path: Path):
    good, _ = two_runs
    unknown = str(make_run(tmp_path / "ws" / "runs" / "20250301-101500-noratio", ratio=None))
    add_result(store, unknown, "piqa", acc_norm=0.62, stderr=0.01, run_dir=unknown, base=BASE)
    add_result(store, unknown, "medmcqa", acc=0.33, acc_norm=None, stderr=None, run_dir=unknown, base=BASE)
    figure = history_figure(ratio_points(eval_history(store)))
    base, runs, no_ratio = figure.data
    assert (list(base.x), list(base.y), list(base.text)) == ([0.0], [0.0], ["base"])
    assert BASE in base.hovertemplate
    # good: domain +15 pp (x), general -2.5 pp (y), error bars of 2 SE in pp on both axes.
    assert list(runs.x) == [pytest.approx(15.0)] and list(runs.y) == [pytest.approx(-2.5)]
    assert runs.error_x.array[0] == pytest.approx(2 * (2 * 0.01**2) ** 0.5 * 100)
    assert runs.error_y.array[0] == pytest.approx(2 * (4 * 2 * 0.01**2) ** 0.5 / 4 * 100)
    assert list(runs.marker.color) == [0.3] and (runs.marker.cmin, runs.marker.cmax) == (0.0, 1.0)
    assert runs.marker.showscale and runs.marker.colorbar.title.text == "mix ratio"
    assert list(runs.text) == ["good r=0.3"]
    name, ratio, mix, general, domain, compared_with = runs.customdata[0]
    assert (name, ratio, mix, compared_with) == ("good", "0.3", "good-mix", BASE)
    assert general == f"-2.5 ± {(4 * 2 * 0.01**2) ** 0.5 / 4 * 100:.1f} pp (1 SE)"
    assert domain == "+15.0 ± 1.4 pp (1 SE)"
    assert all(f"customdata[{i}]" in runs.hovertemplate for i in range(6))
    # A run without a known ratio is grey, labelled by its name without its time stamp; its SE is unknown.
    assert no_ratio.marker.color == UNKNOWN_RATIO_COLOR and list(no_ratio.text) == ["noratio"]
    assert no_ratio.customdata[0][0] == "20250301-101500-noratio" and "SE unknown" in no_ratio.customdata[0][4]
    assert no_ratio.error_x.array[0] is None and no_ratio.error_y.array[0] > 0  # no bar without an SE
    # flat has no domain result: it cannot be placed, and the title says so.
    assert "1 run without both general and domain results not shown" in figure.layout.title.text
    assert "hover-only" not in figure.layout.title.text
    assert figure.layout.xaxis.range[0] < 0 < 15 < figure.layout.xaxis.range[1]  # the origin and the run in view
    assert figure.layout.yaxis.range[0] < -2.5 < 0 < figure.layout.yaxis.range[1]


def test_the_domain_axis_is_the_answer_fit_when_every_run_with_a_domain_result_has_it(store: Store, two_runs,
                                                                                      tmp_path: Path):
    good, _ = two_runs  # flat has no domain result at all: it does not decide the unit
    fit = {"acc": None, "acc_norm": None, "stderr": None}
    add_result(store, BASE, "domain_ppl", **fit, nll=3.0, nll_stderr=0.03)
    add_result(store, good, "domain_ppl", **fit, nll=2.7, nll_stderr=0.04, run_dir=good, base=BASE)
    points = ratio_points(eval_history(store))
    assert set(points["domain_measure"]) == {"answer fit"}
    good_point = points.set_index("run").loc["good"]
    assert good_point["domain_gain"] == pytest.approx(0.3) and good_point["domain_stderr"] == pytest.approx(0.05)
    figure = history_figure(points)
    runs = figure.data[1]
    assert list(runs.x) == [pytest.approx(0.3)] and runs.error_x.array[0] == pytest.approx(0.1)  # nats, 2 SE
    assert "answer fit" in figure.layout.xaxis.title.text and "nats/token" in figure.layout.xaxis.title.text
    assert runs.customdata[0][4] == "+0.300 ± 0.050 nats/token (1 SE)"
    assert figure.layout.xaxis.range[0] < 0 < 0.3 < figure.layout.xaxis.range[1] < 1  # not padded to 2 "pp"

    letters_only = str(make_run(tmp_path / "ws" / "runs" / "letters", ratio=0.5))  # one run without the fit
    add_result(store, letters_only, "medmcqa", acc=0.35, acc_norm=None, stderr=0.01, run_dir=letters_only,
               base=BASE)
    mixed = ratio_points(eval_history(store)).set_index("run")
    assert set(mixed["domain_measure"]) == {"accuracy"}  # one chart, one unit: every run by its accuracy
    assert mixed.loc["good", "domain_gain"] == pytest.approx(0.15)
    assert "pp" in history_figure(mixed.reset_index()).layout.xaxis.title.text


def test_history_without_placeable_runs_says_why():
    empty = history_figure(pd.DataFrame(columns=POINT_COLUMNS))
    assert not empty.data and "no run with general and domain results" in empty.layout.title.text
    general_only = pd.DataFrame([{"run": "r", "run_dir": "/r", "mix_ratio": 0.5, "mix": None, "base": BASE,
                                  "general_change": -0.01, "general_stderr": 0.01, "domain_gain": None,
                                  "domain_stderr": None}], columns=POINT_COLUMNS)
    figure = history_figure(general_only)
    assert not figure.data and "1 run without both general and domain results" in figure.layout.title.text


def test_run_labels_are_short_names_with_the_ratio():
    assert short_run_name("20250101-000000-tuned") == "tuned"
    assert short_run_name("20250101-120000-smollm2-135m-instruct-lora") == "smollm2…uct-lora"
    assert len(short_run_name("20250101-120000-smollm2-135m-instruct-lora")) == 16
    assert short_run_name("20250101-120000-") == "20250101-120000-"  # nothing but a stamp: kept whole
    assert point_label("20250101-000000-arm-c-s1", 0.25) == "arm-c-s1 r=0.25"
    assert point_label("arm-c", 0.1) == "arm-c r=0.1" and point_label("arm-c", None) == "arm-c"


def test_a_run_is_compared_with_its_own_base_when_that_was_evaluated(store: Store, tmp_path: Path):
    run = str(make_run(tmp_path / "runs" / "r", base="gemma-3-270m", ratio=0.5))
    add_result(store, "gemma-3-270m", "sciq", acc_norm=0.40)
    add_result(store, BASE, "sciq", acc_norm=0.90)
    add_result(store, run, "sciq", acc_norm=0.50, run_dir=run, base="gemma-3-270m")
    points = ratio_points(eval_history(store), fallback_base=BASE)
    assert points["base"].tolist() == ["gemma-3-270m"] and points["general_change"].iloc[0] == pytest.approx(0.10)


def test_views_say_what_is_missing(store: Store, two_runs, tmp_path: Path):
    good, _ = two_runs
    other = str(make_run(tmp_path / "runs" / "other"))
    views = read_eval_views(store, BASE, [good, other])
    assert views.headers[3:] == [f"{BASE} (base)", "good", "other"]
    assert "Not evaluated yet: other" in views.note
    assert [trace.name for trace in views.deltas.data] == ["good"] and len(views.history.data) == 2
    empty = read_eval_views(Store.for_workspace(tmp_path / "empty"), BASE, [])
    assert "No evaluations stored yet" in empty.note and not empty.rows and not empty.deltas.data
