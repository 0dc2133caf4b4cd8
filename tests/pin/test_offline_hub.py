"""A hub id that cannot be loaded here fails at once (issue 19, item 12): offline, a model id that
is not in the Hugging Face cache used to cost half a minute of the hub client's retries before its
one-line error; now one quick look at the hub (a TCP connection, or ``HF_HUB_OFFLINE``) and one
line naming the cache and ``synthgen prefetch``. The hub is made unreachable with ``HF_ENDPOINT``
on a closed port of loopback; a local folder still loads."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.hostile.conftest import one_line_error
from tests.pin.fixtures import write_shards

CANVAS = 56
PROXIES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


@pytest.fixture
def offline(tmp_path):
    """No hub: ``HF_ENDPOINT`` on a closed port of loopback, an empty ``HF_HOME``."""
    env = {k: v for k, v in os.environ.items() if k not in PROXIES and k != "HF_HUB_OFFLINE"}
    (tmp_path / "hf").mkdir()
    return dict(env, HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"), OMP_NUM_THREADS="1",
                RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    write_shards(root, 4, canvas=CANVAS, grid=8, per_shard=4)
    return root


def _train(shards, out, env, *args, timeout=120):
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "synthgen", "train-pin", str(shards), "--out", str(out), "--steps", "1",
                        "--batch-size", "2", "--loader-workers", "0", "--hidden", "8,8", "--no-progress", *args],
                       env=env, capture_output=True, text=True, timeout=timeout)
    return r, time.monotonic() - t0


@pytest.mark.parametrize("args,what", [
    (["--model", "org/not-cached"], "BLIP-2 from 'org/not-cached'"),
    (["--vlm", "llava", "--model", "org/not-cached"], "LLaVA from 'org/not-cached'"),
    (["--vlm", "openflamingo"], "OpenFlamingo's checkpoint 'openflamingo/"),
], ids=["blip2", "llava", "openflamingo"])
def test_a_model_not_in_the_cache_fails_at_once_when_the_hub_is_unreachable(shards, tmp_path, offline, args, what):
    r, seconds = _train(shards, tmp_path / "run", offline, *args)
    one_line_error(r, f"cannot load {what}", f"not in the Hugging Face cache ({tmp_path / 'hf' / 'hub'})",
                   "the hub is unreachable (127.0.0.1:9)", "synthgen prefetch", "or give a local folder")
    assert "Retrying" not in r.stderr and "thrown while requesting" not in r.stderr
    assert seconds < 10, f"{seconds:.1f} s"
    assert not (tmp_path / "run").exists()


def test_hf_hub_offline_is_said_and_honoured(shards, tmp_path, offline):
    env = dict(offline, HF_ENDPOINT="https://huggingface.co", HF_HUB_OFFLINE="1")  # (not even looked at)
    r, seconds = _train(shards, tmp_path / "run", env, "--model", "org/not-cached")
    one_line_error(r, "cannot load BLIP-2 from 'org/not-cached': not in the Hugging Face cache",
                   "and HF_HUB_OFFLINE is set")
    assert seconds < 10, f"{seconds:.1f} s"


def test_a_cached_id_or_a_folder_is_left_to_the_loader(tmp_path, monkeypatch):
    """The check refuses only what cannot load: a cached id, an existing path, a reachable hub pass."""
    import huggingface_hub.constants as hc

    from synthgen import prefetch
    from synthgen.errors import ModelLoadError

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    snapshot = tmp_path / "hub" / "models--org--cached" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    prefetch.check_hub("org/cached", "x")
    prefetch.check_hub(str(tmp_path), "x")
    with pytest.raises(ModelLoadError, match=r"cannot load x: not in the Hugging Face cache"):
        prefetch.check_hub("org/other", "x")
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)
    import socket

    with socket.socket() as server:  # a hub that answers (a listening port on loopback)
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        for proxy in PROXIES:
            monkeypatch.delenv(proxy, raising=False)
        prefetch.check_hub("org/other", "x")


@pytest.mark.slow
def test_a_local_folder_still_trains_with_the_hub_unreachable(shards, tmp_path, offline):
    from synthgen.demo.tiny_blip2 import build_tiny_blip2

    folder = build_tiny_blip2(tmp_path / "tiny-blip2", image_size=CANVAS, lm_steps=0)
    r, _ = _train(shards, tmp_path / "run", offline, "--model", str(folder), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "run" / "pin.json").exists()


def test_vlm_auto_with_an_uncached_id_fails_at_once(shards, tmp_path, offline):
    """``--vlm auto`` reads the checkpoint's config before any adapter: that read is checked too."""
    r, seconds = _train(shards, tmp_path / "run", offline, "--vlm", "auto", "--model", "org/not-cached")
    one_line_error(r, "cannot load the config of 'org/not-cached' (--vlm auto)", "the hub is unreachable (127.0.0.1:9)",
                   "synthgen prefetch")
    assert "Retrying" not in r.stderr and seconds < 10, f"{seconds:.1f} s"


@pytest.mark.parametrize("args,what", [
    (["--sd-model", "org/not-cached-sd"], "the text-to-image model 'org/not-cached-sd'"),
    (["--clip-model", "ViT-B-32", "--clip-pretrained", "laion2b_s34b_b79k"],
     "the CLIP model ViT-B-32 (pretrained 'laion2b_s34b_b79k')"),
    (["--clip-model", "hf-hub:org/not-cached-clip"], "the CLIP model hf-hub:org/not-cached-clip"),
], ids=["sd", "clip-tag", "clip-hf-hub"])
def test_render_models_not_in_the_cache_fail_at_once(tmp_path, offline, monkeypatch, args, what):
    """render checks its models before any work (its preflight): offline, an uncached one is one
    line at once, whichever it is (the others local folders)."""
    monkeypatch.setenv("REMBG_HOME", str(tmp_path / "rembg"))
    monkeypatch.delenv("U2NET_HOME", raising=False)
    from synthgen.demo.tiny_render import build_tiny_models

    tiny = build_tiny_models(tmp_path / "models")
    cats = tmp_path / "cats.txt"
    cats.write_text("apple\n")
    options = {"--sd-model": tiny.sd_model, "--clip-model": tiny.clip_model, "--clip-pretrained": "",
               "--cutout": tiny.cutout, **dict(zip(args[::2], args[1::2]))}
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "synthgen", "render", "--categories", str(cats), "--out",
                        str(tmp_path / "bank"), "--size", "64", "--steps", "2", *[x for kv in options.items() for x in kv]],
                       env=dict(offline, REMBG_HOME=str(tmp_path / "rembg")), capture_output=True, text=True,
                       timeout=300)
    one_line_error(r, f"cannot load {what}", "the hub is unreachable (127.0.0.1:9)", "synthgen prefetch",
                   "Pass a local")  # (and the way to a local copy, as when the load itself fails)
    assert "Retrying" not in r.stderr and time.monotonic() - t0 < 60
    assert not (tmp_path / "bank").exists()
