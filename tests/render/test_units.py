"""Fast, model-free tests of the render stage: categories, seeds, filter, bank writer, planning,
CLI validation."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from synthgen.bank.writer import BankWriter, read_index
from synthgen.errors import UserError, raise_problems
from synthgen.render import categories as C
from synthgen.render.config import RenderConfig
from synthgen.render.filter import AREA, EMPTY_MASK, LOW_CLIP, NSFW, SMALL_CATEGORY, FilterConfig, filter_category
from synthgen.render.pipeline import render
from synthgen.render.plan import LIGHT_GPU, plan_resources
from synthgen.render.seeds import object_seed, prompt_for
from synthgen.storage import RunFolder

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


def test_filter_keeps_earlier_rejections_out_of_the_bar():
    cfg = FilterConfig(min_clip=21, tolerance=1, min_per_category=1)
    # the blacked-out image scores best but neither survives nor sets the bar
    res = filter_category([40.0, 15.0, 14.5], [0.5] * 3, cfg, rejected=[NSFW, None, None])
    assert res.reasons == [NSFW, None, None] and res.kept == [False, True, True]
    assert res.bar == pytest.approx(14.0)
    all_out = filter_category([float("nan")] * 2, [float("nan")] * 2, FilterConfig(min_per_category=1),
                              rejected=[NSFW, NSFW])
    assert all_out.reasons == [NSFW, NSFW] and all_out.category_dropped and all_out.bar is None


# -- NSFW safety checker ---------------------------------------------------------------------------


def test_pipeline_output_with_nsfw_flags_maps_to_rejections():
    from types import SimpleNamespace

    from synthgen.render.generate import images_and_reasons

    imgs = np.full((3, 4, 4, 3), 0.5, dtype=np.float32)
    imgs[1] = 0.0  # what the SD safety checker returns for a flagged image
    ims, reasons = images_and_reasons(SimpleNamespace(images=imgs, nsfw_content_detected=[False, True, False]))
    assert ims.dtype == np.uint8 and ims.shape == (3, 4, 4, 3) and ims[0].min() == 128
    assert reasons == [None, NSFW, None]
    # no checker: the pipeline reports None; other pipelines have no such field at all
    assert images_and_reasons(SimpleNamespace(images=imgs, nsfw_content_detected=None))[1] == [None] * 3
    assert images_and_reasons(SimpleNamespace(images=imgs))[1] == [None] * 3
    assert images_and_reasons(SimpleNamespace(images=imgs, nsfw_detected=[True, False, False]))[1] == \
        [NSFW, None, None]


def _model_index(path, **components):
    path.mkdir(parents=True)
    (path / "model_index.json").write_text(json.dumps(components))
    return str(path)


def test_safety_checker_is_switched_off_only_where_the_pipeline_has_one(tmp_path):
    from synthgen.render.generate import no_safety_checker_kwargs

    sd15 = _model_index(tmp_path / "sd15", _class_name="StableDiffusionPipeline",
                        safety_checker=["stable_diffusion", "StableDiffusionSafetyChecker"],
                        feature_extractor=["transformers", "CLIPImageProcessor"],
                        requires_safety_checker=True, unet=["diffusers", "UNet2DConditionModel"])
    assert no_safety_checker_kwargs(sd15) == {"safety_checker": None, "requires_safety_checker": False}
    sdxl = _model_index(tmp_path / "sdxl", _class_name="StableDiffusionXLPipeline",
                        unet=["diffusers", "UNet2DConditionModel"])
    assert no_safety_checker_kwargs(sdxl) == {}
    custom = _model_index(tmp_path / "custom", _class_name="MyPipeline",
                          safety_checker=["stable_diffusion", "StableDiffusionSafetyChecker"])
    assert no_safety_checker_kwargs(custom) == {"safety_checker": None}
    assert no_safety_checker_kwargs(str(tmp_path / "missing")) == {}


def test_rejected_images_are_not_cut_out_and_keep_their_reason(tmp_path):
    from synthgen.render.cutout import Candidate
    from synthgen.render.records import finish_category as _finish_category
    from synthgen.render.stages import CutoutStage

    class FakeCutter:
        specs = ["a", "b"]
        seen = 0

        def __call__(self, images):
            FakeCutter.seen += len(images)
            return [[Candidate(b"png", 0.5, 2, 2), Candidate(b"png", 0.4, 2, 2)] for _ in images]

    stage = CutoutStage.__new__(CutoutStage)
    stage.cutter = FakeCutter()
    batch = {"seed": np.array([1, 2]), "image": np.zeros((2, 4, 4, 3), np.uint8),
             "gen_reason": np.array([NSFW, ""])}
    out = stage(batch)
    assert FakeCutter.seen == 1  # the blacked-out image is not cut out
    assert list(out["cand_png_0"]) == [b"", b"png"] and np.isnan(out["cand_area_1"][0])
    cfg = RenderConfig(out=tmp_path, per_category=2, min_per_category=1, cutout=["u2net", "isnet-general-use"])
    rows = [{"index": i, "seed": i, "prompt": "p", "png": png, "width": 2, "height": 2,
             "clip_score": score, "area_fraction": area, "cutout_session": None,
             "candidate_scores": [score, score], "gen_reason": reason}
            for i, (png, score, area, reason) in enumerate([(b"", float("nan"), float("nan"), NSFW),
                                                            (b"png", 25.0, 0.5, None)])]
    doc, pngs = _finish_category(C.Category("cat", 1), rows, cfg, 0.0)
    assert [r["reason"] for r in doc["records"]] == [NSFW, None]
    assert doc["stats"]["rejected"] == {NSFW: 1} and doc["stats"]["kept"] == 1
    assert list(pngs) == ["cat/00001.png"]


def _png(size, rgb=(200, 30, 30)) -> bytes:
    import io

    from PIL import Image

    im = Image.new("RGBA", size, (0, 0, 0, 0))
    im.paste(Image.new("RGBA", (size[0] // 2, size[1] // 2), (*rgb, 255)), (size[0] // 4, size[1] // 4))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("keep_rejected", [False, True])
def test_rejected_cut_outs_leave_a_small_thumbnail_compose_never_reads(tmp_path, keep_rejected):
    import io

    from PIL import Image

    from synthgen.bank.format import read_bank_record
    from synthgen.bank.preview import preview_bank
    from synthgen.render.records import finish_category

    cfg = RenderConfig(out=tmp_path, per_category=3, min_per_category=1, keep_rejected=keep_rejected)
    rows = [{"index": i, "seed": i, "prompt": "p", "png": png, "width": 300, "height": 200, "clip_score": score,
             "area_fraction": area, "cutout_session": "u2net", "candidate_scores": [score], "gen_reason": reason}
            for i, (png, score, area, reason) in enumerate([
                (_png((300, 200), (30, 30, 220)), 30.0, 0.3, None),          # kept
                (_png((300, 200), (230, 30, 30)), 10.0, 0.3, None),          # CLIP below the bar
                (b"", float("nan"), float("nan"), NSFW)])]                   # nothing cut out
    doc, pngs = finish_category(C.Category("cat", 1), rows, cfg, 0.0)
    kept, low, black = doc["records"]
    assert (kept["kept"], low["reason"], black["reason"]) == (True, LOW_CLIP, NSFW)
    assert "thumbnail" not in kept and "thumbnail" not in black and black["path"] is None
    if keep_rejected:  # the full PNG, as before
        assert low["path"] == "cat/_rejected/00001.png" and "thumbnail" not in low
        assert pngs[low["path"]] == rows[1]["png"]
    else:
        assert low["path"] is None and low["thumbnail"] == "cat/_rejected/00001.thumb.png"
        with Image.open(io.BytesIO(pngs[low["thumbnail"]])) as im:
            assert im.mode == "RGBA" and max(im.size) == 64 and im.size == (64, 43)
            assert im.getpixel((32, 21))[:3] == (230, 30, 30) and im.getpixel((1, 1))[3] == 0
        assert len(pngs[low["thumbnail"]]) < len(rows[1]["png"])
    assert set(pngs) == {kept["path"], low["path"] or low["thumbnail"]}
    # the bank: compose reads only the kept object; preview shows the rejected one's pixels
    w = BankWriter(tmp_path / "bank")
    w.add_category(doc, pngs)
    w.flush()
    recs = read_index(tmp_path / "bank")
    assert [read_bank_record(r, "x") is not None for r in recs] == [True, False, False]
    assert all((tmp_path / "bank" / p).is_file() for p in pngs)
    path, shown = preview_bank(tmp_path / "bank", tmp_path / "p.png")
    assert shown == 3
    with Image.open(path) as im:
        px = np.asarray(im.convert("RGB")).reshape(-1, 3)
    red = (np.abs(px.astype(int) - (230, 30, 30)).max(1) <= 12).sum()
    assert red > 200, red  # the rejected cut-out is drawn (thumbnail or full PNG), not a grey tile


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
    with RunFolder(tmp_path / "bank", "render", clean="recursive"):  # a re-run, as render opens it
        w2 = BankWriter(tmp_path / "bank")
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
    ({"per_category": 8}, "--per-category 8 is below --min-per-category 20"),
    ({"per_category": 4, "min_per_category": 5}, "--min-per-category to 4 or less"),
])
def test_config_validation(tmp_path, kw, msg):
    cfg = RenderConfig(out=tmp_path / "bank", **kw)
    assert any(msg in p for p in cfg.problems()), cfg.problems()
    with pytest.raises(UserError, match=msg):  # render refuses before touching the folder
        render([C.Category("cat")], cfg)
    assert not (tmp_path / "bank").exists()


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


def _ray_valid(q: float) -> bool:
    """Ray's rules for a GPU/CPU request: >= 0, at most 4 decimals, whole numbers above 1."""
    return q >= 0 and abs(q * 10_000 - round(q * 10_000)) < 1e-6 and (q <= 1 or float(q).is_integer())


