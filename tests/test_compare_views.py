"""The Compare tab's views without a browser: form <-> config, the replies side by side, past comparisons."""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from core.cli.flags import cli_command, config_from_args
from core.cli.main import build_parser
from core.config import to_yaml
from core.errors import ForgetlessError
from core.eval.compare import CompareConfig, pick_prompt
from core.jobs import job_folder
from core.store import Store
from core.store.compare import ComparisonRow
from ui.views.compare import (
    CompareJobs,
    compare_config,
    draw,
    form_of,
    history_rows,
    read_history,
    read_replies,
    replies_html,
    replies_of,
    settings_line,
)

SAMPLING = {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 64, "seed": 0}


def form(**changes) -> dict:
    values = {"base": "smollm2-135m-instruct", "runs": [], "source": "typed", "prompt": "How do tides work?",
              "pick_seed": 0.0, "domain": "", "domain_test_fraction": 0.2, "max_new_tokens": 64.0, "temperature": 0.7,
              "top_p": 0.9, "seed": 0.0}
    return {**values, **changes}


def a_run(tmp_path: Path, name: str = "20250101-000000-tuned") -> Path:
    run = tmp_path / "runs" / name
    (run / "model").mkdir(parents=True)
    (run / "model" / "config.json").write_text("{}")
    (run / "config.yaml").write_text(yaml.safe_dump({"model": "smollm2-135m-instruct"}))
    return run


def stored(store: Store, job_id: str, model: str, position: int, reply: str, run_dir: str | None = None,
           prompt: str = "How do tides work?", source: str = "typed", source_id: str | None = None) -> None:
    store.add_comparison(ComparisonRow(job_id, position, prompt, source, source_id, model, run_dir,
                                        "smollm2-135m-instruct" if run_dir else None, reply, 12, position == 0,
                                        {**SAMPLING, "prompt_format": "chat"}, 0, 1.25))


def test_the_form_is_a_config_named_by_its_settings_and_back(tmp_path: Path):
    run = a_run(tmp_path)
    config = compare_config(form(runs=[str(run)]))
    assert config.models == ("smollm2-135m-instruct", str(run.resolve()))
    assert config.max_new_tokens == 64 and isinstance(config.max_new_tokens, int) and config.seed == 0
    assert config.job_id == compare_config(form(runs=[str(run)])).job_id  # the same comparison resumes
    assert config.job_id != compare_config(form(runs=[str(run)], temperature=0.2)).job_id
    assert compare_config(form_of(config)) == config

    drawn = compare_config(form(runs=[str(run)], source="held-out", prompt="a drawn instruction shown in the box"))
    assert drawn.prompt is None and drawn.source == "held-out"  # the job draws it again from source and seed
    assert form_of(drawn, "the drawn text")["prompt"] == "the drawn text"
    assert form_of(drawn)["runs"] == [str(run.resolve())] and form_of(drawn)["base"] == "smollm2-135m-instruct"

    for values, fragment in [(form(prompt="  "), "type a prompt"), (form(max_new_tokens=None), "is empty"),
                             (form(seed=1.5), "whole number"), (form(base="", runs=[]), "give the models")]:
        with pytest.raises(ForgetlessError, match=fragment):
            compare_config(values)
    with pytest.raises(ForgetlessError, match="choose held-out or domain"):
        draw(Store.for_workspace(tmp_path / "ws"), form())


def test_replies_stand_side_by_side_with_names_settings_and_escaped_text(tmp_path: Path):
    store = Store.for_workspace(tmp_path / "ws")
    run = a_run(tmp_path)
    stored(store, "compare-1", "smollm2-135m-instruct", 0, "Tides come from the <b>moon</b> & sun.")
    rows = store.comparisons(job_id="compare-1")
    replies = replies_of(("smollm2-135m-instruct", str(run)), rows)
    assert [(reply.label, reply.role, reply.row is not None) for reply in replies] == [
        ("smollm2-135m-instruct", "base", True), (run.name, "run", False)]
    page = replies_html(replies, "How do <tides> work?", "held-out", "abc123", "waiting for its reply…")
    assert page.count('class="cmp-reply"') == 2 and "grid-template-columns:repeat(2," in page
    assert "&lt;b&gt;moon&lt;/b&gt; &amp; sun." in page and "<b>moon" not in page
    assert "How do &lt;tides&gt; work?" in page and "held-out general instruction abc123" in page
    assert settings_line({**SAMPLING, "prompt_format": "chat"}) in page and "12 tokens · 1.2 s" in page
    assert "waiting for its reply…" in page  # the run has not answered yet
    assert "cut at max new tokens" not in page  # the base's reply ended on its own
    assert "plain prompt (no chat template)" in settings_line({**SAMPLING, "prompt_format": "plain"})


