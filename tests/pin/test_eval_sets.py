"""Evaluation sets under the authors' protocol: COCO crowd and LVIS names, a PASCAL VOC devkit
folder written by the test (XML + JPEGs, broken and hostile entries), the paper's random
baseline and what metrics.json records. No model: baselines score the queries."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from synthgen.errors import UserError
from synthgen.pin.evaluation import evaluate as ev
from synthgen.pin.evaluation import protocol as P
from synthgen.pin.evaluation import sets as S


def _run(tmp_path: Path, canvas: int = 224, grid: int = 16) -> Path:
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    (run / "pin.json").write_text(json.dumps({"canvas": canvas, "grid": grid, "vlm": "blip2"}))
    return run


# --- COCO: crowd annotations, names --------------------------------------------------------

def _crowd_coco(tmp_path: Path) -> tuple[Path, Path]:
    images = tmp_path / "images"
    images.mkdir()
    for i in (1, 2, 3):
        Image.new("RGB", (100, 100), (10 * i, 90, 90)).save(images / f"{i}.jpg")
    coco = {"images": [{"id": i, "file_name": f"{i}.jpg", "width": 100, "height": 100} for i in (1, 2, 3)],
            "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "bow_(weapon)"}],
            "annotations": [
                # image 1: one object and one crowd region: 2 objects either way
                {"id": 10, "image_id": 1, "category_id": 1, "bbox": [0, 0, 50, 50], "iscrowd": 0},
                {"id": 11, "image_id": 1, "category_id": 1, "bbox": [50, 50, 50, 50], "iscrowd": 1},
                # image 2: three objects + a crowd region = 4 > 3: dropped, crowd or not
                *({"id": 20 + k, "image_id": 2, "category_id": 2, "bbox": [k, k, 10, 10], "iscrowd": 0}
                  for k in range(3)),
                {"id": 23, "image_id": 2, "category_id": 1, "bbox": [0, 0, 90, 90], "iscrowd": 1},
                # image 3: only a crowd region
                {"id": 30, "image_id": 3, "category_id": 1, "bbox": [10, 10, 20, 20], "iscrowd": 1}]}
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(coco))
    return path, images


def test_crowd_annotations_are_queried_by_default_and_counted(tmp_path):
    path, images = _crowd_coco(tmp_path)
    coco = json.loads(path.read_text())
    queried = S.coco_queries(coco, 3)
    assert [(q["image_id"], q["ann_id"], q["crowd"]) for q in queried] == [(1, 10, False), (1, 11, True),
                                                                           (3, 30, True)]
    tally = Counter()
    skipped = S.coco_queries(coco, 3, crowd="skip", tally=tally)
    assert [q["ann_id"] for q in skipped] == [10]  # image 3 keeps its 1 object but nothing to ask
    assert tally["crowd_not_queried"] == 2
    # crowd regions count towards --max-objects either way: image 1 has 2 objects
    assert S.coco_queries(coco, 1) == [q for q in queried if q["image_id"] == 3]
    assert S.coco_queries(coco, 1, crowd="skip") == []

    run = _run(tmp_path)
    m = ev.evaluate_coco(run, path, images, baseline="uniform", out=tmp_path / "q" / "preds.jsonl")
    assert m["n"] == 3 and m["crowd_queries"] == 2 and "crowd_not_queried" not in m
    recs = [json.loads(x) for x in (tmp_path / "q" / "preds.jsonl").read_text().splitlines()]
    assert [r["crowd"] for r in recs] == [False, True, True]
    m = ev.evaluate_coco(run, path, images, baseline="uniform", crowd="skip", out=tmp_path / "s" / "preds.jsonl")
    assert m["n"] == 1 and m["crowd_queries"] == 0 and m["crowd_not_queried"] == 2
    assert m["protocol"]["crowd"] == "skip"
    saved = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert saved["crowd_not_queried"] == 2 and saved["protocol"]["crowd"] == "skip"


def test_lvis_names_lose_their_qualifier(tmp_path):
    coco = {"images": [{"id": 1, "file_name": "1.jpg", "width": 10, "height": 10}],
            "categories": [{"id": 1, "name": "bow_(weapon)"}, {"id": 2, "name": "sweet_potato"},
                           {"id": 3, "name": "_(nothing)"}],
            "annotations": [{"id": k, "image_id": 1, "category_id": k, "bbox": [0, 0, 5, 5]} for k in (1, 2, 3)]}
    skips = S.Skips()
    assert [q["category"] for q in S.coco_queries(coco, 3, skips)] == ["bow", "sweet potato"]
    assert skips.summary()["bad_category"]["count"] == 1  # nothing left of "_(nothing)"
    assert skips.summary()["unknown_category"]["count"] == 1
    raw = S.coco_queries(coco, 3, names="raw")
    assert [q["category"] for q in raw] == ["bow (weapon)", "sweet potato", "(nothing)"]


# --- PASCAL VOC ----------------------------------------------------------------------------

def _xml(objects, size=(500, 375), name="x") -> str:
    objs = "".join(
        f"<object><name>{n}</name><pose>Left</pose><truncated>0</truncated><difficult>{int(d)}</difficult>"
        f"<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox>"
        f"</object>" for n, b, d in objects)
    return (f"<annotation><folder>VOC2007</folder><filename>{name}.jpg</filename>"
            f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"
            f"<segmented>0</segmented>{objs}</annotation>")


def _voc(tmp_path: Path) -> Path:
    """A VOC2007-layout folder: one image with a single object, one with a difficult object, one
    with 4 objects (filtered out), a malformed XML, a DOCTYPE with an entity, an id with '../',
    a missing annotation, an image whose JPEG is missing and an XML symlinked from outside."""
    voc = tmp_path / "VOCdevkit" / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True)
    xmls = {
        "000001": _xml([("dog", (48, 240, 195, 371), False)]),
        "000002": _xml([("diningtable", (1, 1, 500, 375), False), ("pottedplant", (100, 50, 200, 150), True)]),
        "000003": _xml([("person", (10 * k + 1, 1, 10 * k + 9, 9), False) for k in range(4)]),
        "000004": "<annotation><size><width>500</width></size><object>",  # cut short
        "000005": ('<?xml version="1.0"?><!DOCTYPE annotation [<!ENTITY cat "cat">]>'
                   + _xml([("&cat;", (1, 1, 50, 50), False)])),
        "000007": _xml([("cat", (1, 1, 50, 50), False)]),
    }
    for ident, text in xmls.items():
        (voc / "Annotations" / f"{ident}.xml").write_text(text)
    for ident in ("000001", "000002", "000003", "000004", "000005", "000008"):
        Image.new("RGB", (500, 375), (int(ident) * 20, 80, 80)).save(voc / "JPEGImages" / f"{ident}.jpg")
    outside = tmp_path / "elsewhere.xml"
    outside.write_text(_xml([("cat", (1, 1, 50, 50), False)]))
    os.symlink(outside, voc / "Annotations" / "000008.xml")
    ids = ["000001", "000002", "000003", "000004", "000005", "../../elsewhere", "000006", "000007", "000008", ""]
    (voc / "ImageSets" / "Main" / "test.txt").write_text("\n".join(ids) + "\n")
    return voc


def test_voc_reader_follows_the_authors_and_counts_bad_entries(tmp_path):
    voc = _voc(tmp_path)
    skips = S.Skips()
    queries, split_file = S.voc_queries(voc, "test", 3, skips)
    assert split_file == voc / "ImageSets" / "Main" / "test.txt"
    assert [(q["image_id"], q["category"], q["difficult"]) for q in queries] == [
        ("000001", "dog", False),                       # a single object is kept
        ("000002", "diningtable", False),               # raw VOC names
        ("000002", "pottedplant", True),                # difficult objects are queried
        ("000007", "cat", False)]                       # (its JPEG is missing: the evaluator counts it)
    assert queries[0]["voc_box"] == [48, 240, 195, 371] and (queries[0]["width"], queries[0]["height"]) == (500, 375)
    sk = {k: v["count"] for k, v in skips.summary().items()}
    assert sk == {"bad_xml": 1, "unsafe_xml": 1, "bad_id": 1, "missing_annotation": 1, "outside_voc": 1}, sk
    assert "DOCTYPE annotation refused" in skips["unsafe_xml"][0]
    # 000003 (4 objects) is filtered out, not skipped; with --max-objects 4 it is queried
    assert sum(q["image_id"] == "000003" for q in S.voc_queries(voc, "test", 4)[0]) == 4


def test_voc_evaluation_boxes_buckets_and_metrics(tmp_path):
    voc = _voc(tmp_path)
    run = _run(tmp_path)
    m = ev.evaluate_voc(run, voc, baseline="uniform", out=tmp_path / "e" / "preds.jsonl")
    recs = [json.loads(x) for x in (tmp_path / "e" / "preds.jsonl").read_text().splitlines()]
    assert [(r["image_id"], r["category"]) for r in recs] == [("000001", "dog"), ("000002", "diningtable"),
                                                             ("000002", "pottedplant")]
    assert recs[0]["query"] == "In the image is a dog located at"
    # 500x375 -> 224, each corner int(int(v) * ratio), clipped to 1..224 (by hand in test_protocol)
    assert recs[0]["gt_box"] == [21, 143, 87, 221] and recs[0]["bucket"] == "medium"  # 66x78
    assert recs[1]["gt_box"] == [1, 1, 224, 224] and recs[1]["bucket"] == "large"
    # 100*0.448 = 44.8 -> 44, 50*0.5973 = 29.9 -> 29, 200*0.448 = 89.6 -> 89, 150*0.5973 = 89.6 -> 89
    assert recs[2]["gt_box"] == [44, 29, 89, 89] and recs[2]["bucket"] == "medium"  # 45x60
    assert m["difficult_queries"] == 1 and m["images"] == 2
    sk = {k: v["count"] for k, v in m["skipped"].items()}
    assert sk == {"bad_xml": 1, "unsafe_xml": 1, "bad_id": 1, "missing_annotation": 1, "outside_voc": 1,
                  "missing_image": 1}, sk
    saved = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert saved["protocol"] == {"set_kind": "voc", "article": "auto", "gt_boxes": "authors", "parse": "strict",
                                 "baseline": "uniform", "max_objects": 3, "seed": 0, "canvas": 224, "grid": 16}
    assert saved["size_mismatch_images"] == 0
    # exact boxes: the pixels' extent [xmin-1, ymin-1, xmax, ymax] scaled as floats
    m = ev.evaluate_voc(run, voc, baseline="uniform", gt_boxes="exact", out=tmp_path / "x" / "preds.jsonl")
    rec = json.loads((tmp_path / "x" / "preds.jsonl").read_text().splitlines()[0])
    assert rec["gt_box"] == pytest.approx([21.06, 142.76, 87.36, 221.61], abs=0.01)


def test_voc_wrong_layout_is_one_line(tmp_path):
    run = _run(tmp_path)
    (tmp_path / "notvoc").mkdir()
    with pytest.raises(UserError, match=r"not a VOC folder: no ImageSets/Main/test.txt, Annotations, "
                                        r"JPEGImages \(give the year's folder of the devkit"):
        ev.evaluate_voc(run, tmp_path / "notvoc", baseline="uniform")
    voc = _voc(tmp_path)
    with pytest.raises(UserError, match="not a VOC image set name"):
        ev.evaluate_voc(run, voc, split="../test", baseline="uniform")
    with pytest.raises(UserError, match="no ImageSets/Main/val.txt"):
        ev.evaluate_voc(run, voc, split="val", baseline="uniform")
    (voc / "ImageSets" / "Main" / "bad.txt").write_text("000004\n000005\n")
    with pytest.raises(UserError, match=r"no image has 1..3 objects \(1 bad_xml; 1 unsafe_xml\)"):
        ev.evaluate_voc(run, voc, split="bad", baseline="uniform")


def test_untrusted_xml_never_expands_entities():
    bomb = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]>'
            b"<lolz>&lol2;</lolz>")
    with pytest.raises(S.UnsafeXML):
        S.parse_untrusted_xml(bomb)
    external = b'<!DOCTYPE a SYSTEM "file:///etc/passwd"><a>x</a>'
    with pytest.raises(S.UnsafeXML):
        S.parse_untrusted_xml(external)
    root = S.parse_untrusted_xml(b"<annotation><object><name>cat &amp; dog</name></object></annotation>")
    assert root.findtext("object/name") == "cat & dog"


# --- the paper's random baseline -----------------------------------------------------------

def test_random_baseline_takes_boxes_of_other_images(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    n = 6
    anns = []
    for i in range(n):
        Image.new("RGB", (224, 224), (30 * i, 30, 30)).save(images / f"{i}.jpg")
        for k in range(1 + i % 3):  # 1..3 objects, distinct boxes per image
            anns.append({"id": 10 * i + k, "image_id": i, "category_id": 1,
                         "bbox": [10 * i + k, 5 * k, 30 + 7 * i, 40 + 3 * k]})
    coco = {"images": [{"id": i, "file_name": f"{i}.jpg", "width": 224, "height": 224} for i in range(n)],
            "categories": [{"id": 1, "name": "cat"}], "annotations": anns}
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(coco))
    run = _run(tmp_path)

    def preds(tag, **kw):
        ev.evaluate_coco(run, path, images, out=tmp_path / tag / "preds.jsonl", **kw)
        return [json.loads(x) for x in (tmp_path / tag / "preds.jsonl").read_text().splitlines()]

    recs = preds("r0", baseline="random")
    gt_of = {}
    for r in recs:
        gt_of.setdefault(r["image_id"], []).append(r["gt_box"])
    all_gt = [b for boxes in gt_of.values() for b in boxes]
    for r in recs:
        assert r["pred_box"] in all_gt and r["pred_box"] not in gt_of[r["image_id"]]
    assert preds("r0b", baseline="random") == recs  # seeded
    other = preds("r1", baseline="random", seed=1)
    assert [r["pred_box"] for r in other] != [r["pred_box"] for r in recs]
    uniform = preds("u", baseline="uniform")
    assert not any(r["pred_box"] in all_gt for r in uniform)  # grid boxes, not ground truth
    assert all(v % 14 == 0 for r in uniform for v in r["pred_box"])
    # --limit scores fewer queries, the boxes still come from the whole set
    limited = preds("l", baseline="random", limit=2)
    assert limited == recs[:2]


def test_summarize_counts_what_each_parser_rejects():
    recs = [{"iou": 0.5, "bucket": "large", "parsed": True, "parsed_strict": True, "parsed_lenient": True},
            {"iou": 0.0, "bucket": "small", "parsed": False, "parsed_strict": False, "parsed_lenient": True},
            {"iou": 0.0, "bucket": "small", "parsed": False, "parsed_strict": False, "parsed_lenient": False}]
    m = P.summarize(recs)
    assert m["unparseable"] == 2 and m["rejected"] == {"strict": 2, "lenient": 1}
    assert P.summarize([{"iou": 1.0, "bucket": "large", "parsed": True}])["rejected"] == {"strict": 0, "lenient": 0}


def test_bad_protocol_options_are_one_line(tmp_path):
    path, images = _crowd_coco(tmp_path)
    run = _run(tmp_path)
    with pytest.raises(UserError, match=r"^--parse must be one of strict, lenient \(got 'loose'\)$"):
        ev.evaluate_coco(run, path, images, baseline="uniform", parse="loose")
    with pytest.raises(UserError, match="--baseline must be one of random, uniform"):
        ev.evaluate_coco(run, path, images, baseline="context")


def test_eval_pin_option_defaults_are_the_protocol_defaults():
    """The eval-pin options spell their defaults out; they must not drift from the protocol's."""
    import dataclasses

    from synthgen.commands import COMMANDS

    cmd = COMMANDS["eval-pin"]
    for f in dataclasses.fields(P.EvalProtocol):
        assert cmd.option(f.name).default == f.default, f.name
