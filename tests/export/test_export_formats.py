"""``synthgen export``: every box convention parsed back (with transformers' own pieces where
they exist without weights: Qwen2-VL's ``smart_resize``, PaliGemma's ``<locNNNN>`` tokens,
Florence-2's post-processor; else a parser written here) gives the scene's boxes within the
convention's quantisation; every container meets its framework's schema; images are written once;
resume and --limit. Scenes are composed here (with every question task compose records)."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthgen.compose.config import ComposeParams, LayoutParams
from synthgen.compose.questions import TASKS, scene_questions
from synthgen.compose.run import ComposeJob, run_compose
from synthgen.errors import UserError
from synthgen.export.boxes import CONVENTIONS
from synthgen.export.run import export
from synthgen.grounding import parse_box
from synthgen.schema import SceneRecord
from synthgen.shards import ShardWriter, iter_tar
from tests.helpers import make_backgrounds, make_index_bank

SIZE = 256   # Qwen2.5-VL's resize makes it 252: its boxes are not the canvas'


def _with_questions(src: Path, dst: Path) -> None:
    """``src``'s scenes with a point on each object (a visible pixel of its mask) and the questions
    of every task."""
    with ShardWriter(dst) as w:
        for s in iter_tar(str(src)):
            rec = SceneRecord.from_json(s["json"])
            owner = np.asarray(Image.open(io.BytesIO(s["mask.png"])))
            objs = []
            for i, o in enumerate(rec.objects):
                ys, xs = np.nonzero(owner == i + 1)
                k = len(xs) // 2
                objs.append(dataclasses.replace(o, point=(int(xs[k]), int(ys[k])) if len(xs) else None))
            rec = dataclasses.replace(rec, objects=tuple(objs))
            rec = dataclasses.replace(rec, questions=tuple(scene_questions(rec, TASKS)))
            w.write(s["__key__"], {"jpg": s["jpg"], "json": rec.to_json(), "mask.png": s["mask.png"]})


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """Two shards: scenes-000000.tar with questions, scenes-000001.tar the paper's scenes."""
    root = tmp_path_factory.mktemp("export")
    bank, bg = make_index_bank(root / "bank"), make_backgrounds(root / "bg")
    params = ComposeParams(masks=True, size=SIZE, same_category_p=0.7, layout=LayoutParams(a_max=3, fixed_count=True))
    run_compose(ComposeJob(objects=str(bank), backgrounds=str(bg), out=str(root / "c"), num_samples=10,
                           samples_per_shard=5, params=params), executor="serial", progress=False)
    out = root / "shards"
    out.mkdir()
    _with_questions(root / "c" / "scenes-000000.tar", out / "scenes-000000.tar")
    (out / "scenes-000001.tar").write_bytes((root / "c" / "scenes-000001.tar").read_bytes())
    return out


def _records(shards: Path) -> dict[str, dict]:
    recs = {}
    for tar in sorted(shards.glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf:
                if m.name.endswith(".json"):
                    r = json.loads(tf.extractfile(m).read())
                    recs[r["key"]] = r
    return recs


def _questions(rec: dict) -> list[dict]:
    return rec.get("questions") or [{"task": "name", "text": rec["prompt"], "answer": rec["answer"],
                                     "targets": [rec["target"]]}]


# --- independent parsers: text in a convention -> canvas boxes / points --------------------------

def _florence():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast
    from transformers.models.florence2.processing_florence2 import Florence2PostProcessor

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"<unk>": 0}, unk_token="<unk>")),
                                  unk_token="<unk>")
    return Florence2PostProcessor({"phrase_grounding": {}, "description_with_bboxes": {}}, tok)


