"""The evidence experiment's figures: changes over seeds and items, forgetting reduction and domain gain
retention with bootstrap intervals (experiments/evidence_stats.py), on constructed scores."""

from __future__ import annotations

import pytest

from experiments.evidence_costs import arm_costs, cost_reading, cost_sections, one_machine_costs
from experiments.evidence_stats import change, item_changes, ratio_with_interval, summary


def test_changes_average_the_seeds_per_item_before_the_stderr():
    base = {"q1": 1.0, "q2": 1.0, "q3": 0.0, "q4": 1.0}
    seeds = [{"q1": 0.0, "q2": 1.0, "q3": 0.0, "q4": 1.0}, {"q1": 0.0, "q2": 0.0, "q3": 1.0, "q4": 1.0, "q9": 1.0}]
    assert item_changes(base, seeds) == {"q1": -1.0, "q2": -0.5, "q3": 0.5, "q4": 0.0}  # q9: not in the base
    result = change(base, seeds)
    assert result["delta"] == pytest.approx(-0.25) and result["n"] == 4 and result["seeds"] == 2
    assert result["stderr"] == pytest.approx(0.6454972 / 2)  # sample std of the item means over sqrt(4)
    assert result["per_seed"] == pytest.approx([-0.25, -0.25])
    assert change(base, [])["delta"] is None


def test_forgetting_reduction_and_its_interval():
    # (a) forgets 0.4 on average, (c) 0.1: three quarters of the forgetting is prevented.
    n = 200
    reference = {f"q{i}": (1.0 if i < 80 else 0.0) for i in range(n)}
    ours = {f"q{i}": (1.0 if i < 20 else 0.0) for i in range(n)}
    result = ratio_with_interval(ours, reference, one_minus=True)
    assert result["value"] == pytest.approx(0.75) and result["n"] == n
    low, high = result["ci"]
    assert low < 0.75 < high and low > 0.5 and high < 0.95
    assert ratio_with_interval(ours, {k: 0.0 for k in reference}, one_minus=True)["value"] is None  # nothing forgot


def test_summary_compares_every_arm_with_domain_only():
    items = [f"q{i}" for i in range(100)]
    base = {"ifeval": dict.fromkeys(items, 1.0), "medmcqa": dict.fromkeys(items, 0.0)}
    lose = {i: (0.0 if n < 50 else 1.0) for n, i in enumerate(items)}  # forgets half
    keep = {i: (0.0 if n < 10 else 1.0) for n, i in enumerate(items)}  # forgets a tenth
    gain = {i: (1.0 if n < 40 else 0.0) for n, i in enumerate(items)}
    half_gain = {i: (1.0 if n < 20 else 0.0) for n, i in enumerate(items)}
    arms = {"a": {"ifeval": [lose, lose], "medmcqa": [gain, gain]},
            "c": {"ifeval": [keep, keep], "medmcqa": [half_gain, half_gain]}}
    result = summary(base, arms, primary="ifeval", domain="medmcqa")
    assert set(result) == {"c"}
    assert result["c"]["forgetting_reduction"]["value"] == pytest.approx(0.8)
    assert result["c"]["domain_gain_retention"]["value"] == pytest.approx(0.5)


