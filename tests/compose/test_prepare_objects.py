"""prepare-objects: the cut-outs decoded once into raw pixels; compose reads them as the bank."""

from __future__ import annotations

import json
import subprocess
import tarfile

import numpy as np
import pytest
from PIL import Image

from synthgen.bank.reader import CutOut, ObjectBank
from synthgen.compose.config import ComposeParams
from synthgen.compose.prepare_objects import ObjectsJob, prepare_objects
from synthgen.compose.run import ComposeJob, run_compose
from synthgen.errors import Skip, UserError
from tests.helpers import make_backgrounds


def make_textured_bank(root, sides=(90, 150, 260, 330, 410), categories=("sheep-md-v0", "cup", "chair")):
    """A ``<category>/*.png`` tree of textured RGBA ellipses of several sizes (larger and smaller
    than a 224 canvas, with transparent margins), and three unusable files: an RGB PNG (no
    alpha), an all-transparent one and one that is not an image."""
    rng = np.random.default_rng(7)
    for ci, cat in enumerate(categories):
        (root / cat).mkdir(parents=True)
        for j, side in enumerate(sides):
            w, h = side, int(side * (0.6 + 0.2 * ((ci + j) % 3)))
            yy, xx = np.mgrid[0:h, 0:w]
            inside = ((xx - w / 2) / (w / 2.3)) ** 2 + ((yy - h / 2) / (h / 2.2)) ** 2 <= 1
            arr = np.zeros((h, w, 4), np.uint8)
            arr[..., :3] = rng.integers(0, 256, (h, w, 3))
            arr[..., 3] = np.where(inside, rng.integers(150, 256, (h, w)), rng.integers(0, 40, (h, w)))
            Image.fromarray(arr, "RGBA").save(root / cat / f"{j:02d}.png")
    Image.new("RGB", (50, 40), (9, 9, 9)).save(root / "cup" / "90_rgb.png")
    Image.new("RGBA", (50, 40), (9, 9, 9, 0)).save(root / "chair" / "91_clear.png")
    (root / "chair" / "92_broken.png").write_bytes(b"\x89PNG not really")
    return root


@pytest.fixture
def inputs(tmp_path):
    return make_textured_bank(tmp_path / "bank"), make_backgrounds(tmp_path / "bg", n=3)


def _prepare(bank, out, **kw):
    return prepare_objects(ObjectsJob(source=str(bank), out=str(out), **{"per_shard": 4, **kw}),
                           executor="serial", progress=False)


def _compose(objects, bg, out, n=24, **kw):
    job = ComposeJob(objects=str(objects), backgrounds=str(bg), out=str(out), num_samples=n, samples_per_shard=8,
                     params=ComposeParams(masks=True, seed=3), min_usable=0, **kw)
    return run_compose(job, executor="serial", progress=False)


def _shards(out) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("scenes-*.tar"))}


def _stats(out) -> list[dict]:
    return [{k: v for k, v in json.loads(p.read_text()).items() if k != "seconds"}
            for p in sorted(out.glob("scenes-*_stats.json"))]


