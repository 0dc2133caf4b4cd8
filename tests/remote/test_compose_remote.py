"""compose and prepare-backgrounds with s3:// inputs and outputs (moto server on loopback): the
same bytes as local folders, resume after kill -9, no partial object ever visible."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import tarfile
import time

import pytest

from synthgen.compose.config import ComposeParams
from synthgen.compose.prepare import PrepareJob, prepare_backgrounds
from synthgen.compose.run import ComposeJob, run_compose
from synthgen.schema import LOCK_FILE
from tests.helpers import make_backgrounds, make_index_bank


def _job(objects, backgrounds, out, n=12, per=4, **kw) -> ComposeJob:
    return ComposeJob(objects=str(objects), backgrounds=str(backgrounds), out=str(out), num_samples=n,
                      samples_per_shard=per, params=ComposeParams(masks=True, **kw))


def _local(folder) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _members(tar_bytes: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf if m.isfile()}


def _without_seconds(files: dict[str, bytes]) -> dict[str, object]:
    """Files with the run's timings (and the input paths in the options) taken out of the json."""
    out: dict[str, object] = {}
    for name, data in files.items():
        if name.endswith(".json"):
            doc = json.loads(data)
            doc.pop("seconds", None)
            if "totals" in doc:
                doc["totals"].pop("shard_seconds", None)
            out[name] = doc
        else:
            out[name] = data
    return out


@pytest.fixture
def inputs(tmp_path):
    return make_index_bank(tmp_path / "bank"), make_backgrounds(tmp_path / "bg")


def test_compose_to_s3_writes_the_bytes_of_a_local_compose(s3, inputs, tmp_path):
    bank, bg = inputs
    local = run_compose(_job(bank, bg, tmp_path / "local"), executor="serial", progress=False)
    remote = run_compose(_job(bank, bg, f"{s3.url}/shards"), executor="serial", progress=False)
    assert remote["shards"] == local["shards"] and remote["totals"]["samples"] == 12
    got, want = s3.objects("shards"), _local(tmp_path / "local")
    assert sorted(got) == sorted(want) and LOCK_FILE not in got  # the lock is gone, nothing else added
    assert _without_seconds(got) == _without_seconds(want)
    assert all(got[k] == want[k] for k in got if k.endswith(".tar"))
    # a re-run finds every marker and rewrites nothing
    before = {o["Key"]: o["LastModified"] for o in s3.client.list_objects_v2(Bucket=s3.bucket)["Contents"]}
    time.sleep(1.1)
    run_compose(_job(bank, bg, f"{s3.url}/shards"), executor="serial", progress=False)
    after = {o["Key"]: o["LastModified"] for o in s3.client.list_objects_v2(Bucket=s3.bucket)["Contents"]}
    assert {k: v for k, v in after.items() if k.endswith(".tar")} == {k: v for k, v in before.items() if k.endswith(".tar")}
    # other options are refused, naming them
    with pytest.raises(Exception, match="other options.*seed"):
        run_compose(_job(bank, bg, f"{s3.url}/shards", seed=3), executor="serial", progress=False)


def test_compose_reads_the_bank_and_backgrounds_from_s3(s3, inputs, tmp_path):
    bank, bg = inputs
    run_compose(_job(bank, bg, tmp_path / "local"), executor="serial", progress=False)
    want = _local(tmp_path / "local")
    rbank, rbg = s3.upload(bank, "objects"), s3.upload(bg, "bg")
    m = run_compose(_job(rbank, rbg, tmp_path / "from-s3"), executor="serial", progress=False)
    assert m["options"]["objects"] == rbank and m["options"]["backgrounds"] == rbg
    li, ri = json.loads(want["manifest.json"])["options"]["inputs"], m["options"]["inputs"]
    assert ri["objects"] == li["objects"]  # the same objects (ids, paths, sizes: from one listing)
    assert [ri["backgrounds"][k] for k in ("count", "bytes")] == [li["backgrounds"][k] for k in ("count", "bytes")]
    got = _local(tmp_path / "from-s3")
    for name in want:
        if not name.endswith(".tar"):
            continue
        a, b = _members(got[name]), _members(want[name])
        assert sorted(a) == sorted(b)
        for k in a:  # the scenes are the same pixels; the json names the background by its URL
            if k.endswith(".json"):
                ja, jb = json.loads(a[k]), json.loads(b[k])
                assert ja["background"]["source"].startswith(f"{rbg}/")
                assert ja["background"]["source"].rsplit("/", 1)[1] == jb["background"]["source"].rsplit("/", 1)[1]
                ja["background"]["source"] = jb["background"]["source"]
                assert ja == jb
            else:
                assert a[k] == b[k], k
    assert s3.keys("objects") == sorted(p.relative_to(bank).as_posix() for p in bank.rglob("*") if p.is_file())


