"""``--categories-map lvis|coco|voc``: categories read from file names looked up among a dataset's
names and synonyms (issue 19 item 7): renamed to the dataset's name with its id, the misses warned
about, and the vocabulary part of the run's identity."""

from __future__ import annotations

import json

import pytest

from synthgen.bank.reader import ObjectBank
from synthgen.bank.vocabulary import candidates, index, look_up
from synthgen.render.categories import Category, coco_categories
from tests.compose.test_categories import CLIPART, _compose, _flat
from tests.helpers import scene_records

# an LVIS-format category list as lvis_v1_val.json has it (names with qualifiers, synonyms)
LVIS = [{"id": 173, "name": "bus_(vehicle)", "synonyms": ["autobus", "bus_(vehicle)", "charabanc"], "synset": "bus.n.01"},
        {"id": 207, "name": "car_(automobile)", "synonyms": ["car_(automobile)", "auto_(automobile)"], "synset": "car.n.01"},
        {"id": 612, "name": "kitten", "synonyms": ["kitten", "kitty"], "synset": "kitten.n.01"},
        {"id": 776, "name": "pear", "synonyms": ["pear"], "synset": "pear.n.01"},
        {"id": 943, "name": "sheep", "synonyms": ["sheep"], "synset": "sheep.n.01"},
        {"id": 1071, "name": "teddy_bear", "synonyms": ["teddy_bear", "teddy"], "synset": "teddy.n.01"},
        {"id": 12, "name": "apple", "synonyms": ["apple"], "synset": "apple.n.01"}]


def test_lookup_by_name_synonym_qualifier_and_shorter_runs_of_words():
    voc = index([Category(c["name"], c["id"], c["synset"], tuple(c["synonyms"])) for c in LVIS])
    found = look_up(["bus1 jarno vasamaa", "old car lumen design st r", "teddybear jarno vasamaa", "sheep-md-v0",
                     "kitten gerald g", "green pear", "kitty", "Apple", "vacca pezzata rossa val", "st r"], voc)
    assert found == {"bus1 jarno vasamaa": ("bus (vehicle)", 173), "old car lumen design st r": ("car (automobile)", 207),
                     "teddybear jarno vasamaa": ("teddy bear", 1071), "sheep-md-v0": ("sheep", 943),
                     "kitten gerald g": ("kitten", 612), "green pear": ("pear", 776), "kitty": ("kitten", 612),
                     "Apple": ("apple", 12)}
    # longest runs first, then leftmost; no lone word under three letters
    assert candidates("a bc def")[:4] == ["a bc def", "a bc", "bc def", "def"]


def test_a_vocabulary_renames_a_flat_folder_with_ids_and_warns_about_misses(tmp_path, backgrounds, cli_env):
    root = _flat(tmp_path / "flat", CLIPART)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "lvis_v1_categories.json").write_text(json.dumps(LVIS))
    out = tmp_path / "out"
    r = _compose(root, backgrounds, out, dict(cli_env, SYNTHGEN_CACHE=str(cache)), "--categories-map", "lvis", n=40)
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if "--categories-map lvis" in x)
    assert "categories found in LVIS" in line and "bus1 jarno vasamaa -> bus (vehicle)" in line
    assert "match no LVIS name or synonym" in line and "'banana'" in line
    objects = [o for rec in scene_records(out) for o in rec["objects"]]
    ids = {o["category"]: o["category_id"] for o in objects}
    for name, cid in {"bus (vehicle)": 173, "teddy bear": 1071, "sheep": 943, "kitten": 612, "pear": 776}.items():
        assert ids.get(name, cid) == cid
    assert ids.get("banana", None) is None and "bus1 jarno vasamaa" not in ids
    assert json.loads((out / "run.json").read_text())["categories_map"]["vocabulary"] == "lvis"


@pytest.mark.parametrize("kind", ["coco", "voc"])
def test_the_shipped_vocabularies_need_no_file(tmp_path, kind):
    root = _flat(tmp_path / "flat", ["bus1_jarno_vasamaa_01.png", "teddybear_jarno_vasamaa_.png", "aeroplane_2.png",
                                     "zebra-crossing.png"])
    bank = ObjectBank.open(root, categories_map=kind)
    coco_ids = {c.name: c.id for c in coco_categories()}
    got = {e.category: e.category_id for e in bank.entries}
    if kind == "coco":
        assert got["bus"] == coco_ids["bus"] and got["teddy bear"] == coco_ids["teddy bear"] and got["zebra"] == coco_ids["zebra"]
    else:  # VOC's aeroplane is COCO's airplane (VOC names, with the LVIS id of their COCO class)
        assert got["aeroplane"] == coco_ids["airplane"] and got["bus"] == coco_ids["bus"]
        assert got["teddybear jarno vasamaa"] is None and got["zebra-crossing"] is None  # not VOC classes
    assert any("categories found in" in w for w in bank.warnings)
