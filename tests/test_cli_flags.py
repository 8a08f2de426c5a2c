"""The CLI generated from the config dataclasses keeps every flag of the hand-written one (the fixture
tests/fixtures/cli_flags_v0.json, captured before the change) with the same meaning; the "show CLI command"
line parses back to the same config; the stages' own checks still speak in one line."""

from __future__ import annotations

import argparse
import json
import shlex
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest

from core.cli.flags import cli_command, config_values
from core.cli.main import build_parser, main
from core.cli.mix import mix_config
from core.cli.train import train_config
from core.config import to_yaml
from core.errors import ForgetlessError
from core.eval.evaluation import EvalConfig
from core.mix.mixing import MixConfig
from core.profile.profiling import ProfileConfig
from core.reconstruct.reconstruction import ReconstructConfig
from core.screen.judge import JudgeConfig
from core.screen.respond import RespondConfig
from core.settings import declared
from core.store.explore_filters import ExploreFilters
from core.train.training import TrainConfig

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "cli_flags_v0.json").read_text())
CONFIGS = {"reconstruct": ReconstructConfig, "respond": RespondConfig, "judge": JudgeConfig,
           "profile": ProfileConfig, "eval": EvalConfig, "mix": MixConfig, "train": TrainConfig}
COMMON = {"--workspace", "--json", "--debug", "--config"}
# Flags added since the fixture was captured (each addition is a deliberate change of the contract).
MODEL_FACING = ("reconstruct", "respond", "judge", "profile", "eval")
ADDED = {stage: {"--engine", "--engine-url"} if stage in MODEL_FACING else set() for stage in FIXTURE}
ADDED["judge"].add("--weighting")  # the consensus weighted by the judge check (issue 14)
ADDED["reconstruct"] |= {"--from-corpus", "--corpus-rows", "--passage-max-words"}  # corpus seeding (issue 15)
ADDED["reconstruct"] |= {"--steer", "--steer-examples", "--steer-keep-all"}  # steered reconstruction (issue 15)
ADDED["mix"].add("--general-holdout")  # general rows set aside for drift (issue 16)
ADDED["eval"].add("--dtype")  # a pinned eval dtype (the evidence arms on a CPU where bf16 runs slower)


def stage_actions(stage: str) -> dict[str, argparse.Action]:
    subparsers = next(action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction))
    return subparsers.choices[stage]._option_string_actions


