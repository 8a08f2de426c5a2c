"""The Evaluate tab without a browser: form -> plan -> configs, the table, the background plan (the charts: in
tests/test_eval_charts_ui.py)."""

from __future__ import annotations

import dataclasses
import fcntl
import shutil
import time
from pathlib import Path

import pytest

from core.errors import ForgetlessError
from core.eval.evaluation import EvalConfig
from core.eval.plan import EvalPlan
from core.jobs import JobInfo, job_info, wait_for
from core.mix.domain import BUILTIN_MEDMCQA
from core.store import Store
from tests.eval_results import BASE, add_result, add_two_runs, make_run
from ui.views.eval_form import plan_form, plan_from_form, run_choices
from ui.views.evaluate import (
    eval_history,
    latest_results,
    read_eval_views,
    side_by_side,
)
from ui.views.jobs import EvalJobs, plan_marker, plan_status_line

PLAN_FORM = ("base", "runs", "suite", "limit", "seed", "batch_size", "dtype", "domain",
             "domain_test_fraction")  # the tab's


def form(**values):
    """The Evaluate form's values by field name (the domain widgets only where given)."""
    return {"base": BASE, "runs": [], "suite": ["general"], "limit": None, "seed": 0, "batch_size": 16, **values}


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    return Store.for_workspace(tmp_path / "ws")


@pytest.fixture()
def two_runs(tmp_path: Path, store: Store) -> tuple[str, str]:
    return add_two_runs(store, tmp_path / "ws" / "runs")


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
