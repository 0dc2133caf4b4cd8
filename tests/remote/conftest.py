"""A real S3 API on loopback for the remote-storage tests: moto in server mode, started as a
subprocess on 127.0.0.1 (a free port) for the session, with fake credentials; each test gets its
own bucket. Nothing leaves the machine."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

FAKE_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
# never read a developer's own AWS configuration
AWS_CLEAR = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL_S3",
             "FSSPEC_S3", "FSSPEC_S3_ENDPOINT_URL")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto(**env) -> tuple[subprocess.Popen, str]:
    """``python -m moto.server`` on 127.0.0.1 and a free port; returns it once it answers."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("moto server exited at start")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto server did not start in 60 s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def aws_env(endpoint: str, tmp: Path, **keys) -> dict[str, str]:
    """The environment of a process that talks to ``endpoint`` (and to no other AWS)."""
    env = {k: v for k, v in os.environ.items() if k not in AWS_CLEAR}
    env.update({"AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_CONFIG_FILE": str(tmp / "no-aws-config"),
                "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-aws-credentials"),
                "AWS_EC2_METADATA_DISABLED": "true", **(keys if keys else FAKE_KEYS)})
    return env


@pytest.fixture(scope="session")
def moto_endpoint():
    proc, url = start_moto()
    yield url
    stop(proc)


@dataclass
class S3:
    bucket: str
    endpoint: str
    env: dict
    client: object

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}"

    def upload(self, local: Path, prefix: str) -> str:
        """Every file under ``local`` as objects under ``prefix``; the prefix's URL."""
        for f in sorted(Path(local).rglob("*")):
            if f.is_file():
                self.client.put_object(Bucket=self.bucket, Key=f"{prefix}/{f.relative_to(local).as_posix()}",
                                       Body=f.read_bytes())
        return f"{self.url}/{prefix}"

    def objects(self, prefix: str = "") -> dict[str, bytes]:
        """key (relative to ``prefix``) -> bytes, of every object under ``prefix``."""
        out = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for o in page.get("Contents", []):
                rel = o["Key"][len(prefix):].lstrip("/")
                out[rel] = self.client.get_object(Bucket=self.bucket, Key=o["Key"])["Body"].read()
        return out

    def keys(self, prefix: str = "") -> list[str]:
        out = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            out += [o["Key"][len(prefix):].lstrip("/") for o in page.get("Contents", [])]
        return sorted(out)


@pytest.fixture
def s3(moto_endpoint, monkeypatch, tmp_path):
    """A fresh bucket on the session's moto server; this process's environment points at it."""
    import boto3

    from synthgen.storage import remote

    env = aws_env(moto_endpoint, tmp_path)
    for k in AWS_CLEAR:
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        if os.environ.get(k) != v:
            monkeypatch.setenv(k, v)
    remote._FS.clear()
    remote._PROBED.clear()
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1", **{
        "aws_access_key_id": "testing", "aws_secret_access_key": "testing"})
    bucket = f"t-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=bucket)
    yield S3(bucket, moto_endpoint, env, client)
    remote._FS.clear()
    remote._PROBED.clear()