def test_an_arm_is_compared_with_domain_only_on_the_seeds_both_have():
    items = [f"q{i}" for i in range(100)]
    base = {"ifeval": dict.fromkeys(items, 1.0), "medmcqa": dict.fromkeys(items, 0.0)}

    def forgets(share: float) -> dict[str, float]:
        return {i: (0.0 if n < share * 100 else 1.0) for n, i in enumerate(items)}

    gain = {i: (1.0 if n < 40 else 0.0) for n, i in enumerate(items)}
    arms = {"a": {"ifeval": [forgets(0.4), forgets(0.2)], "medmcqa": [gain, gain]},
            "c": {"ifeval": [forgets(0.1)], "medmcqa": [gain]}}
    matched = summary(base, arms, primary="ifeval", domain="medmcqa", arm_seeds={"a": [0, 1], "c": [0]})["c"]
    assert matched["forgetting_reduction"]["value"] == pytest.approx(0.75)  # 1 - 0.1/0.4: (a)'s seed 0 only
    assert matched["seeds"] == [0]
    unmatched = summary(base, arms, primary="ifeval", domain="medmcqa")["c"]
    assert unmatched["forgetting_reduction"]["value"] == pytest.approx(1 - 0.1 / 0.3)  # (a)'s mean of both
    assert unmatched["seeds"] is None
    apart = summary(base, arms, primary="ifeval", domain="medmcqa", arm_seeds={"a": [0, 1], "c": [2]})["c"]
    assert apart["seeds"] == [] and apart["forgetting_reduction"]["value"] is None  # nothing to pair with
    arms["c"] = {"ifeval": [forgets(0.1), forgets(0.1)], "medmcqa": [gain, gain]}
    both = summary(base, arms, primary="ifeval", domain="medmcqa", arm_seeds={"a": [0, 1], "c": [0, 1]})["c"]
    assert both["forgetting_reduction"]["value"] == pytest.approx(1 - 0.1 / 0.3)
    assert both["per_seed"]["0"]["forgetting_reduction"] == pytest.approx(0.75)  # each seed's pair alone
    assert both["per_seed"]["1"]["forgetting_reduction"] == pytest.approx(0.5)
    assert both["per_seed"]["1"]["domain_gain_retention"] == pytest.approx(1.0)
    assert "per_seed" not in matched  # one seed: the ratio above is that seed's


def test_the_reading_says_when_the_effect_is_shown_absent_or_reversed():
    from experiments.evidence_report import reading

    def record(a_delta, ratio, ci):
        return {"arms": {"a": {"general": {"delta": a_delta, "stderr": 0.01}}},
                "arm_names": {"c": "ours"},
                "summary": {"by_arm": {"c": {"forgetting_reduction": {"value": ratio, "ci": ci},
                                             "domain_gain_retention": {"value": None, "ci": None}}}}}

    shown = reading(record(-0.1, 0.6, [0.3, 0.9]))
    assert shown[0].startswith("Domain-only training forgets: general accuracy -10.0 ± 1.0 points")
    assert "forgetting reduction 0.60 (95% interval 0.30 to 0.90): clearly above 0" in shown[1]
    assert "Domain gain retention: undefined" in shown[1]
    assert "no effect is shown" in reading(record(-0.1, 0.2, [-0.1, 0.5]))[1]
    assert "opposite of the intended effect" in reading(record(-0.1, -0.5, [-0.9, -0.2]))[1]
    assert "does not clearly forget" in reading(record(-0.02, None, None))[0]
    assert not any("IFEval" in line for line in shown)  # no IFEval scores: nothing said about it


def test_the_reading_compares_each_arms_ifeval_change_with_domain_only():
    from experiments.evidence_report import reading

    def record(c_ifeval):
        return {"arms": {"a": {"general": {"delta": -0.1, "stderr": 0.01}, "ifeval": {"delta": -0.05, "stderr": 0.012}},
                         "c": {"ifeval": {"delta": c_ifeval, "stderr": 0.016}}},
                "arm_names": {"c": "ours"},
                "summary": {"by_arm": {"c": {"forgetting_reduction": {"value": 0.7, "ci": [0.5, 0.9]},
                                             "domain_gain_retention": {"value": 1.0, "ci": [0.9, 1.1]}}}}}

    same = reading(record(-0.05))[-1]
    assert same == ("IFEval (all prompts, beside the primary metric): (a) -5.0 ± 1.2 points; (c) -5.0 ± 1.6, "
                    "not clearly different from (a)'s (difference +0.0 ± 2.0).")
    assert "(c) +2.0 ± 1.6, clearly above (a)'s (difference +7.0 ± 2.0)" in reading(record(0.02))[-1]
    assert "clearly below (a)'s (difference -7.0 ± 2.0)" in reading(record(-0.12))[-1]