def _unplaced(plan, node_gpus) -> int:
    """Place the plan's actors on per-GPU capacities as Ray does (whole GPUs on one node; a
    fraction best-fit on one GPU), generators first as Ray Data starts its actor pools in stage
    order. Returns how many actors found no room."""
    free = [[1.0] * int(g) for g in node_gpus]
    missing = 0
    for q in [plan.gen_gpus] * plan.n_gen + [plan.light_gpus, plan.cut_gpus] * plan.n_light:
        if q == 0:
            continue
        if q >= 1:
            node = next((n for n in free if sum(f >= 1 - 1e-9 for f in n) >= q), None)
            if node is not None:
                idle = [i for i, f in enumerate(node) if f >= 1 - 1e-9][:int(q)]
                for i in idle:
                    node[i] = 0.0
        else:
            fits = [(f, n, i) for n in free for i, f in enumerate(n) if f >= q - 1e-9]
            node = None
            if fits:
                f, node, i = min(fits, key=lambda t: t[0])
                node[i] = f - q
        missing += node is None
    return missing


PLAN_TABLE = [  # (GPUs per node, CPUs, --gpus-per-worker)
    ([4], 2, 1), ([4], 16, 1), ([2, 2], 16, 1), ([3, 3], 16, 0.5), ([5], 8, 0.5), ([8], 64, 1), ([1], 2, 1),
    ([2], 16, 0.5), ([3], 16, 0.4), ([1], 4, 0.3), ([2], 4, 0.25), ([2], 4, 0.15), ([1], 4, 0.1), ([3], 8, 0.7),
    ([1], 1, 0.01), ([8], 4, 1), ([0], 2, 1), ([0], 8, 0.5),
]
CPU_ONNX = ["AzureExecutionProvider", "CPUExecutionProvider"]  # onnxruntime's CPU build
GPU_ONNX = ["CUDAExecutionProvider", "CPUExecutionProvider"]    # onnxruntime-gpu


