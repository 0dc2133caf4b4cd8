"""The evaluation protocol's pure rules (synthgen/pin/protocol.py), against numbers worked out by
hand from the PIN authors' code (GridCodec.decode, the COCO/VOC/RefCOCO Resize + get_bboxes)."""

from __future__ import annotations

import numpy as np
import pytest

from synthgen.grounding import query_prompt
from synthgen.pin.evaluation import protocol as P

# --- the query text ------------------------------------------------------------------------

def test_article_follows_the_first_letter_by_default():
    proto = P.EvalProtocol()
    assert proto.article == "auto" and proto.art is None
    assert query_prompt("apple", proto.art) == "In the image is an apple located at"
    assert query_prompt("Umbrella", proto.art) == "In the image is an Umbrella located at"  # lower()d
    assert query_prompt("hot dog", proto.art) == "In the image is a hot dog located at"
    old = P.EvalProtocol(article="a")
    assert query_prompt("apple", old.art) == "In the image is a apple located at"


def test_class_names_lose_the_qualifier_unless_raw():
    assert P.class_name("bow_(weapon)") == "bow"
    assert P.class_name("cover_(ornamental)") == "cover"
    assert P.class_name("hot_dog") == "hot dog"
    assert P.class_name("teddy bear") == "teddy bear"
    assert P.class_name("bow_(weapon)", "raw") == "bow (weapon)"
    assert P.class_name("(weapon)") == "(weapon)"  # only " (" starts a qualifier, as theirs
    assert P.class_name("_(weapon)") == ""  # nothing left: the reader counts a bad category


# --- parsing -------------------------------------------------------------------------------

def test_grid_line_names():
    assert P.grid_line_names(224, 16) == [str(14 * i) for i in range(17)]
    assert P.grid_line_names(224, 14) == [str(16 * i) for i in range(15)]  # 16-px cells: integral
    g12 = P.grid_line_names(224, 12)  # 18.67-px cells: two decimals where not integral
    assert g12 == ["0", "18.67", "37.33", "56", "74.67", "93.33", "112", "130.67", "149.33", "168",
                   "186.67", "205.33", "224"]
    g20 = P.grid_line_names(224, 20)  # 11.2-px cells: one decimal where that is exact
    assert g20[:6] == ["0", "11.2", "22.4", "33.6", "44.8", "56"] and g20[-1] == "224"


@pytest.mark.parametrize("text, box", [
    (" [28,42,126,154]", [28, 42, 126, 154]),
    ("located at [0,0,14,14]", [0, 0, 14, 14]),       # the whole text: the space before '['
    (" [0,0,224,224]</s>", [0, 0, 224, 224]),           # anything may follow
    (" [210,210,224,224]", [210, 210, 224, 224]),       # last cell
])
def test_strict_parser_accepts_grid_boxes(text, box):
    assert P.parse_box_strict(text, 224, 16) == box
    assert P.box_from_text(text, 224, 16, "strict") == (box, True)


@pytest.mark.parametrize("text, why", [
    ("[28,42,126,154]", "no space before the bracket"),
    ("located at[28,42,126,154]", "no space before the bracket"),
    (" [27,42,126,154]", "27 is not a grid line"),
    (" [28,42,126,154.0]", "154.0 is not how the line is written"),
    (" [28, 42,126,154]", "' 42' is not a grid line name"),
    (" [126,42,28,154]", "x1 > x2"),
    (" [28,42,28,154]", "x1 == x2"),
    (" [28,154,126,42]", "y1 > y2"),
    (" [224,0,224,14]", "x1 on the last line"),
    (" [0,0,0,14]", "x2 on the first line"),
    (" [28,42,126]", "3 values"),
    (" [0,14,28,42,56]", "5 values: the fourth group is '42,56'"),
    (" [-14,0,14,14]", "negative"),
    (" [1,2,3,4] [0,0,14,14]", "only the first match counts"),
    ("no box here", "nothing"),
    ("", "empty"),
])
def test_strict_parser_rejects(text, why):
    assert P.parse_box_strict(text, 224, 16) is None, why
    assert P.box_from_text(text, 224, 16, "strict") == ([0.0, 0.0, 14.0, 14.0], False)