def test_costs_count_synthesis_and_screening_once_and_training_per_run():
    here, there = ({"cpu": "AMD EPYC", "family_model": "25/17", "bf16": "AVX512-BF16", "python": "3.11.7"},
                   {"cpu": "Intel Xeon", "bf16": "AMX bf16", "python": "3.11.7"})
    stages = {"reconstruct": {"seconds": 10.0, "tokens": 100, "machine": here},
              "respond": {"seconds": 30.0, "tokens": 600, "machine": here},
              "judge": {"seconds": 5.0, "tokens": 50, "machine": here}}
    run = {"seconds": 100.0, "total_steps": 10, "tokens_per_s": 2.0, "machine": there}
    resumed = {"seconds": 50.0, "total_steps": 10, "resumed_from_step": 5, "tokens_per_s": 4.0, "machine": there}
    costs = arm_costs(stages, {"a": [run, resumed], "c": [run], "d": [{**run, "machine": here}],
                               "e": [{"seconds": 3.0}]})
    assert costs["a"] == {"synthesis_seconds": 0, "synthesis_tokens": 0, "screening_seconds": 0,
                          "screening_tokens": 0, "train_seconds": 100.0, "train_tokens": 300, "runs": 2,
                          "total_seconds": 100.0, "machines": ["Intel Xeon (AMX bf16)"],
                          "train_seconds_by_machine": {"Intel Xeon (AMX bf16)": 100.0}}  # resumed timed 5 of 10
    assert (costs["c"]["synthesis_seconds"], costs["c"]["screening_seconds"], costs["c"]["total_seconds"]) == (
        40.0, 5.0, 145.0)
    assert costs["c"]["machines"] == ["AMD EPYC 25/17 (AVX512-BF16)", "Intel Xeon (AMX bf16)"]
    assert (costs["d"]["synthesis_tokens"], costs["d"]["screening_tokens"]) == (700, 0)
    assert costs["d"]["machines"] == ["AMD EPYC 25/17 (AVX512-BF16)"]
    assert costs["e"]["train_seconds"] == 103.0 and costs["e"]["train_tokens"] == 300  # (a)'s run + interpolation
    assert costs["e"]["machines"] == ["Intel Xeon (AMX bf16)", "machine not recorded"]
    mixed = arm_costs(stages, {"a": [run, {**run, "seconds": 60.0, "machine": here}], "e": [{"seconds": 3.0}]})
    assert mixed["a"]["train_seconds"] == 80.0  # the mean over machines hides that they differ …
    assert mixed["a"]["train_seconds_by_machine"] == {"AMD EPYC 25/17 (AVX512-BF16)": 60.0,
                                                      "Intel Xeon (AMX bf16)": 100.0}  # … this does not
    assert mixed["e"]["train_seconds_by_machine"] == {"AMD EPYC 25/17 (AVX512-BF16)": 63.0,
                                                      "Intel Xeon (AMX bf16)": 103.0}
    uncounted = arm_costs({**stages, "judge": {"seconds": 5.0, "tokens": None}}, {"c": [run], "a": [run]})
    assert uncounted["c"]["screening_tokens"] is None and uncounted["c"]["total_seconds"] == 145.0
    assert uncounted["a"]["screening_tokens"] == 0  # no screening at all: nothing to count


