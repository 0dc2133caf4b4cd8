"""The Python API mirrors the CLI: each function writes what its command writes, and
SceneGenerator's scene k is compose's scene k."""

from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

import synthgen
from synthgen.errors import UserError


def _tars(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("scenes-*.tar"))}


def test_import_synthgen_is_light():
    code = ("import sys, synthgen; synthgen.SceneGenerator; "
            "print(sorted(m for m in ('torch', 'ray', 'diffusers', 'rembg', 'transformers') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_compose_is_the_cli_compose_and_stays_callable_beside_the_package(bank, backgrounds, tmp_path, cli_env):
    import synthgen.compose.run  # noqa: F401 - the subpackage imported first: synthgen.compose stays callable

    manifest = synthgen.compose(str(bank), str(backgrounds), str(tmp_path / "api"), 10, samples_per_shard=4,
                                a_max=2, s_min=[0.3, 0.2], seed=3, executor="serial", progress=False)
    assert manifest["totals"]["samples"] == 10 and manifest["options"]["params"]["layout"]["a_max"] == 2
    r = subprocess.run([sys.executable, "-m", "synthgen", "compose", "--objects", str(bank), "--backgrounds",
                        str(backgrounds), "--out", str(tmp_path / "cli"), "-n", "10", "--samples-per-shard", "4",
                        "--a-max", "2", "--s-min", "0.3,0.2", "--seed", "3", "--executor", "serial"],
                       env=cli_env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert _tars(tmp_path / "api") == _tars(tmp_path / "cli")
    with pytest.raises(UserError, match=r"compose: unknown option\(s\) a_maks"):
        synthgen.compose(str(bank), str(backgrounds), str(tmp_path / "x"), 4, a_maks=2)


def test_scene_generator_gives_compose_scenes_in_memory(bank, backgrounds, tmp_path):
    out = tmp_path / "shards"
    synthgen.compose(str(bank), str(backgrounds), str(out), 6, samples_per_shard=6, masks=True, seed=5,
                     executor="serial", progress=False)
    gen = synthgen.SceneGenerator(str(bank), str(backgrounds), num_samples=6, masks=True, seed=5)
    gen = pickle.loads(pickle.dumps(gen))  # what a DataLoader worker receives
    assert len(gen) == 6
    ds = wds.WebDataset([str(p) for p in sorted(out.glob("scenes-*.tar"))], shardshuffle=False)
    for k, sample in enumerate(ds):
        scene = gen[k]
        assert json.loads(sample["json"]) == json.loads(scene.record.to_json())
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(sample["mask.png"]))), scene.mask)
        assert scene.encode(95)["jpg"] == sample["jpg"]  # the same pixels, so the same JPEG
        assert scene.image.shape == (224, 224, 3) and scene.image.dtype == np.uint8
        assert np.array_equal(scene.image, np.asarray(scene.canvas)) and scene.canvas.mode == "RGB"
    assert [s.key for s in gen] == [f"{k:09d}" for k in range(6)]
    with pytest.raises(IndexError):
        gen[6]


@pytest.mark.slow
def test_train_eval_predict_through_the_api(tmp_path, bank, backgrounds):
    from synthgen.demo.tiny_blip2 import build_tiny_blip2

    model = tmp_path / "tiny-blip2"
    build_tiny_blip2(str(model))
    shards = tmp_path / "shards"
    synthgen.compose(str(bank), str(backgrounds), str(shards), 16, samples_per_shard=8, executor="serial",
                     progress=False)
    lines: list[str] = []
    res = synthgen.train_pin(str(shards), out=str(tmp_path / "run"), vlm="blip2", model=str(model), steps=3,
                             batch_size=4, loader_workers=0, hidden=[16, 16], save_every=3, progress=False,
                             echo=lines.append)
    assert res["step"] == 3 and (tmp_path / "run" / "pin.safetensors").is_file()
    from synthgen.compose.export import export_coco

    export_coco(str(shards), tmp_path / "coco")
    m = synthgen.eval_pin(str(tmp_path / "run"), coco_json=str(tmp_path / "coco" / "instances.json"),
                          images=str(tmp_path / "coco" / "images"), limit=4, batch_size=4)
    assert m["n"] == 4 and (tmp_path / "run" / "eval").is_dir()
    image = next((tmp_path / "coco" / "images").glob("*.jpg"))
    p = synthgen.predict(str(tmp_path / "run"), str(image), "red block", out=str(tmp_path / "boxed.png"))
    assert len(p["box"]) == 4 and (tmp_path / "boxed.png").is_file()
    with pytest.raises(UserError, match="give one of --coco-json FILE, --voc DIR, --refcoco DIR or --scenes SHARDS"):
        synthgen.eval_pin(str(tmp_path / "run"))
