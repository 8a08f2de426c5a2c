"""The Evaluate tab without a browser: form -> plan -> configs, the table, both charts, the background plan."""

from __future__ import annotations

import dataclasses
import fcntl
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from core.errors import ForgetlessError
from core.eval.evaluation import EvalConfig
from core.eval.plan import EvalPlan
from core.jobs import JobInfo, job_info, wait_for
from core.mix.domain import BUILTIN_MEDMCQA
from core.store import Store
from core.store.evaluation import EvalResultRow
from ui.views.eval_charts import (
    CHANGE_COLORS,
    UNKNOWN_RATIO_COLOR,
    delta_figure,
    history_figure,
    point_label,
    short_run_name,
)
from ui.views.eval_form import plan_form, plan_from_form, run_choices
from ui.views.evaluate import (
    HEADLINE,
    POINT_COLUMNS,
    eval_deltas,
    eval_history,
    headline_deltas,
    latest_results,
    ratio_points,
    read_eval_views,
    side_by_side,
)
from ui.views.jobs import EvalJobs, plan_marker, plan_status_line

BASE = "smollm2-135m-instruct"
GENERAL = ("arc_easy", "piqa", "hellaswag", "sciq")
PLAN_FORM = ("base", "runs", "suite", "limit", "seed", "batch_size", "dtype", "domain",
             "domain_test_fraction")  # the tab's


def form(**values):
    """The Evaluate form's values by field name (the domain widgets only where given)."""
    return {"base": BASE, "runs": [], "suite": ["general"], "limit": None, "seed": 0, "batch_size": 16, **values}


def make_run(folder: Path, base: str = BASE, ratio: float | None = 0.5, *, status: str = "done",
             full_model: Path | None = None) -> Path:
    """A finished run folder as the train stage leaves it: config.yaml, status, and an adapter/ or model/."""
    snapshot = folder.parent / f"{folder.name}-mix"
    snapshot.mkdir(parents=True)
    if ratio is not None:
        (snapshot / "manifest.yaml").write_text(yaml.safe_dump({"ratio": ratio}))
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"data": str(snapshot), "out": str(folder), "model": base,
                                                        "method": "full" if full_model else "lora"}))
    (folder / "status.json").write_text(f'{{"state": "{status}", "kind": "train", "started_at": 1}}')
    if full_model is not None:
        shutil.copytree(full_model, folder / "model")
    else:
        (folder / "adapter").mkdir()
    return folder


def add_result(store: Store, model: str, task: str, *, acc: float = 0.5, acc_norm: float | None = 0.5,
               stderr: float | None = 0.02, n: int = 100, run_dir: str | None = None, base: str | None = None,
               **extra: float) -> None:
    if task in GENERAL:
        extra.setdefault("acc_norm_stderr", stderr)
    suite = "general" if task in GENERAL else "domain" if task == "medmcqa" else "drift"
    store.save_eval_result(EvalResultRow(f"eval-{abs(hash((model, task))) % 10**8}", task, suite, model, run_dir,
                                         base, acc, acc_norm, stderr, n, extra, None, 0))


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    return Store.for_workspace(tmp_path / "ws")


@pytest.fixture()
def two_runs(tmp_path: Path, store: Store) -> tuple[str, str]:
    """The base and two runs: one gains on the domain and loses on ARC, one is within noise everywhere."""
    good, flat = str(make_run(tmp_path / "ws" / "runs" / "good", ratio=0.3)), \
        str(make_run(tmp_path / "ws" / "runs" / "flat", ratio=0.7))
    for task in GENERAL:
        add_result(store, BASE, task, acc=0.60, acc_norm=0.60, stderr=0.01)
    add_result(store, BASE, "medmcqa", acc=0.30, acc_norm=None, stderr=0.01, top_letter_share=0.5)
    for task in GENERAL:
        norm = 0.50 if task == "arc_easy" else 0.60  # arc_easy: -10 pp, far beyond 2 SE
        add_result(store, good, task, acc=norm, acc_norm=norm, stderr=0.01, run_dir=good, base=BASE)
        add_result(store, flat, task, acc=0.605, acc_norm=0.605, stderr=0.01, run_dir=flat, base=BASE)
    add_result(store, good, "medmcqa", acc=0.45, acc_norm=None, stderr=0.01, run_dir=good, base=BASE,
               top_letter_share=0.4)
    add_result(store, good, "drift", acc=None, acc_norm=None, stderr=None, n=50, run_dir=good, base=BASE,
               kl=0.0312, kl_stderr=0.004, ppl_base=12.05, ppl_tuned=12.31)
    return good, flat