def parse(conv: str, text: str, w: int, h: int, point: bool = False) -> list[list[float]]:
    """Every box (or point) in ``text``, in canvas pixels."""
    n = 2 if point else 4
    if conv == "pin":
        pat = r"\((\d+),(\d+)\)" if point else r"\[(\d+),(\d+),(\d+),(\d+)\]"
        return [[float(v) for v in m] for m in re.findall(pat, text)]
    if conv == "qwen2_5_vl":
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

        rh, rw = smart_resize(h, w)   # the processor's defaults
        if "```json" in text:
            items = json.loads(text.split("```json\n", 1)[1].rsplit("\n```", 1)[0])
            vals = [it["point_2d" if point else "bbox_2d"] for it in items]
        else:
            vals = [[float(v) for v in m] for m in re.findall(r"\[(\d+),(\d+),(\d+),(\d+)\]", text)]
        return [[v * (w / rw if i % 2 == 0 else h / rh) for i, v in enumerate(b)] for b in vals]
    if conv == "qwen2_vl":
        pat = r"\((\d+),(\d+)\)" if point else r"<\|box_start\|>\((\d+),(\d+)\),\((\d+),(\d+)\)<\|box_end\|>"
        vals = [[float(v) for v in m] for m in re.findall(pat, text)]
    elif conv == "internvl":
        if point:
            vals = [[float(v) for v in m] for m in re.findall(r"\((\d+),(\d+)\)", text)]
        else:
            vals = [b for m in re.findall(r"<box>(\[\[.*?\]\])</box>", text) for b in json.loads(m)]
    elif conv == "paligemma":
        from transformers.models.paligemma.processing_paligemma import EXTRA_TOKENS

        locs = re.findall(r"<loc\d{4}>", text)
        assert all(t in EXTRA_TOKENS for t in locs), locs   # the processor's own tokens
        nums = [int(t[4:8]) for t in locs]
        vals = [nums[i:i + n] for i in range(0, len(nums), n)]
        return [[(b[i + 1] if i % 2 == 0 else b[i - 1]) / 1024 * (w if i % 2 == 0 else h) for i in range(n)]
                for b in vals]   # y first
    elif conv == "florence2":
        import torch

        nums = [int(v) for v in re.findall(r"<loc_(\d+)>", text)]
        bins = torch.tensor([nums[i:i + n] for i in range(0, len(nums), n)])
        return _florence().dequantize(bins, size=(w, h)).tolist()
    elif conv == "llava":
        side = max(w, h)
        vals = [[float(v) for v in m.split(",")] for m in re.findall(r"\[([\d., ]+)\]", text)]
        return [[v * side - ((side - w) / 2 if i % 2 == 0 else (side - h) / 2) for i, v in enumerate(b)] for b in vals]
    return [[v * (w if i % 2 == 0 else h) / 1000 for i, v in enumerate(b)] for b in vals]


def tolerance(conv: str, w: int, h: int | None = None) -> float:
    """The convention's quantisation, in canvas pixels (the coarser axis)."""
    h = w if h is None else h
    if conv == "qwen2_5_vl":
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

        rh, rw = smart_resize(h, w)
        return 0.5 * max(w / rw, h / rh) + 1e-9
    side = max(w, h)
    return {"pin": 0.0, "qwen2_vl": side / 2000, "internvl": side / 2000, "paligemma": side / 1024,
            "florence2": side / 1000 + 1, "llava": 0.005 * side}[conv] + 1e-9


@pytest.mark.parametrize("conv", CONVENTIONS)
@pytest.mark.parametrize("size", [(300, 200), (150, 420), (2000, 1400)])
def test_each_convention_round_trips_boxes_of_a_canvas_that_is_not_square(conv, size):
    """compose's canvas is square; an image that is not checks each axis' scale (and LLaVA's padding,
    Qwen2.5-VL's resize of each side, PaliGemma's y first)."""
    from synthgen.export.boxes import Converter

    w, h = size
    rng = np.random.default_rng(w * h)
    c = Converter(conv, w, h)
    for _ in range(50):
        x1, x2 = sorted(rng.integers(0, w + 1, 2))
        y1, y2 = sorted(rng.integers(0, h + 1, 2))
        box = [int(x1), int(y1), int(x2), int(y2)]
        got = parse(conv, c.boxes_answer("cup", [box]), w, h)
        assert len(got) == 1 and np.abs(np.asarray(got[0]) - box).max() <= tolerance(conv, w, h), (box, got)
        pt = [int(x1), int(y2)]
        got = parse(conv, c.point_answer("cup", pt), w, h, point=True)
        assert np.abs(np.asarray(got[0]) - pt).max() <= tolerance(conv, w, h), (pt, got)


