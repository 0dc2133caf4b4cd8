"""The storage layer against a real S3 API (moto server on loopback): paths, whole-object writes,
the folder lock (conditional PUT, heartbeat, takeover) and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from synthgen import storage
from synthgen.errors import UserError
from synthgen.schema import LOCK_FILE
from synthgen.storage import RunFolder, atomic_write_json, atomic_write_with, objectlock
from tests.helpers import make_backgrounds, make_index_bank
from tests.hostile.conftest import one_line_error
from tests.remote.conftest import aws_env, start_moto, stop


def test_remote_paths_read_and_write_objects_whole(s3):
    base = storage.path(f"{s3.url}/a/./b/../c")
    assert isinstance(base, storage.RemotePath) and str(base) == f"{s3.url}/a/c"
    assert isinstance(storage.path("file:///tmp/x"), type(storage.path("/tmp/x")))
    assert not hasattr(base, "__fspath__")  # open(remote) is an error, never a local "s3:" folder
    f = base / "run.json"
    assert not f.exists() and not base.exists()
    atomic_write_json(f, {"a": 1})
    atomic_write_with(base / "w.bin", lambda p: open(p, "wb").write(b"0123456789"))
    assert json.loads(f.read_text()) == {"a": 1} and f.is_file() and base.is_dir()
    assert (base / "w.bin").read_range(2, 3) == b"234" and (base / "w.bin").size() == 10
    assert [p.name for p in base.iterdir()] == ["run.json", "w.bin"] and [p.name for p in base.glob("*.bin")] == ["w.bin"]
    assert f.with_suffix(".txt").name == "run.txt" and f.parent == base and f.stem == "run"
    assert s3.keys() == ["a/c/run.json", "a/c/w.bin"]  # no temporaries under the prefix
    (base / "w.bin").unlink()
    assert not (base / "w.bin").exists()
    assert not list(Path(tempfile.gettempdir()).glob(f"{storage.UPLOAD_PREFIX}{os.getpid()}-*"))
    assert storage.join(f"{s3.url}/bank", "../../etc/passwd") == f"{s3.url}/../etc/passwd"
    assert not storage.inside(storage.join(f"{s3.url}/bank", "../x.png"), [f"{s3.url}/bank"])
    assert storage.inside(storage.join(f"{s3.url}/bank", "cat/../dog/1.png"), [f"{s3.url}/bank"])
    assert not storage.inside("/etc/passwd", [f"{s3.url}/bank"])


def test_a_second_run_on_the_same_prefix_is_refused_and_the_lock_is_removed(s3):
    out = f"{s3.url}/shards"
    with RunFolder(out, "compose"):
        assert s3.keys("shards") == [LOCK_FILE]
        holder = json.loads(s3.objects("shards")[LOCK_FILE])
        assert holder["pid"] == os.getpid() and holder["stage"] == "compose"
        with pytest.raises(UserError, match=f"another synthgen compose is using {out} .*pid {os.getpid()}"):
            with RunFolder(out, "compose"):
                pass
    assert s3.keys("shards") == []
    with RunFolder(out, "compose"):  # free again
        pass


def _plant_lock(s3, prefix: str, **holder) -> None:
    info = {"synthgen_lock": 1, "stage": "compose", "run_id": "feedbeef", "host": "elsewhere", "boot_id": "x",
            "pid": 1, "ttl_s": 2.0, "beat": 0, **holder}
    s3.client.put_object(Bucket=s3.bucket, Key=f"{prefix}/{LOCK_FILE}", Body=json.dumps(info).encode(),
                         Metadata={"synthgen-lock": json.dumps(info)})


def test_a_killed_runs_lock_is_taken_over(s3, capsys):
    # on this machine, its pid gone: at once
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    _plant_lock(s3, "a", host=objectlock.socket.gethostname(), boot_id=objectlock._boot_id(), pid=proc.pid, ttl_s=3600)
    with RunFolder(f"{s3.url}/a", "compose"):
        assert json.loads(s3.objects("a")[LOCK_FILE])["pid"] == os.getpid()
    assert "took over the lock" in capsys.readouterr().err
    # on another machine: refused while its heartbeat is fresh, taken over once older than its TTL
    _plant_lock(s3, "b", ttl_s=2.0)
    with pytest.raises(UserError, match="pid 1 on elsewhere.*taken over 2 s after its last heartbeat"):
        with RunFolder(f"{s3.url}/b", "compose"):
            pass
    time.sleep(3.2)
    with RunFolder(f"{s3.url}/b", "compose"):
        pass
    assert s3.keys("b") == []


def test_a_live_runs_heartbeat_keeps_its_lock_and_a_lost_lock_stops_its_writes(s3, monkeypatch):
    monkeypatch.setenv(storage.LOCK_TTL_ENV, "1")
    out = f"{s3.url}/run"
    with RunFolder(out, "train-pin") as folder:
        time.sleep(2.5)  # over twice the TTL: the heartbeat kept it fresh
        with pytest.raises(UserError, match="another synthgen train-pin"):
            with RunFolder(out, "train-pin"):
                pass
        assert folder._lock.info["beat"] >= 3
        _plant_lock(s3, "run", stage="train-pin")  # as if another run had taken it over
        deadline = time.monotonic() + 10
        while not folder._lock.lost and time.monotonic() < deadline:
            time.sleep(0.05)
        assert folder._lock.lost
        with pytest.raises(UserError, match=f"lost the lock of {out}"):
            atomic_write_json(folder.path / "pin.json", {})
        assert "pin.json" not in s3.keys("run")
    assert s3.keys("run") == [LOCK_FILE]  # the other run's lock is left alone


def test_object_paths_must_stay_inside_a_remote_bank(s3, tmp_path):
    from synthgen.bank.reader import ObjectBank

    bank = make_index_bank(tmp_path / "bank", per_category=1)
    lines = (bank / "index.jsonl").read_text().splitlines()
    evil = [{"id": "evil/1", "category": "evil", "path": "../secret/x.png"},
            {"id": "evil/2", "category": "evil", "path": "/etc/passwd"},
            {"id": "evil/3", "category": "evil", "path": f"{s3.url}/secret/x.png"}]
    (bank / "index.jsonl").write_text("\n".join(lines + [json.dumps(e) for e in evil]) + "\n")
    s3.client.put_object(Bucket=s3.bucket, Key="secret/x.png", Body=b"x")
    b = ObjectBank.open(s3.upload(bank, "bank"))
    assert len(b) == 4 and sorted(b.rejected["outside_bank"]) == ["evil/1", "evil/2", "evil/3"]
    assert all(b.path_of(i).startswith(f"{s3.url}/bank/") for i in range(len(b)))
    assert b.first_usable() == 0


def test_export_coco_to_s3_writes_only_inside_out(s3, tmp_path):
    from synthgen.compose.export import export_coco
    from tests.hostile.test_paths import _jpg, _scene, _tar

    shard = _tar(tmp_path / "s" / "scenes-000000.tar", {
        "000000000.jpg": _jpg(), "000000000.json": _scene(f"{s3.url}/PWNED"),
        "000000001.jpg": _jpg(), "000000001.json": _scene("../../../escaped"),
        "000000002.jpg": _jpg(), "000000002.json": _scene("000000002")})
    shards = s3.upload(shard.parent, "in")
    coco = export_coco(shards, f"{s3.url}/coco")
    assert coco["info"]["skipped_scenes"]["bad_key"]["count"] == 2
    assert s3.keys() == ["coco/images/000000002.jpg", "coco/instances.json", "in/scenes-000000.tar"]


# --- one-line errors, as a user sees them --------------------------------------------------

def _cli(args, env, timeout=120):
    return subprocess.run([sys.executable, "-m", "synthgen", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def local_inputs(tmp_path):
    return make_index_bank(tmp_path / "bank", per_category=1), make_backgrounds(tmp_path / "bg", n=1)


def test_missing_bucket_and_unreachable_endpoint_are_one_line_errors(s3, tmp_path, local_inputs, cli_env):
    bank, bg = local_inputs
    env = {**cli_env, **s3.env}
    compose = ["compose", "--objects", bank, "--backgrounds", bg, "-n", "2", "--executor", "serial"]
    one_line_error(_cli(compose + ["--out", "s3://no-such-bucket-here/shards"], env), "bucket 'no-such-bucket-here' does not exist")
    one_line_error(_cli(["stats", f"{s3.url}/nothing"], env), "shards not found")
    fsspec_env = {k: v for k, v in env.items() if k != "AWS_ENDPOINT_URL"} | {"FSSPEC_S3_ENDPOINT_URL": s3.endpoint}
    one_line_error(_cli(["stats", f"{s3.url}/nothing"], fsspec_env), "shards not found")  # fsspec's setting works too
    t0 = time.monotonic()
    r = _cli(compose + ["--out", f"{s3.url}/x"], {**env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"})
    one_line_error(r, "cannot reach the storage endpoint http://127.0.0.1:9")
    assert time.monotonic() - t0 < 60  # bounded retries, no hang
    no_keys = {k: v for k, v in env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    one_line_error(_cli(["stats", f"{s3.url}/x"], no_keys), "no credentials for", "AWS_ACCESS_KEY_ID")
    one_line_error(_cli(["stats", "gopher://host/x"], env), "unknown storage scheme gopher://")


def test_bad_credentials_and_access_denied_are_one_line_errors(tmp_path, cli_env):
    """A second moto server that checks signatures (IAM on): three set-up calls without auth
    make a user without any policy and a bucket; every later request is authenticated."""
    import boto3

    proc, url = start_moto(INITIAL_NO_AUTH_ACTION_COUNT="3")
    try:
        kw = dict(endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")
        iam = boto3.client("iam", **kw)
        iam.create_user(UserName="nobody")
        key = iam.create_access_key(UserName="nobody")["AccessKey"]
        boto3.client("s3", **kw).create_bucket(Bucket="guarded")
        bad = aws_env(url, tmp_path, AWS_ACCESS_KEY_ID="AKIAWRONGWRONGWRONG1", AWS_SECRET_ACCESS_KEY="wrong")
        one_line_error(_cli(["stats", "s3://guarded/shards"], {**cli_env, **bad}), "refused the credentials",
                       "InvalidAccessKeyId")
        weak = aws_env(url, tmp_path, AWS_ACCESS_KEY_ID=key["AccessKeyId"], AWS_SECRET_ACCESS_KEY=key["SecretAccessKey"])
        one_line_error(_cli(["stats", "s3://guarded/shards"], {**cli_env, **weak}), "access denied to s3://guarded/shards")
    finally:
        stop(proc)


def test_options_that_take_local_paths_refuse_urls(tmp_path, cli_env):
    """import-pin/export-pin, --recipe, --plot, the demo: local only, never a local folder 's3:'."""
    r = subprocess.run([sys.executable, "-m", "synthgen", "export-pin", "s3://bucket/run", "-o", "pin.pt"],
                       env=cli_env, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    one_line_error(r, "takes a local path, not the URL s3://bucket/run")
    assert not list(tmp_path.iterdir())


def _start_upload(s3, key: str) -> str:
    """A multipart upload with one part and no completion: what a writer killed mid-upload of
    a large shard leaves on the server."""
    up = s3.client.create_multipart_upload(Bucket=s3.bucket, Key=key)["UploadId"]
    s3.client.upload_part(Bucket=s3.bucket, Key=key, UploadId=up, PartNumber=1, Body=b"x" * (5 << 20))
    return up


def _uploads(s3) -> list[str]:
    return sorted(u["Key"] for u in s3.client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", []))


def test_a_killed_multipart_upload_is_aborted_when_the_folder_is_taken(s3):
    for key in ("out/scenes-000003.tar", "out/sub/part.tar", "outside/scenes-000001.tar", "out2/a.tar"):
        _start_upload(s3, key)
    with RunFolder(f"{s3.url}/out", "compose"):
        # the folder's own unfinished upload is gone; a sub-folder's, a sibling prefix's and
        # an unrelated one stay
        assert _uploads(s3) == ["out/sub/part.tar", "out2/a.tar", "outside/scenes-000001.tar"]
        _start_upload(s3, "out/scenes-000004.tar")   # a writer of this run dies mid-upload
    assert _uploads(s3) == ["out/sub/part.tar", "out2/a.tar", "outside/scenes-000001.tar"]
    with RunFolder(f"{s3.url}/out", "train-pin", clean="recursive"):
        assert _uploads(s3) == ["out2/a.tar", "outside/scenes-000001.tar"]
    assert not s3.keys("out")  # aborting writes no object


def test_compose_resumed_after_a_kill_mid_upload_leaves_no_parts_on_the_server(s3, local_inputs):
    from synthgen.compose.run import ComposeJob, run_compose

    bank, bg = local_inputs
    job = ComposeJob(objects=str(bank), backgrounds=str(bg), out=f"{s3.url}/ds", num_samples=8,
                     samples_per_shard=4)
    _start_upload(s3, "ds/scenes-000001.tar")
    run_compose(job, executor="serial", progress=False)
    assert _uploads(s3) == []
    assert [k for k in s3.keys("ds") if k.endswith(".tar")] == ["scenes-000000.tar", "scenes-000001.tar"]