@pytest.mark.parametrize("onnx", [CPU_ONNX, GPU_ONNX], ids=["onnx-cpu", "onnx-gpu"])
@pytest.mark.parametrize("node_gpus, cpus, gpw", PLAN_TABLE)
def test_plan_never_books_more_than_the_cluster(node_gpus, cpus, gpw, onnx):
    gpus = sum(node_gpus)
    p = plan_resources(gpus=gpus, cpus=cpus, gpus_per_worker=gpw, node_gpus=node_gpus, onnx_providers=onnx)
    for q in (p.gen_gpus, p.light_gpus, p.cut_gpus, p.gen_cpus, p.light_cpus):
        assert _ray_valid(q), (q, p)
    assert p.n_gen >= 1 and p.n_light >= 1 and p.gen_cpus > 0 and p.light_cpus > 0
    assert p.n_gen * p.gen_gpus + p.n_light * (p.light_gpus + p.cut_gpus) <= gpus + 1e-9, p
    assert p.n_gen * p.gen_cpus + 2 * p.n_light * p.light_cpus <= cpus + 1e-9, p
    assert _unplaced(p, node_gpus) == 0, p  # every actor fits on some GPU
    assert p.cut_gpus == (p.light_gpus if onnx is GPU_ONNX else 0.0)
    if gpus == 0:
        assert p.gen_gpus == p.light_gpus == p.cut_gpus == 0
    else:
        assert 0 < p.gen_gpus <= gpw and p.n_gen == int(1 / gpw + 1e-9) * gpus