def parse(words: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(words)


def config_of(stage: str, args: argparse.Namespace) -> Any:
    """What the stage's handler builds from its command line."""
    if stage == "train":
        return train_config(args)
    if stage == "mix":
        return mix_config(args)
    return CONFIGS[stage](**config_values(CONFIGS[stage], args))


@pytest.mark.parametrize("cls", [*CONFIGS.values(), ExploreFilters], ids=lambda cls: cls.__name__)
def test_every_field_of_a_stage_config_declares_its_setting(cls):
    assert [field.name for field, _ in declared(cls)] == [field.name for field in fields(cls)]
    assert all(found.help.strip() for _, found in declared(cls))


@pytest.mark.parametrize("stage", sorted(FIXTURE))
def test_every_flag_of_the_fixture_is_accepted_as_before(stage):
    actions = stage_actions(stage)
    flags = {flag for flag in actions if flag.startswith("--") and flag != "--help"}
    assert flags == set(FIXTURE[stage]) | ADDED[stage]  # none lost, none added but the declared additions
    for flag, before in FIXTURE[stage].items():
        action = actions[flag]
        assert action.dest == before["dest"], flag
        assert type(action).__name__ == before["kind"], flag
        assert (list(action.choices) if action.choices else None) == before["choices"], flag
        default = None if action.default is None else str(action.default)
        if before["kind"] == "_StoreTrueAction" and flag not in COMMON:
            # a config's bare flag: unset (None) or False both mean "not given, the config's value stands"
            assert default in (None, "False") and before["default"] in (None, "False"), flag
        else:
            assert default == before["default"], flag


# One command line per stage that gives every config flag of the fixture, and the config it means.
EVERY_FLAG = {
    "reconstruct": (
        "--model m --n 5 --batch-size 4 --temperature 0.5 --top-p 0.8 --max-new-tokens 32 --seed 7 --prefix P: "
        "--stop a --stop b --job-id j",
        ReconstructConfig(model="m", n=5, batch_size=4, temperature=0.5, top_p=0.8, max_new_tokens=32, seed=7,
                          prefix="P:", stop=("a", "b"), job_id="j")),
    "respond": (
        "--models a,b --k 3 --temperature 0.5 --top-p 0.8 --max-new-tokens 32 --batch-size 4 --seed 7 --job-id j",
        RespondConfig(models=("a", "b"), k=3, temperature=0.5, top_p=0.8, max_new_tokens=32, batch_size=4, seed=7,
                      job_id="j")),
    "judge": (
        "--judges a,b --method generate --exclude-self --retry-failed --batch-size 4 --job-id j",
        JudgeConfig(judges=("a", "b"), method="generate", exclude_self=True, retry_failed=True, batch_size=4,
                    job_id="j")),
    "profile": (
        "--difficulty-judge none --category-model c --target-model t --embedder e --clusters 4 "
        "--dedup-threshold 0.8 --projection tsne --category-calibration null --batch-size 2 --seed 1 --job-id j",
        ProfileConfig(difficulty_judge=None, category_model="c", target_model="t", embedder="e", clusters=4,
                      dedup_threshold=0.8, projection="tsne", category_calibration="null", batch_size=2, seed=1,
                      job_id="j")),
    "eval": (
        "--model m --suite general,drift --limit 5 --seed 2 --batch-size 4 --base b --hellaswag-n 50 --drift-n 20 "
        "--domain builtin:medmcqa --domain-test-fraction 0.3 --ifeval-max-new-tokens 64 --job-id j",
        EvalConfig(model="m", suite=("general", "drift"), limit=5, seed=2, batch_size=4, base="b", hellaswag_n=50,
                   drift_n=20, domain="builtin:medmcqa", domain_test_fraction=0.3, ifeval_max_new_tokens=64,
                   job_id="j")),
    "mix": (
        "--domain d.jsonl --ratio 0.3 --min-score 3 --max-score 4.5 --max-std 1 --min-difficulty 1 "
        "--max-difficulty 4 --clusters 1,2 --categories coding,math --hide-duplicates --search foo "
        "--where 'n_tokens > 3' --by tokens --balance clusters --seed 3 --max-domain 10 --domain-test-fraction 0.2 "
        "--tokenizer-model t --out o",
        MixConfig(domain="d.jsonl", ratio=0.3, filters={
            "consensus_min": 3.0, "consensus_max": 4.5, "max_std": 1.0, "difficulty_min": 1.0, "difficulty_max": 4.0,
            "clusters": [1, 2], "categories": ["coding", "math"], "hide_duplicates": True, "search": "foo",
            "where": "n_tokens > 3"}, by="tokens", balance="clusters", seed=3, max_domain=10,
            domain_test_fraction=0.2, tokenizer_model="t", out="o")),
    "train": (
        "--data d --out o --model m --full --max-steps 7 --epochs 2 --lr 0.001 --batch-size 2 --grad-accum 2 "
        "--max-length 64 --warmup-ratio 0.1 --lora-r 4 --lora-alpha 8 --lora-dropout 0.1 "
        "--lora-target-modules q_proj,v_proj --save-steps 5 --keep-checkpoints 3 --logging-steps 2 --seed 1 "
        "--dtype float32 --no-gradient-checkpointing",
        TrainConfig(data="d", out="o", model="m", method="full", max_steps=7, epochs=2.0, learning_rate=0.001,
                    batch_size=2, grad_accum=2, max_length=64, warmup_ratio=0.1, lora_r=4, lora_alpha=8,
                    lora_dropout=0.1, lora_target_modules="q_proj,v_proj", save_steps=5, keep_checkpoints=3,
                    logging_steps=2, seed=1, dtype="float32", gradient_checkpointing=False)),
}
# Flags that cannot go with those above (a selection is not filters; merge is LoRA's), each set once.
MORE_FLAGS = {
    "mix": ("--domain d.jsonl --ratio 0.3 --selection s --out o",
            MixConfig(domain="d.jsonl", ratio=0.3, selection="s", out="o")),
    "train": ("--data d --out o --lora --merge --gradient-checkpointing",
              TrainConfig(data="d", out="o", method="lora", merge=True, gradient_checkpointing=True)),
}


@pytest.mark.parametrize("stage", sorted(EVERY_FLAG))
def test_every_flag_sets_the_same_config_field_as_before(stage):
    cases = [EVERY_FLAG[stage], *([MORE_FLAGS[stage]] if stage in MORE_FLAGS else [])]
    given = {word for line, _ in cases for word in shlex.split(line) if word.startswith("--")}
    assert given == set(FIXTURE[stage]) - COMMON - {"--resume"}  # every flag of the contract is exercised
    for line, expected in cases:
        assert config_of(stage, parse([stage, *shlex.split(line)])) == expected


@pytest.mark.parametrize("stage", MODEL_FACING)
def test_engine_flags_set_the_serving_of_every_model_facing_stage(stage):
    base = {"reconstruct": ["--n", "3"]}.get(stage, [])
    assert config_of(stage, parse([stage, *base])).serving == {}  # in-process: the default
    assert config_of(stage, parse([stage, *base, "--engine", "vllm"])).serving == {"engine": "vllm"}
    url = "http://10.0.0.2:8000/v1"
    assert config_of(stage, parse([stage, *base, "--engine-url", url])).serving == {"engine_url": url}
    with pytest.raises(ForgetlessError, match="engine URL must look like http://HOST:PORT/v1"):
        config_of(stage, parse([stage, *base, "--engine-url", "localhost:8000"]))
    with pytest.raises(ForgetlessError, match="invalid choice: 'tgi'"):
        parse([stage, "--engine", "tgi"])


def test_the_engine_does_not_change_the_job_id():
    served = ReconstructConfig(n=3, serving={"engine": "vllm"})
    assert served.resolved_job_id() == ReconstructConfig(n=3).resolved_job_id()
    assert EvalConfig(serving={"engine_url": "http://h:1/v1"}).resolved_job_id() == EvalConfig().resolved_job_id()


def test_an_eval_dtype_counts_in_the_job_id_only_when_pinned():
    # the ids of before the setting (computed with the code of 8be95cc): stored evaluations resume
    assert EvalConfig().resolved_job_id() == "eval-3c5ac1ce13"
    assert EvalConfig(model="smollm2-135m-instruct", suite="ifeval", limit=5, seed=3,
                      dtype="auto").resolved_job_id() == "eval-96ec6e7b86"
    ids = {dtype: EvalConfig(dtype=dtype).resolved_job_id() for dtype in ("auto", "float32", "bfloat16")}
    assert len(set(ids.values())) == 3  # a pinned dtype is its own job, never resumed in another dtype
    with pytest.raises(ForgetlessError, match="invalid choice: 'fp8'"):
        parse(["eval", "--dtype", "fp8"])


def test_flags_set_on_top_of_the_config_yaml(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text(to_yaml(TrainConfig(data="d", out="o", epochs=3.0, lora_r=4)))
    config = train_config(parse(["train", "--config", str(path), "--lr", "0.001", "--lora-r", "8"]))
    assert (config.data, config.epochs, config.learning_rate, config.lora_r) == ("d", 3.0, 0.001, 8)
    mix_yaml = tmp_path / "mix.yaml"
    mix_yaml.write_text(to_yaml(MixConfig(domain="d.jsonl", ratio=0.2, out="o", filters={"consensus_min": 2})))
    assert mix_config(parse(["mix", "--config", str(mix_yaml)])).filters == {"consensus_min": 2.0}
    # filter flags replace the YAML's filters as a whole, as the hand-written CLI did
    assert mix_config(parse(["mix", "--config", str(mix_yaml), "--max-std", "1"])).filters == {"max_std": 1.0}


def test_resume_starts_from_the_runs_own_config(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(to_yaml(TrainConfig(data="d", out=str(run), max_steps=9, seed=4)))
    config = train_config(parse(["train", "--out", str(run), "--resume", "--max-steps", "12"]))
    assert (config.data, config.max_steps, config.seed) == ("d", 12, 4)
    with pytest.raises(ForgetlessError, match="train needs --data"):  # without --resume the YAML is not read
        train_config(parse(["train", "--out", str(run)]))


@pytest.mark.parametrize(("words", "message"), [
    (["reconstruct", "--model", "smollm2-135m-instruct"],
     "reconstruct needs --n (how many instructions to store) or --config"),
    (["mix", "--ratio", "0.5", "--out", "o"], "mix needs --domain (a file, a folder or builtin:medmcqa)"),
    (["mix", "--domain", "d.jsonl", "--out", "o"], "mix needs --ratio (the share of general data, in [0, 1))"),
    (["mix", "--domain", "d.jsonl", "--ratio", "0.5"], "mix needs --out (the snapshot folder to write)"),
    (["train", "--model", "m"], "train needs --data and --out (or --config with them)"),
    (["train", "--data", "d"], "train needs --out (or --config with them)"),
    (["train", "--lora", "--full", "--data", "d", "--out", "o"], "not allowed with argument"),
])
def test_stage_checks_are_one_line_errors(words, message, tmp_path, capsys):
    assert main([*words, "--workspace", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (tmp_path / "jobs").exists() and not (tmp_path / "runs").exists()


# -- the "show CLI command" line --------------------------------------------------------------------------
ROUND_TRIPS = [
    *[(stage, expected) for stage, (_, expected) in EVERY_FLAG.items()],
    *[(stage, expected) for stage, (_, expected) in MORE_FLAGS.items()],
    ("reconstruct", ReconstructConfig()),
    ("reconstruct", ReconstructConfig(model="my models/tiny", stop=("<a>", "<b c>"), prefix="User:\n")),
    ("respond", RespondConfig()),
    ("judge", JudgeConfig()),
    ("profile", ProfileConfig()),
    ("profile", ProfileConfig(category_model="none", target_model=None, clusters="auto")),
    ("eval", EvalConfig()),
    ("eval", EvalConfig(limit=None, base=None, suite=("ifeval",))),
    ("reconstruct", ReconstructConfig(serving={"engine": "vllm"})),
    ("judge", JudgeConfig(serving={"engine_url": "http://127.0.0.1:8000/v1"})),
    ("mix", MixConfig(domain="my data.jsonl", ratio=0.0, out="snap")),
    ("train", TrainConfig(data="my data", out="run")),
    ("train", TrainConfig(data="/d", out="/run", model="gemma-3-270m", method="full", max_steps=7,
                          learning_rate=1e-5, lora_target_modules="q_proj,v_proj", gradient_checkpointing=False,
                          keep_checkpoints=3)),
]


@pytest.mark.parametrize(("stage", "config"), ROUND_TRIPS, ids=[stage for stage, _ in ROUND_TRIPS])
def test_cli_command_parses_back_to_the_same_config(stage, config, tmp_path):
    words = shlex.split(cli_command(stage, config, tmp_path / "my ws"))
    assert words[:2] == ["forgetless", stage] and words[-2:] == ["--workspace", str(tmp_path / "my ws")]
    args = parse(words[1:])
    assert config_of(stage, args) == config and args.workspace == tmp_path / "my ws"


def test_cli_command_leaves_out_what_has_no_flag_and_spells_switched_off_as_none(tmp_path):
    words = shlex.split(cli_command("reconstruct", ReconstructConfig(min_chars=5, stop=("a", "b")), tmp_path))
    assert "--min-chars" not in words and "--extra" not in words and "--prefix" not in words
    assert words[words.index("--stop") + 1] == "a" and words.count("--stop") == 2
    profile = shlex.split(cli_command("profile", ProfileConfig(difficulty_judge=None), tmp_path))
    assert profile[profile.index("--difficulty-judge") + 1] == "none"
    train = shlex.split(cli_command("train", replace(EVERY_FLAG["train"][1], gradient_checkpointing=None), tmp_path))
    assert "--full" in train and "--lora" not in train and not any("gradient-checkpointing" in w for w in train)


def test_help_shows_each_settings_help_and_default(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--lr LR learning rate (default 2e-4 LoRA, 2e-5 full)" in out
    assert "--lora-r LORA_R LoRA rank (default 16)" in out and "[--lora | --full]" in out
    with pytest.raises(SystemExit):
        main(["mix", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # mix asks for --ratio: the app's starting 0.5 is not its default
    assert "in [0, 1) --selection" in out
    assert "--seed SEED every sampling decision and the final shuffle (default 0)" in out