def test_costs_on_one_machine_divide_each_stages_tokens_by_its_rate_there():
    """Stages timed on different machines are put on one: the tokens each needed over the rate it ran at on the
    machine that timed them all again (experiments/evidence_retime.py)."""
    stages = {"reconstruct": {"seconds": 10.0, "tokens": 100}, "respond": {"seconds": 30.0, "tokens": 600},
              "judge": {"seconds": 5.0, "tokens": 900}}
    run = {"seconds": 100.0, "total_steps": 10, "tokens_per_s": 2.0}
    costs = arm_costs(stages, {"a": [run], "c": [{**run, "tokens_per_s": 3.0}], "d": [run],
                               "e": [{"seconds": 3.0}]})
    rates = {"reconstruct": 50.0, "respond": 20.0, "judge": 300.0, "train-a": 4.0, "train-c": 5.0, "train-d": 2.0}
    one = one_machine_costs(stages, costs, rates)
    assert one["a"] == {"synthesis_seconds": 0, "screening_seconds": 0, "train_seconds": 50.0,
                        "total_seconds": 50.0}  # 200 tokens at 4/s, not the 100 s timed elsewhere
    assert one["c"] == {"synthesis_seconds": 32.0, "screening_seconds": 3.0, "train_seconds": 60.0,
                        "total_seconds": 95.0}  # 100/50 + 600/20; 900/300; 300/5
    assert one["d"]["screening_seconds"] == 0 and one["d"]["train_seconds"] == 100.0
    assert one["e"]["train_seconds"] == 53.0  # (a)'s training there + the interpolation as timed
    assert set(one_machine_costs(stages, costs, {**rates, "train-c": None})) == {"a", "d", "e"}  # (c) not timed

    machine = {"cpu": "AMD EPYC", "family_model": "26/2", "bf16": "AVX512-BF16"}
    record = {"costs": {arm: {**cost, "machines": ["elsewhere"]} for arm, cost in costs.items()},
              "costs_one_machine": {"machine": machine, "instructions": 256, "train_steps": 12,
                                    "tokens_per_s": rates, "arms": one}}
    sections = cost_sections(record)
    assert len(sections) == 2 and "The same costs on one machine, AMD EPYC 26/2 (AVX512-BF16)" in sections[1]
    assert "| (c) | 32 | 3 | 60 | 95 | 1.9x |" in sections[1]  # 95 s against (a)'s 50
    assert cost_reading(record) == ["Cost on one machine (AMD EPYC 26/2 (AVX512-BF16)): (c) 95 s for one run (32 s "
                                    "synthesis and 3 s screening, made once for every seed and ratio, then 60 s "
                                    "training); (a) 50 s; (e) 53 s."]
    record["costs_one_machine"]["arms"] = {arm: one[arm] for arm in ("a", "d", "e")}
    assert "Not timed on that machine (added after it was): (c)." in cost_sections(record)[1]
    del record["costs_one_machine"]
    assert len(cost_sections(record)) == 1 and cost_reading(record) == []


def test_machines_compare_on_the_keys_both_records_have():
    from experiments.stage_runner import machine, same_machine

    now = machine()
    assert now["bf16"] in ("AMX bf16", "AVX512-BF16", "no native bf16")
    older = {key: value for key, value in now.items() if key != "family_model"}  # recorded before the numbers
    assert same_machine(now, older) and same_machine(older, now)
    assert not same_machine(now, {**now, "family_model": "6/143"} if now.get("family_model") != "6/143"
                            else {**now, "family_model": "25/17"})
    assert not same_machine(older, {**older, "bf16": "something else"})


def test_the_arms_run_in_order_of_what_the_summary_needs():
    from experiments.evidence import Settings
    from experiments.evidence_arms import arm_order

    order = arm_order(Settings(ratio=0.5, ratios=[0.1, 0.5, 0.75], seeds=[0, 1, 2]))
    assert order[:6] == [(0, "a"), (0, "c@0.5"), (1, "a"), (1, "c@0.5"), (2, "a"), (2, "c@0.5")]
    assert order[6:9] == [(0, "e"), (1, "e"), (2, "e")]  # each after its seed's (a)
    assert order[9:15] == [(0, "b"), (0, "d"), (1, "b"), (1, "d"), (2, "b"), (2, "d")]
    assert order[15:] == [(0, "c@0.1"), (0, "c@0.75")]  # the sweep's other ratios: the first seed only
    every = arm_order(Settings(ratio=0.5, ratios=[0.1, 0.5], seeds=[0, 1], sweep_all_seeds=True))
    assert every[-2:] == [(0, "c@0.1"), (1, "c@0.1")] and len(every) == len(set(every)) == 12


