"""``synthgen bank-from-annotations`` (issue 23, objects in): instances of a COCO json made here
(polygons, uncompressed and compressed RLE, crowd, bad and hostile entries) cut out by their masks
into a bank whose alpha is the mask, that compose reads; what is left out is counted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthgen.bank.masks import BadSegmentation, counts_from_string, decode, largest_component
from tests.helpers import scene_records
from tests.hostile.conftest import one_line_error, run_cli

H, W = 96, 128


def rle_counts(mask: np.ndarray) -> list[int]:
    """Column-major run lengths, starting with zeros (written here, independently of synthgen)."""
    flat = mask.T.reshape(-1).astype(np.uint8)
    counts, current, n = [], 0, 0
    for v in flat:
        if v != current:
            counts.append(n)
            current, n = v, 0
        n += 1
    counts.append(n)
    return counts


def rle_string(counts: list[int]) -> str:
    """COCO's compressed RLE string of ``counts`` (its documented encoding, written here)."""
    out = []
    for i, c in enumerate(counts):
        x = c - counts[i - 2] if i > 2 else c
        more = True
        while more:
            group = x & 0x1F
            x >>= 5
            more = not ((x == 0 and not group & 0x10) or (x == -1 and group & 0x10))
            out.append(chr(group + (0x20 if more else 0) + 48))
    return "".join(out)


def _image(rng) -> np.ndarray:
    return rng.integers(0, 256, (H, W, 3), dtype=np.uint8)


def _blob(y1, x1, y2, x2) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y1:y2, x1:x2] = True
    return m


@pytest.fixture
def coco(tmp_path):
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    images.mkdir()
    pixels = {}
    for i in (1, 2):
        pixels[i] = _image(rng)
        Image.fromarray(pixels[i]).save(images / f"{i:012d}.png")
    (tmp_path / "secret.png").write_bytes((images / f"{1:012d}.png").read_bytes())
    two_blobs = _blob(10, 10, 60, 50) | _blob(70, 90, 80, 100)        # the small one is dropped
    ring = _blob(20, 60, 90, 120) & ~_blob(40, 80, 70, 100)           # a hole stays a hole
    anns = [
        {"id": 1, "image_id": 1, "category_id": 3, "iscrowd": 0, "segmentation": [[8, 8, 40, 8, 40, 50, 8, 50]]},
        {"id": 2, "image_id": 1, "category_id": 3, "iscrowd": 0,
         "segmentation": {"size": [H, W], "counts": rle_counts(two_blobs)}},
        {"id": 3, "image_id": 2, "category_id": 7, "iscrowd": 0,
         "segmentation": {"size": [H, W], "counts": rle_string(rle_counts(ring))}},
        {"id": 4, "image_id": 2, "category_id": 7, "iscrowd": 1,
         "segmentation": {"size": [H, W], "counts": rle_counts(_blob(0, 0, 50, 50))}},
        {"id": 5, "image_id": 2, "category_id": 7, "iscrowd": 0, "segmentation": [[1, 2, 3]]},      # bad polygon
        {"id": 6, "image_id": 2, "category_id": 3, "iscrowd": 0, "segmentation": [[0, 0, 5, 0, 5, 5]]},  # too small
        {"id": 7, "image_id": 3, "category_id": 3, "iscrowd": 0, "segmentation": [[0, 0, 50, 0, 50, 50]]},
        {"id": 8, "image_id": 4, "category_id": 3, "iscrowd": 0, "segmentation": [[0, 0, 50, 0, 50, 50]]},
    ]
    doc = {"images": [{"id": 1, "file_name": f"{1:012d}.png", "width": W, "height": H},
                      {"id": 2, "coco_url": f"http://images.cocodataset.org/val2017/{2:012d}.png", "width": W, "height": H},
                      {"id": 3, "file_name": "../secret.png", "width": W, "height": H},     # outside --images
                      {"id": 4, "file_name": "missing.png", "width": W, "height": H}],
           "annotations": anns,
           "categories": [{"id": 3, "name": "teddy_bear", "synset": "teddy.n.01"}, {"id": 7, "name": "bus_(vehicle)"}]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(doc))
    return path, images, pixels, {2: two_blobs, 3: ring}


