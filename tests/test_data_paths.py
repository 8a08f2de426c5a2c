"""The app reads typed paths only in its workspace and --data-dir folders; error text is shown literally."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from core.data_paths import ReadableRoots
from core.errors import ForgetlessError
from tests.helpers import write_domain
from ui.views.mix import MixCache, map_unavailable

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def layout(tmp_path: Path) -> dict[str, Path]:
    workspace, data, outside = tmp_path / "ws", tmp_path / "data", tmp_path / "outside"
    for folder in (workspace, data, outside):
        folder.mkdir()
    write_domain(data / "mine.jsonl", 3)
    write_domain(outside / "theirs.jsonl", 3)
    (workspace / "passwd.csv").symlink_to("/etc/passwd")
    (workspace / "escape").symlink_to(outside)
    return {"workspace": workspace, "data": data, "outside": outside}


def test_paths_under_the_roots_resolve_and_others_are_refused(layout):
    roots = ReadableRoots.for_app(layout["workspace"], [layout["data"]])
    assert roots.check(str(layout["data"] / "mine.jsonl")) == str((layout["data"] / "mine.jsonl").resolve())
    assert roots.check("builtin:medmcqa") == "builtin:medmcqa" and roots.check("  ") == ""
    refused = [layout["outside"] / "theirs.jsonl", layout["workspace"] / "passwd.csv",
               layout["workspace"] / "escape" / "theirs.jsonl", layout["data"] / ".." / "outside" / "theirs.jsonl",
               Path("/etc/passwd")]
    for path in refused:
        with pytest.raises(ForgetlessError, match="is outside the folders this app reads") as error:
            roots.check(str(path))
        assert "\n" not in str(error.value) and "root:" not in str(error.value)


def test_a_data_dir_that_is_not_a_folder_is_refused(layout):
    with pytest.raises(ForgetlessError, match="not a folder"):
        ReadableRoots.for_app(layout["workspace"], [layout["data"] / "mine.jsonl"])


def test_the_mix_cache_reads_only_under_its_roots(layout):
    cache = MixCache(layout["workspace"])  # by default: the workspace only
    with pytest.raises(ForgetlessError, match="outside the folders"):
        cache.domain(str(layout["data"] / "mine.jsonl"))
    with pytest.raises(ForgetlessError, match="outside the folders"):
        cache.domain(str(layout["workspace"] / "passwd.csv"))  # a symlink out: never opened
    allowed = MixCache(layout["workspace"], ReadableRoots.for_app(layout["workspace"], [layout["data"]]))
    assert len(allowed.domain(str(layout["data"] / "mine.jsonl")).train) == 3


def test_the_mix_tab_shows_a_refused_path_literally(layout, monkeypatch):
    import gradio as gr

    from ui.mix_tab import load_domain_view

    toasts: list[str] = []
    monkeypatch.setattr(gr, "Warning", toasts.append)
    hostile = str(layout["outside"] / "<img src=x onerror=alert(1)>.csv")
    message, report, preview, loaded = load_domain_view(MixCache(layout["workspace"]), hostile)
    assert loaded is None and preview["data"] == []
    for text in (message, report):  # every < and > escaped, so Markdown shows them as text
        assert "\\<img src=x onerror=alert(1)\\>" in text and not re.search(r"(?<!\\)[<>]", text)
    assert toasts and "<img" not in toasts[0] and "&lt;img src=x onerror=alert(1)&gt;" in toasts[0]
    assert "<img" not in map_unavailable(hostile).layout.title.text


def test_launch_refuses_a_missing_data_dir(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "launch.py"), "--workspace", str(tmp_path / "ws"),
                           "--data-dir", str(tmp_path / "missing")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: --data-dir {tmp_path / 'missing'}: not a folder"]


def test_model_fields_are_confined_but_aliases_and_hub_ids_pass(layout):
    from core.screen.respond import RespondConfig

    roots = ReadableRoots.for_app(layout["workspace"], [layout["data"]])
    for spec in ("smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", "none", None, ""):
        assert roots.check_model(spec) == spec
    assert roots.check_model(str(layout["data"] / "model.gguf")) == str(layout["data"] / "model.gguf")
    for spec in (str(layout["outside"]), "/etc/passwd.gguf", str(layout["workspace"] / "escape"), "../outside",
                 f"completeness:{layout['outside']}", "relevance:../outside"):  # a signal judge's model too
        with pytest.raises(ForgetlessError, match="outside the folders this app reads"):
            roots.check_model(spec)
    for spec in ("relevance:all-minilm-l6-v2", f"fluency:{layout['data'] / 'model.gguf'}"):
        assert roots.check_model(spec) == spec

    def build(*models: str) -> RespondConfig:
        return RespondConfig(models=models)

    confined = roots.confine(build, "models")
    assert confined("smollm2-135m-instruct").models == ("smollm2-135m-instruct",)
    with pytest.raises(ForgetlessError, match="outside the folders"):
        confined("smollm2-135m-instruct", str(layout["outside"]))


def test_a_refused_job_start_is_shown_literally(layout, monkeypatch):
    import gradio as gr

    from core.screen.respond import RespondConfig
    from ui.job_controls import start_job
    from ui.views.jobs import StageJobs

    toasts: list[str] = []
    monkeypatch.setattr(gr, "Warning", toasts.append)
    roots = ReadableRoots.for_app(layout["workspace"])
    hostile = str(layout["outside"] / "<b>model</b>")
    message = start_job(StageJobs(layout["workspace"], "respond", RespondConfig),
                        roots.confine(lambda models: RespondConfig(models=(models,)), "models"), hostile)
    assert message.startswith("Not started: ") and "\\<b\\>model\\</b\\>" in message
    assert "&lt;b&gt;model&lt;/b&gt;" in toasts[0] and "<b>" not in toasts[0]
    assert not (layout["workspace"] / "jobs").exists()