def test_an_unfinished_experiment_reports_the_runs_it_has_and_says_it_is_in_progress(tmp_path):
    import json

    from experiments.evidence_report import evidence, reading, write_report

    items = [f"q{i}" for i in range(40)]
    graded = ("general", "arc_easy", "piqa", "hellaswag", "sciq", "ifeval", "medmcqa")
    base = {task: dict.fromkeys(items, 1.0) for task in graded} | {"domain_ppl": dict.fromkeys(items, -3.0)}
    forgot = {task: {i: float(n % 2) for n, i in enumerate(items)} for task in base} | {
        "domain_ppl": dict.fromkeys(items, -2.5)}
    kept = {task: {i: float(n % 4 > 0) for n, i in enumerate(items)} for task in base} | {
        "domain_ppl": dict.fromkeys(items, -2.7)}
    costs = {arm: {"synthesis_seconds": 0, "synthesis_tokens": 0, "screening_seconds": 0, "screening_tokens": 0,
                   "train_seconds": 1.0, "train_tokens": 1, "runs": 1, "total_seconds": 1.0} for arm in ("a", "c")}
    record = evidence(base, {"a": [forgot, forgot], "c@0.5": [kept]}, ratio=0.5, seeds=[0, 1, 2], drift={},
                      costs=costs, settings={}, machine={}, arm_seeds={"a": [0, 1], "c@0.5": [0]})
    record["progress"] = {"evaluated": {"a": [0, 1], "c@0.5": [0]}, "done": 3, "of": 17, "finished": False}
    record["reading"] = reading(record)
    write_report(tmp_path, record, ["forgetless eval ..."])
    text = (tmp_path / "evidence.md").read_text(encoding="utf-8")
    assert text.splitlines()[2].startswith("**In progress: 3 of 17 arm runs evaluated** ((a) seeds 0, 1; (c@0.5) "
                                           "seed 0)")
    assert "| (a) domain only | 2 | -50.0 ± 8.0 |" in text and "| (c) + reconstructed, screened (ours) | 1 |" in text
    assert "- (c): forgetting reduction 0.50 [" in text and "] (seed 0)" in text  # compared on seed 0 only
    assert "Per seed (general points / answer fit nats/token; over seeds: mean ± standard error of the seeds' " \
           "changes): (a) seed 0: -50.0 / " in text and "(over seeds -50.0 ± 0.0 / " in text
    assert "Between seeds, (a)'s general accuracy changed by -50.0 to -50.0 points (over seeds -50.0 ± 0.0, " \
           "no spread)" in text
    assert json.loads((tmp_path / "evidence.json").read_text(encoding="utf-8"))["summary"][
        "forgetting_reduction"] == pytest.approx(0.5)  # (c) lost a quarter where (a) lost half
    record["progress"]["finished"] = True
    write_report(tmp_path, record, [])
    assert "In progress" not in (tmp_path / "evidence.md").read_text(encoding="utf-8")
    assert "| 1 | machine not recorded |" in (tmp_path / "evidence.md").read_text(encoding="utf-8")
    assert "more than one machine" not in (tmp_path / "evidence.md").read_text(encoding="utf-8")
    record["costs"] = {"a": {**costs["a"], "machines": ["CPU one (AMX bf16)"]},
                       "c": {**costs["c"], "machines": ["CPU one (AMX bf16)", "CPU two (no native bf16)"],
                             "train_seconds_by_machine": {"CPU one (AMX bf16)": 0.6, "CPU two (no native bf16)": 1.4}}}
    write_report(tmp_path, record, [])
    text = (tmp_path / "evidence.md").read_text(encoding="utf-8")
    assert "| 1 | CPU one (AMX bf16); CPU two (no native bf16) |" in text
    assert "| 1 (1) — CPU one (AMX bf16): 1, CPU two (no native bf16): 1 |" in text  # each machine's own mean
    assert "| (a) | 0 (0) | 0 (0) | 1 (1) | 1 |" in text  # one machine: no breakdown
    assert "ran on more than one machine: seconds compare only between stages timed on the same one" in text
    assert "screening those its judges read" in text and "did not count them" not in text
    record["costs"]["c"]["screening_tokens"] = None  # a judge stage that recorded no tokens
    write_report(tmp_path, record, [])
    text = (tmp_path / "evidence.md").read_text(encoding="utf-8")
    assert "| (c) | 0 (0) | 0 (not counted) |" in text and "this run's judge stage did not count them" in text
    only_a = evidence(base, {"a": [forgot]}, ratio=0.5, seeds=[0], drift={}, costs={"a": costs["a"]}, settings={},
                      machine={})
    only_a["reading"] = reading(only_a)
    write_report(tmp_path, only_a, [])
    assert "\n\n\n" not in (tmp_path / "evidence.md").read_text(encoding="utf-8")  # no arm to compare: no empty part