def test_lenient_parser_is_todays_rule():
    assert P.box_from_text("[28,42,126,154]", 224, 16, "lenient") == ([28, 42, 126, 154], True)
    assert P.box_from_text(" [28, 42, 126, 154]", 224, 16, "lenient") == ([28, 42, 126, 154], True)
    assert P.box_from_text("[126,154,28,42]", 224, 16, "lenient") == ([28, 42, 126, 154], True)  # reordered
    assert P.box_from_text("[27,42,126,154]", 224, 16, "lenient") == ([27, 42, 126, 154], True)  # off grid
    assert P.box_from_text("no box here", 224, 16, "lenient") == ([0.0, 0.0, 14.0, 14.0], False)
    assert P.parsed_by("[28,42,126,154]", 224, 16) == {"strict": False, "lenient": True}
    assert P.parsed_by(" [28,42,126,154]", 224, 16) == {"strict": True, "lenient": True}
    assert P.parsed_by(" [28,42,126", 224, 16) == {"strict": False, "lenient": False}
    with pytest.raises(ValueError):
        P.box_from_text("[1,2,3,4]", 224, 16, "fuzzy")


def test_strict_parser_on_grids_whose_lines_are_not_integers():
    # G=12 at 224: lines every 18.67 px, written with two decimals; the box is the line indices
    # times ceil(224/12) = 19, the far corner capped at 224 (the authors' decoder)
    assert P.parse_box_strict(" [18.67,0,56,37.33]", 224, 12) == [19, 0, 57, 38]
    assert P.parse_box_strict(" [205.33,205.33,224,224]", 224, 12) == [209, 209, 224, 224]
    assert P.parse_box_strict(" [18.7,0,56,37.33]", 224, 12) is None    # not how the line is written
    assert P.parse_box_strict(" [19,0,57,38]", 224, 12) is None         # pixels, not line names
    assert P.box_from_text("junk", 224, 12, "strict") == ([0.0, 0.0, 19.0, 19.0], False)
    assert P.box_from_text("junk", 224, 12, "lenient")[0] == pytest.approx([0, 0, 224 / 12, 224 / 12])
    # G=20: one decimal
    assert P.parse_box_strict(" [11.2,0,22.4,44.8]", 224, 20) == [12, 0, 24, 48]
    assert P.parse_box_strict(" [11.20,0,22.4,44.8]", 224, 20) is None
    # G=14 at 224 is integral (16-px cells)
    assert P.parse_box_strict(" [16,32,208,224]", 224, 14) == [16, 32, 208, 224]


# --- ground-truth boxes --------------------------------------------------------------------

def test_coco_boxes_truncated_as_the_authors():
    # 640x480 -> 224: ratios 0.35 and 0.4667. x = int(10.7*.35) = int(3.745) = 3,
    # y = int(20.3*.4667) = int(9.47) = 9, w = int(100.9*.35) = int(35.3) = 35,
    # h = int(200.5*.4667) = int(93.57) = 93 -> [3, 9, 3+35, 9+93]
    assert P.coco_box_on_canvas([10.7, 20.3, 100.9, 200.5], 640, 480, 224) == [3, 9, 38, 102]
    # truncating w apart from x loses a pixel against truncating the corner: int(111.6*.35) = 39
    exact = P.coco_box_on_canvas([10.7, 20.3, 100.9, 200.5], 640, 480, 224, "exact")
    assert exact == pytest.approx([3.745, 9.4733, 39.06, 103.04], abs=1e-3)
    # the far corner is capped at canvas - 1
    assert P.coco_box_on_canvas([0, 0, 640, 480], 640, 480, 224) == [0, 0, 223, 223]
    assert P.coco_box_on_canvas([0, 0, 640, 480], 640, 480, 224, "exact") == [0, 0, 224, 224]
    # and the buckets follow the truncated box: 32x32 on the canvas exactly is medium, one pixel
    # short of it after truncation is small
    b = P.coco_box_on_canvas([0, 0, 64.5, 64.5], 448, 448, 224)  # 32.25 -> 32
    assert b == [0, 0, 32, 32] and P.size_bucket(b, 224) == "medium"
    b = P.coco_box_on_canvas([1.9, 1.9, 63.9, 63.9], 448, 448, 224)  # x = 0, w = int(31.95) = 31
    assert b == [0, 0, 31, 31] and P.size_bucket(b, 224) == "small"
    assert P.size_bucket(P.coco_box_on_canvas([1.9, 1.9, 63.9, 63.9], 448, 448, 224, "exact"), 224) == "small"


