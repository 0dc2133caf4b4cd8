"""prepare-backgrounds: decode once, at twice the canvas, into shards compose reads."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from synthgen.compose.backgrounds import list_backgrounds
from synthgen.compose.prepare import PrepareJob, prepare_backgrounds
from synthgen.errors import UserError
from tests.helpers import make_backgrounds


def _odd_backgrounds(root):
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (600, 900, 3), dtype=np.uint8)).save(root / "wide.jpg", quality=90)
    Image.fromarray(rng.integers(0, 255, (300, 200), dtype=np.uint8), "L").save(root / "grey_small.png")
    Image.new("CMYK", (500, 700), (10, 200, 30, 0)).save(root / "cmyk.jpg")
    rot = Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: a 640x480 file that is 480x640 upright
    rot.save(root / "rotated.jpg", exif=exif)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    Image.new("RGB", (20, 20)).save(root / "tiny.png")
    return root


def _members(folder):
    out = {}
    for shard in sorted(folder.glob("backgrounds-*.tar")):
        with tarfile.open(shard) as tf:
            for m in tf:
                out[m.name] = tf.extractfile(m).read()
    return out


def test_prepared_images_keep_aspect_shorter_side_at_size_and_skips_are_counted(tmp_path):
    src = _odd_backgrounds(tmp_path / "bg")
    out = tmp_path / "prep"
    m = prepare_backgrounds(PrepareJob(source=str(src), out=str(out), size=448, per_shard=2), executor="serial",
                            progress=False)
    assert m["backgrounds"] == 4 and len(m["shards"]) == 3  # 6 listed, 2 per shard
    assert m["skipped"]["unreadable"]["examples"] == [str(src / "broken.jpg")]
    assert m["skipped"]["too_small"]["examples"] == [str(src / "tiny.png")]
    members = _members(out)
    sizes = {}
    for name, data in members.items():
        if name.endswith(".json"):
            meta = json.loads(data)
            with Image.open(__import__("io").BytesIO(members[name[:-5] + ".jpg"])) as im:
                sizes[meta["source"].rsplit("/", 1)[-1]] = (im.size, im.mode, (meta["width"], meta["height"]))
    assert sizes["wide.jpg"][0] == (672, 448)              # shrunk, aspect kept
    assert sizes["grey_small.png"][0] == (200, 300)        # never enlarged
    assert sizes["grey_small.png"][1] == "RGB" and sizes["cmyk.jpg"][1] == "RGB"
    assert sizes["rotated.jpg"][0] == (448, 597)           # EXIF applied: upright
    assert sizes["cmyk.jpg"][0] == (448, 627)
    # compose reads the folder like any background shards
    assert len(list_backgrounds(str(out)).items) == 4


def test_prepare_resumes_and_refuses_other_settings(tmp_path):
    src = make_backgrounds(tmp_path / "bg", n=5, size=(800, 600))
    out = tmp_path / "prep"
    job = PrepareJob(source=str(src), out=str(out), size=300, per_shard=2)
    prepare_backgrounds(job, executor="serial", progress=False)
    before = {p.name: p.read_bytes() for p in out.glob("backgrounds-*.tar")}
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("backgrounds-*.tar")}
    (out / "backgrounds-000001_stats.json").unlink()  # that shard is redone, the others are kept
    prepare_backgrounds(job, executor="serial", progress=False)
    after = {p.name: p.read_bytes() for p in out.glob("backgrounds-*.tar")}
    assert after == before
    assert all(out.joinpath(n).stat().st_mtime_ns == t for n, t in mtimes.items() if n != "backgrounds-000001.tar")
    with pytest.raises(UserError, match="size 300 -> 448"):
        prepare_backgrounds(PrepareJob(source=str(src), out=str(out), size=448, per_shard=2), executor="serial",
                            progress=False)
    with pytest.raises(UserError, match="overlap"):
        prepare_backgrounds(PrepareJob(source=str(src), out=str(src / "prep")), executor="serial", progress=False)


def test_compose_prepare_backgrounds_is_cached_inside_out_and_reused(tmp_path, bank, cli_env, synthgen_cmd):
    import subprocess

    src = make_backgrounds(tmp_path / "bg", n=3, size=(1200, 900))
    out = tmp_path / "shards"
    args = synthgen_cmd + ["compose", "--objects", str(bank), "--backgrounds", str(src), "--out", str(out), "-n", "6",
                           "--executor", "serial", "--prepare-backgrounds"]
    r = subprocess.run(args, env=cli_env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    cache = out / "backgrounds-448"
    assert (cache / "manifest.json").exists()
    stamp = {p.name: p.stat().st_mtime_ns for p in cache.glob("backgrounds-*")}
    recs = []
    with tarfile.open(out / "scenes-000000.tar") as tf:
        recs = [json.loads(tf.extractfile(m).read()) for m in tf if m.name.endswith(".json")]
    assert all(str(cache) in r["background"]["source"] for r in recs)
    run = json.loads((out / "run.json").read_text())
    assert run["backgrounds"] == str(src) and run["prepared_backgrounds"] == {"size": 448}
    r = subprocess.run(args, env=cli_env, capture_output=True, text=True)  # the next run reuses it
    assert r.returncode == 0, r.stderr
    assert {p.name: p.stat().st_mtime_ns for p in cache.glob("backgrounds-*")} == stamp  # not prepared again
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("shards.")]  # nothing written beside --out


@pytest.mark.slow
def test_prepared_shards_are_identical_whatever_the_number_of_ray_workers(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    src = make_backgrounds(tmp_path / "bg", n=6, size=(640, 480))
    prepare_backgrounds(PrepareJob(source=str(src), out=str(tmp_path / "a"), size=256, per_shard=2),
                        executor="serial", progress=False)
    prepare_backgrounds(PrepareJob(source=str(src), out=str(tmp_path / "b"), size=256, per_shard=2),
                        workers=2, progress=False)
    assert _members(tmp_path / "a") == _members(tmp_path / "b")
