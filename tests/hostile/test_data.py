"""Broken data for train-pin, eval-pin and predict: skipped and counted, or one line."""

from __future__ import annotations

import io
import json
import pickle
import stat
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from tests.hostile.conftest import CANVAS, GRID, one_line_error, run_cli
from tests.pin.fixtures import write_shards

pytestmark = pytest.mark.slow


def _members(shard: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(shard) as tf:
        return [(m, tf.extractfile(m).read()) for m in tf]


def _write(shard: Path, members) -> None:
    with tarfile.open(shard, "w") as tf:
        for m, data in members:
            m.size = len(data)
            tf.addfile(m, io.BytesIO(data))


def _spoil(shards: list[Path]) -> dict[str, str]:
    """One fault per scene in the first shard; returns key -> fault."""
    members = _members(shards[0])
    faults = {}
    out = []
    for m, data in members:
        key, ext = m.name.split(".", 1)
        k = int(key)
        if ext == "json":
            d = json.loads(data)
            if k == 0:
                data, faults[key] = b"{not json", "not_json"
            elif k == 1:
                d["objects"][0].pop("box")
                data, faults[key] = json.dumps(d).encode(), "missing_field"
            elif k == 2:
                d["objects"][0]["box"] = ["x", 1, 2, 3]
                data, faults[key] = json.dumps(d).encode(), "bad_field"
            elif k == 3:
                d["objects"][0]["referral"] = "\udcff"
                data, faults[key] = json.dumps(d).encode(), "bad_text"
        elif k == 4:
            faults[key] = "no_image"
            continue
        out.append((m, data))
    _write(shards[0], out)
    raw = shards[1].read_bytes()  # the second shard is cut short mid-member
    shards[1].write_bytes(raw[: len(raw) // 2 + 100])
    return faults


def _train(shards_dir, run, vlm, env, *extra, steps=4):
    return run_cli(["train-pin", shards_dir, "--model", vlm, "--out", run, "--steps", steps, "--batch-size", 4,
                    "--loader-workers", 1, "--hidden", "16,16", "--no-progress", "--shuffle-buffer", 4, "--log-every", 1,
                    *extra], env)


def test_train_pin_skips_and_counts_bad_samples(tmp_path, cli_env, tiny_vlm):
    shards = write_shards(tmp_path / "s", 16, canvas=CANVAS, grid=GRID, per_shard=8)
    faults = _spoil(shards)
    r = _train(tmp_path / "s", tmp_path / "run", tiny_vlm, cli_env, "--max-bad-samples", "0.9")
    assert r.returncode == 0, r.stderr
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    bad = log[-1]["bad_samples"]
    assert {"not_json", "missing_field", "bad_field", "bad_text", "no_image", "damaged_shard"} <= set(bad)
    assert "skipped bad samples" in r.stdout + r.stderr
    assert len(faults) == 5
    # past the threshold: one line naming a shard and key
    r = _train(tmp_path / "s", tmp_path / "run2", tiny_vlm, cli_env, "--max-bad-samples", "0")
    line = one_line_error(r, "more than --max-bad-samples 0 allows")
    assert "scenes-00000" in line and "scene 0000000" in line


def test_train_pin_on_a_shard_of_another_canvas_names_it(tmp_path, cli_env, tiny_vlm):
    write_shards(tmp_path / "s", 8, canvas=CANVAS, grid=GRID, per_shard=8)
    other = write_shards(tmp_path / "o", 16, canvas=64, grid=4, per_shard=16)[0]
    other.rename(tmp_path / "s" / "scenes-000001.tar")
    r = _train(tmp_path / "s", tmp_path / "run", tiny_vlm, cli_env, "--max-bad-samples", "0.1", steps=6)
    line = one_line_error(r, "scenes-000001.tar", "canvas 64x64", f"{CANVAS}x{CANVAS}")
    assert "wrong_canvas" in line


def test_resume_after_a_kill_mid_log_line(tmp_path, cli_env, tiny_vlm):
    write_shards(tmp_path / "s", 8, canvas=CANVAS, grid=GRID, per_shard=4)
    run = tmp_path / "run"
    assert _train(tmp_path / "s", run, tiny_vlm, cli_env, steps=2).returncode == 0
    with open(run / "log.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 1.2')  # what a kill leaves
    r = _train(tmp_path / "s", run, tiny_vlm, cli_env, "--resume", steps=3)
    assert r.returncode == 0, r.stderr
    lines = (run / "log.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3]
    # every output of a run has the same mode (pin.safetensors was written 0600)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in run.iterdir()}
    assert len(set(modes.values())) == 1, modes


def test_a_refused_train_state_never_suggests_unsafe_loading(tmp_path, cli_env, tiny_vlm):
    write_shards(tmp_path / "s", 8, canvas=CANVAS, grid=GRID, per_shard=4)
    run = tmp_path / "run"
    assert _train(tmp_path / "s", run, tiny_vlm, cli_env, steps=1).returncode == 0

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (run / "train_state.pt").write_bytes(pickle.dumps({"step": 1, "x": Evil()}))
    r = _train(tmp_path / "s", run, tiny_vlm, cli_env, "--resume", steps=2)
    one_line_error(r, "not a synthgen checkpoint", "train_state.pt")
    assert "weights_only=False" not in r.stderr and "pwned" not in r.stdout


def _coco(tmp_path: Path, images: dict[str, bytes], extra_anns=(), extra_cats=(), extra_imgs=()):
    root = tmp_path / "images"
    root.mkdir(exist_ok=True)
    for name, data in images.items():
        (root / name).write_bytes(data)
    imgs = [{"id": i + 1, "file_name": n, "width": 64, "height": 64} for i, n in enumerate(images)]
    anns = [{"id": 100 + i, "image_id": i + 1, "category_id": 1, "bbox": [1, 2, 30, 40]} for i in range(len(images))]
    coco = {"images": imgs + list(extra_imgs), "categories": [{"id": 1, "name": "cat"}, *extra_cats],
            "annotations": anns + list(extra_anns)}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    return tmp_path / "coco.json", root


def _png(size=(64, 64)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (50, 90, 130)).save(buf, format="PNG")
    return buf.getvalue()


def _bomb() -> bytes:
    """A PNG header claiming 30000 x 30000 pixels (above Pillow's decompression-bomb limit)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))


BAD_IMAGES = {"truncated.png": _png()[:60], "empty.jpg": b"", "text.jpg": b"hello, not an image",
              "bomb.png": _bomb()}


def test_eval_pin_counts_bad_annotations_and_images(tmp_path, cli_env, trained_run):
    coco_json, images = _coco(
        tmp_path, {"ok.png": _png(), "one.png": _png((1, 1)), **BAD_IMAGES},
        extra_anns=[{"id": 1, "image_id": 1, "category_id": 1, "bbox": ["1", "2", "3", "4"]},
                    {"id": 2, "image_id": 999, "category_id": 1, "bbox": [1, 1, 5, 5]},
                    {"id": 3, "image_id": 1, "category_id": 7, "bbox": [1, 1, 5, 5]},
                    {"id": 4, "image_id": 1, "category_id": 8, "bbox": [1, 1, 5, 5]},
                    {"id": 5, "image_id": 50, "category_id": 1, "bbox": [1, 1, 5, 5]}],
        extra_cats=[{"id": 7, "name": None}, {"id": 8, "name": "  "}],
        extra_imgs=[{"id": 50, "file_name": "ok.png", "width": 0, "height": 64}])
    out = tmp_path / "e" / "preds.jsonl"
    r = run_cli(["eval-pin", trained_run, "--coco-json", coco_json, "--images", images, "--out", out], cli_env)
    assert r.returncode == 0, r.stderr
    m = json.loads(out.with_name("metrics.json").read_text())
    sk = {k: v["count"] for k, v in m["skipped"].items()}
    assert sk == {"bad_bbox": 1, "unknown_image": 2, "bad_category": 2, "unknown_category": 2,
                  "bad_image_size": 1, "unreadable_image": 4}, sk
    assert m["n"] == 2  # ok.png and the 1x1 image


def test_eval_pin_wrong_shaped_files_are_one_line(tmp_path, cli_env, trained_run):
    images = tmp_path / "images"
    images.mkdir()
    for text in ("[1, 2]", '{"images": {}}', "not json"):
        (tmp_path / "c.json").write_text(text)
        r = run_cli(["eval-pin", trained_run, "--coco-json", tmp_path / "c.json", "--images", images,
                     "--baseline", "random"], cli_env)
        one_line_error(r, "c.json")
    d = tmp_path / "refcoco"
    d.mkdir()
    (d / "refs(unc).p").write_bytes(pickle.dumps({"not": "a list"}))
    (d / "instances.json").write_text(json.dumps({"images": [], "annotations": []}))
    r = run_cli(["eval-pin", trained_run, "--refcoco", d, "--images", images, "--baseline", "random"], cli_env)
    one_line_error(r, "refer toolkit layout")
    (d / "refs(unc).p").write_bytes(b"\x80\x02garbage")
    r = run_cli(["eval-pin", trained_run, "--refcoco", d, "--images", images, "--baseline", "random"], cli_env)
    one_line_error(r, "pickle")


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_predict_on_a_bad_image_is_one_line(tmp_path, cli_env, trained_run, name):
    img = tmp_path / name
    img.write_bytes(BAD_IMAGES[name])
    r = run_cli(["predict", trained_run, img, "cat"], cli_env)
    one_line_error(r, str(img))


def test_predict_on_a_1x1_image_works(tmp_path, cli_env, trained_run):
    img = tmp_path / "one.png"
    img.write_bytes(_png((1, 1)))
    r = run_cli(["predict", trained_run, img, "cat", "-o", tmp_path / "boxed.png"], cli_env)
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "boxed.png").size == (1, 1)
