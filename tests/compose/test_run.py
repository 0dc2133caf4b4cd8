"""``synthgen compose`` end to end: shards, determinism over workers, resume, errors."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import webdataset as wds

from synthgen.compose.config import ComposeParams
from synthgen.compose.run import ComposeJob, run_compose
from synthgen.errors import UserError
from synthgen.schema import LOCK_FILE


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("scenes-*.tar"))}


def _job(bank, backgrounds, out, n=24, per=6, **kw) -> ComposeJob:
    return ComposeJob(objects=str(bank), backgrounds=str(backgrounds), out=str(out), num_samples=n,
                      samples_per_shard=per, params=ComposeParams(masks=True, **kw))


@pytest.mark.slow
def test_identical_bytes_whatever_the_number_of_ray_workers(bank, backgrounds, tmp_path):
    run_compose(_job(bank, backgrounds, tmp_path / "w1"), workers=1, progress=False)
    run_compose(_job(bank, backgrounds, tmp_path / "w2"), workers=2, progress=False)
    run_compose(_job(bank, backgrounds, tmp_path / "ser"), executor="serial", progress=False)
    a, b, c = _files(tmp_path / "w1"), _files(tmp_path / "w2"), _files(tmp_path / "ser")
    assert len(a) == 4 and a == b == c


def test_shards_are_webdataset_with_the_scene_schema(bank, backgrounds, tmp_path):
    out = tmp_path / "out"
    manifest = run_compose(_job(bank, backgrounds, out, n=10, per=4), executor="serial", progress=False)
    assert manifest["shards"] == ["scenes-000000.tar", "scenes-000001.tar", "scenes-000002.tar"]
    assert manifest["totals"]["samples"] == 10 and manifest["schema"] == "synthgen.scene/1"
    assert manifest["options"]["params"]["layout"]["o_max"] == 0.5
    ds = wds.WebDataset([str(p) for p in sorted(out.glob("scenes-*.tar"))], shardshuffle=False)
    keys = []
    for s in ds.decode("pil"):
        rec = s["json"]
        keys.append(s["__key__"])
        assert rec["key"] == s["__key__"] and s["jpg"].size == (224, 224)
        assert s["mask.png"].size == (224, 224)
    assert keys == [f"{k:09d}" for k in range(10)]
    st = json.loads((out / "scenes-000002_stats.json").read_text())
    assert st["samples"] == 2 and sum(st["objects_per_scene"].values()) == 2
    assert {"dropped_objects", "skipped_inputs", "seconds"} <= set(st)


def test_rerun_skips_done_shards_and_rejects_other_options(bank, backgrounds, tmp_path):
    out = tmp_path / "out"
    run_compose(_job(bank, backgrounds, out, n=12), executor="serial", progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("scenes-*")}
    (out / "scenes-000001_stats.json").unlink()  # shard 1 becomes "not done"
    run_compose(_job(bank, backgrounds, out, n=12), executor="serial", progress=False)
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("scenes-*")}
    assert after["scenes-000000.tar"] == before["scenes-000000.tar"]
    assert after["scenes-000001.tar"] != before["scenes-000001.tar"]
    with pytest.raises(UserError, match="other options"):
        run_compose(_job(bank, backgrounds, out, n=12, seed=1), executor="serial", progress=False)


def test_a_failed_shard_is_reported_and_the_others_finish(bank, backgrounds, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "scenes-000001.tar").mkdir()  # the final rename of shard 1 cannot succeed
    with pytest.raises(UserError, match=r"1 of 3 shard\(s\) failed \(scenes-000001.tar"):
        run_compose(_job(bank, backgrounds, out, n=18), executor="serial", progress=False)
    assert (out / "scenes-000000_stats.json").exists() and (out / "scenes-000002_stats.json").exists()
    assert not (out / "scenes-000001_stats.json").exists() and not (out / "manifest.json").exists()
    assert not list(out.glob(".*tmp*"))  # the half-written shard was removed


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_uninterrupted_dataset(bank, backgrounds, tmp_path, cli_env, synthgen_cmd):
    args = ["compose", "--objects", str(bank), "--backgrounds", str(backgrounds), "-n", "240",
            "--samples-per-shard", "12", "--masks", "--executor", "serial"]
    ref = tmp_path / "ref"
    subprocess.run(synthgen_cmd + args + ["--out", str(ref)], env=cli_env, check=True, capture_output=True)
    out = tmp_path / "out"
    proc = subprocess.Popen(synthgen_cmd + args + ["--out", str(out)], env=cli_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("*_stats.json"))) < 3:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(out.glob("*_stats.json")))
    assert 3 <= done < 20, "the run must be killed in the middle"
    assert not (out / "manifest.json").exists()
    # every visible shard is complete: no half-written scenes-*.tar under its final name
    assert len(list(out.glob("scenes-*.tar"))) in (done, done + 1)
    subprocess.run(synthgen_cmd + args + ["--out", str(out)], env=cli_env, check=True, capture_output=True)
    assert _files(out) == _files(ref)
    assert not list(out.glob(".*tmp*"))
    keys = [s["__key__"] for s in wds.WebDataset([str(p) for p in sorted(out.glob("scenes-*.tar"))],
                                                 shardshuffle=False)]
    assert len(keys) == len(set(keys)) == 240


BAD = [
    (["--a-max", "0"], "--a-max"),
    (["--s-min", "0.5,0.2,0.1", "--s-max", "0.4,1,1"], "larger than --s-max"),
    (["--a-max", "4"], "at least a_max=4"),
    (["--o-max", "1.5"], "--o-max"),
    (["--size", "225"], "not divisible by --grid"),
    (["-n", "0"], "--num-samples"),
    (["--s-min", "a,b"], "comma-separated numbers"),
    (["--background-fit", "stretch"], "squash or crop"),
    (["--seed", "-1"], "--seed must be a non-negative integer"),
    (["--workers", "0"], "--workers must be >= 1"),
    (["--executor", "foo"], "auto, ray, serial"),
    (["--max-aspect-error", "nan"], "--max-aspect-error"),
    (["--backgrounds", "{a,b"], "bad pattern"),
    (["--backgrounds", ""], "--backgrounds is empty"),
]


@pytest.mark.parametrize("extra,needle", BAD)
def test_bad_parameters_give_one_line_errors_before_any_work(bank, backgrounds, tmp_path, cli_env,
                                                             synthgen_cmd, extra, needle):
    out = tmp_path / "out"
    base = ["compose", "--objects", str(bank), "--backgrounds", str(backgrounds), "--out", str(out),
            "-n", "5", "--executor", "serial"]
    r = subprocess.run(synthgen_cmd + base + extra, env=cli_env, capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def test_missing_paths_give_one_line_errors(tmp_path, bank, cli_env, synthgen_cmd):
    for objects, bgs, needle in ((tmp_path / "nope", tmp_path, "object bank not found"),
                                 (bank, tmp_path / "nobg", "backgrounds not found")):
        r = subprocess.run(synthgen_cmd + ["compose", "--objects", str(objects), "--backgrounds", str(bgs),
                                           "--out", str(tmp_path / "o"), "-n", "3"],
                           env=cli_env, capture_output=True, text=True)
        assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr


def test_preview_and_stats_commands(bank, backgrounds, tmp_path, cli_env, synthgen_cmd):
    out = tmp_path / "out"
    run_compose(_job(bank, backgrounds, out, n=8, per=8), executor="serial", progress=False)
    png = tmp_path / "p.png"
    r = subprocess.run(synthgen_cmd + ["preview", str(out), "-o", str(png), "-n", "4"], env=cli_env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    from PIL import Image

    sheet = Image.open(png)
    assert sheet.width > 2 * 224 and sheet.height > 2 * 224
    plot = tmp_path / "s.png"
    r = subprocess.run(synthgen_cmd + ["stats", str(out), "--out", str(plot)], env=cli_env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "8 scenes" in r.stdout and plot.stat().st_size > 1000
    bank_png = tmp_path / "bank.png"
    r = subprocess.run(synthgen_cmd + ["preview", str(bank), "-o", str(bank_png)], env=cli_env,
                       capture_output=True, text=True)
    assert r.returncode == 0 and "12 objects" in r.stdout, r.stderr  # a bank gets the cut-out grid
    assert Image.open(bank_png).size != sheet.size
    r = subprocess.run(synthgen_cmd + ["stats", str(tmp_path / "none")], env=cli_env, capture_output=True, text=True)
    assert r.returncode == 2 and "not found" in r.stderr


def test_export_coco_round_trips_boxes(bank, backgrounds, tmp_path):
    from synthgen.compose.export import export_coco

    out = tmp_path / "out"
    run_compose(_job(bank, backgrounds, out, n=6, per=6), executor="serial", progress=False)
    coco = export_coco(str(out), tmp_path / "coco")
    assert len(coco["images"]) == 6 and (tmp_path / "coco" / "images" / "000000000.jpg").exists()
    names = {c["id"]: c["name"] for c in coco["categories"]}
    assert all(c["supercategory"] == "object" for c in coco["categories"])  # (COCO readers expect one)
    recs = [json.loads(s["json"]) for s in wds.WebDataset(str(out / "scenes-000000.tar"), shardshuffle=False)]
    expected = [(o["category"], o["box"]) for r in recs for o in r["objects"]]
    got = [(names[a["category_id"]], [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                                      a["bbox"][1] + a["bbox"][3]]) for a in coco["annotations"]]
    assert got == expected


def test_out_folder_errors_and_lock(bank, backgrounds, tmp_path, cli_env, synthgen_cmd):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = subprocess.run(synthgen_cmd + ["compose", "--objects", str(bank), "--backgrounds", str(backgrounds),
                                       "--out", str(blocker / "sub"), "-n", "2"],
                       env=cli_env, capture_output=True, text=True)
    assert r.returncode == 2 and "cannot be created" in r.stderr and "Traceback" not in r.stderr
    # a second run on a folder that another run is writing is refused; the lock leaves no file
    out = tmp_path / "out"
    args = ["compose", "--objects", str(bank), "--backgrounds", str(backgrounds), "--out", str(out),
            "--executor", "serial", "--samples-per-shard", "5"]
    first = subprocess.Popen(synthgen_cmd + args + ["-n", "400"], env=cli_env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t0 = time.monotonic()
        while not list(out.glob("scenes-*_stats.json")) and time.monotonic() - t0 < 120:
            time.sleep(0.05)
        assert (out / LOCK_FILE).exists() and first.poll() is None
        r = subprocess.run(synthgen_cmd + args + ["-n", "400"], env=cli_env, capture_output=True, text=True)
        assert r.returncode == 2 and "another synthgen compose is using" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    finally:
        first.kill()
        first.wait()
    r = subprocess.run(synthgen_cmd + args + ["-n", "10"], env=cli_env, capture_output=True, text=True)
    assert r.returncode == 2 and "other options" in r.stderr  # a killed run holds no lock
    done = tmp_path / "done"
    r = subprocess.run(synthgen_cmd + [a if a != str(out) else str(done) for a in args] + ["-n", "4"],
                       env=cli_env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert not (done / LOCK_FILE).exists() and not list(done.glob(".*"))


def test_damaged_shard_is_a_one_line_error(tmp_path, cli_env, synthgen_cmd):
    bad = tmp_path / "scenes-000000.tar"
    bad.write_bytes(b"\0" * 100 + b"not a tar")
    for cmd in (["stats", str(bad)], ["preview", str(bad), "-o", str(tmp_path / "p.png")],
                ["export-coco", str(bad), "-o", str(tmp_path / "c")]):
        r = subprocess.run(synthgen_cmd + cmd, env=cli_env, capture_output=True, text=True)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (cmd, r.stderr)