# -- form -> plan -> configs ----------------------------------------------------------------------------------
def test_plan_evaluates_the_base_without_drift_then_each_run(tmp_path: Path):
    run = make_run(tmp_path / "runs" / "r1")
    plan = plan_from_form(form(runs=[str(run), str(run)], suite=["general", "drift"], limit=4.0, seed=3, batch_size=8))
    configs = plan.configs()
    assert [c.model for c in configs] == [BASE, str(run.resolve())]
    assert configs[0].suite == ("general",) and configs[1].suite == ("general", "drift")
    assert configs[1].base is None  # drift's reference: the run's own base
    assert all(c.limit == 4 and c.seed == 3 and c.batch_size == 8 for c in configs)
    # Each job id is what `forgetless eval` derives for the same settings, so CLI and UI resume each other.
    same = EvalConfig(model=str(run), suite=("general", "drift"), limit=4, seed=3, batch_size=8)
    assert configs[1].job_id == same.resolved_job_id()
    assert plan_from_form(form(limit=None)).configs()[0].limit is None  # empty: every item
    pinned = plan_from_form(form(runs=[str(run)], suite=["general"], limit=4, seed=3, batch_size=8, dtype="float32"))
    assert all(c.dtype == "float32" for c in pinned.configs())  # every target scored in the dtype picked
    cli = EvalConfig(model=str(run), suite=("general",), limit=4, seed=3, batch_size=8, dtype="float32")
    assert pinned.configs()[1].job_id == cli.resolved_job_id() != same.resolved_job_id()


def test_plan_round_trips_through_yaml_and_back_into_the_form(tmp_path: Path):
    from core.config import load_yaml, to_yaml

    run = make_run(tmp_path / "runs" / "r1")
    plan = plan_from_form(form(runs=[str(run)], suite=["domain", "general"], limit=10, seed=1, batch_size=4))
    (tmp_path / "plan.yaml").write_text(to_yaml(plan))
    assert load_yaml(EvalPlan, tmp_path / "plan.yaml") == plan
    assert plan_form(plan, PLAN_FORM) == {"base": BASE, "runs": [str(run.resolve())], "suite": ["domain", "general"],
                                          "limit": 10, "seed": 1, "batch_size": 4, "dtype": "auto",
                                          "domain": BUILTIN_MEDMCQA, "domain_test_fraction": 0.2}
    assert plan_from_form(plan_form(plan, PLAN_FORM)) == plan  # shown in the form, started again: the same plan
    single = dataclasses.replace(plan, suite=("arc_easy", "general"))  # a single task: no checkbox for it
    assert plan_form(single, ["suite"]) == {"suite": ["general"]}


def test_plan_passes_the_domain_data_and_its_held_out_share(tmp_path: Path):
    from types import SimpleNamespace

    from core.config import load_yaml, to_yaml
    from ui.job_controls import start_job

    data = tmp_path / "health.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n')
    run = make_run(tmp_path / "runs" / "r1")
    plan = plan_from_form(form(runs=[str(run)], suite=["general", "domain"], limit=5, domain=str(data),
                               domain_test_fraction=0.3))
    configs = plan.configs()
    assert all(c.domain == str(data.resolve()) and c.domain_test_fraction == 0.3 for c in configs)
    assert all(c.tasks()[-1] == "domain_ppl" for c in configs)
    same = EvalConfig(model=BASE, suite=("general", "domain"), limit=5, domain=str(data), domain_test_fraction=0.3)
    assert configs[0].job_id == same.resolved_job_id()  # what `forgetless eval --domain ...` resumes
    (tmp_path / "plan.yaml").write_text(to_yaml(plan))
    shown = plan_form(load_yaml(EvalPlan, tmp_path / "plan.yaml"), ["domain", "domain_test_fraction"])
    assert shown == {"domain": str(data.resolve()), "domain_test_fraction": 0.3}

    # builtin:medmcqa has its fixed split: the share is ignored, so the job ids are the CLI's defaults.
    builtin = plan_from_form(form(suite=["domain"], limit=5, domain=BUILTIN_MEDMCQA,
                                  domain_test_fraction=0.0)).configs()
    assert builtin[0].tasks() == ("medmcqa", "domain_ppl") and builtin[0].domain_test_fraction == 0.2
    assert builtin[0].job_id == EvalConfig(model=BASE, suite=("domain",), limit=5).resolved_job_id()
    assert plan_from_form(form(suite=["domain"], domain="", domain_test_fraction=None)).domain == BUILTIN_MEDMCQA
    assert plan_from_form(form(suite=["domain"], domain=None)).domain == BUILTIN_MEDMCQA  # a cleared dropdown
    # Without the domain suite the data is unused (a user file with 0 is no error then).
    assert plan_from_form(form(domain=str(data), domain_test_fraction=0)).configs()[0].domain == BUILTIN_MEDMCQA

    # A user file with nothing held out, or a missing file, is refused with a visible message.
    for domain, share, fragment in ((str(data), 0, "test fraction above 0"), (str(data), None, "above 0"),
                                    (str(tmp_path / "missing.jsonl"), 0.2, "no domain data at")):
        with pytest.raises(ForgetlessError, match=fragment):
            plan_from_form(form(suite=["domain"], limit=5, domain=domain, domain_test_fraction=share))
    never = SimpleNamespace(start=lambda plan: pytest.fail(f"started {plan}"))
    with pytest.warns(UserWarning, match="above 0"):  # gr.Warning's toast, outside an event
        message = start_job(never, plan_from_form, form(suite=["domain"], limit=5, domain=str(data),
                                                        domain_test_fraction=0))
    assert message.startswith("Not started:") and "test fraction above 0" in message


