"""Category names read from file and folder names (issue 19 item 7): a folder of banks refused, the
bank line naming the categories, names that look like file names warned about, and
``--categories-map`` renaming categories in the scene records and the prompts (and in run.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from synthgen.bank.reader import ObjectBank
from synthgen.errors import UserError
from tests.helpers import make_index_bank, scene_records, write_rgba
from tests.hostile.conftest import one_line_error, run_cli

SHARED_OBJECTS = Path(__file__).resolve().parents[3] / "shared" / "data" / "objects"
# the file names of ../shared/data/objects/{clipart_rgba,photos} (used when that folder is absent)
CLIPART = ["apple.png", "banana.png", "beagle_copper_ganson.png", "bicycle_01.png", "book_01.png",
           "bottled_drink.png", "bus1_jarno_vasamaa_01.png", "cup_rollandin_francesco_.png", "green_pear_01.png",
           "guitar_ganson.png", "kitten_gerald_g._01.png", "motorcycle_jarno_vasama_.png",
           "old_car_lumen_design_st_r.png", "orange_dave_pena_01.png", "sailboat_illustration.png", "scissors.png",
           "sheep-md-v0.1.png", "teacup_ganson.png", "teddybear_jarno_vasamaa_.png", "truck_jarno_vasamaa_.png",
           "umbrella.png", "vacca_pezzata_rossa_val_01.png"]
PHOTOS = ["lomiri_Picture_0B_by_freespace.jpg", "lomiri_free_by_Peter_Nerlich.jpg", "matplotlib_grace_hopper.jpg",
          "skimage_astronaut.png", "skimage_camera.png", "skimage_chelsea.png", "skimage_coffee.png",
          "skimage_coins.png", "skimage_horse.png", "skimage_rocket.jpg", "sklearn_china.jpg", "sklearn_flower.jpg"]


def _names(folder: str, fallback: list[str]) -> list[str]:
    real = SHARED_OBJECTS / folder
    return sorted(p.name for p in real.iterdir()) if real.is_dir() else fallback


def _flat(root: Path, names: list[str]) -> Path:
    for k, name in enumerate(names):
        write_rgba(root / Path(name).with_suffix(".png"), (40 + 9 * k, 200 - 7 * k, 30), (40 + k, 30))
    return root


def _compose(objects, backgrounds, out, env, *extra, n=6):
    return run_cli(["compose", "--objects", objects, "--backgrounds", backgrounds, "--out", out, "-n", n,
                    "--samples-per-shard", n, "--executor", "serial", *extra], env)


# --- a folder of banks ------------------------------------------------------------------------

def test_a_folder_of_banks_is_refused_with_one_line_before_any_work(tmp_path, backgrounds, cli_env):
    parent = tmp_path / "objects"
    make_index_bank(parent / "rendered", per_category=1)          # a synthgen bank: its own index.jsonl
    write_rgba(parent / "tree_bank" / "apple" / "a.png", (200, 0, 0))  # a tree bank: folders of images
    out = tmp_path / "out"
    r = _compose(parent, backgrounds, out, cli_env)
    one_line_error(r, f"--objects {parent} holds banks (rendered/, tree_bank/): give one of them")
    assert not out.exists()
    # one of them is a bank as before
    r = _compose(parent / "tree_bank", backgrounds, out, cli_env)
    assert r.returncode == 0, r.stderr


def test_hidden_and_underscore_folders_are_no_banks(tmp_path):
    root = tmp_path / "tree"
    write_rgba(root / "apple" / "a.png", (200, 0, 0))
    write_rgba(root / "apple" / "_rejected" / "b.png", (0, 200, 0))   # a render bank's rejected cut-outs
    write_rgba(root / "__MACOSX" / "apple" / "a.png", (0, 0, 200))    # a zip's resource forks
    assert ObjectBank.open(root).categories == ["MACOSX", "apple"]
    with pytest.raises(UserError, match="holds banks"):
        write_rgba(root / "cup" / "red" / "a.png", (0, 0, 200))
        ObjectBank.open(root)


def test_folders_holding_flat_banks_are_warned_about(tmp_path, backgrounds, cli_env):
    parent = tmp_path / "objects"
    _flat(parent / "clipart_rgba", _names("clipart_rgba", CLIPART))
    _flat(parent / "photos", _names("photos", PHOTOS))
    r = _compose(parent, backgrounds, tmp_path / "out", cli_env)
    assert r.returncode == 0, r.stderr
    warning = next(ln for ln in r.stdout.splitlines() if "each hold files named like different categories" in ln)
    assert warning.startswith(f"warning: --objects {parent}: its folders (clipart_rgba/, photos/)")
    assert "'apple'" in warning and "give one of them" in warning
    assert "2 categories (clipart rgba, photos)" in r.stdout
    from synthgen.bank.names import flat_banks_warning

    # a tree whose category folders hold numbered or same-named files is not warned about
    tree = [Path(f"{c}/{c}_{k:03d}.png") for c in ("apple", "cup") for k in range(5)]
    assert flat_banks_warning(tmp_path, tree + [Path("cup/IMG_2031.png")]) is None


# --- the bank line and the file-name heuristic ------------------------------------------------

def test_the_bank_line_names_the_categories(tmp_path, backgrounds, cli_env):
    cats = ["apple", "banana", "cup", "dog", "egg", "fork", "goat", "hat", "ink", "jar"]
    root = tmp_path / "tree"
    for k, c in enumerate(cats):
        write_rgba(root / c / "a.png", (20 * k, 100, 50))
    r = _compose(root, backgrounds, tmp_path / "out", cli_env)
    assert r.returncode == 0, r.stderr
    line = r.stdout.splitlines()[0]
    assert line == ("objects: folder of category sub-folders, 10 categories (apple, banana, cup, dog, egg, fork, "
                    "goat, hat, +2 more), 10 cut-outs (all usable)")
    assert "warning" not in r.stdout  # plain category names: nothing to say


def test_file_like_names_of_the_shared_objects_are_flagged_and_real_categories_are_not():
    from synthgen.bank.names import file_like
    from synthgen.bank.reader import _stem_category
    from synthgen.render.classes import COCO_CLASSES, VOC_CLASSES

    derived = {_stem_category(Path(n).stem) for n in _names("clipart_rgba", CLIPART) + _names("photos", PHOTOS)}
    flagged = {n for n in derived if file_like(n)}
    assert {"sheep-md-v0", "bus1 jarno vasamaa", "kitten gerald g", "old car lumen design st r",
            "vacca pezzata rossa val", "lomiri Picture 0B by freespace", "lomiri free by Peter Nerlich"} <= flagged
    assert not flagged & {"apple", "banana", "bicycle", "book", "bottled drink", "green pear", "scissors", "umbrella"}
    real = [c[0] for c in COCO_CLASSES] + [c[0] for c in VOC_CLASSES]
    real += ["bow (weapon)", "mouse (computer equipment)", "t-shirt", "teddy bear", "pair of scissors"]
    assert [c for c in real if file_like(c)] == []
    assert file_like("clipart rgba") and file_like("photos") and file_like("dog-lg") and file_like("img dog")


def test_file_like_categories_are_warned_once_with_examples(tmp_path, backgrounds, cli_env):
    root = _flat(tmp_path / "flat", _names("clipart_rgba", CLIPART))
    r = _compose(root, backgrounds, tmp_path / "out", cli_env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("objects: flat folder (categories from file names), 22 categories (apple, banana, ")
    assert lines[0].endswith("+14 more), 22 cut-outs (all usable)")
    warned = [ln for ln in lines if "look like file names" in ln]
    assert len(warned) == 1 and warned[0].startswith("warning: 5 of 22 categories look like file names")
    assert "'bus1 jarno vasamaa'" in warned[0] and "--categories-map FILE" in warned[0]
    assert "'In the image is a bus1 jarno vasamaa located at'" in warned[0]
    assert "error" not in r.stderr  # a warning, never a refusal


# --- --categories-map -------------------------------------------------------------------------

FLAT = ["apple_02.png", "apple_03.png", "sheep-md-v0.1.png", "bus1_jarno_vasamaa_01.png", "cup_rollandin_francesco_.png"]
MAP = {"sheep-md-v0": "sheep",                      # a category as the bank gives it
       "bus1_jarno_vasamaa_01.png": "bus",          # a file name
       "cup_rollandin_francesco_": "teacup"}        # a file stem


def test_the_map_renames_categories_in_records_and_prompts(tmp_path, backgrounds, cli_env):
    root = _flat(tmp_path / "flat", FLAT)
    m = tmp_path / "names.yaml"
    m.write_text("".join(f"{k}: {v}\n" for k, v in MAP.items()))
    out = tmp_path / "out"
    r = _compose(root, backgrounds, out, cli_env, "--categories-map", m, n=30)
    assert r.returncode == 0, r.stderr
    assert "4 categories (apple, bus, sheep, teacup)" in r.stdout.splitlines()[0]
    assert "warning" not in r.stdout  # the file-like names are mapped away
    recs = scene_records(out)
    objects = [o for rec in recs for o in rec["objects"]]
    assert {o["category"] for o in objects} == {"apple", "bus", "sheep", "teacup"}
    assert {o["name"] for o in objects} == {"apple", "bus", "sheep", "teacup"}
    assert all(o["category_id"] is None for o in objects)
    by_file = {o["object_id"]: o["category"] for o in objects}
    assert by_file.get("sheep-md-v0.1.png", "sheep") == "sheep" and by_file.get("bus1_jarno_vasamaa_01.png", "bus") == "bus"
    prompts = " ".join(rec["prompt"] for rec in recs)
    assert "In the image is a" in prompts and not any(w in prompts for w in ("md", "jarno", "rollandin"))
    assert any(w in prompts for w in ("sheep", "bus", "teacup"))
    # the same map as JSON and as CSV reads the same
    as_json, as_csv = tmp_path / "names.json", tmp_path / "names.csv"
    as_json.write_text(json.dumps(MAP))
    as_csv.write_text("name,category\n" + "".join(f"{k},{v}\n" for k, v in MAP.items()))
    cats = {f: ObjectBank.open(root, categories_map=str(f)).categories for f in (m, as_json, as_csv)}
    assert all(c == ["apple", "bus", "sheep", "teacup"] for c in cats.values()), cats


def test_a_map_on_a_synthgen_bank_merges_into_a_category_and_keeps_ids(tmp_path, bank):
    m = tmp_path / "m.yaml"
    m.write_text("yellow block: red block\ngreen_block: lime block\n")
    b = ObjectBank.open(bank, categories_map=str(m))
    assert b.categories == ["blue block", "lime block", "red block"]
    ids = {(e.category, e.category_id) for e in b.entries}
    # yellow merged into red (takes red's id); green renamed (keeps its own)
    assert ids == {("red block", 1), ("lime block", 2), ("blue block", 3)}
    assert b.warnings == []


def test_a_map_key_that_matches_nothing_is_warned_with_a_suggestion(tmp_path, backgrounds, cli_env):
    root = _flat(tmp_path / "flat", FLAT)
    m = tmp_path / "names.yaml"
    m.write_text("shep-md-v0: sheep\nbus1_jarno_vasamaa_01.png: bus\nzzz: qqq\n")
    r = _compose(root, backgrounds, tmp_path / "out", cli_env, "--categories-map", m)
    assert r.returncode == 0, r.stderr
    warned = [ln for ln in r.stdout.splitlines() if "match no file" in ln]
    assert warned == [f"warning: --categories-map {m}: 2 name(s) match no file, folder or category of the bank "
                      "(a typo?): 'shep-md-v0' (did you mean 'sheep-md-v0'?), 'zzz'"]
    assert "(apple, bus, cup rollandin francesco, sheep-md-v0)" in r.stdout


@pytest.mark.parametrize("content, needle", [
    (None, "not found"),
    ("- a\n- b\n", "expected a mapping {file or folder name: category} (got a list)"),
    ("", "got an empty file"),
    ("a: [1, 2\n", "not valid YAML or JSON"),
    ("sheep-md-v0: 3\n", "'sheep-md-v0' must map to a category name (got 3)"),
])
def test_a_bad_map_is_one_line_before_any_work(tmp_path, backgrounds, cli_env, content, needle):
    root = _flat(tmp_path / "flat", FLAT)
    m = tmp_path / "names.yaml"
    if content is not None:
        m.write_text(content)
    out = tmp_path / "out"
    r = _compose(root, backgrounds, out, cli_env, "--categories-map", m)
    one_line_error(r, f"--categories-map {m}", needle)
    assert not out.exists()


def test_the_map_is_part_of_the_run_identity(tmp_path, backgrounds, cli_env):
    from synthgen.compose.run import ComposeJob

    root = _flat(tmp_path / "flat", FLAT)
    m, other, same = tmp_path / "a.yaml", tmp_path / "b.yaml", tmp_path / "a.json"
    m.write_text("sheep-md-v0: sheep\n")
    other.write_text("sheep-md-v0: lamb\n")
    same.write_text(json.dumps({"sheep-md-v0": "sheep"}))
    job = ComposeJob(str(root), "bg", "out", 4)
    with_map = ComposeJob(str(root), "bg", "out", 4, categories_map=str(m))
    assert "categories_map" not in job.identity()  # runs without a map record what they did before
    assert with_map.identity()["categories_map"]["names"] == 1
    assert with_map.identity() != ComposeJob(str(root), "bg", "out", 4, categories_map=str(other)).identity()

    out = tmp_path / "out"
    r = _compose(root, backgrounds, out, cli_env, "--categories-map", m)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "run.json").read_text())["categories_map"] == with_map.identity()["categories_map"]
    one_line_error(_compose(root, backgrounds, out, cli_env, "--categories-map", other),
                   "holds a compose run with other options", "categories_map.sha256")
    one_line_error(_compose(root, backgrounds, out, cli_env), "categories_map")
    # the same mapping written as JSON is the same run: resumed (nothing left to do)
    r = _compose(root, backgrounds, out, cli_env, "--categories-map", same)
    assert r.returncode == 0, r.stderr


def test_the_map_is_no_scene_setting_of_an_on_the_fly_train_pin():
    from synthgen.commands.compose import scene_values

    with pytest.raises(UserError, match="categories_map is not a scene setting"):
        scene_values({"categories_map": "names.yaml"}, "train-pin compose settings")
