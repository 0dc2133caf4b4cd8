"""Datasets that grow: ``compose --extend``, the per-shard scene index, COCO instance masks.

Every check compares real compose runs (real tars) with each other or with what the tars hold,
never with values taken from the code under test.
"""

from __future__ import annotations

import io
import json
import shutil
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthgen.compose.config import ComposeParams, LayoutParams
from synthgen.compose.run import ComposeJob, run_compose
from synthgen.errors import UserError


def _job(bank, backgrounds, out, n, per=4, masks=True, **kw) -> ComposeJob:
    return ComposeJob(objects=str(bank), backgrounds=str(backgrounds), out=str(out), num_samples=n,
                      samples_per_shard=per, params=ComposeParams(masks=masks, **kw))


def _compose(bank, backgrounds, out, n, per=4, extend=False, **kw) -> dict:
    return run_compose(_job(bank, backgrounds, out, n, per, **kw), executor="serial", progress=False,
                       extend=extend)


def _data(folder: Path) -> dict[str, bytes]:
    """The dataset's bytes: shards and their indexes."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())
            if p.name.endswith(".tar") or p.name.endswith("_index.parquet")}


def _stats(folder: Path) -> dict[str, dict]:
    """Each shard's stats marker less its timing."""
    out = {}
    for p in sorted(folder.glob("scenes-*_stats.json")):
        d = json.loads(p.read_text())
        d.pop("seconds")
        out[p.name] = d
    return out


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.name.startswith("scenes-")}


