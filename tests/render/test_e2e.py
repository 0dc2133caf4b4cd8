"""End-to-end render with tiny random models (a real StableDiffusionPipeline, an open_clip model
and a u2net-style ONNX net, all built from configs, saved, and loaded by path): through Ray,
reproducibility, resume after kill -9, and model-load errors."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthgen.errors import UserError
from synthgen.render.categories import Category
from synthgen.render.config import RenderConfig
from synthgen.render.pipeline import render
from synthgen.render.seeds import object_seed
from synthgen.schema import LOCK_FILE

pytestmark = pytest.mark.slow

RAY_CAPS = {"workers": 2, "object_store_mb": 200}
CATS = [Category("cat", 225), Category("bow_(weapon)", 5), Category("sausage", 916)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    old = os.environ.get("REMBG_HOME"), os.environ.get("U2NET_HOME")
    os.environ["REMBG_HOME"] = str(root / "rembg")  # Ray workers inherit it
    os.environ.pop("U2NET_HOME", None)
    from synthgen.demo.tiny_render import build_tiny_models

    yield build_tiny_models(root / "models")
    for key, val in zip(("REMBG_HOME", "U2NET_HOME"), old):
        if val is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = val


def _cfg(tiny, out, **kw):
    base = dict(out=out, per_category=4, sd_model=tiny.sd_model, steps=tiny.steps, size=tiny.size,
                clip_model=tiny.clip_model, clip_pretrained=None, cutout=[tiny.cutout],
                min_per_category=2, batch_size=4, **RAY_CAPS)
    base.update(kw)
    return RenderConfig(**base)


def _records(bank: Path) -> list[dict]:
    return [json.loads(line) for line in (bank / "index.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def ray_bank(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("bank") / "objects"
    seen = []
    res = render(CATS, _cfg(tiny, out, keep_rejected=True), use_ray=True,
                 on_category=lambda name, st: seen.append(name))
    return out, res, seen


def test_ray_render_writes_the_bank_contract(ray_bank):
    out, res, seen = ray_bank
    assert sorted(seen) == ["bow (weapon)", "cat", "sausage"]
    assert res.rendered == 3 and res.generated == 12
    recs = _records(out)
    assert len(recs) == 12
    assert len({r["id"] for r in recs}) == 12
    assert not (out / LOCK_FILE).exists()  # the run's lock does not stay in the finished bank
    assert {r["category"] for r in recs} == {"cat", "bow (weapon)", "sausage"}
    for r in recs:
        for key in ("id", "category", "category_id", "path", "width", "height", "kept", "reason",
                    "seed", "clip_score", "area_fraction", "cutout_session"):
            assert key in r
        cat = next(c for c in CATS if c.display == r["category"])
        assert r["category_id"] == cat.id
        assert r["seed"] == object_seed(0, cat.name, r["index"])
        assert r["kept"] == (r["reason"] is None)
        if r["path"] is not None:
            with Image.open(out / r["path"]) as im:
                assert im.mode == "RGBA" and im.size == (r["width"], r["height"])
                alpha = np.asarray(im)[..., 3]
            # tight crop: the first/last rows and columns hold opaque pixels
            assert alpha[0].max() > 0 and alpha[-1].max() > 0
            assert alpha[:, 0].max() > 0 and alpha[:, -1].max() > 0
            assert r["path"].startswith(cat.slug + "/")
            assert ("/_rejected/" in r["path"]) == (not r["kept"])
    kept = [r for r in recs if r["kept"]]
    assert kept, "tiny models should keep some objects"
    # the tiny CLIP scores are low: each category's best object survives through the relative bar
    for c in CATS:
        scores = [r["clip_score"] for r in recs if r["category"] == c.display]
        best = max(scores)
        assert best < 21
        assert any(r["kept"] and r["clip_score"] == best for r in recs if r["category"] == c.display)
    pools = json.loads((out / "LVIS_instance_pools.json").read_text())
    assert sorted(p for v in pools.values() for p in v) == sorted(r["path"] for r in kept)
    assert set(pools) <= {"cat", "bow_(weapon)", "sausage"}
    stats = json.loads((out / "render_stats.json").read_text())
    for c in CATS:
        st = stats["categories"][c.name]
        assert st["generated"] == 4
        assert st["kept"] + sum(st["rejected"].values()) == 4
        assert st["clip"]["min"] <= st["clip"]["median"] <= st["clip"]["max"]
        assert st["seconds"] >= 0


def test_same_seed_gives_identical_pngs_in_process(tiny, ray_bank, tmp_path):
    out, _, _ = ray_bank
    again = tmp_path / "again"
    render(CATS[:1], _cfg(tiny, again, keep_rejected=True), use_ray=False)
    a = {r["id"]: r for r in _records(out) if r["category"] == "cat"}
    b = {r["id"]: r for r in _records(again)}
    assert a.keys() == b.keys()
    for k in a:
        assert a[k]["clip_score"] == b[k]["clip_score"]
        assert (out / a[k]["path"]).read_bytes() == (again / b[k]["path"]).read_bytes()
    other = tmp_path / "other-seed"
    render(CATS[:1], _cfg(tiny, other, keep_rejected=True, seed=1), use_ray=False)
    c = {r["id"]: r for r in _records(other)}
    differ = [k for k in a if (out / a[k]["path"]).read_bytes() != (other / c[k]["path"]).read_bytes()]
    assert differ, "another seed must give other images"


@pytest.fixture(scope="module")
def nsfw_sd(tiny, tmp_path_factory):
    """The tiny pipeline plus an SD-v1.5-style safety checker that flags every image."""
    from synthgen.demo.tiny_render import add_tiny_safety_checker

    return str(add_tiny_safety_checker(tiny.sd_model, tmp_path_factory.mktemp("sd") / "nsfw"))


def test_safety_checker_is_not_loaded(tiny, nsfw_sd):
    from synthgen.render.generate import Generator

    for model in (tiny.sd_model, nsfw_sd):  # without and with a safety checker component
        gen = Generator(model, steps=2, size=tiny.size)
        assert getattr(gen.pipe, "safety_checker", None) is None
        images, reasons = gen(["a photo of a single cat"] * 2, [1, 2])
        assert images.shape == (2, tiny.size, tiny.size, 3) and reasons == [None, None]
        assert images.reshape(2, -1).max(axis=1).min() > 0, "no blacked-out images"


def test_images_a_pipeline_still_flags_are_rejected_as_nsfw(tiny, nsfw_sd, tmp_path, monkeypatch):
    """A pipeline whose checker cannot be left out: its black images get their own reason."""
    from synthgen.render import generate

    monkeypatch.setattr(generate, "no_safety_checker_kwargs", lambda model: {})
    out = tmp_path / "bank"
    res = render(CATS[:1], _cfg(tiny, out, sd_model=nsfw_sd, keep_rejected=True, min_per_category=0),
                 use_ray=False)
    recs = _records(out)
    assert len(recs) == 4 and res.kept == 0
    assert {r["reason"] for r in recs} == {"nsfw_blacked_out"}
    assert all(r["path"] is None and not r["kept"] for r in recs)
    assert res.stats["cat"]["rejected"] == {"nsfw_blacked_out": 4}


def test_rerun_skips_finished_and_settings_must_match(tiny, tmp_path):
    out = tmp_path / "bank"
    render(CATS[:1], _cfg(tiny, out), use_ray=False)
    before = (out / "_categories" / "cat.json").stat().st_mtime_ns
    res = render(CATS[:2], _cfg(tiny, out), use_ray=False)
    assert res.skipped == 1 and res.rendered == 1
    assert (out / "_categories" / "cat.json").stat().st_mtime_ns == before
    assert len(_records(out)) == 8
    with pytest.raises(UserError, match="other settings"):
        render(CATS[:2], _cfg(tiny, out, steps=3), use_ray=False)


def test_resume_after_kill_9(tiny, tmp_path):
    names = tmp_path / "names.txt"
    cats = ["cat", "dog", "zebra", "kite", "sausage", "bow_(weapon)", "mug", "lamp"]
    names.write_text("\n".join(cats) + "\n")
    out = tmp_path / "bank"
    cmd = [sys.executable, "-m", "synthgen", "render", "--categories", str(names), "--out", str(out),
           "--per-category", "4", "--batch-size", "2", "--min-per-category", "1",
           "--workers", "2", "--object-store-mb", "200", *tiny.as_cli_args()]
    env = dict(os.environ)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    done_dir = out / "_categories"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if done_dir.is_dir() and any(done_dir.glob("*.json")):
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        # Ray's processes follow the killed driver; make sure none of this session's are left
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    finished = sorted(p.stem for p in done_dir.glob("*.json"))
    assert 1 <= len(finished) < len(cats)
    # the bank is consistent after the kill: every finished category is whole, nothing half-written
    for f in done_dir.glob("*.json"):
        doc = json.loads(f.read_text())
        assert len(doc["records"]) == 4
        for r in doc["records"]:
            if r["path"]:
                Image.open(out / r["path"]).verify()
    if (out / "index.jsonl").exists():
        for line in (out / "index.jsonl").read_text().splitlines():
            json.loads(line)
    mtimes = {p.name: p.stat().st_mtime_ns for p in done_dir.glob("*.json")}

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"{len(finished)} already done" in rerun.stdout
    recs = _records(out)
    ids = [r["id"] for r in recs]
    assert len(ids) == len(set(ids)) == 4 * len(cats)
    assert {r["category"] for r in recs} == {c.replace("_", " ") for c in cats}
    for name, m in mtimes.items():  # finished categories were not redone
        assert (done_dir / name).stat().st_mtime_ns == m
    on_disk = {str(p.relative_to(out)) for p in out.rglob("*.png")}
    assert {r["path"] for r in recs if r["kept"]} | {r["thumbnail"] for r in recs if r.get("thumbnail")} == on_disk
    assert all(not r["kept"] and r["path"] is None for r in recs if r.get("thumbnail"))
    assert not list(out.rglob("*.synthgen-tmp"))


def test_preview_bank(ray_bank, tmp_path):
    out, _, _ = ray_bank
    r = subprocess.run([sys.executable, "-m", "synthgen", "preview", str(out), "--out",
                        str(tmp_path / "p.png")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    with Image.open(tmp_path / "p.png") as im:
        assert im.width > 200 and im.height > 100
        assert np.asarray(im.convert("L")).std() > 5


def test_offline_model_load_error_names_the_model(tmp_path, tiny):
    names = tmp_path / "names.txt"
    names.write_text("cat\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    base = [sys.executable, "-m", "synthgen", "render", "--categories", str(names), "--out"]
    r = subprocess.run([*base, str(tmp_path / "b1"), "--sd-model", "nobody/no-such-sd-model",
                        "--clip-model", tiny.clip_model, "--cutout", tiny.cutout],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    err = r.stderr.strip()
    assert "\n" not in err and "Traceback" not in err
    assert "nobody/no-such-sd-model" in err and "--sd-model PATH" in err
    assert not (tmp_path / "b1").exists(), "a failed start must not leave a bank behind"
    r = subprocess.run([*base, str(tmp_path / "b2"), "--sd-model", tiny.sd_model,
                        "--clip-model", "ViT-B-32", "--clip-pretrained", "openai",
                        "--cutout", tiny.cutout], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "ViT-B-32" in r.stderr and "--clip-pretrained" in r.stderr
    r = subprocess.run([*base, str(tmp_path / "b3"), "--sd-model", tiny.sd_model,
                        "--clip-model", tiny.clip_model, "--cutout", "u2net"],
                       env=dict(env, REMBG_HOME=str(tmp_path / "empty-rembg"),
                                SYNTHGEN_OFFLINE="1"), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "u2net" in r.stderr and "REMBG_HOME" in r.stderr, r.stderr


def test_model_error_in_python_api(tmp_path, tiny):
    with pytest.raises(UserError, match="no model_index.json"):
        render(CATS[:1], _cfg(tiny, tmp_path / "b", sd_model=str(tmp_path)), use_ray=False)


def _bar(err: str, label: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith(label + " ")]
    assert lines, err
    return lines[-1]


def test_progress_bars_per_stage_and_categories_on_a_resumed_run(tiny, tmp_path, capfd):
    out = tmp_path / "bank"
    render(CATS[:1], _cfg(tiny, out), use_ray=False, progress=False)
    capfd.readouterr()
    render(CATS[:2], _cfg(tiny, out), use_ray=False)  # resumed: "cat" is done
    err = capfd.readouterr().err
    for stage in ("generate", "cut-out", "CLIP score"):
        assert re.search(r"8/8 images +[\d.]+/s +0:00:\d\d", _bar(err, stage)), err
    assert "2/2 categories" in _bar(err, "categories") and "last: bow (weapon)" in _bar(err, "categories")


def test_progress_bars_on_ray_and_no_ray_log_lines(tiny, tmp_path, capfd):
    render(CATS[:1], _cfg(tiny, tmp_path / "bank"), use_ray=True)
    captured = capfd.readouterr()
    for stage in ("generate", "cut-out", "CLIP score"):
        assert "4/4 images" in _bar(captured.err, stage)
    assert "1/1 categories" in _bar(captured.err, "categories")
    for noise in ("core_worker.cc", "Progress bars disabled", "(raylet)"):
        assert noise not in captured.err + captured.out


def test_render_writes_the_prepared_form_of_its_bank(tiny, tmp_path):
    """``render --prepared DIR``: the finished bank, then its prepared form (issue 20), which reads
    as the bank itself: the same entries and the same pixels at its canvas."""
    import numpy as np

    from synthgen.bank.reader import ObjectBank
    from synthgen.errors import UserError
    from synthgen.render.config import RenderJob
    from synthgen.render.pipeline import run_render

    out, prepared = tmp_path / "bank", tmp_path / "prepared"
    with pytest.raises(UserError, match="overlap"):  # refused before any work
        run_render(RenderJob(_cfg(tiny, out), categories=("cat",), prepared=str(out / "p")), progress=False)
    assert not out.exists()
    said = []
    run_render(RenderJob(_cfg(tiny, out, min_per_category=0), categories=("cat",), prepared=str(prepared),
                         prepared_size=48), echo=said.append, progress=False)
    raw, fast = ObjectBank.open(out, max_side=48), ObjectBank.open(prepared, max_side=48)
    assert fast.entries == raw.entries and len(raw) > 0
    for i in range(len(raw)):
        assert np.array_equal(fast.load(i).rgba, raw.load(i).rgba)
    assert any(line.startswith(f"prepared: {len(raw)} cut-outs at 48 px") for line in said), said
