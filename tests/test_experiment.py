"""The forgetting experiment: its statistics and data helpers (fast), and `--quick` end to end (integration)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from core.public_data import read_json_records as read_records
from experiments.forgetting_stats import all_finite, compare, drift_summary, items_needed, paired_difference, verdict
from experiments.public_sft import looks_english, to_messages

ROOT = Path(__file__).resolve().parent.parent
TASKS = ("arc_easy", "piqa", "hellaswag", "sciq", "medmcqa")


def test_paired_difference_uses_common_items_and_paired_stderr():
    base = {"1": 1.0, "2": 0.0, "3": 1.0, "4": 0.0, "extra": 1.0}
    arm = {"1": 1.0, "2": 1.0, "3": 1.0, "4": 0.0}
    result = paired_difference(arm, base)
    assert result["n"] == 4 and result["diff"] == pytest.approx(0.25)
    assert result["se"] == pytest.approx(0.25)  # differences 0,1,0,0: sd 0.5, / sqrt(4)
    assert paired_difference(base, base) == {"diff": 0.0, "se": 0.0, "n": 5}


def test_verdict_needs_two_standard_errors():
    assert verdict(0.05, 0.03) == "within noise"
    assert verdict(0.07, 0.03) == "gain" and verdict(-0.07, 0.03) == "loss"
    assert verdict(0.0, 0.0) == "no difference" and verdict(None, None) == "not measured"
    assert items_needed(0.05, 0.05, 100) == 400


def test_drift_is_compared_on_texts_every_arm_scored():
    row = {"tokens": 10, "nll_base": 10.0, "nll_tuned": 12.0}
    per_text = {"a": [{"item_id": "x", "kl_sum": 1.0, **row}, {"item_id": "y", "kl_sum": 3.0, **row}],
                "c": [{"item_id": "y", "kl_sum": 2.0, **row}]}
    drift = drift_summary(per_text)
    assert drift["n_texts"] == 1 and drift["tokens"] == 10
    assert drift["arms"]["a"]["kl"] == pytest.approx(0.3) and drift["arms"]["c"]["kl"] == pytest.approx(0.2)
    assert drift["arms"]["a"]["ppl_tuned"] == pytest.approx(math.exp(1.2))
    correct = {m: {t: {"1": 1.0, "2": 0.0} for t in TASKS} for m in ("base", "a", "c")}
    result = compare(correct, ["a", "c"], drift)
    assert result["deltas"]["a"]["general_mean"]["diff"] == 0.0
    assert result["contrasts"]["c_vs_a"]["kl"]["diff"] == pytest.approx(-0.1)
    assert all_finite(result) and not all_finite({"x": [1.0, float("nan")]})


def test_sharegpt_rows_are_filtered_to_english_one_or_two_exchanges():
    turn = [{"from": "human", "value": "What is the capital of France and why is it famous?"},
            {"from": "gpt", "value": "The capital of France is Paris, and it is famous for its art and food."}]
    assert to_messages(turn) == [{"role": "user", "content": turn[0]["value"]},
                                 {"role": "assistant", "content": turn[1]["value"]}]
    assert to_messages(turn * 2) is not None and to_messages(turn * 3) is None  # at most two exchanges
    assert to_messages(turn[:1]) is None and to_messages(turn[::-1]) is None
    assert to_messages(turn, max_chars=50) is None
    assert not looks_english("¿Cuál es la capital de Francia? Es París, una ciudad muy bonita.")
    assert not looks_english("Der Hund läuft schnell über die Straße und bellt laut.")


def test_truncated_json_array_keeps_the_complete_records():
    records, complete = read_records('[{"id": 1}, {"id": 2},\n {"id": 3, "conv')
    assert records == [{"id": 1}, {"id": 2}] and complete is False
    assert read_records('[{"id": 1}]') == ([{"id": 1}], True)


def _stages(stdout: str, outcome: str) -> set[str]:
    """The stage names of the runner's lines ``[forgetting  12.3s] <stage>: <outcome> ...``."""
    return {line.split("] ", 1)[1].split(":", 1)[0] for line in stdout.splitlines()
            if line.startswith("[forgetting") and f": {outcome}" in line}