def test_the_seeds_spread_gives_its_own_standard_error():
    from experiments.evidence_report import reading
    from experiments.evidence_stats import seed_mean_stderr

    mean, se = seed_mean_stderr([-0.050, -0.008, -0.071])  # (a)'s three seeds on the general benchmarks
    assert mean == pytest.approx(-0.043) and se == pytest.approx(0.01852, abs=1e-5)  # sd 0.0321 / sqrt(3)
    assert seed_mean_stderr([0.1]) == (0.1, 0.0)
    record = {"arms": {"a": {"general": {"delta": -0.043, "stderr": 0.008, "per_seed": [-0.050, -0.008, -0.071]},
                             "ifeval": {"delta": None, "stderr": None}}},
              "summary": {"by_arm": {}}, "arm_names": {}}
    assert ("Between seeds, (a)'s general accuracy changed by -7.1 to -0.8 points (over seeds -4.3 ± 1.9, 2.3 of "
            "these standard errors)") in reading(record)[1]


def test_ours_is_set_against_each_other_arm_item_by_item_on_the_seeds_both_have():
    from experiments.evidence_stats import head_to_head

    items = [f"q{i}" for i in range(100)]
    base = {"general": dict.fromkeys(items, 1.0), "fit": dict.fromkeys(items, -3.0)}

    def right(share: float) -> dict[str, float]:
        return {i: (1.0 if n < share * 100 else 0.0) for n, i in enumerate(items)}

    def fit(value: float) -> dict[str, float]:
        return dict.fromkeys(items, value)

    arms = {"a": {"general": [right(0.1)], "fit": [fit(-2.0)]},
            "c": {"general": [right(0.8), right(0.6)], "fit": [fit(-2.5), fit(-2.3)]},  # seeds 0, 1
            "d": {"general": [right(0.5), right(0.7), right(0.2)], "fit": [fit(-2.5), fit(-2.6), fit(-2.0)]}}
    seeds = {"a": [0], "c": [0, 1], "d": [2, 1, 0]}  # (d)'s runs listed in another order than (c)'s
    against = head_to_head(base, arms, ours="c", tasks=("general", "fit"), arm_seeds=seeds, skip=("a",))
    assert set(against) == {"d"} and against["d"]["seeds"] == [0, 1]
    general = against["d"]["general"]
    assert general["per_seed"] == pytest.approx([0.8 - 0.2, 0.6 - 0.7])  # each seed with its own pair
    assert general["delta"] == pytest.approx(((0.8 + 0.6) - (0.2 + 0.7)) / 2)  # (d)'s seed 2 left out
    assert general["n"] == 100 and general["stderr"] > 0
    assert against["d"]["fit"]["delta"] == pytest.approx((-2.5 - 2.3) / 2 - (-2.0 - 2.6) / 2)
    assert against["d"]["fit"]["stderr"] == pytest.approx(0.0)  # every item moved alike
    unpaired = head_to_head(base, arms, ours="c", tasks=("general",))
    assert set(unpaired) == {"a", "d"} and unpaired["d"]["seeds"] is None
    assert unpaired["d"]["general"]["delta"] == pytest.approx(0.7 - (0.5 + 0.7 + 0.2) / 3)  # every run
    apart = head_to_head(base, arms, ours="c", tasks=("general",), arm_seeds={**seeds, "a": [5]})
    assert apart["a"]["seeds"] == [] and apart["a"]["general"]["delta"] is None  # nothing to pair with


