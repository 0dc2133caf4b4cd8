"""The data contracts (synthgen.schema): scene records, bank records, names."""

from __future__ import annotations

import json

import pytest

from synthgen.bank.format import bank_record, object_file, object_id, read_bank_record
from synthgen.bank.reader import ObjectBank
from synthgen.compose.backgrounds import list_backgrounds
from synthgen.compose.config import ComposeParams
from synthgen.compose.scene import Composer
from synthgen.errors import UserError
from synthgen.schema import SCENE_SCHEMA, SceneRecord, SchemaError, clean_name, slugify


def test_composed_records_round_trip_byte_for_byte(bank, backgrounds):
    comp = Composer(ComposeParams(same_category_p=0.9), ObjectBank.open(bank), list_backgrounds(str(backgrounds)).items)
    for k in range(20):
        rec = comp.scene(k).record
        raw = rec.to_json()
        again = SceneRecord.from_json(raw, "x")
        assert again == rec and again.to_json() == raw
        d = json.loads(raw)
        assert list(d) == ["schema", "key", "seed", "width", "height", "grid", "background", "objects",
                           "target", "prompt", "answer"]
        assert d["schema"] == SCENE_SCHEMA and list(d["objects"][0]) == [
            "category", "category_id", "name", "object_id", "box", "cells", "visible", "referral"]
        ref, box = rec.query(rec.target)
        assert ref == rec.objects[rec.target].referral and box == [float(v) for v in rec.objects[rec.target].box]


def _good() -> dict:
    return {"schema": SCENE_SCHEMA, "key": "000000001", "seed": 3, "width": 224, "height": 224, "grid": 16,
            "background": {"source": "bg.jpg", "fit": "squash"},
            "objects": [{"category": "cat", "category_id": None, "object_id": "cat/00000",
                         "box": [14, 28, 56, 70], "cells": [1, 2, 4, 5], "visible": 1.0, "referral": "cat"}],
            "target": 0, "prompt": "In the image is a cat located at", "answer": "[14,28,56,70]"}


@pytest.mark.parametrize("mutate, reason", [
    (lambda d: "{not json", "not_json"),
    (lambda d: [1, 2], "bad_record"),
    (lambda d: {**d, "schema": "other/1"}, "bad_schema"),
    (lambda d: {k: v for k, v in d.items() if k != "width"}, "missing_field"),
    (lambda d: {**d, "width": "224"}, "bad_field"),
    (lambda d: {**d, "objects": []}, "no_objects"),
    (lambda d: {**d, "target": 3}, "bad_field"),
    (lambda d: {**d, "objects": [{**d["objects"][0], "box": ["a", 1, 2, 3]}]}, "bad_field"),
    (lambda d: {**d, "objects": [{**d["objects"][0], "box": [10, 10, 5, 20]}]}, "bad_field"),
    (lambda d: {**d, "objects": [{**d["objects"][0], "box": [0, 0, float("nan"), 1]}]}, "bad_field"),
    (lambda d: {**d, "objects": [{k: v for k, v in d["objects"][0].items() if k != "box"}]}, "missing_field"),
])
def test_bad_scene_json_is_a_schema_error_with_a_reason(mutate, reason):
    bad = mutate(_good())
    raw = bad if isinstance(bad, str) else json.dumps(bad)
    with pytest.raises(SchemaError) as exc:
        SceneRecord.from_json(raw, "shard.tar: scene 1")
    assert exc.value.reason == reason and str(exc.value).startswith("shard.tar: scene 1")
    assert isinstance(exc.value, UserError) and "\n" not in str(exc.value)
    SceneRecord.from_json(json.dumps(_good()))  # the unmodified record is fine


def test_schema_error_survives_pickling():
    import pickle

    err = pickle.loads(pickle.dumps(SchemaError("x: bad", "bad_field")))
    assert isinstance(err, SchemaError) and err.reason == "bad_field" and str(err) == "x: bad"


def test_bank_records_and_names():
    rec = bank_record(id=object_id("bow_weapon", 3), category="bow (weapon)", category_id=7,
                      path=object_file("bow_weapon", 3), width=10, height=20, kept=True, reason=None,
                      clip_score=25.0)
    assert list(rec)[:8] == ["id", "category", "category_id", "path", "width", "height", "kept", "reason"]
    assert rec["id"] == "bow_weapon/00003" and rec["path"] == "bow_weapon/00003.png"
    assert object_file("cat", 1, kept=False) == "cat/_rejected/00001.png"
    e = read_bank_record(rec, "index.jsonl:1")
    assert (e.id, e.category, e.category_id, e.path) == ("bow_weapon/00003", "bow (weapon)", 7,
                                                         "bow_weapon/00003.png")
    assert read_bank_record({**rec, "kept": False}, "x") is None
    with pytest.raises(UserError, match="missing field"):
        read_bank_record({"id": "a"}, "index.jsonl:2")
    with pytest.raises(UserError, match="category_id"):
        read_bank_record({**rec, "category_id": "seven"}, "index.jsonl:3")
    assert clean_name("bow_(weapon)") == "bow (weapon)" and clean_name("  a \t b_c ") == "a b c"
    assert slugify("bow_(weapon)") == "bow_weapon" and slugify("Teddy Bear") == "teddy_bear"
    assert slugify("!!!") == "category"