def _members(tar: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(tar) as tf:
        return [(m.name, tf.extractfile(m).read()) for m in tf if m.isfile()]


def _records(folder: Path) -> list[tuple[str, dict, bool]]:
    """(shard name, scene json, has a mask) of every scene, read from the tars with tarfile."""
    out = []
    for tar in sorted(folder.glob("scenes-*.tar")):
        members = dict(_members(tar))
        for name in sorted(members):
            if name.endswith(".json"):
                key = name[:-len(".json")]
                out.append((tar.name, json.loads(members[name]), f"{key}.mask.png" in members))
    return out


# --- compose --extend ------------------------------------------------------------------------

def test_extend_gives_the_bytes_of_a_fresh_run_and_keeps_done_shards(bank, backgrounds, tmp_path):
    ref = tmp_path / "ref"
    _compose(bank, backgrounds, ref, 24)
    out = tmp_path / "out"
    _compose(bank, backgrounds, out, 10)   # shards 0, 1 full; shard 2 holds 2 of 4 scenes
    before = _mtimes(out)
    old_last = (out / "scenes-000002.tar").read_bytes()
    time.sleep(0.01)
    m = _compose(bank, backgrounds, out, 22, extend=True)   # shard 5 now holds 2 of 4
    after = _mtimes(out)
    for name in ("scenes-000000.tar", "scenes-000001.tar", "scenes-000000_index.parquet",
                 "scenes-000001_index.parquet", "scenes-000000_stats.json", "scenes-000001_stats.json"):
        assert after[name] == before[name], f"{name} was rewritten"
    for name in ("scenes-000002.tar", "scenes-000002_index.parquet", "scenes-000002_stats.json"):
        assert after[name] != before[name], f"the partial {name} was not rewritten"
    assert (out / "scenes-000002.tar").read_bytes() != old_last
    got, want = _data(out), _data(ref)
    assert m["totals"]["samples"] == 22 and len(m["shards"]) == 6
    assert {k: got[k] for k in got if k < "scenes-000005"} == {k: want[k] for k in want if k < "scenes-000005"}
    assert got["scenes-000005.tar"] != want["scenes-000005.tar"]  # partial at 22, full at 24

    m = _compose(bank, backgrounds, out, 24, extend=True)
    assert _data(out) == _data(ref)
    assert _stats(out) == _stats(ref)
    fresh = json.loads((ref / "manifest.json").read_text())
    assert m["totals"] == {**fresh["totals"], "shard_seconds": m["totals"]["shard_seconds"]}
    assert m["shards"] == fresh["shards"] and "growth" not in fresh
    assert m["growth"] == [{"num_samples": 10}, {"num_samples": 22, "rewritten": ["scenes-000002.tar"]},
                           {"num_samples": 24, "rewritten": ["scenes-000005.tar"]}]
    run = json.loads((out / "run.json").read_text())
    assert run["num_samples"] == 24 and run["growth"] == m["growth"]
    assert json.loads((out / "manifest.json").read_text())["growth"] == m["growth"]
    # the same command again is a resume with nothing to do
    before = _mtimes(out)
    _compose(bank, backgrounds, out, 24, extend=True)
    _compose(bank, backgrounds, out, 24)
    assert _mtimes(out) == before


def test_extend_from_a_full_last_shard_rewrites_nothing(bank, backgrounds, tmp_path):
    out = tmp_path / "out"
    _compose(bank, backgrounds, out, 8)
    before = _mtimes(out)
    m = _compose(bank, backgrounds, out, 13, extend=True)
    after = _mtimes(out)
    assert {k: after[k] for k in before} == before
    assert m["growth"] == [{"num_samples": 8}, {"num_samples": 13, "rewritten": []}]
    keys = [rec["key"] for _, rec, _ in _records(out)]
    assert keys == [f"{k:09d}" for k in range(13)]


def test_extend_on_a_new_folder_is_a_plain_run(bank, backgrounds, tmp_path):
    _compose(bank, backgrounds, tmp_path / "a", 6)
    m = _compose(bank, backgrounds, tmp_path / "b", 6, extend=True)
    assert "growth" not in m and _data(tmp_path / "a") == _data(tmp_path / "b")
    assert (tmp_path / "a" / "run.json").read_bytes() == (tmp_path / "b" / "run.json").read_bytes()


def test_other_num_samples_without_extend_shrinking_and_other_options_are_refused(
        bank, backgrounds, tmp_path, cli_env, synthgen_cmd):
    out = tmp_path / "out"
    base = ["compose", "--objects", str(bank), "--backgrounds", str(backgrounds), "--out", str(out),
            "--samples-per-shard", "4", "--executor", "serial"]
    r = subprocess.run(synthgen_cmd + base + ["-n", "6"], env=cli_env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    times = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    cases = [(["-n", "10"], ["--extend", "6 -> 10"]),                       # growth needs the flag
             (["-n", "3"], ["never shrunk", "6 -> 3"]),
             (["-n", "3", "--extend"], ["never shrunk"]),
             (["-n", "10", "--extend", "--seed", "1"], ["other options", "seed 0 -> 1"]),
             (["-n", "10", "--extend", "--samples-per-shard", "5"], ["other options", "samples_per_shard 4 -> 5"]),
             (["-n", "10", "--extend", "--masks"], ["other options", "masks False -> True"])]
    for extra, needles in cases:
        r = subprocess.run(synthgen_cmd + base + extra, env=cli_env, capture_output=True, text=True)
        assert r.returncode == 2, (extra, r.stderr)
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, (extra, r.stderr)
        for needle in needles:
            assert needle in r.stderr, (extra, r.stderr)
        # a refused run leaves the folder as it was (manifest, markers, run.json)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == files, extra
        assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == times, extra
    r = subprocess.run(synthgen_cmd + base + ["-n", "10", "--extend"], env=cli_env, capture_output=True, text=True)
    assert r.returncode == 0 and "10 scenes" in r.stderr, r.stderr
    r = subprocess.run(synthgen_cmd + ["compose", "--help"], env=cli_env, capture_output=True, text=True)
    assert "--extend" in r.stdout


def test_a_kill_inside_the_growth_steps_leaves_a_folder_either_command_finishes(bank, backgrounds, tmp_path,
                                                                                monkeypatch):
    import synthgen.compose.run as run_mod

    for n in (10, 18):
        _compose(bank, backgrounds, tmp_path / f"fresh{n}", n)
    out = tmp_path / "out"
    _compose(bank, backgrounds, out, 10)
    real = run_mod.atomic_write_json

    def killed_at_run_json(path, obj):
        if Path(str(path)).name == "run.json":
            raise KeyboardInterrupt  # the process dies before run.json records the growth
        real(path, obj)

    monkeypatch.setattr(run_mod, "atomic_write_json", killed_at_run_json)
    with pytest.raises(KeyboardInterrupt):
        _compose(bank, backgrounds, out, 18, extend=True)
    monkeypatch.setattr(run_mod, "atomic_write_json", real)
    assert not (out / "manifest.json").exists() and not (out / "scenes-000002_stats.json").exists()
    assert json.loads((out / "run.json").read_text())["num_samples"] == 10
    back = tmp_path / "back"
    shutil.copytree(out, back)
    # the old command finishes the old dataset, the new one the grown dataset
    _compose(bank, backgrounds, back, 10)
    assert _data(back) == _data(tmp_path / "fresh10") and (back / "manifest.json").exists()
    _compose(bank, backgrounds, out, 18, extend=True)
    assert _data(out) == _data(tmp_path / "fresh18")
    assert json.loads((out / "manifest.json").read_text())["growth"][-1] == {
        "num_samples": 18, "rewritten": ["scenes-000002.tar"]}


@pytest.mark.slow
def test_kill_9_during_extend_then_resume_gives_the_fresh_dataset(bank, backgrounds, tmp_path, cli_env,
                                                                   synthgen_cmd):
    args = ["compose", "--objects", str(bank), "--backgrounds", str(backgrounds),
            "--samples-per-shard", "12", "--masks", "--executor", "serial"]
    ref = tmp_path / "ref"
    subprocess.run(synthgen_cmd + args + ["-n", "240", "--out", str(ref)], env=cli_env, check=True,
                   capture_output=True)
    out = tmp_path / "out"
    subprocess.run(synthgen_cmd + args + ["-n", "30", "--out", str(out)], env=cli_env, check=True,
                   capture_output=True)   # shards 0, 1 full, shard 2 holds 6 of 12
    kept = {n: t for n, t in _mtimes(out).items() if n < "scenes-000002"}
    grow = synthgen_cmd + args + ["-n", "240", "--extend", "--out", str(out)]
    proc = subprocess.Popen(grow, env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("*_stats.json"))) < 6:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(out.glob("*_stats.json")))
    assert 6 <= done < 20, "the extension must be killed in the middle"
    assert not (out / "manifest.json").exists()
    assert json.loads((out / "run.json").read_text())["num_samples"] == 240
    subprocess.run(grow, env=cli_env, check=True, capture_output=True)
    assert _data(out) == _data(ref) and _stats(out) == _stats(ref)
    assert {n: t for n, t in _mtimes(out).items() if n < "scenes-000002"} == kept
    assert not list(out.glob(".*tmp*"))
    keys = [rec["key"] for _, rec, _ in _records(out)]
    assert keys == [f"{k:09d}" for k in range(240)]


