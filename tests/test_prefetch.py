"""``synthgen prefetch``: what it fetches comes from the stages' own defaults; fetching goes
through the libraries' real downloaders (offline here: a filled hub cache, a local ONNX net)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from synthgen import prefetch as pf
from synthgen.errors import ModelLoadError, UserError
from synthgen.pin.training.config import DEFAULT_MODELS
from synthgen.render.config import RenderConfig


def test_the_plan_is_the_stages_defaults():
    cfg = RenderConfig(out="x")
    items = pf.plan(render=True, vlms=["openflamingo", "llava"])
    names = [(i.kind, i.name) for i in items]
    assert names[0] == ("hub", cfg.sd_model) and ("open_clip", cfg.clip_model) in names
    assert [("rembg", c) for c in cfg.cutout] == [n for n in names if n[0] == "rembg"]
    from synthgen.pin.models.flamingo.variants import resolve_parts

    parts = resolve_parts(DEFAULT_MODELS["openflamingo"])
    assert ("hub-file", parts.checkpoint) in names and ("hub", parts.lm) in names
    assert ("hub", DEFAULT_MODELS["llava"]) in names
    # CLIP ViT-L/14 openai serves render and OpenFlamingo: fetched once
    assert len(names) == len(set(names))
    assert "text_encoder/model.safetensors" in items[0].detail and not any("safety" in p for p in items[0].detail)
    other = pf.plan(vlms=["openflamingo"], models={"openflamingo": "openflamingo/OpenFlamingo-4B-vitl-rpj3b"})
    assert ("hub", "togethercomputer/RedPajama-INCITE-Base-3B-v1") in [(i.kind, i.name) for i in other]
    with pytest.raises(UserError, match="unknown VLM 'blip3'"):
        pf.plan(vlms=["blip3"])


def _fill_hub_cache(home, repo: str, files: dict[str, str]) -> None:
    """The layout huggingface_hub keeps: refs/main -> a commit, snapshots/<commit>/<files>."""
    folder = home / "hub" / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    for name, text in files.items():
        path = folder / "snapshots" / commit / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_fetch_uses_the_hub_cache_and_fails_in_one_line_when_it_cannot(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    _fill_hub_cache(tmp_path / "hf", "someone/vlm", {"config.json": "{}", "model.safetensors": "x"})
    path = pf.fetch(pf.Fetch("hub", "someone/vlm", pf.HF_FILES, "test"))
    assert sorted(os.listdir(path)) == ["config.json", "model.safetensors"]
    with pytest.raises(ModelLoadError, match=r"cannot fetch the hub repository someone/other \(test\): "):
        pf.fetch(pf.Fetch("hub", "someone/other", pf.HF_FILES, "test"))


def test_fetch_checks_a_custom_cutout_net_and_the_cli_reports_a_missing_one(tmp_path, monkeypatch, cli_env):
    home = tmp_path / "rembg"
    monkeypatch.setenv("U2NET_HOME", str(home))
    from synthgen.demo.tiny_render import build_tiny_u2net

    onnx = build_tiny_u2net()
    assert onnx.is_relative_to(home)
    assert pf.fetch(pf.Fetch("rembg", f"u2net_custom:{onnx}", (), "test")) == f"u2net_custom:{onnx}"
    with pytest.raises(ModelLoadError, match="cannot load the cut-out model"):
        pf.fetch(pf.Fetch("rembg", f"u2net_custom:{home / 'missing.onnx'}", (), "test"))
    env = dict(cli_env, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "empty"))
    r = subprocess.run([sys.executable, "-m", "synthgen", "prefetch", "blip2"], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(
        f"error: cannot fetch the hub repository {DEFAULT_MODELS['blip2']} (train-pin --vlm blip2)")
    r = subprocess.run([sys.executable, "-m", "synthgen", "prefetch", "render", "qwen2_5_vl", "--dry-run"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.count("\n") == 4 and DEFAULT_MODELS["qwen2_5_vl"] in r.stdout