def test_voc_boxes_truncated_and_clipped_as_the_authors():
    # 500x375 -> 224: ratios 0.448 and 0.5973: 48*.448 = 21.5 -> 21, 240*.5973 = 143.4 -> 143,
    # 195*.448 = 87.4 -> 87, 371*.5973 = 221.6 -> 221
    assert P.voc_box_on_canvas([48, 240, 195, 371], 500, 375, 224) == [21, 143, 87, 221]
    assert P.voc_box_on_canvas([48, 240, 195, 371], 500, 375, 224, "exact") == pytest.approx(
        [47 * 0.448, 239 * 224 / 375, 195 * 0.448, 371 * 224 / 375])
    # clipped to [1, canvas]: the first pixel maps to 0 and is raised to 1
    assert P.voc_box_on_canvas([1, 1, 500, 375], 500, 375, 224) == [1, 1, 224, 224]
    assert P.voc_box_on_canvas([1, 1, 500, 375], 500, 375, 224, "exact") == pytest.approx([0, 0, 224, 224])
    # values are truncated to integers before scaling (int(int(v) * ratio))
    assert P.voc_box_on_canvas([48.9, 240, 195, 371], 500, 375, 224) == [21, 143, 87, 221]
    with pytest.raises(ValueError):
        P.voc_box_on_canvas([1, 1, 2, 2], 10, 10, 224, "round")


# --- baselines -----------------------------------------------------------------------------

def test_random_baseline_draws_boxes_of_other_images():
    pool = [("a", [0, 0, 10, 10]), ("a", [1, 1, 11, 11]), ("b", [20, 20, 40, 40]),
            ("c", [50, 50, 90, 90]), ("c", [60, 60, 70, 70])]
    boxes = P.OtherImageBoxes(pool)
    assert boxes.images == 3
    own = {k: [b for kk, b in pool if kk == k] for k in "abc"}
    rng = np.random.default_rng(0)
    seen = {k: set() for k in "abc"}
    for _ in range(300):
        for k in "abc":
            b = boxes.draw(rng, k)
            assert b not in own[k]
            seen[k].add(tuple(b))
    # every box of the other images comes up
    assert seen["a"] == {(20, 20, 40, 40), (50, 50, 90, 90), (60, 60, 70, 70)}
    assert seen["b"] == {tuple(b) for k, b in pool if k != "b"}
    # seeded
    draws = [P.OtherImageBoxes(pool).draw(np.random.default_rng(7), "b") for _ in range(2)]
    assert draws[0] == draws[1]
    # an image outside the pool may get any box
    assert tuple(boxes.draw(rng, "z")) in {tuple(b) for _, b in pool}
    with pytest.raises(ValueError, match="two images"):
        P.OtherImageBoxes([("a", [0, 0, 1, 1]), ("a", [0, 0, 2, 2])]).draw(rng, "a")


def test_uniform_baseline_stays_on_the_grid():
    rng = np.random.default_rng(1)
    for _ in range(50):
        b = P.uniform_box(rng, 224, 16)
        assert all(v % 14 == 0 for v in b) and b[0] < b[2] and b[1] < b[3]


# --- options -------------------------------------------------------------------------------

def test_protocol_defaults_are_the_authors_and_bad_values_are_named():
    p = P.EvalProtocol()
    assert (p.article, p.names, p.crowd, p.gt_boxes, p.parse, p.baseline, p.max_objects,
            p.refcoco_sentences, p.num_beams, p.max_new_tokens) == (
        "auto", "strip", "query", "authors", "strict", None, 3, "last", 3, 12)
    assert p.problems() == []
    bad = P.EvalProtocol(article="an", names="x", crowd="drop", gt_boxes="round", parse="fuzzy",
                         baseline="context", max_objects=0, refcoco_sentences="first", num_beams=0)
    probs = bad.problems()
    assert len(probs) == 9
    assert "--article must be one of auto, a (got 'an')" in probs
    assert "--baseline must be one of random, uniform, prior, raw, native, in-context (got 'context')" in probs
    assert "--max-objects must be an integer >= 1 (got 0)" in probs


def test_protocol_record_names_what_applies():
    rec = P.EvalProtocol().record("coco-json", 224, 16)
    assert rec == {"set_kind": "coco-json", "article": "auto", "names": "strip", "crowd": "query",
                   "gt_boxes": "authors", "parse": "strict", "baseline": None, "max_objects": 3,
                   "seed": 0, "num_beams": 3, "max_new_tokens": 12, "canvas": 224, "grid": 16}
    voc = P.EvalProtocol(baseline="random").record("voc", 224, 16)
    assert "names" not in voc and "crowd" not in voc and "num_beams" not in voc and voc["baseline"] == "random"
    ref = P.EvalProtocol(refcoco_sentences="all").record("refcoco", 224, 16)
    assert ref["refcoco_sentences"] == "all" and "max_objects" not in ref
    line = P.EvalProtocol().summary_line("voc", 224, 16)
    assert line.startswith("set_kind=voc article=auto gt_boxes=authors parse=strict baseline=model")