@pytest.mark.slow
def test_extend_with_two_ray_workers_gives_the_serial_bytes(bank, backgrounds, tmp_path):
    ref = tmp_path / "ref"
    _compose(bank, backgrounds, ref, 26, per=3)
    out = tmp_path / "out"
    _compose(bank, backgrounds, out, 7, per=3)
    run_compose(_job(bank, backgrounds, out, 26, per=3), workers=2, progress=False, extend=True)
    assert _data(out) == _data(ref) and len(_data(out)) == 2 * 9


# --- the scene index -------------------------------------------------------------------------

def test_index_rows_are_the_records_in_the_tars(bank, backgrounds, tmp_path):
    from synthgen.compose.index import read_index

    out = tmp_path / "out"
    _compose(bank, backgrounds, out, 10, same_category_p=0.9, absolute_referral_p=0.9)
    assert sorted(p.name for p in out.glob("*_index.parquet")) == [
        f"scenes-{s:06d}_index.parquet" for s in range(3)]
    rows = read_index(str(out)).to_pylist()
    recs = _records(out)
    assert len(rows) == len(recs) == 10
    kinds = set()
    for row, (shard, rec, has_mask) in zip(rows, recs):
        objs = rec["objects"]
        t = objs[rec["target"]]
        assert (row["key"], row["index"], row["shard"], row["seed"]) == (rec["key"], int(rec["key"]), shard, rec["seed"])
        assert (row["width"], row["height"], row["grid"]) == (rec["width"], rec["height"], rec["grid"])
        assert row["background"] == rec["background"]["source"]
        assert row["num_objects"] == len(objs) and row["mask"] is has_mask is True
        assert row["categories"] == [o["category"] for o in objs]
        assert row["category_ids"] == [o["category_id"] for o in objs]
        assert row["names"] == [o["name"] for o in objs]
        assert row["object_ids"] == [o["object_id"] for o in objs]
        assert row["boxes"] == [o["box"] for o in objs] and row["cells"] == [o["cells"] for o in objs]
        assert row["visible"] == [o["visible"] for o in objs]
        assert row["referrals"] == [o["referral"] for o in objs]
        names = [o["name"] for o in objs]
        assert row["referral_kinds"] == ["plain" if o["referral"] == o["name"] else
                                         "relative" if names.count(o["name"]) > 1 else "absolute" for o in objs]
        assert (row["target"], row["target_category"], row["target_name"], row["target_referral"],
                row["target_box"], row["target_visible"]) == (
            rec["target"], t["category"], t["name"], t["referral"], t["box"], t["visible"])
        assert row["target_referral_kind"] == row["referral_kinds"][rec["target"]]
        assert (row["prompt"], row["answer"]) == (rec["prompt"], rec["answer"])
        kinds.update(row["referral_kinds"])
    assert kinds == {"plain", "relative", "absolute"}  # every kind was composed
    # a selection of columns; without --masks the mask column says so
    part = read_index(str(out), columns=["key", "num_objects"])
    assert part.column_names == ["key", "num_objects"] and part.num_rows == 10
    _compose(bank, backgrounds, tmp_path / "nomask", 3, masks=False)
    assert read_index(str(tmp_path / "nomask")).column("mask").to_pylist() == [False] * 3


