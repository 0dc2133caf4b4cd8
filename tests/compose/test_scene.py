"""Scenes from the composition function: pixel truth, masks, text and determinism."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from synthgen.bank.reader import ObjectBank
from synthgen.compose.backgrounds import list_backgrounds
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


def _resize_rgba_reference(rgba: np.ndarray, w: int, h: int, passes: int = 3, alpha_min: int = 64):
    """fit_cutout written the plain way: every pass resizes the RGBA array with Pillow."""
    src = rgba
    for _ in range(passes):
        sh, sw = src.shape[:2]
        method = Image.Resampling.BOX if (sw >= w and sh >= h) else Image.Resampling.BILINEAR
        out = np.asarray(Image.fromarray(src, "RGBA").resize((w, h), method))
        opaque = out[:, :, 3] >= alpha_min
        cols, rows = np.flatnonzero(opaque.any(0)), np.flatnonzero(opaque.any(1))
        if not len(cols):
            break
        x1, y1, x2, y2 = int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
        if (x1, y1, x2, y2) == (0, 0, w, h):
            break
        fx, fy = sw / w, sh / h
        c = (int(np.floor(x1 * fx)), int(np.floor(y1 * fy)),
             min(sw, int(np.ceil(x2 * fx))), min(sh, int(np.ceil(y2 * fy))))
        if c == (0, 0, sw, sh):
            break
        src = src[c[1]:c[3], c[0]:c[2]]
    return out, opaque


def test_fit_cutout_on_premultiplied_pixels_gives_the_bytes_of_an_rgba_resize():
    """The bank keeps each cut-out premultiplied so a scene's resizes skip a conversion: the
    result must be byte for byte what resizing the RGBA cut-out gives, on every path (down and
    up, the re-crop passes of thin borders, a box of the cut-out's own size)."""
    from synthgen.bank.reader import CutOut
    from synthgen.compose.scene import fit_cutout

    rng = np.random.default_rng(3)
    passes_seen = 0
    for k in range(60):
        h, w = (int(v) for v in rng.integers(8, 120, 2))
        rgba = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
        yy, xx = np.mgrid[0:h, 0:w]
        # an ellipse with soft, partly faint borders: the thin rim fades when shrunk (re-crop)
        r = ((yy - h / 2) / (h / 2)) ** 2 + ((xx - w / 2) / (w / 2)) ** 2
        rgba[:, :, 3] = np.clip((1.2 - r) * 255 * (0.3 + 0.7 * (k % 2)), 0, 255).astype(np.uint8)
        cut = CutOut(rgba, w / h)
        for bw, bh in [(int(rng.integers(4, 160)), int(rng.integers(4, 160))), (w, h)]:
            got, got_opaque = fit_cutout(cut, bw, bh)
            want, want_opaque = _resize_rgba_reference(rgba, bw, bh)
            assert got.mode == "RGBA" and got.size == (bw, bh)
            assert np.array_equal(np.asarray(got), want), (k, bw, bh)
            assert np.array_equal(got_opaque, want_opaque)
            passes_seen += not want_opaque.all() and want_opaque.any()
    assert passes_seen > 5   # the faint rims did take the re-crop path


@pytest.mark.parametrize("paste", ["soft", "hard"])
def test_paste_is_the_alpha_blend_formula(bank, backgrounds, paste):
    """The scene's pixels are the background with each fitted cut-out blended in order,
    ``round((rgb * a + bg * (255 - a)) / 255)`` (soft) or copied where alpha >= paste_alpha
    (hard), computed here in numpy against the Pillow paste compose uses."""
    from synthgen.compose.scene import fit_cutout

    comp = _composer(bank, backgrounds, paste=paste)
    for k in range(12):
        sc = comp.scene(k)
        rng = np.random.default_rng(sample_seed(comp.p.seed, k))
        bg = np.asarray(comp._background(rng, SceneStats())[0]).astype(np.int64)
        for o in sc.record.objects:
            i = next(j for j, e in enumerate(comp.bank.entries) if e.id == o.object_id)
            x1, y1, x2, y2 = o.box
            rgba, opaque = fit_cutout(comp.bank.load(i), x2 - x1, y2 - y1, alpha_min=comp.p.paste_alpha)
            px = np.asarray(rgba).astype(np.int64)
            region = bg[y1:y2, x1:x2]
            if paste == "soft":
                a = px[:, :, 3:4]
                region[...] = np.floor((px[:, :, :3] * a + region * (255 - a)) / 255 + 0.5)
            else:
                region[opaque] = px[:, :, :3][opaque]
        assert np.array_equal(sc.image, bg.astype(np.uint8)), k


def test_scene_jpeg_carries_no_metadata_of_its_background(tmp_path, bank):
    """A background's JPEG comment, EXIF and ICC profile never reach the scenes (Pillow copies
    a decoded image's comment into what is saved from it)."""
    from PIL import ImageCms

    bgdir = tmp_path / "bg"
    bgdir.mkdir()
    exif = Image.Exif()
    exif[0x010E] = "secret description"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    arr = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    Image.fromarray(arr).save(bgdir / "a.jpg", quality=90, comment=b"owner: someone",
                              exif=exif.tobytes(), icc_profile=icc)
    src = Image.open(bgdir / "a.jpg")
    assert src.info.get("comment") == b"owner: someone" and src.info.get("icc_profile")
    out = _composer(bank, bgdir).scene(0).encode(95)["jpg"]
    im = Image.open(io.BytesIO(out))
    assert "comment" not in im.info and "icc_profile" not in im.info and "exif" not in im.info
    assert b"owner: someone" not in out and b"secret description" not in out