@pytest.mark.parametrize("conv", CONVENTIONS)
def test_each_convention_gives_the_scene_boxes_back_within_its_quantisation(shards, tmp_path, conv):
    summary = export(str(shards), str(tmp_path / conv), "jsonl", conv, progress=False)
    rows = [json.loads(x) for x in (tmp_path / conv / "samples.jsonl").read_text().splitlines()]
    recs = _records(shards)
    by_key: dict[str, list[dict]] = {}
    for r in rows:
        by_key.setdefault(r["key"], []).append(r)
    assert set(by_key) == set(recs) and summary["samples"] == len(rows) > len(recs)
    tasks = set()
    for key, samples in by_key.items():
        rec, questions = recs[key], _questions(recs[key])
        w, h = rec["width"], rec["height"]
        assert len(samples) == len(questions)
        for s, q in zip(samples, questions):
            assert s["task"] == q["task"] and s["image"] == f"images/{key}.jpg"
            truth = [rec["objects"][t]["box"] for t in q["targets"]]
            tasks.add(q["task"])
            if q["task"] in ("name", "referral", "relation", "attribute", "all"):
                got = parse(conv, s["answer"], w, h)
            elif q["task"] == "region":
                got = parse(conv, s["question"], w, h)
                assert s["answer"] == q["answer"]
            elif q["task"] == "point":
                truth = [rec["objects"][q["targets"][0]]["point"]]
                got = parse(conv, s["answer"], w, h, point=True)
            else:   # count, absent: text only
                assert (s["question"], s["answer"]) == ((f"answer en {q['text']}" if conv == "paligemma"
                                                         else q["text"]), q["answer"])
                continue
            assert len(got) == len(truth), (conv, s)
            assert np.abs(np.asarray(got, float) - np.asarray(truth, float)).max() <= tolerance(conv, w), (conv, s)
            if conv == "paligemma" and s["question"].startswith("detect "):   # every object it names, no other
                label = s["question"][len("detect "):]
                named = ([o["box"] for o in rec["objects"] if o["referral"] == label]
                         or [o["box"] for o in rec["objects"] if o["name"] == label])
                assert sorted(named) == sorted(truth), (s, named)
            elif conv == "paligemma":
                assert s["question"] == f"answer en {q['text'] if q['task'] != 'region' else s['question'][10:]}"
    assert {"name", "referral", "all", "region", "point", "count"} <= tasks


def test_florence2_answers_parse_with_its_own_post_processor(shards, tmp_path):
    export(str(shards), str(tmp_path / "f"), "jsonl", "florence2", progress=False)
    rows = [json.loads(x) for x in (tmp_path / "f" / "samples.jsonl").read_text().splitlines()]
    grounding = [r for r in rows if r["question"].startswith("<CAPTION_TO_PHRASE_GROUNDING>")]
    assert grounding
    post = _florence()
    for r in grounding:
        parsed = post(text=r["answer"], image_size=(r["width"], r["height"]), parse_tasks="phrase_grounding")
        inst = parsed["phrase_grounding"]
        assert len(inst) == 1 and inst[0]["cat_name"] == r["question"].split(">", 1)[1]
        err = np.abs(np.asarray(inst[0]["bbox"], float) - np.asarray(r["boxes"], float)).max()
        assert err <= r["width"] / 1000 + 1


def _image_token_count(messages) -> int:
    return sum(m["content"].count("<image>") for m in messages)