def test_the_index_follows_the_shard_and_precedes_its_marker_through_a_resume(bank, backgrounds, tmp_path,
                                                                             monkeypatch):
    import synthgen.compose.run as run_mod
    from synthgen.compose.index import read_index

    ref = tmp_path / "ref"
    _compose(bank, backgrounds, ref, 12)
    out = tmp_path / "out"
    real = run_mod.atomic_write_json

    def no_marker_for_shard_1(path, obj):
        if Path(str(path)).name == "scenes-000001_stats.json":
            raise OSError("killed")  # the worker dies after the shard and its index
        real(path, obj)

    monkeypatch.setattr(run_mod, "atomic_write_json", no_marker_for_shard_1)
    with pytest.raises(UserError, match="1 of 3 shard"):
        _compose(bank, backgrounds, out, 12)
    monkeypatch.setattr(run_mod, "atomic_write_json", real)
    # shard 1 was written whole with its index, but without a marker it is not part of the dataset
    assert (out / "scenes-000001.tar").exists() and (out / "scenes-000001_index.parquet").exists()
    assert not (out / "scenes-000001_stats.json").exists()
    assert read_index(str(out)).column("shard").to_pylist() == ["scenes-000000.tar"] * 4 + ["scenes-000002.tar"] * 4
    (out / "scenes-000002_index.parquet").unlink()   # and a done shard's index lost: rebuilt from its tar
    _compose(bank, backgrounds, out, 12)
    keys = read_index(str(out)).column("key").to_pylist()
    assert keys == [f"{k:09d}" for k in range(12)]
    assert read_index(str(out)).equals(read_index(str(ref)))
    assert {k: v for k, v in _data(out).items() if k != "scenes-000002_index.parquet"} == \
        {k: v for k, v in _data(ref).items() if k != "scenes-000002_index.parquet"}


def test_shards_without_an_index_file_are_indexed_from_their_tars(bank, backgrounds, tmp_path):
    from synthgen.compose.index import read_index

    out = tmp_path / "out"
    _compose(bank, backgrounds, out, 9)
    with_files = read_index(str(out))
    for p in out.glob("*_index.parquet"):
        p.unlink()  # as a folder composed by an earlier synthgen
    assert read_index(str(out)).equals(with_files)