def test_prepared_cutouts_are_the_banks_and_compose_writes_the_same_bytes(inputs, tmp_path):
    bank, bg = inputs
    m = _prepare(bank, tmp_path / "prep")
    assert m["objects"] == 18 and m["usable"] == 15 and len(m["shards"]) == 5
    src, prep = ObjectBank.open(bank, max_side=224), ObjectBank.open(tmp_path / "prep", max_side=224)
    assert [e.id for e in prep.entries] == [e.id for e in src.entries] and prep.categories == src.categories
    downscaled = 0
    for i in range(len(src)):
        a, b = src.load(i), prep.load(i)
        assert type(a) is type(b)
        if isinstance(a, Skip):
            assert (a.reason, a.detail) == (b.reason, b.detail)
            continue
        assert a.aspect == b.aspect and np.array_equal(a.rgba, b.rgba)
        assert a.premultiplied.tobytes() == b.premultiplied.tobytes()
        downscaled += max(a.rgba.shape[:2]) == 224
    assert downscaled >= 6  # the LANCZOS path is covered, not only cut-outs smaller than the canvas
    _compose(bank, bg, tmp_path / "from-bank")
    _compose(tmp_path / "prep", bg, tmp_path / "from-prepared")
    assert _shards(tmp_path / "from-prepared") == _shards(tmp_path / "from-bank")
    assert _stats(tmp_path / "from-prepared") == _stats(tmp_path / "from-bank")  # skipped objects too
    # implicit: prepared into OUT/objects-224 (part of the run's options), the same scenes
    _compose(bank, bg, tmp_path / "implicit", prepare_objects=True)
    assert _shards(tmp_path / "implicit") == _shards(tmp_path / "from-bank")
    run = json.loads((tmp_path / "implicit" / "run.json").read_text())
    assert run["prepared_objects"] == {"size": 224}
    assert json.loads((tmp_path / "implicit" / "objects-224" / "manifest.json").read_text())["usable"] == 15
    with pytest.raises(UserError, match="prepared_objects"):
        _compose(bank, bg, tmp_path / "implicit")  # a resume without it is another run


def test_unusable_cutouts_are_counted_as_the_bank_survey_counts_them(inputs, tmp_path):
    bank, _ = inputs
    m = _prepare(bank, tmp_path / "prep")
    want, got = ObjectBank.open(bank).survey(), ObjectBank.open(tmp_path / "prep").survey()
    assert (got.listed, got.checked, got.unusable, got.names) == (want.listed, want.checked, want.unusable, want.names)
    assert want.unusable == {"no_alpha": 1, "transparent": 1, "unreadable": 1}
    assert {r: v["count"] for r, v in m["unusable"].items()} == want.unusable
    assert m["unusable"]["no_alpha"]["examples"] == ["cup/90_rgb.png"]
    assert got.layout.startswith("prepared objects (224 px) of a folder of category sub-folders")


def test_a_larger_canvas_is_refused_a_smaller_one_downscales_again(inputs, tmp_path):
    bank, _ = inputs
    _prepare(bank, tmp_path / "prep")
    with pytest.raises(UserError, match=r"prepared at --size 224, smaller than the canvas 448.*prepare-objects"):
        ObjectBank.open(tmp_path / "prep", max_side=448)
    _prepare(bank, tmp_path / "prep256", size=256)
    src, prep = ObjectBank.open(bank, max_side=224), ObjectBank.open(tmp_path / "prep256", max_side=224)
    differ, larger = 0, 0
    for i in range(len(src)):
        a, b = src.load(i), prep.load(i)
        if isinstance(a, CutOut):
            assert a.rgba.shape == b.rgba.shape and a.aspect == b.aspect  # the same layout
            diff = np.abs(a.rgba.astype(int) - b.rgba.astype(int))
            assert diff.mean() < 12  # two LANCZOS steps instead of one: close, not the same bytes
            differ += bool(diff.any())
            extent = ObjectBank.open(bank, max_side=10_000).load(i).rgba.shape[:2]
            larger += max(extent) > 256
            assert diff.any() == (max(extent) > 256)  # the same bytes unless shrunk twice
    assert differ == larger > 0  # (what docs/fidelity.md says)


