"""Scenes from the composition function: pixel truth, masks, text and determinism."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from synthgen.compose.backgrounds import list_backgrounds
from synthgen.compose.bank import ObjectBank
from synthgen.compose.config import ComposeParams, LayoutParams
from synthgen.compose.scene import Composer, SceneStats, sample_seed
from synthgen.grounding import format_box, query_prompt
from synthgen.schema import SCENE_SCHEMA
from tests.helpers import SOLID_COLOURS


def _composer(bank, backgrounds, **kw) -> Composer:
    lay = kw.pop("layout", LayoutParams())
    params = ComposeParams(layout=lay, masks=True, **kw)
    return Composer(params, ObjectBank.open(bank), list_backgrounds(str(backgrounds)).items)


def _colour_mask(img: np.ndarray, rgb) -> np.ndarray:
    return np.abs(img.astype(int) - np.array(rgb)).max(-1) <= 1


def test_pixel_truth_boxes_masks_and_visibility(bank, backgrounds):
    comp = _composer(bank, backgrounds, same_category_p=0.0)
    seen_full = 0
    for k in range(40):
        sc = comp.scene(k)
        rec, img, mask = sc.record.to_dict(), sc.image, sc.mask
        assert rec["schema"] == SCENE_SCHEMA and rec["key"] == f"{k:09d}"
        assert img.shape == (224, 224, 3) and mask.shape == (224, 224)
        objs = rec["objects"]
        assert 1 <= len(objs) <= 3
        assert int(mask.max()) <= len(objs)
        for i, o in enumerate(objs):
            x1, y1, x2, y2 = o["box"]
            assert [v // 14 for v in o["box"]] == o["cells"] and all(v % 14 == 0 for v in o["box"])
            own = mask == i + 1
            # the mask says exactly where the object's colour is visible
            colour = _colour_mask(img, SOLID_COLOURS[o["category"]])
            assert np.array_equal(own, colour & own)
            ys, xs = np.nonzero(own)
            assert len(ys) > 0
            assert xs.min() >= x1 and xs.max() < x2 and ys.min() >= y1 and ys.max() < y2
            hidden = any(np.any(mask[y1:y2, x1:x2] == j + 1) for j in range(i + 1, len(objs)))
            if not hidden:
                # cropped to its opaque extent: a fully visible object fills its box exactly
                assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x1, y1, x2, y2)
                assert o["visible"] == 1.0
                seen_full += 1
            else:
                assert 0.0 <= o["visible"] < 1.0
        t = rec["target"]
        assert rec["prompt"] == query_prompt(objs[t]["referral"])
        assert rec["answer"] == format_box(objs[t]["box"])
    assert seen_full > 20


def test_visible_fraction_counts_occluded_pixels(bank, backgrounds):
    lay = LayoutParams(a_max=3, fixed_count=True, o_max=1.0, min_visible=0.0)
    comp = _composer(bank, backgrounds, layout=lay)
    found = False
    for k in range(60):
        sc = comp.scene(k)
        for i, o in enumerate(sc.record.to_dict()["objects"]):
            x1, y1, x2, y2 = o["box"]
            full = (x2 - x1) * (y2 - y1)  # solid rectangles fill their boxes
            vis = int((sc.mask == i + 1).sum())
            assert abs(o["visible"] - vis / full) < 1e-3
            found |= o["visible"] < 1.0
    assert found


def test_same_category_repeats_and_positional_referrals(bank, backgrounds):
    comp = _composer(bank, backgrounds, same_category_p=1.0, repeat_rule="any",
                     layout=LayoutParams(fixed_count=True))
    positional = 0
    for k in range(30):
        objs = comp.scene(k).record.to_dict()["objects"]
        cats = {o["category"] for o in objs}
        assert len(cats) == 1  # every later object repeats a category already in the scene
        if len(objs) > 1:
            assert all(o["referral"] != o["category"] and o["category"] in o["referral"] for o in objs)
            assert len({o["referral"] for o in objs}) == len(objs)
            positional += 1
    assert positional > 20


def test_grayscale_background_keeps_objects_in_colour(tmp_path, bank):
    bg = tmp_path / "grey"
    bg.mkdir()
    Image.fromarray(np.full((100, 150), 128, np.uint8), "L").save(bg / "grey.png")
    sc = _composer(bank, bg).scene(0)
    o = sc.record.to_dict()["objects"][0]
    x1, y1, x2, y2 = o["box"]
    patch = sc.image[sc.mask == 1]
    assert np.all(patch.max(-1) - patch.min(-1) > 100)  # saturated colour, not grey


def test_scene_depends_only_on_seed_and_index(bank, backgrounds):
    a = _composer(bank, backgrounds, seed=5)
    b = _composer(bank, backgrounds, seed=5)
    order_a = [a.scene(k).encode(95) for k in (3, 1, 2)]
    order_b = [b.scene(k).encode(95) for k in (2, 3, 1)]
    assert order_a[0] == order_b[1] and order_a[1] == order_b[2] and order_a[2] == order_b[0]
    c = _composer(bank, backgrounds, seed=6)
    assert c.scene(3).encode(95)["json"] != order_a[0]["json"]
    assert json.loads(order_a[0]["json"])["seed"] == sample_seed(5, 3)


def test_encoded_members(bank, backgrounds):
    enc = _composer(bank, backgrounds).scene(0).encode(95)
    assert set(enc) == {"jpg", "json", "mask.png"}
    assert Image.open(io.BytesIO(enc["jpg"])).size == (224, 224)
    m = Image.open(io.BytesIO(enc["mask.png"]))
    assert m.mode == "L" and m.size == (224, 224)


@pytest.mark.parametrize("size,grid", [(448, 16), (364, 14), (224, 14)])
def test_other_canvas_sizes_stay_on_the_grid(bank, backgrounds, size, grid):
    comp = _composer(bank, backgrounds, size=size, layout=LayoutParams(grid=grid))
    cell = size // grid
    for k in range(5):
        rec = comp.scene(k).record.to_dict()
        assert rec["width"] == size and rec["grid"] == grid
        for o in rec["objects"]:
            assert all(v % cell == 0 for v in o["box"]) and max(o["box"]) <= size


def test_background_crop_fit(bank, backgrounds):
    comp = _composer(bank, backgrounds, background_fit="crop")
    rec = comp.scene(0).record.to_dict()
    assert rec["background"]["fit"] == "crop"


def test_dropped_objects_are_counted(bank, backgrounds):
    lay = LayoutParams(a_max=3, fixed_count=True, s_min=(0.9,) * 3, s_max=(1.0,) * 3, o_max=0.0)
    comp = _composer(bank, backgrounds, layout=lay)
    stats = SceneStats()
    placed = sum(len(comp.scene(k, stats).record.to_dict()["objects"]) for k in range(8))
    # near-full-canvas objects without overlap: most cannot be placed and each drop is counted
    assert placed < 3 * 8
    assert stats.dropped_objects["no_position"] == 3 * 8 - placed


def _thin_and_round_bank(root):
    """Cut-outs whose opaque parts fade when shrunk: a 3-px diagonal line, a ring, an ellipse."""
    from tests.helpers import write_rgba

    n = 300
    yy, xx = np.mgrid[0:n, 0:n]
    line = np.zeros((n, n, 4), np.uint8)
    line[np.abs(yy - xx) <= 1] = (200, 30, 30, 255)
    r = np.hypot(yy - n / 2, xx - n / 2)
    ring = np.zeros((n, n, 4), np.uint8)
    ring[(r > n / 2 - 4) & (r < n / 2 - 1)] = (30, 30, 200, 255)
    (root / "pole").mkdir(parents=True)
    (root / "ring").mkdir()
    Image.fromarray(line, "RGBA").save(root / "pole" / "0.png")
    Image.fromarray(ring, "RGBA").save(root / "ring" / "0.png")
    write_rgba(root / "ball" / "0.png", (30, 200, 30), (80, 50), pad=3, shape="ellipse")
    return root


def test_thin_cutouts_fill_their_boxes_or_are_dropped(tmp_path, backgrounds):
    comp = _composer(_thin_and_round_bank(tmp_path / "thin"), backgrounds, same_category_p=0.0)
    stats = SceneStats()
    full = 0
    for k in range(60):
        sc = comp.scene(k, stats)
        objs = sc.record.to_dict()["objects"]
        for i, o in enumerate(objs):
            x1, y1, x2, y2 = o["box"]
            own = sc.mask == i + 1
            assert own.any(), "a labelled object must be visible"  # never a label without pixels
            hidden = any(np.any(sc.mask[y1:y2, x1:x2] == j + 1) for j in range(i + 1, len(objs)))
            if not hidden:
                ys, xs = np.nonzero(own)
                assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x1, y1, x2, y2), o
                full += 1
        t = sc.record.to_dict()["target"]
        assert (sc.mask == t + 1).any()
    assert full > 40
    assert set(stats.dropped_objects) <= {"no_position", "empty_after_resize"}