def test_prepare_backgrounds_from_and_to_s3_and_compose_from_them(s3, inputs, tmp_path):
    bank, bg = inputs
    make_backgrounds(bg / "more", n=3, size=(500, 300))
    rbg = s3.upload(bg, "bg")
    local = prepare_backgrounds(PrepareJob(source=str(bg), out=str(tmp_path / "prep"), size=64, per_shard=3),
                                executor="serial", progress=False)
    remote = prepare_backgrounds(PrepareJob(source=rbg, out=f"{s3.url}/prep", size=64, per_shard=3),
                                 executor="serial", progress=False)
    assert remote["backgrounds"] == local["backgrounds"] == 7 and remote["shards"] == local["shards"]
    got, want = s3.objects("prep"), _local(tmp_path / "prep")
    assert sorted(got) == sorted(want)
    for name in want:
        if name.endswith(".tar"):  # the same pixels; the json names the source by its URL
            a, b = _members(got[name]), _members(want[name])
            assert {k: v for k, v in a.items() if k.endswith(".jpg")} == {k: v for k, v in b.items() if k.endswith(".jpg")}
    # compose reads the prepared shards from s3 (members by byte range) like the local ones
    m1 = run_compose(_job(bank, f"{s3.url}/prep", f"{s3.url}/scenes", n=6, per=6), executor="serial", progress=False)
    m2 = run_compose(_job(bank, tmp_path / "prep", tmp_path / "scenes", n=6, per=6), executor="serial", progress=False)
    assert m1["totals"]["samples"] == m2["totals"]["samples"] == 6
    a = _members(s3.objects("scenes")["scenes-000000.tar"])
    b = _members((tmp_path / "scenes" / "scenes-000000.tar").read_bytes())
    assert {k: v for k, v in a.items() if k.endswith(".jpg")} == {k: v for k, v in b.items() if k.endswith(".jpg")}