@pytest.mark.integration
def test_quick_experiment_runs_end_to_end_and_resumes(tmp_path: Path):
    workspace, out = tmp_path / "ws", tmp_path / "report"
    command = [sys.executable, str(ROOT / "experiments" / "forgetting.py"), "--quick", "--workspace", str(workspace),
               "--out", str(out), "--threads", "1"]
    first = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=1200)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    results = json.loads((out / "results_medmcqa.json").read_text(encoding="utf-8"))
    assert results["arms"] == ["a", "b", "c"] and set(results["models"]) == {"base", "a", "b", "c"}
    for model in results["models"].values():
        assert set(model["tasks"]) == {*TASKS, "domain_ppl", "ifeval"}  # MedMCQA's answer fit beside its letters
        assert all(0.0 <= task["acc"] <= 1.0 and task["n"] == (2 if name == "ifeval" else 8)
                   for name, task in model["tasks"].items() if name != "domain_ppl")
        assert model["tasks"]["domain_ppl"]["n"] == 8 and model["tasks"]["domain_ppl"]["ppl"] > 1
    for arm in ("a", "b", "c"):
        assert math.isfinite(results["deltas"][arm]["general_mean"]["diff"])
        assert math.isfinite(results["deltas"][arm]["medmcqa"]["diff"])
        assert math.isfinite(results["drift_common"]["arms"][arm]["kl"])
        assert results["models"][arm]["train"]["steps"] == 4
    assert results["drift_common"]["n_texts"] >= 1 and results["finite"] is True and results["reading"]
    arms = results["data"]["arms"]
    assert arms["a"]["counts"]["domain"] == arms["b"]["counts"]["domain"] == arms["c"]["counts"]["domain"]
    assert arms["a"]["counts"]["general"] == 0 and arms["b"]["counts"]["general"] == arms["c"]["counts"]["general"]
    import pandas as pd

    public = pd.read_parquet(Path(arms["b"]["snapshot"]) / "train.parquet")
    assert set(public.loc[public["source"] == "general", "origin_id"].str[:9]) == {"sharegpt:"}
    assert "| (c) domain + reconstructed (ours) |" in (out / "results_medmcqa.md").read_text(encoding="utf-8")

    second = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    ran, skipped = _stages(first.stdout, "finished in"), _stages(second.stdout, "done before, skipped")
    assert "train-c" in ran and ran - {"screen-threshold"} <= skipped  # only the cheap always-run query reruns
    assert not _stages(second.stdout, "finished in") - {"screen-threshold"}
    assert results["deltas"]["c"]["ifeval"]["n"] == 2 and "IFEval" in (out / "results_medmcqa.md").read_text()
    medmcqa_report = (out / "results_medmcqa.json").read_text(encoding="utf-8")  # as the rerun wrote it

    # The second domain in the same workspace: generated arithmetic, a held-out share scored by letter accuracy
    # and answer perplexity; the general data is reused, the MedMCQA report left as it was.
    third = subprocess.run([*command, "--domain", "arithmetic"], capture_output=True, text=True, cwd=ROOT,
                           timeout=1200)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    arithmetic = json.loads((out / "results_arithmetic.json").read_text(encoding="utf-8"))
    assert arithmetic["domain_task"] == "domain_mcq" and Path(arithmetic["domain_data"]).is_file()
    for model in arithmetic["models"].values():
        assert set(model["tasks"]) == {*TASKS[:-1], "domain_mcq", "domain_ppl", "ifeval"}
        assert model["tasks"]["domain_mcq"]["n"] == model["tasks"]["domain_ppl"]["n"] == 8
    assert arithmetic["data"]["general"]["reconstructed"] == results["data"]["general"]["reconstructed"]
    manifest = (Path(arithmetic["data"]["arms"]["a"]["snapshot"]) / "manifest.yaml").read_text(encoding="utf-8")
    assert "test_fraction: 0.2" in manifest
    assert arithmetic["deltas"]["a"]["domain_mcq"]["n"] == 8 and "perplexity" in " ".join(arithmetic["reading"])
    assert (out / "results_medmcqa.json").read_text(encoding="utf-8") == medmcqa_report


def test_summary_table_marks_changes_beyond_noise_per_arm_and_contrast():
    from experiments.forgetting_summary import summary_table

    def entry(diff, se):
        return {"diff": diff, "se": se, "n": 100}

    results = {
        "settings": {"lr": 1e-3, "steps": 30}, "domain_label": "arithmetic", "domain_task": "domain_mcq",
        "arms": ["a", "c"], "arm_names": {"a": "domain only", "c": "ours"},
        "models": {"base": {"tasks": {"domain_ppl": {"ppl": 1.5}}}, "a": {"tasks": {"domain_ppl": {"ppl": 1.2}}},
                   "c": {"tasks": {}}},
        "deltas": {"a": {"general_mean": entry(-0.05, 0.01), "domain_mcq": entry(0.02, 0.02)},
                   "c": {"general_mean": entry(-0.01, 0.01), "domain_mcq": entry(0.03, 0.01),
                         "ifeval": entry(0.0, 0.02)}},
        "contrasts": {"c_vs_a": {"general_mean": entry(0.04, 0.01)}},
    }
    rows = summary_table([results]).splitlines()[2:]
    assert rows[0] == ("| arithmetic, lr 0.001, 30 steps | (a) domain only | -5.0 ± 1.0 ▼ | +2.0 ± 2.0 | "
                       "1.500 → 1.200 | – |")
    assert rows[1].split(" | ")[2:] == ["-1.0 ± 1.0", "+3.0 ± 1.0 ▲", "–", "+0.0 ± 2.0 |"]
    assert rows[2].startswith("| arithmetic, lr 0.001, 30 steps | c − a | +4.0 ± 1.0 ▲ |") and len(rows) == 3
