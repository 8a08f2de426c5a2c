"""The mix stage on a small hand-built store: exact ratio counts, balance, seeds, snapshots, CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from core.cli.main import main
from core.config import load_yaml, to_yaml
from core.errors import ForgetlessError
from core.mix.domain_map import map_overlay
from core.mix.mixing import MixConfig, freeze_mix, load_counter, plan_mix
from core.mix.order import held_out_general
from core.mix.snapshot import list_snapshots, read_manifest
from core.mix.tokens import TokenCounter
from core.store import ExploreFilters, Store
from tests.helpers import FAKE_EMBEDDER, N_DOMAIN, N_GENERAL, build_mix_store, write_domain


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("mix-ws")
    build_mix_store(folder / "forgetless.duckdb")
    return folder


@pytest.fixture(scope="module")
def store(workspace: Path) -> Store:
    return Store.for_workspace(workspace)


@pytest.fixture(scope="module")
def domain_file(tmp_path_factory) -> Path:
    return write_domain(tmp_path_factory.mktemp("domain") / "health.jsonl")


@pytest.fixture(scope="module")
def counter(tiny_model_dir: Path, workspace: Path) -> TokenCounter:
    return load_counter(MixConfig(domain="x", tokenizer_model=str(tiny_model_dir)), workspace)


@pytest.fixture()
def make(domain_file: Path, tiny_model_dir: Path, store: Store, workspace: Path, counter: TokenCounter):
    def plan(**values):  # the counting rules on every candidate: no general holdout unless a test asks
        config = MixConfig(domain=str(domain_file), tokenizer_model=str(tiny_model_dir),
                           **{"general_holdout": 0.0, **values})
        return plan_mix(config, store, workspace, counter=counter)
    return plan


def independent_tokens(tiny_model_dir: Path, conversations: list) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return [len(tokenizer(tokenizer.apply_chat_template(m, tokenize=False), add_special_tokens=False)["input_ids"])
            for m in conversations]


# (ratio, general, domain, limited_by) with D = 40 domain rows and 60 general candidates
EXAMPLE_CASES = [(0.0, 0, 40, None), (0.25, 13, 40, None), (0.5, 40, 40, None), (0.8, 60, 15, "general")]


@pytest.mark.parametrize(("ratio", "general", "domain", "limited"), EXAMPLE_CASES)
def test_counts_by_examples_are_exact(make, ratio, general, domain, limited):
    assert general == (round(N_DOMAIN * ratio / (1 - ratio)) if limited is None else N_GENERAL)
    plan = make(ratio=ratio, seed=1)
    assert plan.counts == {"general": general, "domain": domain, "total": general + domain}
    assert plan.limited_by == limited
    assert plan.rows["origin_id"].is_unique
    if limited:
        assert any(note.startswith("general-limited") for note in plan.notes)
        assert plan.summary()["limited_by"] == "general"
    assert plan.ratio_achieved == pytest.approx(general / (general + domain))


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 0.8])
def test_counts_by_tokens_reach_the_budget_with_the_fewest_rows(make, tiny_model_dir, ratio):
    plan = make(ratio=ratio, by="tokens", seed=2)
    rows = plan.rows
    counted = independent_tokens(tiny_model_dir, plan.messages())
    assert list(rows["n_tokens"]) == counted  # the target tokenizer's counts of the chat-formatted rows
    general = rows[rows["source"] == "general"]["n_tokens"]
    domain = rows[rows["source"] == "domain"]["n_tokens"]
    assert plan.tokens["general"] == general.sum() and plan.tokens["domain"] == domain.sum()
    if plan.limited_by is None:
        assert len(domain) == N_DOMAIN
        budget = round(domain.sum() * ratio / (1 - ratio))
        assert general.sum() >= budget
        assert len(general) == 0 or general.sum() - general.max() < budget  # no row more than needed
    else:
        assert ratio == 0.8 and len(general) == N_GENERAL
        budget = round(general.sum() * (1 - ratio) / ratio)
        assert domain.sum() >= budget and domain.sum() - domain.max() < budget
        assert len(domain) < N_DOMAIN
    assert plan.ratio_achieved == pytest.approx(general.sum() / (general.sum() + domain.sum()))
    if ratio:
        assert plan.ratio_achieved >= ratio - 0.05


def test_examples_mode_counts_tokens_too(make, tiny_model_dir):
    plan = make(ratio=0.5)
    assert plan.tokens["total"] == sum(independent_tokens(tiny_model_dir, plan.messages()))
    assert plan.tokens["tokenizer"] == str(tiny_model_dir)


def test_max_domain_caps_the_domain_side(make):
    plan = make(ratio=0.5, max_domain=10)
    assert plan.counts == {"general": 10, "domain": 10, "total": 20}
    assert plan.limited_by is None and "max_domain" in plan.notes[0]


def test_general_rows_are_instruction_and_best_response(make, store):
    plan = make(ratio=0.5)
    is_general = plan.rows["source"] == "general"
    general = plan.rows[is_general]
    frame = store.general_rows(list(general["origin_id"])).set_index("instruction_id")
    messages = [m for m, keep in zip(plan.messages(), is_general, strict=True) if keep]
    for (_, row), conversation in zip(general.iterrows(), messages, strict=True):
        assert conversation == [{"role": "user", "content": frame.at[row["origin_id"], "instruction"]},
                                   {"role": "assistant", "content": frame.at[row["origin_id"], "response"]}]
        assert row["consensus"] == frame.at[row["origin_id"], "consensus"]


def test_seed_reproduces_and_another_seed_changes_the_selection(make, tmp_path, store, workspace, counter):
    first, again, other = make(ratio=0.25, seed=5), make(ratio=0.25, seed=5), make(ratio=0.25, seed=6)
    assert first.general_ids() == again.general_ids()
    assert first.general_ids() != other.general_ids()
    hashes = []
    for name in ("a", "b"):
        config = MixConfig(**{**first.config.__dict__, "out": str(tmp_path / name)})
        summary = freeze_mix(config, store, workspace, counter=counter)
        hashes.append(hashlib.sha256((tmp_path / name / "train.parquet").read_bytes()).hexdigest())
        assert summary["sha256"] == hashes[-1]
    assert hashes[0] == hashes[1]


def test_balance_clusters_gives_equal_shares(make):
    plan = make(ratio=0.5, balance="clusters", seed=3)  # G = 40 over groups of 30, 15, 9 and 6 (no cluster)
    general = plan.rows[plan.rows["source"] == "general"]
    counts = general["cluster"].value_counts(dropna=False)
    assert counts[pd.NA] == 6 and counts[2] == 9  # small groups taken whole
    assert sorted([counts[0], counts[1]]) == [12, 13]  # the rest shared equally
    small = make(ratio=0.25, balance="clusters", seed=3).rows  # G = 13 over 4 groups
    shares = small[small["source"] == "general"]["cluster"].value_counts(dropna=False)
    assert len(shares) == 4 and shares.max() - shares.min() <= 1


def test_balance_difficulty_gives_equal_shares(make):
    plan = make(ratio=0.5, balance="difficulty", seed=3)  # G = 40 over bins of 25, 15, 10, 6, 4
    general = plan.rows[plan.rows["source"] == "general"]
    assert sorted(general["difficulty"].round(1).value_counts().tolist()) == [4, 6, 10, 10, 10]
    proportional = make(ratio=0.5, balance="proportional", seed=3).rows
    assert sorted(proportional[proportional["source"] == "general"]["difficulty"].round(1).value_counts()) != [
        4, 6, 10, 10, 10]


def test_filters_and_selection_name_the_general_candidates(make, store):
    plan = make(ratio=0.5, filters={"categories": ["coding"], "consensus_min": 2})
    general = plan.rows[plan.rows["source"] == "general"]
    assert set(general["category"]) == {"coding"} and general["consensus"].min() >= 2
    assert plan.candidates == store.explore_count(ExploreFilters(categories=("coding",), consensus_min=2))
    store.save_selection("mix-good", ExploreFilters(consensus_min=4))
    chosen = make(ratio=0.25, selection="mix-good")
    assert chosen.filters == ExploreFilters(consensus_min=4)
    assert chosen.rows[chosen.rows["source"] == "general"]["consensus"].min() >= 4


def test_selection_and_filters_are_exclusive():
    with pytest.raises(ForgetlessError, match="selection or filters, not both"):
        MixConfig(domain="d.jsonl", selection="good", filters={"consensus_min": 3})


@pytest.mark.parametrize("values", [{"ratio": 1.0}, {"ratio": -0.1}, {"by": "words"}, {"balance": "x"},
                                    {"domain": ""}, {"max_domain": -2}, {"filters": {"nope": 1}}])
def test_config_validation(values):
    with pytest.raises(ForgetlessError):
        MixConfig(**{"domain": "d.jsonl", **values})


def test_config_yaml_round_trip(tmp_path):
    config = MixConfig(domain="builtin:medmcqa", ratio=0.3, filters='{"clusters": [2, 1], "hide_duplicates": true}',
                       by="tokens", balance="clusters", seed=4, out=tmp_path / "m", max_domain=100)
    assert config.filters == {"clusters": [1, 2], "hide_duplicates": True}
    (tmp_path / "c.yaml").write_text(to_yaml(config))
    assert load_yaml(MixConfig, tmp_path / "c.yaml") == config


def test_held_out_general_is_a_stable_hash_share():
    ids = [f"id-{i}" for i in range(2000)]
    tenth, fifth = held_out_general(ids, 0.1), held_out_general(ids, 0.2)
    assert 150 < tenth.sum() < 250 and 320 < fifth.sum() < 480  # about the share asked
    assert not (tenth & ~fifth).any()  # a larger share holds out a superset
    assert (held_out_general(list(reversed(ids)), 0.1) == tenth[::-1]).all()  # by id, not by position
    assert not held_out_general(ids, 0.0).any()


def test_the_general_holdout_never_trains_and_is_the_same_in_every_mix(make, tmp_path, store, workspace, counter):
    plans = [make(ratio=ratio, seed=seed, balance=balance, general_holdout=0.2)
             for ratio, seed, balance in ((0.25, 0, "proportional"), (0.8, 3, "clusters"), (0.0, 1, "difficulty"))]
    held = plans[0].general_held_out
    assert 3 <= len(held) <= 25 and all(plan.general_held_out == held for plan in plans)
    for plan in plans:
        assert not set(plan.general_ids()) & set(held)
        assert plan.candidates == N_GENERAL - len(held)
    config = MixConfig(**{**plans[1].config.__dict__, "out": str(tmp_path / "held")})
    summary = freeze_mix(config, store, workspace, counter=counter)
    manifest = read_manifest(tmp_path / "held")
    assert manifest["general"]["held_out_ids"] == held and manifest["general"]["holdout"] == 0.2
    assert summary["general_held_out"] == len(held)
    with pytest.raises(ForgetlessError, match="general holdout must be in"):
        MixConfig(domain="x", general_holdout=1.0)


def test_snapshot_round_trips_through_datasets_and_manifest(make, tmp_path, store, workspace, counter, domain_file):
    from datasets import load_dataset

    config = MixConfig(**{**make(ratio=0.8, seed=9).config.__dict__, "out": str(tmp_path / "snap")})
    summary = freeze_mix(config, store, workspace, counter=counter)
    out = tmp_path / "snap"
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.yaml", "manifest.yaml", "train.parquet"]
    train = load_dataset("parquet", data_files=str(out / "train.parquet"), cache_dir=str(tmp_path / "c1"))["train"]
    plan = plan_mix(config, store, workspace, counter=counter)
    assert train["messages"] == plan.messages()
    assert train.column_names == ["messages", "source", "origin_id", "cluster", "cluster_label", "category",
                                  "consensus", "difficulty"]
    assert train["source"].count("general") == summary["counts"]["general"] == N_GENERAL
    by_card = load_dataset(str(out), cache_dir=str(tmp_path / "c2"))["train"]  # the README's front matter
    assert by_card.num_rows == train.num_rows

    manifest = read_manifest(out)
    assert manifest["counts"] == {"general": 60, "domain": 15, "total": 75} and manifest["limited_by"] == "general"
    assert manifest["ratio"] == 0.8 and manifest["seed"] == 9 and manifest["by"] == "examples"
    assert manifest["tokens"]["tokenizer"] == config.tokenizer_model
    assert manifest["tokens"]["total"] == sum(train.to_pandas().index.map(lambda i: plan.rows["n_tokens"][i]))
    assert manifest["files"]["train.parquet"]["sha256"] == hashlib.sha256((out / "train.parquet").read_bytes()
                                                                           ).hexdigest()
    assert manifest["domain"]["input_sha256"] == hashlib.sha256(domain_file.read_bytes()).hexdigest()
    assert manifest["domain"]["rows_kept"] == N_DOMAIN and manifest["domain"]["format"] == "messages"
    general_ids = sorted(r for r, s in zip(train["origin_id"], train["source"], strict=True) if s == "general")
    assert manifest["general"]["instruction_ids"] == general_ids
    assert manifest["general"]["selection"] is None and manifest["general"]["candidates"] == N_GENERAL
    assert "held_out_ids" not in manifest["general"]  # no holdout: the manifest stays as before it existed
    assert manifest["forgetless_version"] and manifest["created"]
    assert load_yaml(MixConfig, out / "config.yaml") == config
    assert "| general | 60 |" in (out / "README.md").read_text()


def test_refuses_to_overwrite_a_snapshot(make, tmp_path, store, workspace, counter):
    config = MixConfig(**{**make(ratio=0.5).config.__dict__, "out": str(tmp_path / "snap")})
    freeze_mix(config, store, workspace, counter=counter)
    before = (tmp_path / "snap" / "train.parquet").read_bytes()
    with pytest.raises(ForgetlessError, match="already exists and is not empty"):
        freeze_mix(MixConfig(**{**config.__dict__, "seed": 8}), store, workspace, counter=counter)
    assert (tmp_path / "snap" / "train.parquet").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["snap"]  # no staging folder left behind
    (tmp_path / "empty").mkdir()  # an empty folder is fine
    freeze_mix(MixConfig(**{**config.__dict__, "out": str(tmp_path / "empty")}), store, workspace, counter=counter)
    assert (tmp_path / "empty" / "manifest.yaml").exists()


def test_list_snapshots_and_composition(make, tmp_path, store, counter):
    workspace = tmp_path / "ws"
    for name, ratio in (("first", 0.25), ("second", 0.5)):
        config = MixConfig(**{**make(ratio=ratio).config.__dict__, "out": str(workspace / "mixes" / name)})
        freeze_mix(config, store, workspace, counter=counter)
    (workspace / "mixes" / "broken").mkdir()
    (workspace / "mixes" / "broken" / "manifest.yaml").write_text("- not a manifest")
    frame = list_snapshots(workspace)
    assert set(frame["name"]) == {"first", "second"}
    assert frame.set_index("name").loc["second", ["general", "domain", "total"]].tolist() == [40, 40, 80]
    assert list_snapshots(tmp_path / "nowhere").empty

    plan = make(ratio=0.5)
    by_category = plan.composition("category")
    assert by_category.set_index(["source", "group"])["examples"].to_dict()[("domain", "domain")] == 40
    assert by_category["examples"].sum() == 80 and by_category["tokens"].sum() == plan.tokens["total"]
    general_groups = set(by_category[by_category["source"] == "general"]["group"])
    assert general_groups == {"coding", "math"}
    assert set(plan.composition("cluster")["group"]) <= {"topic 0", "topic 1", "topic 2", "(unprofiled)", "domain"}


def test_map_overlay_projects_domain_rows_with_the_general_pca(store):
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(1)
    domain_vectors = rng.normal(size=(3, 8))
    frame = map_overlay(store, ["a", "b", "c"], lambda: (lambda texts: domain_vectors[: len(texts)]),
                        embedder=FAKE_EMBEDDER)
    assert frame["source"].value_counts().to_dict() == {"general": N_GENERAL, "domain": 3}
    stored = store.load_embeddings(FAKE_EMBEDDER)
    pca = PCA(n_components=2, random_state=0).fit(np.stack([stored[i] for i in sorted(stored)]).astype(np.float64))
    expected = pca.transform(domain_vectors)
    np.testing.assert_allclose(frame[frame["source"] == "domain"][["x", "y"]].to_numpy(), expected, rtol=1e-6)
    assert frame[frame["source"] == "general"]["label"].str.startswith("please write").all()
    with pytest.raises(ForgetlessError, match="run profile"):
        map_overlay(store, ["a"], embedder="other-embedder")


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_mix_writes_a_snapshot(capsys, tmp_path, workspace, domain_file, tiny_model_dir):
    out = tmp_path / "cli-mix"
    code, stdout, stderr = run_cli(
        capsys, "mix", "--domain", str(domain_file), "--ratio", "0.25", "--min-score", "2", "--categories", "coding",
        "--balance", "clusters", "--seed", "3", "--tokenizer-model", str(tiny_model_dir), "--out", str(out),
        "--workspace", str(workspace), "--json")
    assert code == 0, stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["counts"] == {"general": 13, "domain": 40, "total": 53}
    assert summary["out"] == str(out) and summary["limited_by"] is None
    assert summary["ratio_achieved"] == pytest.approx(13 / 53, abs=1e-6)
    manifest = yaml.safe_load((out / "manifest.yaml").read_text())
    assert manifest["general"]["filters"] == {"categories": ["coding"], "consensus_min": 2.0}
    assert manifest["balance"] == "clusters"
    frame = pd.read_parquet(out / "train.parquet")
    assert set(frame[frame["source"] == "general"]["category"]) == {"coding"}

    code, stdout, _ = run_cli(capsys, "mix", "--domain", str(domain_file), "--ratio", "0.5", "--tokenizer-model",
                              str(tiny_model_dir), "--out", str(tmp_path / "human"), "--workspace", str(workspace))
    assert code == 0 and stdout.startswith(f"wrote {tmp_path / 'human'}: 80 examples (40 general + 40 domain)")


@pytest.mark.parametrize("argv", [
    ["--ratio", "1.5"],
    ["--ratio", "0.5", "--selection", "mix-good", "--min-score", "3"],
])
def test_cli_mix_bad_input_is_one_line(capsys, tmp_path, workspace, domain_file, argv):
    code, stdout, stderr = run_cli(capsys, "mix", "--domain", str(domain_file), *argv, "--out", str(tmp_path / "o"),
                                   "--workspace", str(workspace))
    assert code == 2
    assert len(stderr.strip().splitlines()) == 1 and stderr.startswith("error: ")
    assert not (tmp_path / "o").exists()


@pytest.mark.integration
def test_map_overlay_with_the_packaged_embedder(tmp_path):
    from core.engines.embedder import DEFAULT_EMBEDDER, load_embedder, resolve_embedder

    store = build_mix_store(tmp_path / "forgetless.duckdb")
    general = store.general_rows(store.explore_ids(ExploreFilters()))
    encode = load_embedder(resolve_embedder(DEFAULT_EMBEDDER))
    store.save_embeddings(DEFAULT_EMBEDDER, list(general["instruction_id"]), encode(list(general["instruction"])))
    twin = general["instruction"].iat[7]  # a domain text equal to a general one lands on the same point
    frame = map_overlay(store, [twin, "What is the first-line drug for hypertension?"], lambda: encode)
    domain = frame[frame["source"] == "domain"]
    assert len(domain) == 2 and len(frame) == N_GENERAL + 2
    point = frame[(frame["source"] == "general") & (frame["label"] == twin)][["x", "y"]].to_numpy()[0]
    np.testing.assert_allclose(domain[["x", "y"]].to_numpy()[0], point, atol=1e-4)