def test_the_rle_codec_and_components_agree_with_masks_made_here():
    rng = np.random.default_rng(1)
    mask = rng.random((H, W)) < 0.3
    counts = rle_counts(mask)
    assert counts_from_string(rle_string(counts)) == counts
    assert (decode({"size": [H, W], "counts": rle_string(counts)}, H, W) == mask).all()
    assert (decode({"size": [H, W], "counts": counts}, H, W) == mask).all()
    # export-coco's encoder (the same module) writes what the decoder reads, as the test's own does
    from synthgen.bank.masks import rle_encode

    assert rle_encode(mask) == {"size": [H, W], "counts": rle_string(counts)}
    assert (decode(rle_encode(mask), H, W) == mask).all()
    # diagonal neighbours join (8-connectivity); the larger of two blobs wins
    m = np.zeros((10, 10), bool)
    m[1, 1] = m[2, 2] = m[3, 3] = True
    m[7:9, 7:9] = True
    assert largest_component(m).sum() == 4 and largest_component(m)[7:9, 7:9].all()
    m[6, 6] = True  # touches the square diagonally: 5
    assert largest_component(m).sum() == 5
    m[4, 4] = m[5, 5] = True  # and now the diagonal line too: 3 + 2 + 1 + 4
    assert largest_component(m).sum() == 10
    for bad in ([[1, 2, 3]], [[0, 0, 1, 1, float("nan"), 2]], {"size": [H, W], "counts": [1, 2]}, {"counts": "!!"}, "x"):
        with pytest.raises(BadSegmentation):
            decode(bad, H, W)


def test_instances_become_a_bank_whose_alpha_is_the_mask(coco, tmp_path, backgrounds, cli_env):
    path, images, pixels, masks = coco
    bank = tmp_path / "bank"
    r = run_cli(["bank-from-annotations", path, "--images", images, "-o", bank, "--min-size", "8"], cli_env)
    assert r.returncode == 0, r.stderr
    assert "done: 3 cut-outs of 2 categories from 4 images" in r.stdout
    for reason in ("crowd): 1", "bad segmentation): 1", "too small): 1", "outside images): 1", "missing image): 1"):
        assert reason in r.stderr, r.stderr
    recs = {json.loads(x)["annotation_id"]: json.loads(x) for x in (bank / "index.jsonl").read_text().splitlines()}
    assert set(recs) == {1, 2, 3}
    assert recs[1]["category"] == "teddy bear" and recs[1]["synset"] == "teddy.n.01" and recs[3]["category"] == "bus (vehicle)"
    for ann, image in ((2, 1), (3, 2)):
        x1, y1, x2, y2 = recs[ann]["box"]
        cut = np.asarray(Image.open(bank / recs[ann]["path"]))
        want = largest_component(masks[ann])[y1:y2, x1:x2]
        assert (cut[..., 3] == want * 255).all()                                  # alpha = the mask
        assert (cut[..., :3][want] == pixels[image][y1:y2, x1:x2][want]).all()    # the image's pixels
        ys, xs = np.nonzero(masks[ann] if ann == 3 else _blob(10, 10, 60, 50))
        assert [x1, y1, x2, y2] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]  # tight
    x1, y1, x2, y2 = recs[1]["box"]                                               # the polygon, boundary included
    assert [x1, y1, x2, y2] == [8, 8, 41, 51] and (np.asarray(Image.open(bank / recs[1]["path"]))[..., 3] == 255).all()
    # compose reads it; a second run changes nothing
    before = {p: p.read_bytes() for p in bank.rglob("*") if p.is_file() and "lock" not in p.name}
    r = run_cli(["bank-from-annotations", path, "--images", images, "-o", bank, "--min-size", "8"], cli_env)
    assert r.returncode == 0, r.stderr
    assert {p: p.read_bytes() for p in bank.rglob("*") if p.is_file() and "lock" not in p.name} == before
    out = tmp_path / "scenes"
    r = run_cli(["compose", "--objects", bank, "--backgrounds", backgrounds, "--out", out, "-n", 8, "--executor",
                 "serial"], cli_env)
    assert r.returncode == 0, r.stderr
    assert {o["category"] for s in scene_records(out) for o in s["objects"]} <= {"teddy bear", "bus (vehicle)"}


def test_filters_and_mistakes(coco, tmp_path, cli_env):
    path, images, _, _ = coco
    r = run_cli(["bank-from-annotations", path, "--images", images, "-o", tmp_path / "b1", "--min-size", "8",
                 "--skip-truncated", "--categories", "bus (vehicle)"], cli_env)
    assert r.returncode == 0, r.stderr
    assert "done: 1 cut-outs of 1 categories" in r.stdout
    r = run_cli(["bank-from-annotations", path, "--images", images, "-o", tmp_path / "b2", "--categories", "buss"],
                cli_env)
    one_line_error(r, "--categories: buss not among the 2 categories")
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [], "annotations": 3}')
    one_line_error(run_cli(["bank-from-annotations", bad, "--images", images, "-o", tmp_path / "b3"], cli_env),
                   "expected COCO / LVIS instances json")
    one_line_error(run_cli(["bank-from-annotations", path, "--images", images, "-o", images / "bank"], cli_env),
                   "overlap")
    r = run_cli(["bank-from-annotations", path, "--images", images, "-o", tmp_path / "b4", "--min-size", "500"], cli_env)
    one_line_error(r, "no instance could be cut out")
    assert not (Path(tmp_path / "b4") / "index.jsonl").exists()