def test_read_index_errors_are_one_line(bank, backgrounds, tmp_path):
    from synthgen.compose.index import read_index

    with pytest.raises(UserError, match="not found"):
        read_index(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no composed shards"):
        read_index(str(tmp_path / "empty"))
    out = tmp_path / "out"
    _compose(bank, backgrounds, out, 4)
    with pytest.raises(UserError, match="unknown index column.*nope"):
        read_index(str(out), columns=["key", "nope"])
    (out / "scenes-000000_index.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(UserError, match="cannot read the scene index"):
        read_index(str(out))


# --- export-coco: instance masks ----------------------------------------------------------------

def _rle_decode(seg: dict) -> np.ndarray:
    """COCO RLE to a mask, written from the format's description (not from synthgen): counts are
    run lengths over the pixels in column-major order, starting with a run of 0s; the string form
    is pycocotools' (5-bit groups, least significant first, 0x20 = more groups follow, 0x10 of the
    last group = negative, +48; from the third count on, the count two before is added)."""
    h, w = seg["size"]
    counts = seg["counts"]
    if isinstance(counts, str):
        vals, p = [], 0
        while p < len(counts):
            x = k = 0
            while True:
                c = ord(counts[p]) - 48
                x |= (c & 0x1F) << (5 * k)
                p += 1
                k += 1
                if not c & 0x20:
                    if c & 0x10:
                        x |= -1 << (5 * k)
                    break
            if len(vals) > 2:
                x += vals[-2]
            vals.append(x)
        counts = vals
    assert sum(counts) == h * w and all(c >= 0 for c in counts)
    flat = np.concatenate([np.full(c, i % 2, dtype=np.uint8) for i, c in enumerate(counts)])
    return flat.reshape((w, h)).T  # column-major


def _check_masks(coco: dict, folder: Path) -> int:
    """Every annotation's RLE against the scene's mask.png (read from the tar); returns how
    many objects were hidden entirely."""
    masks, records = {}, {}
    for tar in sorted(folder.glob("scenes-*.tar")):
        for name, data in _members(tar):
            key, _, ext = name.partition(".")
            if ext == "mask.png":
                masks[key] = np.asarray(Image.open(io.BytesIO(data)))
            elif ext == "json":
                records[key] = json.loads(data)
    try:
        from pycocotools import mask as coco_mask
    except ImportError:
        coco_mask = None
    by_image: dict[int, list[dict]] = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    hidden = 0
    for img in coco["images"]:
        owner = masks[img["synthgen_key"]]
        anns = by_image[img["id"]]
        assert len(anns) == len(records[img["synthgen_key"]]["objects"])
        for i, a in enumerate(anns):   # annotations in paste order: object i has mask value i+1
            want = owner == i + 1
            seg = a["segmentation"]
            assert seg["size"] == [img["height"], img["width"]] == list(owner.shape)
            assert np.array_equal(_rle_decode(seg), want)
            assert a["area"] == int(want.sum())
            if coco_mask is not None:   # pycocotools, where installed, reads the same mask
                rle = {"size": seg["size"], "counts": seg["counts"].encode()}
                assert np.array_equal(coco_mask.decode(rle).astype(bool), want)
                assert int(coco_mask.area(rle)) == a["area"]
            hidden += a["area"] == 0
    return hidden


def test_export_coco_writes_instance_masks_and_their_area(bank, backgrounds, tmp_path):
    from synthgen.compose.export import export_coco

    out = tmp_path / "out"
    _compose(bank, backgrounds, out, 10, same_category_p=0.5)
    coco = export_coco(str(out), tmp_path / "coco")
    assert len(coco["images"]) == 10 and len(coco["annotations"]) > 10
    assert _check_masks(coco, out) == 0
    assert any(a["area"] < a["bbox"][2] * a["bbox"][3] for a in coco["annotations"])  # not the box
    written = json.loads((tmp_path / "coco" / "instances.json").read_text())
    assert written["annotations"] == coco["annotations"]
    # without masks: no segmentation, the box's area as before
    _compose(bank, backgrounds, tmp_path / "plain", 4, masks=False)
    plain = export_coco(str(tmp_path / "plain"), tmp_path / "coco2")
    assert all("segmentation" not in a and a["area"] == a["bbox"][2] * a["bbox"][3] for a in plain["annotations"])


def test_export_coco_gives_a_hidden_object_an_empty_mask(bank, backgrounds, tmp_path):
    from synthgen.compose.export import export_coco

    out = tmp_path / "out"
    # two large objects, any overlap allowed: a later one sometimes covers an earlier one entirely
    _compose(bank, backgrounds, out, 10, layout=LayoutParams(a_max=2, fixed_count=True, s_min=(0.5, 0.5),
                                                           s_max=(1, 1), o_max=1.0, min_visible=0.0))
    hidden = [(r["key"], i) for _, r, _ in _records(out) for i, o in enumerate(r["objects"]) if o["visible"] == 0]
    assert hidden, "the layout must hide an object entirely"
    coco = export_coco(str(out), tmp_path / "coco")
    assert _check_masks(coco, out) == len(hidden)
    for a in coco["annotations"]:
        if a["area"] == 0:
            assert a["visible"] == 0 and a["bbox"][2] > 0 and a["segmentation"]["counts"]
            assert _rle_decode(a["segmentation"]).sum() == 0


def test_export_coco_skips_a_scene_with_an_unreadable_mask(bank, backgrounds, tmp_path):
    from synthgen.compose.export import export_coco
    from synthgen.shards import ShardWriter

    out = tmp_path / "out"
    _compose(bank, backgrounds, out, 3, per=3)
    members = _members(out / "scenes-000000.tar")
    bad = tmp_path / "bad" / "scenes-000000.tar"
    bad.parent.mkdir()
    with ShardWriter(bad) as w:
        for key in sorted({n.partition(".")[0] for n, _ in members}):
            ms = {n.partition(".")[2]: d for n, d in members if n.partition(".")[0] == key}
            if key == "000000001":
                ms["mask.png"] = b"not a png"
            w.write(key, ms)
    coco = export_coco(str(bad), tmp_path / "coco")
    assert [i["synthgen_key"] for i in coco["images"]] == ["000000000", "000000002"]
    assert coco["info"]["skipped_scenes"]["bad_mask"]["count"] == 1