@pytest.mark.parametrize("gpw", [1.5, 2, 2.5, 0.001])
def test_config_rejects_unschedulable_gpus_per_worker(tmp_path, gpw):
    with pytest.raises(UserError, match="--gpus-per-worker"):
        raise_problems(RenderConfig(out=tmp_path / "bank", gpus_per_worker=gpw).problems())
    assert not RenderConfig(out=tmp_path / "bank", gpus_per_worker=1).problems()
    assert not RenderConfig(out=tmp_path / "bank", gpus_per_worker=0.25).problems()


@pytest.mark.slow
def test_planned_actors_start_on_a_fake_gpu_ray():
    """4 (fake) GPUs, --gpus-per-worker 0.5, onnxruntime's CPU build. Every planned actor must be
    created and scheduled by a real Ray (nothing left pending); generators and scorers hold a GPU,
    the cut-out actors none."""
    import logging

    import ray

    ray.init(num_cpus=2, num_gpus=4, object_store_memory=80 << 20, include_dashboard=False,
             logging_level=logging.ERROR)
    try:
        @ray.remote
        class Probe:
            def gpus(self):
                return ray.get_gpu_ids()

        p = plan_resources(4, 2, 0.5, node_gpus=[n["Resources"].get("GPU", 0) for n in ray.nodes()],
                           onnx_providers=CPU_ONNX)
        actors = [Probe.options(num_gpus=p.gen_gpus, num_cpus=p.gen_cpus).remote()
                  for _ in range(p.n_gen)]
        actors += [Probe.options(num_gpus=q, num_cpus=p.light_cpus).remote()
                   for q in (p.light_gpus, p.cut_gpus) for _ in range(p.n_light)]
        ids = ray.get([a.gpus.remote() for a in actors], timeout=60)
        assert p.n_gen == 8 and p.n_light == 4
        assert [len(i) for i in ids] == [1] * p.n_gen + [1] * p.n_light + [0] * p.n_light
        by_gpu = [sum(i == [g] for i in ids[:p.n_gen]) for g in range(4)]
        assert by_gpu == [2, 2, 2, 2]  # two generators on each GPU
    finally:
        ray.shutdown()


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


@pytest.mark.parametrize("args, expect", [
    (["--gpus-per-worker", "2"], "--gpus-per-worker must be <= 1 (got 2)"),
    (["--per-category", "8"], "lower --min-per-category"),  # default --min-per-category 20
])
def test_cli_rejects_bad_settings_before_any_work(tmp_path, args, expect):
    out = tmp_path / "bank"
    r = subprocess.run([sys.executable, "-m", "synthgen", "render", "--categories", "coco",
                        "--out", str(out), *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and expect in r.stderr, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert not out.exists()