@pytest.mark.parametrize(("changes", "fragment"), [
    ({"base": ""}, "pick a base model"),
    ({"base": None}, "Base model is empty"),
    ({"suite": []}, "at least one suite"),
    ({"suite": ["drift"]}, "drift compares a tuned run"),
    ({"limit": 0}, "limit must be at least 1"),
    ({"seed": None}, "Seed is empty"),
    ({"batch_size": 2.5}, "whole number"),
    ({"runs": ["/no/such/run"]}, "no model or run folder"),
])
def test_bad_form_values_are_one_line_errors(changes, fragment):
    with pytest.raises(ForgetlessError, match=fragment):
        plan_from_form(form(**changes))


def test_an_unfinished_run_is_refused_and_not_offered(tmp_path: Path):
    workspace = tmp_path / "ws"
    done = make_run(workspace / "runs" / "20250101-done")
    unfinished = make_run(workspace / "runs" / "20250102-half")
    shutil.rmtree(unfinished / "adapter")
    busy = make_run(workspace / "runs" / "20250103-busy", status="running")
    with (busy / "lock").open("a") as lock:  # held, as the training process holds it while it runs
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert run_choices(workspace) == [("20250101-done · lora · done", str(done.resolve()))]
    with pytest.raises(ForgetlessError, match="neither adapter/ nor model/"):
        plan_from_form(form(runs=[str(unfinished)]))


# -- the table ---------------------------------------------------------------------------------------------------
def test_side_by_side_shows_each_target_with_stderr_and_the_change(store: Store, two_runs):
    good, flat = two_runs
    headers, rows = side_by_side(latest_results(eval_history(store)), BASE, [good, flat])
    assert headers == ["benchmark", "metric", "n", f"{BASE} (base)", "good", "flat"]
    by_key = {(row[0], row[1]): row[2:] for row in rows}
    assert by_key[("arc_easy", "acc_norm %")] == ["100", "60.0 ± 1.0", "50.0 ± 1.0 (−10.0 ▼)", "60.5 ± 1.0 (+0.5 ≈)"]
    assert by_key[("medmcqa", "acc %")] == ["100", "30.0 ± 1.0", "45.0 ± 1.0 (+15.0 ▲)", "—"]
    assert by_key[("medmcqa", "top letter share %")][1:3] == ["50.0", "40.0 (−10.0 ▲)"]  # lower is better
    # Drift has no base column; its perplexity cell names the base's perplexity on the same text.
    assert by_key[("drift", "KL per token (vs base)")] == ["50", "—", "0.0312 ± 0.0040", "—"]
    assert by_key[("drift", "perplexity (base → tuned)")][2] == "12.31 (base 12.05 ▼)"


def test_the_newest_result_of_a_model_and_task_counts_whole(store: Store):
    add_result(store, BASE, "arc_easy", acc=0.1, acc_norm=0.1, stderr=0.05, n=10)
    add_result(store, BASE, "arc_easy", acc=0.7, acc_norm=0.7, stderr=None, n=20)  # newer, without stderr
    _, rows = side_by_side(latest_results(eval_history(store)), BASE, [])
    assert rows[0][2:] == ["20", "70.0"]  # not the older row's stderr mixed into the newer result