@pytest.mark.slow
def test_kill_9_mid_compose_to_s3_then_resume_gives_the_uninterrupted_dataset(s3, inputs, tmp_path, cli_env):
    bank, bg = inputs
    env = {**cli_env, **s3.env}
    args = [sys.executable, "-m", "synthgen", "compose", "--objects", str(bank), "--backgrounds", str(bg),
            "-n", "120", "--samples-per-shard", "6", "--masks", "--executor", "serial"]
    ref = tmp_path / "ref"
    subprocess.run(args + ["--out", str(ref)], env=env, check=True, capture_output=True)
    out = f"{s3.url}/shards"
    proc = subprocess.Popen(args + ["--out", out], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len([k for k in s3.keys("shards") if k.endswith("_stats.json")]) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    keys = s3.keys("shards")
    done = [k for k in keys if k.endswith("_stats.json")]
    tars = [k for k in keys if k.endswith(".tar")]
    assert 3 <= len(done) < 20, "the run must be killed in the middle"
    assert "manifest.json" not in keys and LOCK_FILE in keys  # the killed run's lock is left behind
    assert len(tars) in (len(done), len(done) + 1)  # a shard appears whole, its marker after it
    objs = s3.objects("shards")
    for t in tars:  # every visible shard is complete: 6 scenes of 3 members, and the end marker
        assert len(_members(objs[t])) == 18
    r = subprocess.run(args + ["--out", out], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "took over the lock" in r.stderr  # same machine, its pid gone: no wait for the TTL
    got, want = s3.objects("shards"), _local(ref)
    assert sorted(got) == sorted(want)
    assert all(got[k] == want[k] for k in want if k.endswith(".tar"))
    keys = [json.loads(m)["key"] for k, v in sorted(got.items()) if k.endswith(".tar")
            for n, m in _members(v).items() if n.endswith(".json")]
    assert len(keys) == len(set(keys)) == 120


@pytest.mark.slow
def test_render_writes_its_bank_to_s3_and_compose_reads_it(s3, tmp_path, monkeypatch):
    """render (tiny random models, in this process) into s3://; a re-run skips the finished
    categories; compose reads the remote bank."""
    from synthgen.demo.tiny_render import build_tiny_models
    from synthgen.render.categories import Category
    from synthgen.render.config import RenderConfig
    from synthgen.render.pipeline import render

    monkeypatch.setenv("REMBG_HOME", str(tmp_path / "rembg"))
    monkeypatch.delenv("U2NET_HOME", raising=False)
    tiny = build_tiny_models(tmp_path / "models")
    bank = f"{s3.url}/objects"
    cfg = RenderConfig(out=bank, per_category=3, sd_model=tiny.sd_model, steps=tiny.steps, size=tiny.size,
                       clip_model=tiny.clip_model, clip_pretrained=None, cutout=[tiny.cutout], min_per_category=1,
                       min_clip=-100, area=(0.0, 1.0), batch_size=3)
    res = render([Category("cat", 225), Category("sausage", 916)], cfg, use_ray=False)
    assert res.rendered == 2 and res.kept > 0
    keys = s3.keys("objects")
    assert {"index.jsonl", "render_config.json", "render_stats.json", "LVIS_instance_pools.json",
            "_categories/cat.json", "_categories/sausage.json"} <= set(keys) and LOCK_FILE not in keys
    again = render([Category("cat", 225), Category("sausage", 916)], cfg, use_ray=False)
    assert again.skipped == 2 and again.rendered == 0
    m = run_compose(_job(bank, make_backgrounds(tmp_path / "bg", n=2), tmp_path / "scenes", n=4, per=4),
                    executor="serial", progress=False)
    assert m["totals"]["samples"] == 4 and m["options"]["objects"] == bank


@pytest.mark.slow
def test_ray_workers_write_the_same_shards_to_s3(s3, inputs, tmp_path):
    """Shards written by Ray workers (other processes, credentials from the environment)."""
    bank, bg = inputs
    run_compose(_job(bank, bg, tmp_path / "serial"), executor="serial", progress=False)
    run_compose(_job(bank, bg, f"{s3.url}/ray"), workers=1, progress=False)
    got, want = s3.objects("ray"), _local(tmp_path / "serial")
    assert sorted(got) == sorted(want) and all(got[k] == want[k] for k in want if k.endswith(".tar"))


@pytest.mark.slow
def test_a_second_compose_on_a_prefix_in_use_is_refused_with_one_line(s3, inputs, cli_env):
    from tests.hostile.conftest import one_line_error

    bank, bg = inputs
    env = {**cli_env, **s3.env}
    args = [sys.executable, "-m", "synthgen", "compose", "--objects", str(bank), "--backgrounds", str(bg),
            "--out", f"{s3.url}/busy", "--samples-per-shard", "5", "--executor", "serial", "-n", "2000"]
    first = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not any(k.endswith("_stats.json") for k in s3.keys("busy")):
            time.sleep(0.05)
        assert first.poll() is None and LOCK_FILE in s3.keys("busy")
        r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
        one_line_error(r, f"another synthgen compose is using {s3.url}/busy", f"pid {first.pid}")
    finally:
        first.kill()
        first.wait()
