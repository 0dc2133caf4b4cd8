"""The first hour with your own data (issue 19): unusable backgrounds caught before any work,
scene shards refused as backgrounds, prepare-backgrounds of nothing usable is an error, and
export-coco never leaves a stale image of an earlier export."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import make_backgrounds, make_index_bank
from tests.hostile.conftest import one_line_error


@pytest.fixture(scope="module")
def env():
    return dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")


def _cli(args, env, **kw):
    return subprocess.run([sys.executable, "-m", "synthgen", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=300, **kw)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    bad = root / "bad"
    bad.mkdir()
    for i in range(3):
        (bad / f"x{i}.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return {"bank": make_index_bank(root / "bank"), "bg": make_backgrounds(root / "bg", n=3), "bad": bad}


def test_unusable_backgrounds_are_one_line_before_any_work(inputs, tmp_path, env):
    r = _cli(["compose", "--objects", inputs["bank"], "--backgrounds", inputs["bad"], "--out", tmp_path / "o",
              "-n", "4", "--executor", "ray"], env)
    one_line_error(r, "backgrounds", "none of the first 3 images is usable (3 unreadable)")
    assert not (tmp_path / "o").exists()  # (before the run folder, and before Ray)
    assert "ray" not in r.stderr.lower()


def test_compose_says_what_it_read_as_backgrounds_and_refuses_scene_shards(inputs, tmp_path, env):
    r = _cli(["compose", "--objects", inputs["bank"], "--backgrounds", inputs["bg"], "--out", tmp_path / "s",
              "-n", "4", "--executor", "serial"], env)
    assert r.returncode == 0, r.stderr
    assert f"backgrounds: 3 images from {inputs['bg']}" in r.stdout + r.stderr
    r = _cli(["compose", "--objects", inputs["bank"], "--backgrounds", tmp_path / "s", "--out", tmp_path / "t",
              "-n", "4", "--executor", "serial"], env)
    one_line_error(r, "a shard of composed scenes", "scenes-000000.tar")


def test_prepare_backgrounds_of_nothing_usable_fails(inputs, tmp_path, env):
    r = _cli(["prepare-backgrounds", inputs["bad"], "--out", tmp_path / "p", "--executor", "serial"], env)
    one_line_error(r, "none of its 3 images is usable (3 unreadable)")
    assert not (tmp_path / "p" / "manifest.json").exists()


def test_export_coco_refuses_an_earlier_export_and_overwrite_leaves_no_stale_image(inputs, tmp_path, env):
    shards = tmp_path / "s"
    for n, out in ((6, shards), (3, tmp_path / "s3")):
        r = _cli(["compose", "--objects", inputs["bank"], "--backgrounds", inputs["bg"], "--out", out, "-n", n,
                  "--executor", "serial"], env)
        assert r.returncode == 0, r.stderr
    coco = tmp_path / "coco"
    assert _cli(["export-coco", shards, "-o", coco], env).returncode == 0
    assert len(list((coco / "images").iterdir())) == 6
    one_line_error(_cli(["export-coco", tmp_path / "s3", "-o", coco], env), "already holds a COCO export",
                   "--overwrite")
    assert len(json.loads((coco / "instances.json").read_text())["images"]) == 6  # kept
    r = _cli(["export-coco", tmp_path / "s3", "-o", coco, "--overwrite"], env)
    assert r.returncode == 0, r.stderr
    names = {i["file_name"] for i in json.loads((coco / "instances.json").read_text())["images"]}
    assert len(names) == 3 and {p.name for p in (coco / "images").iterdir()} == names
    # an unfinished export (no instances.json: interrupted) is started again by the same command
    (coco / "instances.json").unlink()
    (coco / "images" / "stale.jpg").write_bytes(b"x")
    assert _cli(["export-coco", tmp_path / "s3", "-o", coco], env).returncode == 0
    assert {p.name for p in (coco / "images").iterdir()} == names