def test_the_newest_job_s_replies_follow_its_model_order(tmp_path: Path):
    workspace = tmp_path / "ws"
    store, jobs = Store.for_workspace(workspace), CompareJobs(workspace)
    assert "No comparison yet" in read_replies(store, jobs)
    run = a_run(tmp_path)
    config = compare_config(form(runs=[str(run)]))
    folder = job_folder(workspace, str(config.job_id))
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(to_yaml(config))
    (folder / "status.json").write_text(json.dumps({"state": "done", "kind": "compare", "started_at": 1}))
    stored(store, str(config.job_id), str(run.resolve()), 1, "the run answers", run_dir=str(run.resolve()))
    page = read_replies(store, jobs)
    names = re.findall(r'data-model="([^"]+)"', page)
    assert names == ["smollm2-135m-instruct", run.name]  # the job's order, not the order of storing
    assert "no reply: the job ended before it" in page and "the run answers" in page
    assert "tuned from smollm2-135m-instruct" in page

    command = jobs.command(jobs.newest())
    assert command.startswith("forgetless compare --models smollm2-135m-instruct,") and "--job-id" not in command
    assert "--prompt 'How do tides work?'" in command and "--temperature 0.7" in command


def test_past_comparisons_are_listed_newest_first_and_filtered(tmp_path: Path):
    store = Store.for_workspace(tmp_path / "ws")
    stored(store, "compare-old", "smollm2-135m-instruct", 0, "old reply", prompt="Name three colours")
    stored(store, "compare-new", "smollm2-135m-instruct", 0, "base reply")
    stored(store, "compare-new", "/runs/tuned", 1, "tuned reply", run_dir="/runs/tuned")
    rows, job_ids = history_rows(store.comparisons())
    assert job_ids == ["compare-new", "compare-new", "compare-old"]
    assert [row[3] for row in rows] == ["smollm2-135m-instruct", "tuned", "smollm2-135m-instruct"]
    assert rows[0][1] == "How do tides work?" and rows[0][2] == "typed" and rows[0][6] == 1.2
    assert rows[0][5] == settings_line({**SAMPLING, "prompt_format": "chat"})

    rows, job_ids, note = read_history(store, prompt="colours")
    assert job_ids == ["compare-old"] and "1 stored replies matching the filters" in note
    rows, job_ids, _ = read_history(store, model="tuned")
    assert [row[4] for row in rows] == ["tuned reply"]
    assert read_history(store, prompt="nothing like it")[2] == "No stored replies match these filters."
    assert read_history(Store.for_workspace(tmp_path / "empty"))[2] == "No comparisons stored yet."


def test_a_drawn_prompt_is_what_the_job_draws(tmp_path: Path):
    store = Store.for_workspace(tmp_path / "ws")
    values = form(source="domain", domain="builtin:medmcqa", pick_seed=3.0, prompt="")
    picked = draw(store, values)
    config = compare_config(values)
    assert picked.source == "domain" and picked.source_id.startswith("medmcqa:")
    assert pick_prompt(config, store) == picked
    assert pick_prompt(dataclasses.replace(config, pick_seed=4), store) != picked
    assert isinstance(config, CompareConfig)


@pytest.mark.parametrize("config", [
    CompareConfig(models=("smollm2-135m-instruct",), prompt="Why is the sky blue? It's 'simple'", temperature=0.0),
    CompareConfig(models=("smollm2-135m-instruct", "gemma-3-270m"), source="domain", pick_seed=7,
                  domain="builtin:medmcqa", max_new_tokens=32, top_p=0.5, seed=9, serving={"engine": "vllm"}),
])
def test_the_cli_line_runs_the_same_comparison(config: CompareConfig, tmp_path: Path):
    words = shlex.split(cli_command("compare", config, tmp_path))
    args = build_parser().parse_args(words[1:])
    assert config_from_args(CompareConfig, args) == config and args.handler.__name__ == "cmd_compare"