def test_side_by_side_lists_every_item_count_when_targets_differ(store: Store, tmp_path: Path):
    run = str(make_run(tmp_path / "runs" / "r"))
    add_result(store, BASE, "piqa", n=100)
    add_result(store, run, "piqa", n=4, run_dir=run, base=BASE)
    _, rows = side_by_side(latest_results(eval_history(store)), BASE, [run])
    assert rows[0][2] == "100 / 4"


# -- the charts ------------------------------------------------------------------------------------------------
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


# -- the background plan -----------------------------------------------------------------------------------------
def _job(state: str, progress: dict | None = None, summary: dict | None = None, error: str | None = None) -> JobInfo:
    return JobInfo("eval-queue-1", "eval-queue", state, Path("/x"), progress or {}, error, summary, 1.0)


def test_status_line_follows_the_plan_and_names_failures():
    current = JobInfo("eval-abc", "eval", "running", Path("/y"),
                      {"done": 12, "total": 40, "tokens_per_s": 850.0, "eta_s": 65}, None, None, 1.0)
    assert plan_status_line(None, None).startswith("No evaluation yet")
    running = _job("running", {"done": 1, "total": 3, "current": "eval-abc", "target": "run-a"})
    assert plan_status_line(running, current) == \
        "running · eval-queue-1 · target 2 of 3: run-a · 12/40 items · 850 tokens/s · ETA 1:05"
    loading = JobInfo("eval-abc", "eval", "running", Path("/y"), {"phase": "loading model"}, None, None, 1.0)
    assert plan_status_line(running, loading).endswith("run-a · loading model…")
    summary = {"targets": [{"target": BASE, "state": "done"},
                           {"target": "run-a", "state": "failed", "error": "cannot apply adapter"}],
               "evaluated": 1, "total": 2, "seconds": 75}
    assert plan_status_line(_job("done", summary=summary), None) == \
        "done · eval-queue-1 · 1 of 2 evaluated · took 1:15 · failed: run-a: cannot apply adapter"
    assert "stopped on request" in plan_status_line(_job("cancelled", summary=summary), None)
    assert plan_marker(running, current) != plan_marker(_job("running", {"done": 2, "total": 3}), current)


def _ended(folder: Path) -> JobInfo:
    wait_for(folder, 240, lambda info: not info.active)
    time.sleep(0.3)  # a job ending between job_info's status read and lock check reads "interrupted" once
    return job_info(folder)


def test_plan_runs_in_the_background_one_target_after_another(tiny_model_dir: Path, tmp_path: Path):
    workspace = (tmp_path / "ws").resolve()
    run = make_run(workspace / "runs" / "tuned", base=str(tiny_model_dir), ratio=0.25, full_model=tiny_model_dir)
    jobs = EvalJobs(workspace)
    plan = EvalPlan(base=str(tiny_model_dir), runs=(str(run),), suite=("arc_easy",), limit=3, seed=1)
    assert "2 evaluations" in jobs.start(plan)
    with pytest.raises(ForgetlessError, match="still"):
        jobs.start(plan)
    job = _ended(jobs.newest().folder)
    assert job.state == "done", (job.folder / "log.txt").read_text()
    assert [t["state"] for t in job.summary["targets"]] == ["done", "done"]
    assert plan_status_line(job, jobs.current(job)).startswith(f"done · {job.job_id} · 2 of 2 evaluated")
    lines = jobs.command(job).splitlines()
    assert len(lines) == 2 and lines[1].startswith(f"forgetless eval --model {run.resolve()} --suite arc_easy")
    views = read_eval_views(Store.for_workspace(workspace), str(tiny_model_dir), [str(run)])
    assert views.rows and "(base)" in views.headers[3] and views.headers[4] == "tuned"
    assert [trace.name for trace in views.deltas.data] == ["tuned"]  # a full copy: every delta is 0
    assert not views.history.data and "1 run without both" in views.history.layout.title.text  # general only

    # Cancelled before its driver even got going: the plan stops without starting an evaluation.
    jobs.start(EvalPlan(base=str(tiny_model_dir), runs=(str(run),), suite=("piqa",), limit=3, seed=1))
    assert jobs.cancel().startswith("Cancel requested")
    stopped = _ended(jobs.newest().folder)
    assert stopped.state == "cancelled" and stopped.summary["targets"] == [], (stopped.folder / "log.txt").read_text()
    stored = Store.for_workspace(workspace).eval_results()
    assert "piqa" not in set(stored["task"])
