"""Compare: replies of the base and tuned runs stored with their settings, prompts drawn only from what no run
trained on, one-line errors for a missing source, reruns without duplicates, the CLI and the background job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from core.engines.in_process import InProcessEngine
from core.engines.models import load_model
from core.errors import ForgetlessError
from core.eval.benchmarks.domain_ppl import item_ids
from core.eval.compare import CompareConfig, pick_prompt, run_comparison
from core.jobs import job_folder, start_background, wait_for
from core.mix.domain import load_domain, mcq_prompt, medmcqa_items
from core.store import InstructionRow, Store, text_key
from tests.helpers import assert_one_line_error, build_finished_run, forgetless, write_domain

PROMPT = "please write a short poem about the travel"


def make_mix(folder: Path, general: dict | None = None, domain: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    manifest = {"ratio": 0.5, "general": general or {"instruction_ids": []}, **({"domain": domain} if domain else {})}
    (folder / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    return folder


def stored_instructions(store: Store, n: int) -> list[str]:
    """n general instructions in the store; their ids."""
    texts = [f"explain how to learn python and math number {i}" for i in range(n)]
    rows = [InstructionRow(text, 8, "tiny", "<p>", 1.0, 1.0, 32, 7, "job-r", 0) for text in texts]
    store.add_instruction_batch("job-r", 0, rows, limit=100, sampled=n, dropped={}, new_tokens=0, seconds=0)
    return [text_key(text) for text in texts]


def engines(workspace: Path):
    return lambda spec: InProcessEngine(load_model(spec, workspace))


def test_each_model_answers_through_its_own_format_and_the_replies_are_stored_with_settings(
        tiny_model_dir: Path, tiny_base_model_dir: Path, tmp_path: Path):
    run = build_finished_run(tmp_path / "runs" / "tuned", tiny_model_dir)
    store = Store.for_workspace(tmp_path / "ws")
    config = CompareConfig(models=(str(tiny_model_dir), str(run), str(tiny_base_model_dir)), prompt=PROMPT,
                           max_new_tokens=12, temperature=0.8, top_p=0.95, seed=3)
    summary = run_comparison(config, store, engines(tmp_path))
    assert summary["generated"] == 3 and not summary["cancelled"] and summary["source"] == "typed"
    assert [reply["model"] for reply in summary["replies"]] == list(config.models)

    rows = store.comparisons(job_id=config.resolved_job_id())
    assert list(rows["position"]) == [0, 1, 2] and set(rows["prompt"]) == {PROMPT} and set(rows["source"]) == {"typed"}
    assert list(rows["run_dir"].isna()) == [True, False, True] and rows["run_dir"][1] == str(run.resolve())
    assert rows["run_dir"][0] is None  # not NaN: the --json summary stays valid JSON
    assert rows["base_model"][1] == str(tiny_model_dir) and rows["base_model"].isna()[0]
    assert [s["prompt_format"] for s in rows["sampling"]] == ["chat", "chat", "plain"]  # the base model has no template
    for sampling in rows["sampling"]:
        assert {k: sampling[k] for k in ("temperature", "top_p", "max_new_tokens", "seed")} == \
            {"temperature": 0.8, "top_p": 0.95, "max_new_tokens": 12, "seed": 3}
    assert set(rows["seed"]) == {3} and all(0 < n <= 12 for n in rows["n_tokens"]) and all(rows["seconds"] >= 0)
    assert set(rows["engine"]) == {"transformers"}

    # Listing filters by prompt and by model.
    other = CompareConfig(models=(str(tiny_model_dir),), prompt="how to cook", max_new_tokens=4)
    run_comparison(other, store, engines(tmp_path))
    assert len(store.comparisons()) == 4 and store.comparisons()["prompt"][0] == "how to cook"  # newest job first
    assert list(store.comparisons(prompt="COOK")["model"]) == [str(tiny_model_dir)]
    assert list(store.comparisons(model=tiny_base_model_dir.name)["model"]) == [str(tiny_base_model_dir)]
    assert len(store.comparisons(prompt="poem", model=tiny_model_dir.name)) == 1
    assert store.comparisons(prompt="nothing like this").empty


def test_a_rerun_of_the_job_generates_only_the_missing_replies(tiny_model_dir: Path, tmp_path: Path):
    run = build_finished_run(tmp_path / "run", tiny_model_dir)
    store = Store.for_workspace(tmp_path / "ws")
    config = CompareConfig(models=(str(tiny_model_dir), str(run)), prompt=PROMPT, max_new_tokens=6)
    stop = {"now": False}

    def after_the_first_reply(values: dict) -> None:
        stop["now"] = values["done"] >= 1

    first = run_comparison(config, store, engines(tmp_path), on_progress=after_the_first_reply,
                           should_stop=lambda: stop["now"])
    assert first["cancelled"] and first["generated"] == 1 and len(first["replies"]) == 1
    kept = store.comparisons().iloc[0]
    second = run_comparison(config, store, engines(tmp_path))
    assert second["generated"] == 1 and not second["cancelled"] and len(second["replies"]) == 2
    again = run_comparison(config, store, engines(tmp_path))
    assert again["generated"] == 0 and again["replies"] == second["replies"]
    rows = store.comparisons()
    assert len(rows) == 2 and list(rows["model"]) == list(config.models)
    assert rows.iloc[0]["id"] == kept["id"] and rows.iloc[0]["created_at"] == kept["created_at"]  # not regenerated


def test_held_out_prompts_come_only_from_what_every_run_s_mix_held_out(tiny_model_dir: Path, tmp_path: Path):
    store = Store.for_workspace(tmp_path / "ws")
    ids = stored_instructions(store, 12)
    texts = dict(zip(store.general_texts(ids)["instruction_id"], store.general_texts(ids)["instruction"], strict=True))
    mix = make_mix(tmp_path / "mix", {"instruction_ids": ids[:6], "holdout": 0.5, "held_out_ids": ids[6:]})
    run = build_finished_run(tmp_path / "run", tiny_model_dir, mix, lora=False)
    picks = [pick_prompt(CompareConfig(models=(str(tiny_model_dir), str(run)), source="held-out", pick_seed=seed),
                         store) for seed in range(12)]
    assert {pick.source for pick in picks} == {"held-out"}
    assert {pick.source_id for pick in picks} <= set(ids[6:]) and len({pick.source_id for pick in picks}) > 1
    assert all(pick.text == texts[pick.source_id] for pick in picks)
    again = pick_prompt(CompareConfig(models=(str(tiny_model_dir), str(run)), source="held-out", pick_seed=5), store)
    assert again == picks[5]  # seeded: the background job draws what the page showed

    # Two runs: only what both mixes held out (ids 6 and 7).
    other = build_finished_run(tmp_path / "other", tiny_model_dir,
                     make_mix(tmp_path / "mix2", {"instruction_ids": ids[:4], "held_out_ids": ids[4:8]}), lora=False)
    both = {pick_prompt(CompareConfig(models=(str(tiny_model_dir), str(run), str(other)), source="held-out",
                                      pick_seed=seed), store).source_id for seed in range(12)}
    assert both == {ids[6], ids[7]}


def test_domain_prompts_come_from_the_domain_test_split(tiny_model_dir: Path, tmp_path: Path):
    store = Store.for_workspace(tmp_path / "ws")
    data = write_domain(tmp_path / "domain.jsonl")
    mix = make_mix(tmp_path / "mix", domain={"spec": str(data), "test_fraction": 0.25})
    run = build_finished_run(tmp_path / "run", tiny_model_dir, mix, lora=False)
    split = load_domain(data, test_fraction=0.25)
    test = dict(zip(item_ids(split.test), (messages[0]["content"] for messages in split.test), strict=True))
    trained = {messages[0]["content"] for messages in split.train}
    picks = [pick_prompt(CompareConfig(models=(str(tiny_model_dir), str(run)), source="domain", pick_seed=seed),
                         store) for seed in range(10)]
    assert all(pick.source == "domain" and test[pick.source_id] == pick.text for pick in picks)
    assert not {pick.text for pick in picks} & trained and len({pick.text for pick in picks}) > 1

    # MedMCQA named by hand (no run needed): its fixed test split.
    medmcqa = pick_prompt(CompareConfig(models=(str(tiny_model_dir),), source="domain", domain="builtin:medmcqa",
                                        pick_seed=1), store)
    items = {f"medmcqa:{item.id}": item for item in medmcqa_items("test")}
    assert medmcqa.source_id in items and medmcqa.text == mcq_prompt(items[medmcqa.source_id])


def no_held_out_run(tmp: Path, base: Path) -> Path:
    old_mix = make_mix(tmp / "old-mix", {"instruction_ids": ["a"]})
    return build_finished_run(tmp / "plain-run", base, old_mix, lora=False)


def no_test_split_run(tmp: Path, base: Path) -> Path:
    domain = write_domain(tmp / "domain.jsonl")
    return build_finished_run(tmp / "run", base, make_mix(tmp / "mix", domain={"spec": str(domain)}), lora=False)


@pytest.mark.parametrize(("make", "fields", "fragment"), [
    (None, {"source": "held-out"}, "pick at least one tuned run"),
    (no_held_out_run, {"source": "held-out"}, "lists no held-out instructions"),
    (None, {"source": "domain"}, "domain test questions come from a tuned run's mix or --domain"),
    (no_test_split_run, {"source": "domain"}, "held out no rows"),
    (None, {}, "type a prompt"),
    (None, {"source": "held-out", "prompt": "hello"}, "not both"),
    (None, {"source": "somewhere", "prompt": "hello"}, "unknown prompt source"),
])
def test_a_missing_source_is_one_clear_error(make, fields, fragment, tiny_model_dir: Path, tmp_path: Path):
    models = (str(tiny_model_dir), *([str(make(tmp_path, tiny_model_dir))] if make else []))
    store = Store.for_workspace(tmp_path / "ws")
    with pytest.raises(ForgetlessError, match=fragment) as raised:
        pick_prompt(CompareConfig(models=models, **fields), store)
    assert "\n" not in str(raised.value)


def test_cli_error_leaves_no_job_and_json_is_the_last_line_then_the_background_job_resumes(
        tiny_model_dir: Path, tmp_path: Path):
    workspace = tmp_path / "ws"
    result = forgetless("compare", "--models", str(tiny_model_dir), "--source", "held-out", workspace=workspace)
    assert result.returncode == 2
    assert_one_line_error(result, "pick at least one tuned run")
    assert not (workspace / "jobs").exists() or not any((workspace / "jobs").iterdir())

    run = build_finished_run(tmp_path / "run", tiny_model_dir)
    result = forgetless("compare", "--models", f"{tiny_model_dir},{run}", "--prompt", PROMPT, "--max-new-tokens", "8",
                        "--json", workspace=workspace)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["generated"] == 2 and summary["prompt"] == PROMPT
    assert [reply["label"] for reply in summary["replies"]] == [tiny_model_dir.name, "run"]
    assert summary["sampling"] == {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 8, "seed": 0}

    # The same comparison as the app starts it: a background job that finds both replies stored.
    config = CompareConfig(models=(str(tiny_model_dir), str(run)), prompt=PROMPT, max_new_tokens=8)
    assert config.resolved_job_id() == summary["job_id"]
    folder = start_background(workspace, "compare", config, config.resolved_job_id())
    assert folder == job_folder(workspace, summary["job_id"])
    info = wait_for(folder, 120, lambda job: not job.active)
    assert info.state == "done", (folder / "log.txt").read_text()
    assert info.summary["generated"] == 0 and info.progress["done"] == info.progress["total"] == 2
    assert len(Store.for_workspace(workspace).comparisons()) == 2