def test_the_reading_says_whether_ours_beats_each_other_arm_head_to_head():
    from experiments.evidence_report import reading

    def record(general, fit, per_seed=None):
        return {"arms": {"a": {"general": {"delta": -0.1, "stderr": 0.01}}}, "summary": {"by_arm": {}},
                "arm_names": {"d": "+ reconstructed, not screened"},
                "head_to_head": {"d": {"seeds": [0, 1], "general": {**general, "per_seed": per_seed},
                                       "domain_ppl": {**fit, "per_seed": None}}}}

    line = reading(record({"delta": 0.004, "stderr": 0.007}, {"delta": 0.010, "stderr": 0.003}, [0.01, -0.002]))[-1]
    assert line == ("(c) against (d) + reconstructed, not screened, item by item (seeds 0, 1): general accuracy "
                    "+0.4 ± 0.7 points, not clearly different (per seed +1.0, -0.2); answer fit +0.010 ± 0.003 "
                    "nats/token, clearly higher with (c).")
    worse = reading(record({"delta": -0.03, "stderr": 0.007}, {"delta": -0.02, "stderr": 0.003}))[-1]
    assert "general accuracy -3.0 ± 0.7 points, clearly lower with (c); answer fit -0.020" in worse
    assert not any(line.startswith("(c) against") for line in reading({**record({"delta": None}, {"delta": None}),
                                                                      "head_to_head": {}}))


def test_the_sweep_compares_every_ratio_on_the_seeds_all_ratios_have():
    from experiments.evidence_report import evidence, markdown, reading

    items = [f"q{i}" for i in range(100)]
    graded = ("general", "arc_easy", "piqa", "hellaswag", "sciq", "ifeval", "medmcqa")

    def run(right: float, fit: float) -> dict[str, dict[str, float]]:
        return ({task: {i: float(n < right * 100) for n, i in enumerate(items)} for task in graded}
                | {"domain_ppl": dict.fromkeys(items, fit)})

    base = run(1.0, -3.0)
    arms = {"a": [run(0.6, -2.0), run(0.9, -2.5)],  # seeds 0, 1: (a) lost 40 and 10 points
            "c@0.5": [run(0.95, -2.6), run(0.8, -2.0)],  # seeds 1, 0 (listed out of order)
            "c@0.25": [run(0.7, -2.2)], "c@0.75": [run(0.9, -2.4)]}  # seed 0 only
    seeds = {"a": [0, 1], "c@0.5": [1, 0], "c@0.25": [0], "c@0.75": [0]}
    record = evidence(base, arms, ratio=0.5, seeds=[0, 1], drift={}, costs={}, settings={}, machine={},
                      arm_seeds=seeds)
    sweep = {row["ratio"]: row for row in record["sweep"]}
    assert list(sweep) == [0.25, 0.5, 0.75] and {tuple(row["seeds"]) for row in sweep.values()} == {(0,)}
    assert sweep[0.5]["arm"] == "c" and sweep[0.5]["forgetting"]["value"] == pytest.approx(0.2)  # seed 0 alone
    assert record["arms"]["c"]["general"]["delta"] == pytest.approx(-0.125)  # the table keeps both seeds
    assert sweep[0.25]["forgetting_reduction"]["value"] == pytest.approx(1 - 0.3 / 0.4)  # (a) seed 0 lost 40
    assert sweep[0.75]["domain_gain_retention"]["value"] == pytest.approx(0.6 / 1.0)
    assert sweep[0.5]["domain_gain"]["delta"] == pytest.approx(1.0)
    text = markdown({**record, "progress": None}, [])
    assert "| 0.25 | 0 | +30.0 ± 4.6 | +0.800 ± 0.000 | 0.25 [" in text
    line = next(line for line in reading(record) if line.startswith("Ratio sweep"))
    assert line.startswith("Ratio sweep of (c) (seed 0, against (a) on the same): forgetting reduction 0.25 at "
                           "0.25, 0.50 at 0.5, 0.75 at 0.75; domain gain retention 0.80 at 0.25, 1.00 at 0.5, 0.60 at "
                           "0.75.")
    assert line.endswith("The least forgetting at ratio 0.75 (-10.0 points), the most domain gain at ratio 0.5 "
                         "(+1.000 nats/token).")
    unpaired = evidence(base, arms, ratio=0.5, seeds=[0, 1], drift={}, costs={}, settings={}, machine={})
    assert [row["seeds"] for row in unpaired["sweep"]] == [None] * 3  # no seeds known: every run of each ratio
    assert unpaired["sweep"][1]["forgetting"]["value"] == pytest.approx(0.125)