def test_llama_factory_swift_hf_yolo_and_coco_meet_their_schemas(shards, tmp_path):
    recs = _records(shards)
    # LLaMA-Factory (data/README.md: sharegpt formatting with OpenAI-style tags, multimodal `images`)
    lf = tmp_path / "lf"
    s = export(str(shards), str(lf), "llama-factory", "qwen2_vl", progress=False)
    assert json.loads((lf / "dataset_info.json").read_text()) == {"synthgen": {
        "file_name": "data.json", "formatting": "sharegpt", "columns": {"messages": "messages", "images": "images"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}}}
    data = json.loads((lf / "data.json").read_text())
    assert isinstance(data, list) and len(data) == s["samples"]
    for row in data:
        assert set(row) == {"messages", "images", "key"} and row["key"] in recs
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
        assert all(set(m) == {"role", "content"} for m in row["messages"])
        assert _image_token_count(row["messages"]) == len(row["images"]) == 1
        assert (lf / row["images"][0]).is_file()   # relative to the dataset_dir
    # images written once, however many questions
    assert sorted(p.name for p in (lf / "images").iterdir()) == sorted(f"{k}.jpg" for k in recs)
    assert s["samples"] > len(recs)
    # ms-swift (Custom-dataset.md: `messages` required, `images` paths)
    sw = tmp_path / "sw"
    export(str(shards), str(sw), "swift", "internvl", progress=False)
    lines = [json.loads(x) for x in (sw / "train.jsonl").read_text().splitlines()]
    assert len(lines) == s["samples"]
    for row in lines:
        assert set(row) == {"messages", "images", "key"}
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
        assert _image_token_count(row["messages"]) == 1 and Path(row["images"][0]).is_absolute()
        assert Path(row["images"][0]).is_file()
    # Hugging Face datasets: parquet with an Image feature
    import datasets

    hf = tmp_path / "hf"
    export(str(shards), str(hf), "hf", "paligemma", progress=False)
    ds = datasets.load_dataset("parquet", data_files=str(hf / "data" / "*.parquet"), split="train",
                               cache_dir=str(tmp_path / "cache"))
    assert isinstance(ds.features["image"], datasets.Image) and len(ds) == s["samples"]
    assert set(ds["key"]) == set(recs)
    row = ds[0]
    assert row["image"].size == (SIZE, SIZE) and row["messages"][0]["content"].startswith("<image>")
    # the images once per row group (parquet's dictionary), not once per sample
    image_bytes = sum(p.stat().st_size for p in (hf / "images").iterdir())
    import pyarrow.parquet as pq

    metas = [pq.ParquetFile(p).metadata for p in (hf / "data").iterdir()]
    stored = sum(m.row_group(g).column(1).total_compressed_size for m in metas for g in range(m.num_row_groups))
    assert metas[0].row_group(0).column(1).path_in_schema == "image.bytes"
    assert stored < 1.05 * image_bytes, (stored, image_bytes)
    # YOLO: normalised centre boxes per image, classes by sorted name
    yo = tmp_path / "yo"
    export(str(shards), str(yo), "yolo", progress=False)
    classes = (yo / "classes.txt").read_text().splitlines()
    assert classes == sorted({o["category"] for r in recs.values() for o in r["objects"]})
    assert "names:" in (yo / "data.yaml").read_text()
    for key, rec in recs.items():
        rows = [line.split() for line in (yo / "labels" / f"{key}.txt").read_text().splitlines()]
        w, h = rec["width"], rec["height"]
        back = [[(float(cx) - float(bw) / 2) * w, (float(cy) - float(bh) / 2) * h,
                 (float(cx) + float(bw) / 2) * w, (float(cy) + float(bh) / 2) * h] for _, cx, cy, bw, bh in rows]
        assert [classes[int(r[0])] for r in rows] == [o["category"] for o in rec["objects"]]
        assert np.abs(np.asarray(back) - np.asarray([o["box"] for o in rec["objects"]])).max() < 1e-3 * w
    # COCO: export-coco, with masks
    coco = export(str(shards), str(tmp_path / "coco"), "coco", progress=False)
    inst = json.loads((tmp_path / "coco" / "instances.json").read_text())
    assert coco["scenes"] == len(inst["images"]) == len(recs)
    assert all("segmentation" in a for a in inst["annotations"])


