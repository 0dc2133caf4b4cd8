"""Inputs that try to steer synthgen outside the folders it was given."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import make_backgrounds, make_index_bank, scene_records, write_rgba
from tests.hostile.conftest import one_line_error, run_cli


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return path


def _jpg(colour=(10, 200, 30), size=224) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="JPEG")
    return buf.getvalue()


def _scene(key: str) -> bytes:
    return json.dumps({"schema": "synthgen.scene/1", "key": key, "seed": 0, "width": 224, "height": 224,
                       "grid": 16, "background": {"source": "x", "fit": "squash"},
                       "objects": [{"category": "cat", "category_id": None, "object_id": "c", "box": [0, 0, 14, 14],
                                    "cells": [0, 0, 1, 1], "visible": 1.0, "referral": "cat"}],
                       "target": 0, "prompt": "p", "answer": "[0,0,14,14]"}).encode()


def _compose(bank, bg, out, env, *extra, n=6):
    return run_cli(["compose", "--objects", bank, "--backgrounds", bg, "--out", out, "-n", n,
                    "--samples-per-shard", n, "--executor", "serial", *extra], env)


def test_export_coco_never_writes_outside_out(tmp_path, cli_env):
    victim = tmp_path / "victim"
    shard = _tar(tmp_path / "s" / "scenes-000000.tar", {
        "000000000.jpg": _jpg(), "000000000.json": _scene(str(victim / "PWNED")),
        "000000001.jpg": _jpg(), "000000001.json": _scene("../../../escaped"),
        "000000002.jpg": _jpg(), "000000002.json": _scene("000000002"),
    })
    out = tmp_path / "coco"
    r = run_cli(["export-coco", shard, "-o", out], cli_env)
    assert r.returncode == 0, r.stderr
    assert not victim.exists() and not list(tmp_path.glob("**/PWNED*")) and not list(tmp_path.rglob("escaped*"))
    coco = json.loads((out / "instances.json").read_text())
    assert [im["file_name"] for im in coco["images"]] == ["000000002.jpg"]
    assert coco["info"]["skipped_scenes"]["bad_key"]["count"] == 2
    assert "skipped scenes (bad key): 2" in r.stderr
    assert sorted(p.name for p in (out / "images").iterdir()) == ["000000002.jpg"]


def test_export_coco_keeps_every_image_when_keys_collide(tmp_path, cli_env, bank, backgrounds):
    for seed in (0, 1):  # two compose runs: both number their scenes from 0
        r = _compose(bank, backgrounds, tmp_path / f"run{seed}", cli_env, "--seed", seed)
        assert r.returncode == 0, r.stderr
    out = tmp_path / "coco"
    r = run_cli(["export-coco", str(tmp_path / "run{0,1}"), "-o", out], cli_env)
    assert r.returncode == 0, r.stderr
    coco = json.loads((out / "instances.json").read_text())
    names = [im["file_name"] for im in coco["images"]]
    assert len(names) == 12 == len(set(names)) == len(list((out / "images").iterdir()))
    by_key: dict[str, list[bytes]] = {}
    for im in coco["images"]:  # every entry points at its own scene's picture
        with tarfile.open(tmp_path / ("run0" if im["id"] <= 6 else "run1") / im["shard"]) as tf:
            jpg = tf.extractfile(f"{im['synthgen_key']}.jpg").read()
        assert (out / "images" / im["file_name"]).read_bytes() == jpg
        by_key.setdefault(im["synthgen_key"], []).append(jpg)
    assert all(len(v) == 2 and v[0] != v[1] for v in by_key.values())


def _outside_png(tmp_path) -> Path:
    return write_rgba(tmp_path / "outside" / "secret.png", (250, 0, 250), (40, 40))


def test_bank_paths_outside_the_bank_are_skipped_counted_and_named(tmp_path, cli_env, backgrounds):
    secret = _outside_png(tmp_path)
    bank = make_index_bank(tmp_path / "bank", per_category=1)
    lines = (bank / "index.jsonl").read_text().splitlines()
    lines += [json.dumps({"id": "evil/abs", "category": "evil", "path": str(secret)}),
              json.dumps({"id": "evil/up", "category": "evil", "path": "../" * 8 + str(secret).lstrip("/")}),
              json.dumps({"id": "evil/passwd", "category": "evil", "path": "../../../../etc/passwd"})]
    os.symlink(secret, bank / "red_block" / "link.png")
    lines.append(json.dumps({"id": "evil/link", "category": "evil", "path": "red_block/link.png"}))
    (bank / "index.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    r = _compose(bank, backgrounds, out, cli_env, "--same-category-p", "0", n=40)
    assert r.returncode == 0, r.stderr
    recs = scene_records(out)
    assert not any(o["object_id"].startswith("evil/") for rec in recs for o in rec["objects"])
    skipped = json.loads((out / "manifest.json").read_text())["totals"]["skipped_objects"]
    assert set(skipped["outside_bank"]["examples"]) >= {"evil/abs", "evil/up", "evil/passwd"}
    assert "skipped objects (outside bank)" in r.stderr
    # the symlink is refused when drawn (it lies inside lexically): the category has nothing else
    assert "outside_bank" in skipped and skipped["outside_bank"]["count"] >= 3
    # an explicitly allowed root admits the outside folder
    out2 = tmp_path / "out2"
    r = _compose(bank, backgrounds, out2, cli_env, "--extra-object-root", secret.parent, n=40)
    assert r.returncode == 0, r.stderr
    assert any(o["object_id"] == "evil/abs" for rec in scene_records(out2) for o in rec["objects"])


def test_xpaste_pools_paths_are_rerooted_only_inside_the_bank(tmp_path, cli_env, backgrounds):
    secret = _outside_png(tmp_path)
    root = tmp_path / "pools"
    write_rgba(root / "images" / "cat" / "a.png", (230, 20, 20), (50, 30))
    (root / "LVIS_instance_pools.json").write_text(json.dumps({
        "cat": ["/home/authors/xpaste/images/cat/a.png"],   # re-rooted under the bank: kept
        "evil": [str(secret)],                               # absolute, outside: refused
    }))
    out = tmp_path / "out"
    r = _compose(root, backgrounds, out, cli_env, n=20)
    assert r.returncode == 0, r.stderr
    cats = {o["category"] for rec in scene_records(out) for o in rec["objects"]}
    assert cats == {"cat"}
    skipped = json.loads((out / "manifest.json").read_text())["totals"]["skipped_objects"]
    assert skipped["outside_bank"]["examples"] == ["evil/000000"]


def test_background_symlinks_out_of_the_folder_and_fifos_are_skipped(tmp_path, cli_env, bank):
    bg = make_backgrounds(tmp_path / "bg", n=2)
    outside = make_backgrounds(tmp_path / "elsewhere", n=1, size=(300, 300))
    os.symlink(outside / "bg_00.jpg", bg / "link.jpg")
    os.symlink(outside, bg / "linked_folder")  # folders are not followed
    os.mkfifo(bg / "pipe.jpg")
    out = tmp_path / "out"
    r = _compose(bank, bg, out, cli_env, n=20)
    assert r.returncode == 0, r.stderr
    used = {rec["background"]["source"] for rec in scene_records(out)}
    assert used <= {str(bg / "bg_00.jpg"), str(bg / "bg_01.jpg")} and used
    skipped = json.loads((out / "manifest.json").read_text())["totals"]["skipped_backgrounds"]
    assert skipped["outside_folder"]["examples"] == [str(bg / "link.jpg")]
    assert skipped["not_a_file"]["examples"] == [str(bg / "pipe.jpg")]


def test_a_fifo_as_an_object_never_hangs_compose(tmp_path, cli_env, backgrounds):
    bank = make_index_bank(tmp_path / "bank", per_category=1)
    os.mkfifo(bank / "red_block" / "pipe.png")
    lines = (bank / "index.jsonl").read_text().splitlines()
    lines.append(json.dumps({"id": "red_block/pipe", "category": "red block", "path": "red_block/pipe.png"}))
    (bank / "index.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    r = _compose(bank, backgrounds, out, cli_env, n=30)  # (a hang would hit the 300 s timeout)
    assert r.returncode == 0, r.stderr
    skipped = json.loads((out / "manifest.json").read_text())["totals"]["skipped_objects"]
    assert skipped["not_a_file"]["examples"] == ["red_block/pipe"]


def test_eval_image_paths_must_stay_under_images(tmp_path, cli_env):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (64, 64)).save(images / "ok.jpg")
    Image.new("RGB", (64, 64)).save(tmp_path / "secret.jpg")
    os.symlink(tmp_path / "secret.jpg", images / "link.jpg")
    coco = {"images": [{"id": 1, "file_name": "ok.jpg", "width": 64, "height": 64},
                       {"id": 2, "file_name": "../secret.jpg", "width": 64, "height": 64},
                       {"id": 3, "file_name": str(tmp_path / "secret.jpg"), "width": 64, "height": 64},
                       {"id": 4, "file_name": "link.jpg", "width": 64, "height": 64}],
            "categories": [{"id": 1, "name": "cat"}],
            "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [1, 1, 20, 20]} for i in (1, 2, 3, 4)]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    run = tmp_path / "run"
    run.mkdir()
    (run / "pin.json").write_text(json.dumps({"canvas": 224, "grid": 16, "vlm": "blip2"}))
    r = run_cli(["eval-pin", run, "--coco-json", tmp_path / "coco.json", "--images", images,
                 "--baseline", "random", "--out", tmp_path / "e" / "preds.jsonl"], cli_env)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert m["n"] == 1 and m["skipped"]["outside_images"]["count"] == 3


def test_out_inside_an_input_is_refused_up_front(tmp_path, cli_env, bank):
    bg = make_backgrounds(tmp_path / "bg", n=2)
    for out, needle in ((bg / "scenes", "--backgrounds"), (bank / "scenes", "--objects"),
                        (tmp_path, "--objects")):
        r = _compose(bank, bg, out, cli_env)
        one_line_error(r, "overlap", needle)
    assert not (bg / "scenes").exists() and not (bank / "scenes").exists()


def test_resume_over_changed_inputs_is_refused(tmp_path, cli_env, bank):
    bg = make_backgrounds(tmp_path / "bg", n=2)
    out = tmp_path / "out"
    r = _compose(bank, bg, out, cli_env)
    assert r.returncode == 0, r.stderr
    ident = json.loads((out / "run.json").read_text())["inputs"]
    assert ident["backgrounds"]["count"] == 2 and ident["objects"]["count"] == 12
    assert (out / "scenes-000000_stats.json").exists()
    make_backgrounds(tmp_path / "more", n=3)
    os.replace(tmp_path / "more" / "bg_02.jpg", bg / "bg_02.jpg")
    (out / "scenes-000000_stats.json").unlink()  # the shard is to redo: it would read other inputs
    r = _compose(bank, bg, out, cli_env)
    one_line_error(r, "other options", "inputs.backgrounds.count 2 -> 3")


@pytest.mark.parametrize("kind", ["tree", "index"])
def test_non_utf8_bank_names_never_reach_the_scene_json(tmp_path, cli_env, backgrounds, kind):
    bank = tmp_path / "bank"
    if kind == "tree":
        write_rgba(bank / "cat" / "a.png", (230, 20, 20), (40, 30))
        d = os.path.join(os.fsencode(bank), b"caf\xe9")  # a Latin-1 folder name
        os.makedirs(d)
        Image.fromarray(np.full((30, 30, 4), 255, np.uint8), "RGBA").save(os.path.join(d, b"x.png").decode(
            "utf-8", "surrogateescape"))
    else:
        bank = make_index_bank(bank, per_category=1)
        with open(bank / "index.jsonl", "ab") as f:
            f.write(b'{"id": "bad/1", "category": "caf\xe9", "path": "red_block/00000.png"}\n')
            f.write(b'{"id": "bad/2", "category": "lone \\udcff", "path": "red_block/00000.png"}\n')
    out = tmp_path / "out"
    r = _compose(bank, backgrounds, out, cli_env, n=30)
    assert r.returncode == 0, r.stderr
    for shard in out.glob("scenes-*.tar"):
        with tarfile.open(shard) as tf:
            for m in tf:
                if m.name.endswith(".json"):
                    tf.extractfile(m).read().decode("utf-8")  # strict UTF-8
                    assert b"\\udc" not in tf.extractfile(m).read()
    skipped = json.loads((out / "manifest.json").read_text())["totals"]["skipped_objects"]
    assert skipped["non_utf8"]["count"] == (1 if kind == "tree" else 2)
