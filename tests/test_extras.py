"""The core install (no extras) runs compose / prepare-backgrounds / preview / stats / export-coco,
and a command that needs an extra says which, in one line.

A core install is simulated by an import blocker on PYTHONPATH (``sitecustomize``), so it holds in
every process of the run, Ray's workers included: torch, diffusers, transformers, rembg,
onnxruntime, open_clip, scikit-image, ... cannot be imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from synthgen.extras import EXTRAS, MissingExtra, missing_extra, require

ROOT = Path(__file__).resolve().parents[1]
HEAVY = sorted({m for extra in ("render", "train", "demo") for m in EXTRAS[extra]} | {"timm", "tokenizers"})

BLOCKER = f'''
import sys
_BLOCK = {set(HEAVY)!r}
class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _BLOCK:
            raise ModuleNotFoundError(f"No module named {{name!r}} (core install)", name=name)
        return None
sys.meta_path.insert(0, _Blocker())
'''


@pytest.fixture
def core_env(tmp_path):
    site = tmp_path / "core-site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT)])
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["COLUMNS"] = "200"
    return env


def _run(env, *args, cwd=None):
    return subprocess.run([sys.executable, "-m", "synthgen", *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def test_the_blocker_blocks(core_env):
    for module in ("torch", "diffusers", "rembg", "onnxruntime", "transformers", "open_clip"):
        r = subprocess.run([sys.executable, "-c", f"import {module}"], env=core_env, capture_output=True, text=True)
        assert r.returncode != 0 and "core install" in r.stderr, module


def test_core_install_composes_previews_and_exports(core_env, bank, backgrounds, tmp_path):
    out = tmp_path / "shards"
    # compose on a real local Ray: the workers run without torch too
    r = _run(core_env, "compose", "--objects", bank, "--backgrounds", backgrounds, "--out", out,
             "-n", 6, "--samples-per-shard", 3, "--workers", 1)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.glob("scenes-*.tar")) == ["scenes-000000.tar", "scenes-000001.tar"]
    prepared = tmp_path / "bg-prepared"
    r = _run(core_env, "prepare-backgrounds", backgrounds, "--out", prepared, "--size", 64, "--executor", "serial")
    assert r.returncode == 0, r.stderr
    assert list(prepared.glob("*.tar"))
    r = _run(core_env, "compose", "--objects", bank, "--backgrounds", prepared, "--out", tmp_path / "from-prepared",
             "-n", 2, "--executor", "serial")
    assert r.returncode == 0, r.stderr
    r = _run(core_env, "preview", out, "-o", tmp_path / "preview.png", "-n", 4)
    assert r.returncode == 0 and (tmp_path / "preview.png").stat().st_size > 0, r.stderr
    r = _run(core_env, "preview", bank, "-o", tmp_path / "bank.png")
    assert r.returncode == 0 and (tmp_path / "bank.png").stat().st_size > 0, r.stderr
    r = _run(core_env, "stats", out, "-o", tmp_path / "stats.png")
    assert r.returncode == 0 and (tmp_path / "stats.png").stat().st_size > 0, r.stderr
    r = _run(core_env, "export-coco", out, "-o", tmp_path / "coco")
    assert r.returncode == 0, r.stderr
    coco = json.loads((tmp_path / "coco" / "instances.json").read_text())
    assert len(coco["images"]) == 6 and coco["annotations"]


@pytest.mark.parametrize("args, extra", [
    (["render", "--categories", "voc", "--out", "bank"], "render"),
    (["train-pin", "shards", "--out", "run"], "train"),
    (["predict", "run", "x.png", "cat"], "train"),
    (["demo-data", "--out", "d"], "demo"),
])
def test_a_missing_extra_is_one_line_naming_the_pip_command(core_env, tmp_path, args, extra):
    r = _run(core_env, *args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"pip install 'synthgen[{extra}]'" in lines[0], lines[0]


def test_the_api_checks_its_extra_before_work(core_env, tmp_path):
    code = ("import synthgen, sys\n"
            "from synthgen.extras import MissingExtra\n"
            "try:\n    synthgen.train_pin('shards', out='run')\n"
            "except MissingExtra as e:\n    print(e); sys.exit(0)\n"
            "sys.exit(1)\n")
    r = subprocess.run([sys.executable, "-c", code], env=core_env, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and "pip install 'synthgen[train]'" in r.stdout, r.stdout + r.stderr
    assert not (tmp_path / "run").exists()


def test_missing_extra_names_the_extra_for_the_module():
    assert "synthgen[render]" in str(missing_extra(ModuleNotFoundError("x", name="diffusers"), "render"))
    assert "synthgen[render]" in str(missing_extra(ModuleNotFoundError("x", name="torch"), "render"))
    assert "synthgen[train]" in str(missing_extra(ModuleNotFoundError("x", name="torch.nn"), "train-pin"))
    assert "synthgen[demo]" in str(missing_extra(ModuleNotFoundError("x", name="skimage"), "demo-data"))
    assert "synthgen[remote]" in str(missing_extra(ModuleNotFoundError("x", name="s3fs"), "compose"))
    # a module synthgen does not know is a bug, not a missing extra
    assert missing_extra(ModuleNotFoundError("x", name="numpy_typo"), "compose") is None
    require("train", "this test")  # the test install has every extra
    with pytest.raises(MissingExtra, match=r"pip install 'synthgen\[render\]'"):
        EXTRAS["render"] += ("no_such_module_xyz",)
        try:
            require("render", "this test")
        finally:
            EXTRAS["render"] = EXTRAS["render"][:-1]


def test_pyproject_keeps_heavy_packages_out_of_the_core_install():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"])
    for package in ("torch", "diffusers", "transformers", "rembg", "onnxruntime", "open_clip", "scikit-image"):
        assert package not in core, package
    extras = project["optional-dependencies"]
    for name in ("render", "train", "all", "demo", "test", "remote"):
        assert name in extras, name
    assert any(d.startswith("diffusers") for d in extras["render"]) and any(d.startswith("rembg") for d in extras["render"])
    assert any(d.startswith("torch") for d in extras["train"]) and not any(d.startswith("diffusers") for d in extras["train"])
    assert "synthgen[render,train,remote]" in extras["all"]