def test_resume_limit_and_other_settings(shards, tmp_path):
    out = tmp_path / "o"
    first = export(str(shards), str(out), "llama-factory", "llava", limit=7, progress=False)
    assert first["scenes"] == 7 and len(list((out / "images").iterdir())) == 7
    data = (out / "data.json").read_bytes()
    # interrupted in the second shard: its part and the done marker missing; the same command finishes it
    (out / "export.json").unlink()
    (out / ".parts" / "000001.json").unlink()
    (out / "data.json").unlink()
    again = export(str(shards), str(out), "llama-factory", "llava", limit=7, progress=False)
    assert (out / "data.json").read_bytes() == data and again["samples"] == first["samples"]
    assert export(str(shards), str(out), "llama-factory", "llava", limit=7, progress=False) == again   # done
    with pytest.raises(UserError, match="other settings"):
        export(str(shards), str(out), "llama-factory", "qwen2_vl", progress=False)
    other = export(str(shards), str(out), "jsonl", "qwen2_vl", overwrite=True, progress=False)
    assert other["scenes"] == 10 and not (out / "data.json").exists()
    with pytest.raises(UserError, match="not a box convention"):
        export(str(shards), str(tmp_path / "x"), "jsonl", "yolo", progress=False)


def test_the_command_line_exports_and_export_coco_stays(shards, tmp_path, cli_env, synthgen_cmd):
    import subprocess

    r = subprocess.run(synthgen_cmd + ["export", str(shards), "--to", "swift", "--boxes", "qwen2_5_vl",
                                       "-o", str(tmp_path / "s"), "--limit", "3"],
                       env=cli_env, capture_output=True, text=True)
    assert r.returncode == 0 and "3 scenes" in r.stdout, r.stderr
    first = json.loads((tmp_path / "s" / "train.jsonl").read_text().splitlines()[0])
    assert parse_box(first["messages"][1]["content"]) is not None and "bbox_2d" in first["messages"][1]["content"]
    r = subprocess.run(synthgen_cmd + ["export", str(shards), "--to", "tfrecord", "-o", str(tmp_path / "t")],
                       env=cli_env, capture_output=True, text=True)
    assert r.returncode == 2 and "not a container" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(synthgen_cmd + ["export-coco", str(shards), "-o", str(tmp_path / "c")],
                       env=cli_env, capture_output=True, text=True)
    assert r.returncode == 0 and (tmp_path / "c" / "instances.json").exists(), r.stderr


def test_paligemma_and_qwen2_5_vl_processors_read_the_export(shards, tmp_path):
    """PaliGemma's processor (a tiny one built offline: its real class and `<locNNNN>` tokens) takes
    every detect sample's answer as its suffix, each location one token of its own; Qwen2.5-VL's
    image processor resizes the exported image to the size its boxes refer to."""
    from transformers import AutoProcessor, Qwen2VLImageProcessor

    from synthgen.demo.tiny_vlms import build_tiny_paligemma

    proc = AutoProcessor.from_pretrained(build_tiny_paligemma(tmp_path / "pg"))
    out = tmp_path / "pg-export"
    export(str(shards), str(out), "jsonl", "paligemma", progress=False)
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    detect = [r for r in rows if r["question"].startswith("detect ")]
    assert len(detect) >= 10
    for r in detect:
        image = Image.open(out / r["image"])
        ids = proc(text="<image>" + r["question"], images=image, suffix=r["answer"])["labels"][0]
        tokens = proc.tokenizer.convert_ids_to_tokens([int(i) for i in ids if i != -100])
        locs = [int(t[4:8]) for t in tokens if re.fullmatch(r"<loc\d{4}>", t)]
        assert len(locs) == 4 * len(r["boxes"]) == len(re.findall(r"<loc\d{4}>", r["answer"]))
        back = [[b[1] / 1024 * r["width"], b[0] / 1024 * r["height"], b[3] / 1024 * r["width"], b[2] / 1024 * r["height"]]
                for b in (locs[i:i + 4] for i in range(0, len(locs), 4))]
        assert np.abs(np.asarray(back) - np.asarray(r["boxes"])).max() <= tolerance("paligemma", r["width"])
    qwen = tmp_path / "qwen"
    summary = export(str(shards), str(qwen), "hf", "qwen2_5_vl", progress=False)
    patch = Qwen2VLImageProcessor.patch_size
    for name in list((qwen / "images").iterdir())[:3]:
        t, gh, gw = Qwen2VLImageProcessor()(images=[Image.open(name)])["image_grid_thw"][0].tolist()
        assert summary["box_frame"][f"{SIZE}x{SIZE}"] == [gw * patch, gh * patch] != [SIZE, SIZE]
