"""Object banks in every accepted layout, and real-world background oddities."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from synthgen.bank.reader import CutOut, ObjectBank
from synthgen.compose.backgrounds import list_backgrounds, read_background
from synthgen.compose.config import ComposeParams
from synthgen.compose.scene import Composer, SceneStats
from synthgen.errors import UserError
from synthgen.images import Skip, decode
from tests.helpers import make_backgrounds, write_rgba


def test_index_bank_reads_kept_objects_and_crops_to_alpha(bank):
    b = ObjectBank.open(bank)
    assert b.layout == "index" and len(b) == 12 and len(b.categories) == 4
    cut = b.load(0)
    assert isinstance(cut, CutOut)
    assert cut.rgba[..., 3].min() == 255  # 5-px transparent margin cropped away
    # rejected objects (kept: false) are not read
    lines = (bank / "index.jsonl").read_text().splitlines()
    rec = json.loads(lines[0])
    rec.update(id="rejected/1", kept=False, path=None)
    (bank / "index.jsonl").write_text("\n".join(lines + [json.dumps(rec)]) + "\n")
    assert len(ObjectBank.open(bank)) == 12


def test_palette_cutout_jpeg_objects_and_text_category_ids(tmp_path):
    root = tmp_path / "bank"
    (root / "car").mkdir(parents=True)
    arr = np.zeros((40, 60), np.uint8)
    arr[10:30, 5:55] = 1
    pal = Image.fromarray(arr, "P")
    pal.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    pal.save(root / "car" / "old_car.png", transparency=0)  # palette PNG with transparency
    Image.new("RGB", (20, 20), (1, 2, 3)).save(root / "car" / "photo.jpg")
    b = ObjectBank.open(root)
    assert len(b) == 2
    got = {b.entries[i].id: b.load(i) for i in range(2)}
    cut = got["car/old_car.png"]
    assert isinstance(cut, CutOut) and cut.rgba.shape[:2] == (20, 50) and cut.rgba[..., 3].min() == 255
    assert got["car/photo.jpg"].reason == "no_alpha"  # listed, then skipped and counted
    (root / "index.jsonl").write_text(json.dumps({"id": "a", "category": "car", "category_id": "n0712",
                                                  "path": "car/old_car.png"}) + "\n")
    with pytest.raises(UserError, match="category_id must be an integer"):
        ObjectBank.open(root)


def test_tree_bank_and_loose_files(tmp_path):
    write_rgba(tmp_path / "tree" / "teddy_bear" / "a.png", (200, 0, 0))
    write_rgba(tmp_path / "tree" / "teddy_bear" / "b.png", (0, 200, 0))
    write_rgba(tmp_path / "tree" / "apple_02.png", (0, 0, 200))
    b = ObjectBank.open(tmp_path / "tree")
    assert b.layout == "tree" and b.categories == ["apple", "teddy bear"]
    assert len(b.by_category[1]) == 2


def test_xpaste_pools_json(tmp_path):
    root = tmp_path / "xp"
    write_rgba(root / "images" / "bow_(weapon)" / "0.png", (200, 0, 0))
    write_rgba(root / "images" / "bow_(weapon)" / "1.png", (200, 0, 0))
    write_rgba(root / "images" / "apple" / "0.png", (0, 200, 0))
    pools = {"bow_(weapon)": ["/data/authors/machine/images/bow_(weapon)/0.png", "images/bow_(weapon)/1.png"],
             "apple": [str(root / "images" / "apple" / "0.png")]}
    (root / "LVIS_instance_pools.json").write_text(json.dumps(pools))
    b = ObjectBank.open(root)
    assert b.layout == "xpaste-pools" and b.categories == ["apple", "bow (weapon)"]
    assert all(isinstance(b.load(i), CutOut) for i in range(len(b)))  # all three paths resolved


def test_unusable_objects_are_skipped_counted_and_named(tmp_path, backgrounds):
    root = tmp_path / "bank"
    write_rgba(root / "good" / "ok.png", (200, 0, 0))
    (root / "bad").mkdir(parents=True)
    Image.new("RGB", (20, 20), (0, 200, 0)).save(root / "bad" / "no_alpha.png")
    (root / "bad" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    Image.new("RGBA", (20, 20), (0, 0, 0, 0)).save(root / "bad" / "empty.png")
    b = ObjectBank.open(root)
    reasons = {b.entries[i].id: b.load(i).reason for i in range(len(b)) if isinstance(b.load(i), Skip)}
    assert reasons == {"bad/no_alpha.png": "no_alpha", "bad/broken.png": "unreadable",
                       "bad/empty.png": "transparent"}
    comp = Composer(ComposeParams(), b, list_backgrounds(str(backgrounds)).items)
    stats = SceneStats()
    for k in range(30):
        for o in comp.scene(k, stats).record.to_dict()["objects"]:
            assert o["category"] == "good"
    assert set(stats.skipped_objects) == {"no_alpha", "unreadable", "transparent"}
    assert "bad/empty.png" in stats.skipped_objects["transparent"]


def test_empty_or_unusable_bank_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no objects"):
        ObjectBank.open(tmp_path / "empty")
    with pytest.raises(UserError, match="not found"):
        ObjectBank.open(tmp_path / "missing")
    (tmp_path / "badidx").mkdir()
    (tmp_path / "badidx" / "index.jsonl").write_text('{"id": 1}\nnot json\n')
    with pytest.raises(UserError, match=r"index.jsonl:1: missing field"):
        ObjectBank.open(tmp_path / "badidx")


def test_object_cache_is_bounded(bank):
    b = ObjectBank.open(bank, cache_bytes=20_000)
    for i in range(len(b)):
        b.load(i)
    assert b._cached_bytes <= 20_000 or len(b._cache) == 1
    assert len(b._cache) < len(b)


# -- backgrounds -------------------------------------------------------------------------------
def _save(img: Image.Image, path, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def _odd_backgrounds(root):
    rgb = (np.indices((300, 400)).sum(0) % 256).astype(np.uint8)
    base = Image.fromarray(np.stack([rgb, 255 - rgb, rgb // 2], -1))
    _save(base.convert("CMYK"), root / "cmyk.jpg")
    pal = base.convert("P", palette=Image.Palette.ADAPTIVE)
    pal.info["transparency"] = 0
    _save(pal, root / "palette_transparent.png", transparency=0)
    _save(Image.fromarray((np.indices((200, 300)).sum(0) * 100).astype(np.uint16)), root / "gray16.png")
    _save(base.convert("L"), root / "gray.jpg")
    _save(base.convert("1"), root / "bilevel.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 on display
    _save(Image.fromarray(np.zeros((100, 300, 3), np.uint8)), root / "exif_rotated.jpg", exif=exif)
    _save(Image.new("RGB", (8, 8), (10, 20, 30)), root / "tiny.png")
    _save(base, root / "progressive.jpg", progressive=True, quality=80)
    _save(base.convert("RGBA"), root / "rgba.webp")
    buf = io.BytesIO()
    base.save(buf, format="JPEG")
    (root / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    (root / "garbage.png").write_bytes(b"not an image at all")
    return root


def test_decode_normalises_or_skips_every_oddity(tmp_path):
    root = _odd_backgrounds(tmp_path / "odd")
    got = {p.name: decode(str(p), draft_to=224, min_side=32) for p in sorted(root.iterdir())}
    skipped = {k: v.reason for k, v in got.items() if isinstance(v, Skip)}
    assert skipped == {"tiny.png": "too_small", "truncated.jpg": "unreadable", "garbage.png": "unreadable"}
    for name, img in got.items():
        if isinstance(img, Image.Image):
            assert img.mode == "RGB", name
    assert got["exif_rotated.jpg"].size == (100, 300)  # EXIF orientation applied
    g16 = np.asarray(got["gray16.png"])
    assert g16.max() > 100 and g16.min() < 50  # scaled to 8 bit, not clipped to white


def test_decompression_bomb_is_skipped_but_large_image_is_used(tmp_path, monkeypatch):
    big = _save(Image.new("RGB", (300, 300), (1, 2, 3)), tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 60_000)  # 90k px: above the warning, below 2x
    assert isinstance(decode(str(big)), Image.Image)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40_000)  # 90k px > 2x: a bomb
    assert decode(str(big)).reason == "decompression_bomb"


def test_composer_survives_odd_backgrounds_and_counts_skips(tmp_path, bank):
    root = _odd_backgrounds(tmp_path / "odd")
    comp = Composer(ComposeParams(), ObjectBank.open(bank), list_backgrounds(str(root)).items)
    stats = SceneStats()
    used = {comp.scene(k, stats).record.to_dict()["background"]["source"] for k in range(80)}
    assert not any(n in u for u in used for n in ("tiny", "truncated", "garbage"))
    skipped = {r: sorted(names) for r, names in stats.skipped_backgrounds.items()}
    assert set(skipped) == {"too_small", "unreadable"}
    assert any("truncated.jpg" in n for n in skipped["unreadable"])


def test_all_backgrounds_unusable_is_an_error(tmp_path, bank):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "a.jpg").write_bytes(b"nope")
    comp = Composer(ComposeParams(), ObjectBank.open(bank), list_backgrounds(str(root)).items)
    with pytest.raises(UserError, match="no usable background"):
        comp.scene(0)


def test_webdataset_shards_as_background_source(tmp_path):
    src = make_backgrounds(tmp_path / "imgs", n=3)
    tar = tmp_path / "bg-000000.tar"
    with tarfile.open(tar, "w") as tf:
        for i, p in enumerate(sorted(src.iterdir())):
            tf.add(p, arcname=f"{i:06d}.jpg")
            info = tarfile.TarInfo(f"{i:06d}.json")
            data = b"{}"
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    items = list_backgrounds(str(tmp_path / "bg-{000000..000000}.tar")).items
    assert len(items) == 3 and all(i.endswith(".jpg") is False for i in items)
    data = read_background(items[1])
    assert Image.open(io.BytesIO(data)).size == (320, 240)
    assert list_backgrounds(str(tar)).items == items


def test_backgrounds_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        list_backgrounds(str(tmp_path / "nothing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images"):
        list_backgrounds(str(tmp_path / "empty"))


def _bank_with_bad_objects(root, good: int, no_alpha: int, unreadable: int, flat: bool = False):
    """A tree bank of 3 categories: ``good`` cut-outs, then ``no_alpha`` RGB PNGs and ``unreadable``
    broken PNGs, spread over the categories (sub-folders, or loose files named by category)."""
    cats = ["apple", "cup", "teddy_bear"]
    kinds = ["good"] * good + ["no_alpha"] * no_alpha + ["unreadable"] * unreadable
    for k, kind in enumerate(kinds):
        cat = cats[k % 3]
        path = root / (f"{cat}_{k:02d}.png" if flat else f"{cat}/{k:02d}.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "good":
            write_rgba(path, (200, 30 * (k % 8), 0))
        elif kind == "no_alpha":
            Image.new("RGB", (20, 20), (0, 200, 0)).save(path)
        else:
            path.write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    return root


def test_bank_survey_names_the_layout_and_counts_unusable_cutouts(tmp_path, bank):
    b = ObjectBank.open(_bank_with_bad_objects(tmp_path / "tree", 9, 2, 1))
    s = b.survey()
    assert (s.listed, s.checked, s.unusable) == (12, 12, {"no_alpha": 2, "unreadable": 1})
    assert s.usable_fraction == 0.75
    assert s.line() == ("objects: folder of category sub-folders, 3 categories (apple, cup, teddy bear), 12 cut-outs "
                        "(3 unusable: 2 no alpha, 1 unreadable)")
    flat = ObjectBank.open(_bank_with_bad_objects(tmp_path / "flat", 4, 0, 0, flat=True)).survey()
    assert flat.line() == ("objects: flat folder (categories from file names), 3 categories (apple, cup, teddy bear), "
                           "4 cut-outs (all usable)")
    # a synthgen bank, with an entry whose path leaves the bank: refused when listing, counted too
    lines = (bank / "index.jsonl").read_text().splitlines()
    rec = dict(json.loads(lines[0]), id="escape/1", path="../../etc/passwd")
    (bank / "index.jsonl").write_text("\n".join(lines + [json.dumps(rec)]) + "\n")
    s = ObjectBank.open(bank).survey()
    assert s.line() == ("objects: synthgen bank (index.jsonl), 4 categories (blue block, green block, red block, "
                        "yellow block), 13 cut-outs (1 unusable: 1 outside bank)")
    # a bank larger than the limit is judged on an even sample, and says so
    s = b.survey(limit=4)
    assert (s.listed, s.checked) == (12, 4) and "of 4 checked" in s.line()


def test_compose_refuses_a_mostly_unusable_bank_unless_min_usable_allows(tmp_path, backgrounds, cli_env):
    import subprocess
    import sys

    objects = _bank_with_bad_objects(tmp_path / "bank", 1, 10, 1)

    def run(*extra, bank=objects, out=tmp_path / "out"):
        cmd = [sys.executable, "-m", "synthgen", "compose", "--objects", str(bank), "--backgrounds",
               str(backgrounds), "--out", str(out), "-n", "4", "--executor", "serial", *extra]
        return subprocess.run(cmd, env=cli_env, capture_output=True, text=True, timeout=300)

    r = run()
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and "Traceback" not in r.stderr, r.stderr
    assert err[0] == (f"error: object bank {objects} (folder of category sub-folders, 3 categories): 11 of 12 "
                      "cut-outs are unusable (10 no alpha, 1 unreadable), fewer than --min-usable 0.5 usable; "
                      "fix the bank, or pass --min-usable 0 to compose with the 1 usable")
    assert not (tmp_path / "out").exists()  # refused before anything is written
    r = run("--min-usable", "0")
    assert r.returncode == 0, r.stderr
    assert ("objects: folder of category sub-folders, 3 categories (apple, cup, teddy bear), 12 cut-outs "
            "(11 unusable: 10 no alpha, 1 unreadable)") in r.stdout.splitlines()
    # min-usable decides whether a run starts, not what it writes: another value resumes the same run
    r = run("--min-usable", "0.05")
    assert r.returncode == 0 and "other options" not in r.stderr, r.stderr
    r = run("--min-usable", "1.5")
    assert r.returncode == 2 and "--min-usable must lie in [0, 1] (got 1.5)" in r.stderr
    flat = _bank_with_bad_objects(tmp_path / "flat", 6, 0, 0, flat=True)
    r = run(bank=flat, out=tmp_path / "out2")
    assert r.returncode == 0, r.stderr
    assert ("objects: flat folder (categories from file names), 3 categories (apple, cup, teddy bear), "
            "6 cut-outs (all usable)") in r.stdout


def test_min_usable_reaches_the_job_through_the_api_but_not_its_identity(tmp_path, bank, backgrounds):
    import synthgen
    from synthgen import api

    compose_job = lambda *a, **kw: api.compose.call(*a, **kw).config  # noqa: E731

    job = compose_job(str(bank), str(backgrounds), str(tmp_path / "o"), 4, min_usable=0.9)
    ident = job.identity()
    assert job.min_usable == 0.9 and "min_usable" not in ident and "min_usable" not in ident["params"]
    assert ident == compose_job(str(bank), str(backgrounds), str(tmp_path / "o"), 4, min_usable=0).identity()
    assert compose_job(str(bank), str(backgrounds), str(tmp_path / "o"), 4).min_usable == 0.5
    objects = _bank_with_bad_objects(tmp_path / "bad", 1, 3, 0)
    with pytest.raises(UserError, match=r"3 of 4 cut-outs are unusable \(3 no alpha\)"):
        synthgen.compose(str(objects), str(backgrounds), str(tmp_path / "o"), 2, executor="serial", progress=False)
    lines: list[str] = []
    m = synthgen.compose(str(objects), str(backgrounds), str(tmp_path / "o"), 2, executor="serial", progress=False,
                         min_usable=0.25, echo=lines.append)
    assert m["totals"]["samples"] == 2
    assert lines == ["objects: folder of category sub-folders, 3 categories (apple, cup, teddy bear), 4 cut-outs "
                     "(3 unusable: 3 no alpha)",
                     f"backgrounds: 4 images from {backgrounds}"]


def test_preview_of_a_folder_bank_shows_what_compose_skips_and_reads_nothing_outside(tmp_path, cli_env):
    import subprocess
    import sys

    import numpy as np

    bank = _bank_with_bad_objects(tmp_path / "bank", 3, 2, 1)
    outside = tmp_path / "secret.png"
    Image.new("RGBA", (20, 20), (0, 0, 255, 255)).save(outside)   # a colour nothing else has
    (bank / "cup" / "99.png").symlink_to(outside)
    sheet = tmp_path / "sheet.png"
    r = subprocess.run([sys.executable, "-m", "synthgen", "preview", str(bank), "-o", str(sheet)],
                       env=cli_env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "7 objects of the bank" in r.stdout, r.stdout
    px = np.asarray(Image.open(sheet).convert("RGB")).reshape(-1, 3)

    def count(rgb):
        return int((px == rgb).all(axis=1).sum())

    assert count((40, 170, 60)) > 0 and count((210, 50, 50)) > count((40, 170, 60))  # 3 usable, 4 skipped
    assert count((0, 200, 0)) > 0          # a no-alpha cut-out is shown (compose decodes it, then skips it)
    assert count((0, 0, 255)) == 0         # the file the symlink points to, outside the bank, is never read


def test_preview_of_a_flat_folder_lays_its_one_object_categories_side_by_side(tmp_path):
    """A flat folder makes a category of each file: their rows are laid side by side (a sheet, not a
    strip one tile wide and thousands of pixels tall), and the title is not cut off."""
    from synthgen.bank.preview import SHEET_WIDTH, preview_bank
    from tests.helpers import SOLID_COLOURS, write_rgba

    flat = tmp_path / "a-rather-long-folder-name-of-clip-art-downloads"
    for i, rgb in enumerate(list(SOLID_COLOURS.values()) * 4):
        write_rgba(flat / f"thing{chr(97 + i)}.png", rgb)   # 'thinga', 'thingb', ...: one category each
    path, shown = preview_bank(flat, tmp_path / "sheet.png", thumb=64)
    assert shown == 4 * len(SOLID_COLOURS)
    with Image.open(path) as im:
        w, h = im.size
    assert w <= SHEET_WIDTH and w >= 3 * (170 + 136), (w, h)   # several categories across
    assert h < w, (w, h)