def test_resume_redoes_only_the_unfinished_shard_and_other_settings_are_refused(inputs, tmp_path):
    bank, _ = inputs
    out = tmp_path / "prep"
    _prepare(bank, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".rgba", ".jsonl")}
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.rgba")}
    # as a run killed while writing shard 2: its pixels half written, no stats, no manifest
    (out / "objects-000002_stats.json").unlink()
    (out / "manifest.json").unlink()
    (out / "objects-000002.rgba").write_bytes(before["objects-000002.rgba"][:1000])
    with pytest.raises(UserError, match="not finished"):
        ObjectBank.open(out)
    _prepare(bank, out)
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".rgba", ".jsonl")}
    assert after == before
    assert all((out / n).stat().st_mtime_ns == t for n, t in mtimes.items() if n != "objects-000002.rgba")
    ids = [json.loads(line)["id"] for line in (out / "objects.jsonl").read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 18
    with pytest.raises(UserError, match="max_side 224 -> 300"):
        _prepare(bank, out, size=300)
    with pytest.raises(UserError, match="overlap"):
        _prepare(bank, bank / "prepared")
    with pytest.raises(UserError, match="prepared bank already"):
        _prepare(out, tmp_path / "again")


def test_categories_map_renames_a_prepared_bank_as_its_source(inputs, tmp_path):
    bank, bg = inputs
    _prepare(bank, tmp_path / "prep")
    cmap = tmp_path / "map.yaml"
    cmap.write_text("sheep-md-v0: sheep\n")
    prep = ObjectBank.open(tmp_path / "prep", max_side=224, categories_map=str(cmap))
    assert prep.categories == ["chair", "cup", "sheep"]
    _compose(bank, bg, tmp_path / "a", n=16, categories_map=str(cmap))
    _compose(tmp_path / "prep", bg, tmp_path / "b", n=16, categories_map=str(cmap))
    assert _shards(tmp_path / "a") == _shards(tmp_path / "b")
    names = {o["category"] for s in _shards(tmp_path / "b").values() for o in _records(s)}
    assert "sheep" in names and "sheep-md-v0" not in names


def test_scene_generator_reads_a_prepared_bank_as_its_source(inputs, tmp_path):
    from synthgen.api import SceneGenerator

    bank, bg = inputs
    _prepare(bank, tmp_path / "prep")
    a, b = SceneGenerator(bank, bg, num_samples=8, seed=1), SceneGenerator(tmp_path / "prep", bg, num_samples=8, seed=1)
    for k in range(8):
        sa, sb = a[k], b[k]
        assert np.array_equal(sa.image, sb.image) and sa.record.to_json() == sb.record.to_json()


def _records(tar_bytes: bytes) -> list[dict]:
    import io

    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tf:
        return [o for m in tf if m.name.endswith(".json") for o in json.loads(tf.extractfile(m).read())["objects"]]


def test_the_command_line_prepares_and_compose_reads_it(inputs, tmp_path, cli_env, synthgen_cmd):
    bank, bg = inputs
    r = subprocess.run(synthgen_cmd + ["prepare-objects", str(bank), "--out", str(tmp_path / "prep"),
                                       "--per-shard", "5", "--executor", "serial"],
                       env=cli_env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "done: 15 of 18 cut-outs at 224 px in 4 shard(s)" in r.stdout
    assert "skipped cut-outs (no alpha): 1" in r.stderr
    r = subprocess.run(synthgen_cmd + ["compose", "--objects", str(tmp_path / "prep"), "--backgrounds", str(bg),
                                       "--out", str(tmp_path / "scenes"), "-n", "6", "--min-usable", "0",
                                       "--executor", "serial"], env=cli_env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "objects: prepared objects (224 px) of a folder of category sub-folders, 3 categories" in r.stdout
    r = subprocess.run(synthgen_cmd + ["compose", "--objects", str(tmp_path / "prep"), "--backgrounds", str(bg),
                                       "--out", str(tmp_path / "big"), "-n", "6", "--size", "448", "--grid", "32"],
                       env=cli_env, capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "prepared at --size 224, smaller than the canvas 448" in r.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_ray_workers_prepare_the_same_bytes(inputs, tmp_path):
    bank, _ = inputs
    _prepare(bank, tmp_path / "serial")
    prepare_objects(ObjectsJob(source=str(bank), out=str(tmp_path / "ray"), per_shard=4), workers=2, executor="ray",
                    progress=False)
    for f in (tmp_path / "serial").iterdir():
        if f.suffix in (".rgba", ".jsonl"):
            assert (tmp_path / "ray" / f.name).read_bytes() == f.read_bytes(), f.name
