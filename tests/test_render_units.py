"""Fast, model-free tests of the render stage: categories, seeds, filter, bank writer, planning,
CLI validation."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from synthgen.errors import UserError
from synthgen.render import categories as C
from synthgen.render.bank_writer import BankWriter, read_index
from synthgen.render.filter import (AREA, EMPTY_MASK, LOW_CLIP, SMALL_CATEGORY, FilterConfig,
                                    filter_category)
from synthgen.render.pipeline import LIGHT_GPU, RenderConfig, plan_resources
from synthgen.render.seeds import object_seed, prompt_for

# A small LVIS-format annotation file: 4 COCO classes (one of them not a VOC class), names that
# differ from COCO's (cow = beef.n.01, couch = sofa.n.01), and 4 non-COCO categories.
LVIS_FIXTURE = [
    {"id": 1, "name": "aerosol_can", "synset": "aerosol.n.02", "synonyms": ["aerosol_can", "spray_can"],
     "def": "a dispenser", "frequency": "c"},
    {"id": 5, "name": "bow_(weapon)", "synset": "bow.n.04", "synonyms": ["bow_(weapon)"], "def": "x",
     "frequency": "r"},
    {"id": 80, "name": "beef_(food)", "synset": "beef.n.01", "synonyms": ["cow"], "def": "x", "frequency": "f"},
    {"id": 793, "name": "person", "synset": "person.n.01", "synonyms": ["person", "baby"], "def": "x",
     "frequency": "f"},
    {"id": 982, "name": "sofa", "synset": "sofa.n.01", "synonyms": ["couch", "sofa"], "def": "x",
     "frequency": "f"},
    {"id": 1102, "name": "toothbrush", "synset": "toothbrush.n.01", "synonyms": ["toothbrush"], "def": "x",
     "frequency": "f"},
    {"id": 848, "name": "projectile_(weapon)", "synset": "projectile.n.01", "synonyms": ["projectile_(weapon)"],
     "def": "x", "frequency": "r"},
    {"id": 916, "name": "sausage", "synset": "sausage.n.01", "synonyms": ["sausage"], "def": "x", "frequency": "f"},
]


@pytest.fixture()
def lvis_file(tmp_path):
    p = tmp_path / "lvis_v1_val.json"
    p.write_text(json.dumps({"images": [], "annotations": [], "categories": LVIS_FIXTURE}))
    return p


# -- categories ------------------------------------------------------------------------------------


def test_clean_name_and_slug():
    assert C.clean_name("bow_(weapon)") == "bow (weapon)"
    assert C.Category("bow_(weapon)").display == "bow (weapon)"
    assert C.slugify("bow_(weapon)") == "bow_weapon"
    assert C.slugify("Mr. Potato  Head!") == "mr_potato_head"


def test_exclusion_counts_on_lvis_fixture(lvis_file):
    sel = C.select_categories("lvis", categories_file=lvis_file, exclude="coco,voc")
    names = [c.name for c in sel.categories]
    # person, beef (cow), sofa (couch), toothbrush are COCO classes; VOC adds none after COCO
    assert sel.excluded == {"COCO classes": 4, "VOC classes": 0}
    assert names == ["aerosol_can", "bow_(weapon)", "projectile_(weapon)", "sausage"]
    voc = C.select_categories("lvis", categories_file=lvis_file, exclude="voc")
    assert voc.excluded == {"VOC classes": 3}  # person, cow, sofa; toothbrush is COCO-only
    assert "toothbrush" in [c.name for c in voc.categories]


def test_exclude_names_only_and_unknown(lvis_file):
    sel = C.select_categories("lvis", categories_file=lvis_file, exclude="coco,projectile")
    assert "projectile_(weapon)" not in [c.name for c in sel.categories]
    assert sel.excluded["named (projectile)"] == 1
    only = C.select_categories("lvis", categories_file=lvis_file, only="spray can,sausage")
    assert [c.name for c in only.categories] == ["aerosol_can", "sausage"]
    with pytest.raises(UserError, match="unicorn"):
        C.select_categories("lvis", categories_file=lvis_file, only="unicorn")
    with pytest.raises(UserError, match="no categories left"):
        C.select_categories("lvis", categories_file=lvis_file, only="person", exclude="coco")


def test_coco_voc_lists():
    coco = C.select_categories("coco")
    assert len(coco.categories) == 80
    hot_dog = next(c for c in coco.categories if c.name == "hot dog")
    assert hot_dog.id is None
    voc = C.select_categories("voc")
    assert len(voc.categories) == 20
    assert "dining table" in [c.display for c in voc.categories]
    # every VOC class is a COCO class
    assert len(C.select_categories("coco", exclude="voc").categories) == 60


def test_name_files(tmp_path):
    txt = tmp_path / "names.txt"
    txt.write_text("zebra\n# a comment\n\nbow_(weapon)  # trailing\n")
    assert [c.display for c in C.select_categories(str(txt)).categories] == ["zebra", "bow (weapon)"]
    js = tmp_path / "names.json"
    js.write_text(json.dumps(["cat", "dog", "cat"]))
    assert [c.name for c in C.select_categories(str(js)).categories] == ["cat", "dog"]
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="not valid json"):
        C.select_categories(str(bad))
    with pytest.raises(UserError, match="lvis, coco, voc or an existing file"):
        C.select_categories(str(tmp_path / "missing.txt"))


def test_lvis_cache_and_offline_error(tmp_path, monkeypatch, lvis_file):
    cache = tmp_path / "cache"
    monkeypatch.setenv("SYNTHGEN_CACHE", str(cache))
    monkeypatch.setenv("SYNTHGEN_OFFLINE", "1")
    with pytest.raises(UserError) as err:
        C.select_categories("lvis")
    msg = str(err.value)
    assert "lvis_v1_val.json" in msg and str(cache) in msg and "\n" not in msg
    cache.mkdir()
    (cache / "lvis_v1_val.json").write_text(lvis_file.read_text())
    assert len(C.select_categories("lvis").categories) == len(LVIS_FIXTURE)


# -- seeds -----------------------------------------------------------------------------------------


def test_seeds_are_stable_and_independent_of_order():
    a = object_seed(0, "cat", 3)
    assert a == object_seed(0, "cat", 3)
    assert 0 <= a < 2 ** 63
    seeds = {object_seed(0, c, i) for c in ("cat", "dog") for i in range(50)}
    assert len(seeds) == 100
    assert object_seed(1, "cat", 3) != a
    assert prompt_for("a photo of a single {name}", "bow (weapon)") == "a photo of a single bow (weapon)"


# -- filter ----------------------------------------------------------------------------------------


def test_filter_best_of_category_survives_below_min_clip():
    cfg = FilterConfig(min_clip=21, tolerance=1, area_lo=0.05, area_hi=0.95, min_per_category=1)
    res = filter_category([15.0, 14.5, 13.9, 10.0], [0.3] * 4, cfg)
    assert res.bar == pytest.approx(14.0)  # min(21, 15 - 1)
    assert res.kept == [True, True, False, False]
    assert res.reasons == [None, None, LOW_CLIP, LOW_CLIP]


def test_filter_bar_is_min_clip_when_category_is_good():
    cfg = FilterConfig(min_per_category=1)
    res = filter_category([30.0, 22.0, 20.5, 21.0], [0.5] * 4, cfg)
    assert res.bar == 21.0
    assert res.kept == [True, True, False, True]


def test_filter_area_and_empty_masks():
    cfg = FilterConfig(min_per_category=1)
    res = filter_category([25.0, 25.0, 25.0, None, float("nan")], [0.04, 0.96, 0.5, 0.5, 0.5], cfg)
    assert res.reasons == [AREA, AREA, None, EMPTY_MASK, EMPTY_MASK]
    assert res.n_kept == 1
    # the best-scoring object can still fail the area test
    res = filter_category([30.0, 22.0], [0.99, 0.5], cfg)
    assert res.kept == [False, True] and res.bar == 21.0


def test_filter_min_per_category_drops_category():
    cfg = FilterConfig(min_per_category=3)
    res = filter_category([25.0, 24.0, 10.0], [0.5] * 3, cfg)
    assert res.category_dropped and res.kept == [False, False, False]
    assert res.reasons == [SMALL_CATEGORY, SMALL_CATEGORY, LOW_CLIP]
    ok = filter_category([25.0, 24.0, 23.0], [0.5] * 3, cfg)
    assert not ok.category_dropped and ok.n_kept == 3


def test_filter_all_empty():
    res = filter_category([None, None], [None, None], FilterConfig(min_per_category=0))
    assert res.bar is None and res.reasons == [EMPTY_MASK, EMPTY_MASK]


# -- bank writer -----------------------------------------------------------------------------------


def _doc(slug, name, n_kept, n=3):
    recs = [{"id": f"{slug}/{i:05d}", "category": name, "category_id": None,
             "path": f"{slug}/{i:05d}.png" if i < n_kept else None, "width": 2, "height": 2,
             "kept": i < n_kept, "reason": None if i < n_kept else "clip_below_bar"} for i in range(n)]
    stats = {"generated": n, "kept": n_kept, "category_dropped": False, "seconds": 1.0}
    return {"slug": slug, "category": {"name": name}, "stats": stats, "records": recs}


def test_bank_writer_resume_has_no_duplicates(tmp_path):
    w = BankWriter(tmp_path / "bank")
    assert not (tmp_path / "bank").exists()  # nothing written before the first category
    w.add_category(_doc("cat", "cat", 2), {"cat/00000.png": b"a", "cat/00001.png": b"b"})
    w.flush()
    (tmp_path / "bank" / "cat" / ".junk.png.123.synthgen-tmp").write_bytes(b"half")
    w2 = BankWriter(tmp_path / "bank")  # a re-run
    assert w2.finished() == {"cat"}
    assert not list((tmp_path / "bank").rglob("*.synthgen-tmp"))
    w2.add_category(_doc("cat", "cat", 2), {})  # re-adding a category replaces it
    w2.add_category(_doc("dog", "dog", 1), {"dog/00000.png": b"c"})
    w2.flush()
    recs = read_index(tmp_path / "bank")
    ids = [r["id"] for r in recs]
    assert len(ids) == len(set(ids)) == 6
    pools = json.loads((tmp_path / "bank" / "LVIS_instance_pools.json").read_text())
    assert pools == {"cat": ["cat/00000.png", "cat/00001.png"], "dog": ["dog/00000.png"]}
    stats = json.loads((tmp_path / "bank" / "render_stats.json").read_text())
    assert stats["totals"]["kept"] == 3 and stats["totals"]["categories"] == 2


# -- config and planning ---------------------------------------------------------------------------


@pytest.mark.parametrize("kw, msg", [
    ({"area": (0.9, 0.1)}, "--area"), ({"size": 100}, "--size"), ({"prompt": "a cat"}, "{name}"),
    ({"cutout": "u2net_custom"}, "model path"), ({"cutout": ""}, "at least one"),
    ({"gpus_per_worker": 0}, "--gpus-per-worker"),
])
def test_config_validation(tmp_path, kw, msg):
    with pytest.raises(UserError, match=msg):
        RenderConfig(out=tmp_path, **kw)


def test_plan_packs_gpus_exactly():
    p = plan_resources(gpus=8, cpus=64, gpus_per_worker=1)
    assert p.n_gen == 8 and p.n_light == 8
    assert p.n_gen * p.gen_gpus + 2 * p.n_light * p.light_gpus == pytest.approx(8)
    assert p.gen_gpus + 2 * LIGHT_GPU <= 1.0 + 1e-9  # a generator and its light actors fit one GPU
    half = plan_resources(gpus=2, cpus=16, gpus_per_worker=0.5)
    assert half.n_gen == 4
    assert half.n_gen * half.gen_gpus + 2 * half.n_light * half.light_gpus <= 2 + 1e-9
    cpu = plan_resources(gpus=0, cpus=2, gpus_per_worker=1)
    assert cpu.gen_gpus == 0 and cpu.n_gen == 1
    assert cpu.gen_cpus + 2 * cpu.light_cpus <= 2


def test_cli_help_and_bad_input(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "synthgen", *a], capture_output=True,
                                    text=True, timeout=120)
    h = run("render", "--help")
    assert h.returncode == 0
    for opt in ("--categories", "--exclude", "--per-category", "--out", "--sd-model", "--steps",
                "--guidance", "--size", "--prompt", "--clip-model", "--clip-pretrained", "--cutout",
                "--min-clip", "--tolerance", "--area", "--min-per-category", "--batch-size",
                "--seed", "--gpus-per-worker", "--ray-address", "--keep-rejected", "--only",
                "--categories-file"):
        assert opt in h.stdout, opt
    bad = run("render", "--categories", "coco", "--out", str(tmp_path / "b"), "--area", "0.5")
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "--area" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert not (tmp_path / "b").exists()
