"""Fast PIN tests: module, text codec, data stream order, metrics, restricted unpickler."""

from __future__ import annotations

import json
import math
import pickle
import time
from pathlib import Path

import pytest
import torch

from synthgen.errors import UserError  # noqa: E402
from synthgen.grounding import iou  # noqa: E402
from synthgen.pin.evaluation import evaluate as ev  # noqa: E402
from synthgen.pin.evaluation import protocol as P  # noqa: E402
from synthgen.pin.evaluation import sets as S  # noqa: E402
from synthgen.pin.models.module import PIN, sinusoid_table  # noqa: E402
from synthgen.pin.training.data import SceneStream, StreamConfig, make_loader  # noqa: E402
from synthgen.shards import find_shards as list_shards  # noqa: E402
from tests.pin.fixtures import write_shards  # noqa: E402

# --- module --------------------------------------------------------------------------------

def test_pin_shapes_and_parameter_count():
    pin = PIN(257, 1024)
    assert pin().shape == (257, 1024)
    # Linear(64,512) LN(512) Linear(512,768) LN(768) Linear(768,1024): the paper's ~1.2M
    expected = (64 * 512 + 512) + 2 * 512 + (512 * 768 + 768) + 2 * 768 + (768 * 1024 + 1024)
    assert pin.num_parameters() == expected == 1_217_280
    assert PIN(257, 1408, activation="swiglu").mlp[0].out_features == 1024  # SwiGLU halves 2h -> h
    learned = PIN(10, 8, table="learned", hidden=(16,))
    assert any(p is learned.table for p in learned.parameters())
    assert not any(p is PIN(10, 8, hidden=(16,)).table for p in PIN(10, 8, hidden=(16,)).parameters())
    with pytest.raises(ValueError):
        PIN(10, 8, activation="relu")


def test_sinusoid_table_matches_equations():
    s = sinusoid_table(20, 64)
    i, k = 7, 5
    assert s[i, 2 * k].item() == pytest.approx(math.sin(i / 10000 ** (2 * k / 64)), abs=1e-6)
    assert s[i, 2 * k + 1].item() == pytest.approx(math.cos(i / 10000 ** (2 * k / 64)), abs=1e-6)
    assert torch.equal(s[0, 1::2], torch.ones(32))


def test_pin_config_round_trip():
    pin = PIN(65, 32, table="learned", hidden=(16, 24), activation="swiglu")
    clone = PIN.from_config(json.loads(json.dumps(pin.config())))
    clone.load_state_dict(pin.state_dict())
    assert torch.equal(clone(), pin())


# --- metrics -------------------------------------------------------------------------------

def test_size_buckets_scale_with_canvas():
    assert P.size_bucket([0, 0, 31, 31], 224) == "small"
    assert P.size_bucket([0, 0, 32, 32], 224) == "medium"
    assert P.size_bucket([0, 0, 95, 96], 224) == "medium"
    assert P.size_bucket([0, 0, 96, 96], 224) == "large"
    # thresholds scale with canvas/224: at 448 a 64x64 box is the smallest medium one
    assert P.size_bucket([0, 0, 63, 64], 448) == "small"
    assert P.size_bucket([0, 0, 64, 64], 448) == "medium"
    assert P.size_bucket([0, 0, 192, 192], 448) == "large"


def test_unparseable_output_is_one_cell_at_origin():
    for rule in ("lenient", "strict"):
        text = "[28,42,126,154]" if rule == "lenient" else " [28,42,126,154]"
        assert P.box_from_text(text, 224, 16, rule) == ([28, 42, 126, 154], True)
        assert P.box_from_text("no box here", 224, 16, rule) == ([0.0, 0.0, 14.0, 14.0], False)
        assert P.box_from_text("[1,2,3", 224, 14, rule) == ([0.0, 0.0, 16.0, 16.0], False)


def test_summarize_against_hand_computed_ious():
    recs = [
        # iou 25/175 = 1/7, medium gt (100x... no: 10x10 on 224 is small)
        {"iou": iou([0, 0, 10, 10], [5, 5, 15, 15]), "bucket": "small", "parsed": True},
        # identical medium boxes: 1
        {"iou": iou([10, 10, 60, 60], [10, 10, 60, 60]), "bucket": "medium", "parsed": True},
        # large gt 0..112 x 0..112, pred left half: 0.5
        {"iou": iou([0, 0, 56, 112], [0, 0, 112, 112]), "bucket": "large", "parsed": True},
        # unparseable -> one cell at origin vs a large box: 196 / 12544
        {"iou": iou([0, 0, 14, 14], [0, 0, 112, 112]), "bucket": "large", "parsed": False},
    ]
    assert recs[0]["iou"] == pytest.approx(1 / 7)
    m = P.summarize(recs)
    assert m["n"] == 4 and m["unparseable"] == 1
    assert m["miou"] == pytest.approx((1 / 7 + 1 + 0.5 + 196 / 12544) / 4)
    assert m["miou_M"] == pytest.approx(1.0) and m["n_M"] == 1
    assert m["miou_L"] == pytest.approx((0.5 + 196 / 12544) / 2) and m["n_L"] == 2
    assert m["p@0.3"] == pytest.approx(0.5)


def _coco(tmp_path: Path) -> tuple[Path, Path]:
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for name, size in (("a.jpg", (448, 224)), ("b.jpg", (100, 100)), ("c.jpg", (224, 448))):
        Image.new("RGB", size, (90, 90, 90)).save(images / name)
    coco = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 448, "height": 224},
                   {"id": 2, "file_name": "b.jpg", "width": 100, "height": 100},
                   {"id": 3, "file_name": "c.jpg", "width": 224, "height": 448}],
        "categories": [{"id": 5, "name": "hot_dog"}, {"id": 6, "name": "apple"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 5, "bbox": [0, 0, 448, 224], "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 6, "bbox": [224, 112, 112, 56], "iscrowd": 0},
        ] + [{"id": 20 + i, "image_id": 2, "category_id": 6, "bbox": [0, 0, 10, 10], "iscrowd": 0}
             for i in range(4)]  # 4 objects: dropped with max_objects=3
          + [{"id": 30, "image_id": 3, "category_id": 6, "bbox": [0, 0, 56, 448], "iscrowd": 0}],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(coco))
    return path, images


def test_coco_protocol_with_the_old_rules_and_uniform_baseline(tmp_path):
    """Today's rules, now options: 'a' always, exact float boxes, uniform grid boxes."""
    coco_json, images = _coco(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "pin.json").write_text(json.dumps({"canvas": 224, "grid": 16, "vlm": "blip2"}))
    old = dict(article="a", gt_boxes="exact", baseline="uniform")
    m = ev.evaluate_coco(run, coco_json, images, out=tmp_path / "e" / "preds.jsonl", **old)
    recs = [json.loads(x) for x in (tmp_path / "e" / "preds.jsonl").read_text().splitlines()]
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["n"] == 3 == m["n"]
    assert [r["image_id"] for r in recs] == [1, 1, 3]  # image 2 has 4 objects
    assert recs[0]["category"] == "hot dog" and recs[0]["query"] == "In the image is a hot dog located at"
    assert recs[1]["query"] == "In the image is a apple located at"  # --article a
    # boxes squashed with the image: 448x224 -> 224x224 halves x; 224x448 halves y
    assert recs[0]["gt_box"] == [0, 0, 224, 224] and recs[0]["bucket"] == "large"
    assert recs[1]["gt_box"] == [112, 112, 168, 168] and recs[1]["bucket"] == "medium"  # 56x56
    assert recs[2]["gt_box"] == [0, 0, 56, 224] and recs[2]["bucket"] == "large"  # 56*224 > 96^2
    for r in recs:
        assert r["iou"] == pytest.approx(iou(r["pred_box"], r["gt_box"]), abs=1e-3)
        assert all(v % 14 == 0 for v in r["pred_box"])  # uniform boxes lie on the grid
    assert m["miou"] == pytest.approx(sum(r["iou"] for r in recs) / 3)
    assert m["miou_M"] == pytest.approx(recs[1]["iou"])
    assert m["miou_L"] == pytest.approx((recs[0]["iou"] + recs[2]["iou"]) / 2)
    again = ev.evaluate_coco(run, coco_json, images, out=tmp_path / "f.jsonl", **old)
    assert again["miou"] == m["miou"]  # seeded
    assert (tmp_path / "f.metrics.json").is_file()
    assert m["protocol"]["baseline"] == "uniform" and m["protocol"]["gt_boxes"] == "exact"


def test_coco_protocol_defaults_with_random_baseline(tmp_path):
    """The authors' rules by default: a/an, truncated boxes capped at canvas-1, and the paper's
    random baseline (a ground-truth box of another image)."""
    coco_json, images = _coco(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "pin.json").write_text(json.dumps({"canvas": 224, "grid": 16, "vlm": "blip2"}))
    m = ev.evaluate_coco(run, coco_json, images, baseline="random", out=tmp_path / "e" / "preds.jsonl")
    recs = [json.loads(x) for x in (tmp_path / "e" / "preds.jsonl").read_text().splitlines()]
    assert [r["image_id"] for r in recs] == [1, 1, 3]
    assert recs[1]["query"] == "In the image is an apple located at"
    # 448x224: x, w halved and truncated, the far corner capped at 223
    assert recs[0]["gt_box"] == [0, 0, 223, 223] and recs[0]["bucket"] == "large"
    assert recs[1]["gt_box"] == [112, 112, 168, 168] and recs[1]["bucket"] == "medium"
    assert recs[2]["gt_box"] == [0, 0, 56, 223] and recs[2]["bucket"] == "large"
    # the random baseline answers with a box of the other kept image (image 2 has 4 objects)
    assert recs[0]["pred_box"] == recs[1]["pred_box"] == [0, 0, 56, 223]
    assert recs[2]["pred_box"] in ([0, 0, 223, 223], [112, 112, 168, 168])
    for r in recs:
        assert r["iou"] == pytest.approx(iou(r["pred_box"], r["gt_box"]), abs=1e-6)
    assert m["protocol"] == {"set_kind": "coco-json", "article": "auto", "names": "strip", "crowd": "query",
                             "gt_boxes": "authors", "parse": "strict", "baseline": "random", "max_objects": 3,
                             "seed": 0, "canvas": 224, "grid": 16}
    assert m["crowd_queries"] == 0 and m["rejected"] == {"strict": 0, "lenient": 0}


def test_coco_bad_inputs_are_user_errors(tmp_path):
    coco_json, images = _coco(tmp_path)
    with pytest.raises(UserError, match="not a PIN run"):
        ev.evaluate_coco(tmp_path, coco_json, images, baseline="random")
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(UserError, match="not a COCO"):
        ev.evaluate_coco(tmp_path, bad, images, baseline="random")


def _lvis(tmp_path):
    """A minimal LVIS v1 val json: images carry ``coco_url`` but no ``file_name``."""
    from PIL import Image

    root = tmp_path / "coco"
    (root / "val2017").mkdir(parents=True)
    Image.new("RGB", (640, 480), (9, 9, 9)).save(root / "val2017" / "000000000139.jpg")
    lvis = {"images": [{"id": 139, "height": 480, "width": 640, "flickr_url": "x",
                        "coco_url": "http://images.cocodataset.org/val2017/000000000139.jpg",
                        "neg_category_ids": [], "not_exhaustive_category_ids": []}],
            "annotations": [{"id": 1, "image_id": 139, "category_id": 3, "bbox": [10, 20, 100, 200],
                             "area": 20000, "segmentation": []}],
            "categories": [{"id": 3, "name": "bow_(weapon)", "synset": "bow.n.04", "frequency": "r",
                            "def": "x", "synonyms": []}]}
    path = tmp_path / "lvis_v1_val.json"
    path.write_text(json.dumps(lvis))
    run = tmp_path / "run"
    run.mkdir()
    (run / "pin.json").write_text(json.dumps({"canvas": 224, "grid": 16, "vlm": "blip2"}))
    return path, root, run


def test_lvis_images_found_by_coco_url(tmp_path):
    lvis, root, run = _lvis(tmp_path)
    # --images as the COCO root (val2017/ inside) or as the val2017 folder itself
    for i, images in enumerate((root, root / "val2017")):
        m = ev.evaluate_coco(run, lvis, images, baseline="uniform", out=tmp_path / f"e{i}" / "preds.jsonl")
        recs = [json.loads(x) for x in Path(m["preds_file"]).read_text().splitlines()]
        assert m["n"] == 1 and recs[0]["image_id"] == 139 and recs[0]["category"] == "bow"  # the authors' name
        assert recs[0]["query"] == "In the image is a bow located at"
        # 640x480 -> 224: x, y, w, h = int(3.5), int(9.33), int(35), int(93.3)
        assert recs[0]["gt_box"] == [3, 9, 38, 102]
    # the old rules as options: the raw name, exact float boxes
    m = ev.evaluate_coco(run, lvis, root, baseline="uniform", names="raw", gt_boxes="exact",
                         out=tmp_path / "raw" / "preds.jsonl")
    rec = json.loads(Path(m["preds_file"]).read_text())
    assert rec["category"] == "bow (weapon)" and rec["gt_box"] == [3.5, 9.33, 38.5, 102.67]
    with pytest.raises(UserError, match="000000000139.jpg"):
        ev.evaluate_coco(run, lvis, tmp_path / "run", baseline="uniform")
    # the paper's random baseline needs another image to take a box from
    with pytest.raises(UserError, match="only 1 image has objects; use --baseline uniform"):
        ev.evaluate_coco(run, lvis, root, baseline="random")


def test_eval_outputs_are_written_atomically(tmp_path):
    out = tmp_path / "e" / "preds.jsonl"
    ev._write_outputs([{"iou": 0.5}], {"n": 1}, out)
    before = out.read_text(), (tmp_path / "e" / "metrics.json").read_text()
    # a record that cannot be serialised half-way through the list: nothing may change
    with pytest.raises(TypeError):
        ev._write_outputs([{"iou": 0.1}, {"iou": object()}], {"n": 2}, out)
    with pytest.raises(TypeError):
        ev._write_outputs([{"iou": 0.1}], {"n": object()}, out)
    assert (out.read_text(), (tmp_path / "e" / "metrics.json").read_text()) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["metrics.json", "preds.jsonl"]


# --- restricted unpickler ------------------------------------------------------------------

class _Evil:
    def __reduce__(self):
        return (Path("/tmp/pwned-by-pickle").touch, ())


def test_restricted_unpickler_refuses_code(tmp_path):
    target = Path("/tmp/pwned-by-pickle")
    if target.exists():
        target.unlink()
    payload = pickle.dumps([{"ref_id": 1, "x": _Evil()}])
    with pytest.raises(UserError, match="refusing"):
        S.safe_load_pickle(payload)
    assert not target.exists()
    import os
    payload2 = pickle.dumps((os.system, ("true",)))
    with pytest.raises(UserError, match="posix.system|os.system|refusing"):
        S.safe_load_pickle(payload2)


def test_restricted_unpickler_reads_plain_refs(tmp_path):
    refs = [{"ref_id": 3, "ann_id": 9, "image_id": 1, "split": "testA", "category_id": 1,
             "sentences": [{"sent": "left man", "raw": "Left man", "tokens": ["left", "man"]}],
             "ids": {1, 2}, "pair": (1.5, None, True, b"x")}]
    for proto in (2, pickle.HIGHEST_PROTOCOL):
        p = tmp_path / f"refs{proto}.p"
        p.write_bytes(pickle.dumps(refs, protocol=proto))
        assert S.safe_load_pickle(p) == refs


def test_cuda_rng_is_saved_and_restored_for_the_current_device_only(monkeypatch):
    """A run saved on a machine with several GPUs resumes on one with fewer: only the training
    device's CUDA generator is saved and restored (never get/set_rng_state_all)."""
    from synthgen.pin.training import checkpoint as T

    calls = []

    def no_all(*a, **k):
        raise AssertionError("all-device CUDA RNG state used")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", no_all)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", no_all)
    monkeypatch.setattr(torch.cuda, "get_rng_state",
                        lambda device="cuda": calls.append(("get", str(device))) or torch.tensor([7], dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "set_rng_state",
                        lambda state, device="cuda": calls.append(("set", int(state[0]), str(device))))
    st = T.rng_state(torch.device("cuda", 3))
    assert calls == [("get", "cuda:3")] and torch.equal(st["cuda"], torch.tensor([7], dtype=torch.uint8))
    T.set_rng_state(st, torch.device("cuda", 0))
    assert calls[-1] == ("set", 7, "cuda:0")
    # a checkpoint of an earlier version holds every GPU's state: take this device's entry
    old = dict(st, cuda=[torch.tensor([i], dtype=torch.uint8) for i in range(4)])
    T.set_rng_state(old, torch.device("cuda", 2))
    assert calls[-1] == ("set", 2, "cuda:2")
    n = len(calls)
    T.set_rng_state(old, torch.device("cuda", 5))  # that GPU did not exist there: left as it is
    T.set_rng_state(st, torch.device("cpu"))
    assert len(calls) == n
    assert "cuda" not in T.rng_state(torch.device("cpu"))


@pytest.mark.parametrize("nan_steps", [10**9, 1])
def test_non_finite_loss_on_one_ddp_rank_skips_then_stops_every_rank(tmp_path, nan_steps):
    """Two gloo ranks; the loss turns NaN on rank 1 only, from step 3 on. Both ranks skip those
    steps together and, with --max-skipped-steps 2, both stop at step 4 with the remedy (a rank
    raising alone left the other waiting in its next collective). A single NaN step is skipped
    on both ranks and the run ends with finite PIN weights."""
    import multiprocessing as mp
    import socket

    from tests.pin.fixtures import ddp_nan_worker

    write_shards(tmp_path / "s", 8, canvas=32, grid=4, per_shard=4)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=ddp_nan_worker,
                         args=(r, 2, port, str(tmp_path / "s"), str(tmp_path / "run"), str(tmp_path), nan_steps))
             for r in range(2)]
    for p in procs:
        p.start()
    files = [tmp_path / f"rank{r}.txt" for r in range(2)]

    def wait_for(cond, seconds):
        end = time.monotonic() + seconds
        while not cond() and time.monotonic() < end and any(p.is_alive() for p in procs):
            time.sleep(0.05)
        return cond()

    hung = [0, 1]
    try:
        # start-up may be slow on a busy machine; once rank 1 has met its NaN, rank 0 must stop
        # at that step too, not when its collective times out (60 s)
        assert wait_for(files[1].exists, 240), "rank 1 did not finish"
        wait_for(files[0].exists, 20)
        hung = [r for r in range(2) if not files[r].exists()]
    finally:
        for p in procs:
            p.join(timeout=0 if hung else 20)
            if p.is_alive():
                p.kill()
                p.join()
    assert not hung, f"ranks {hung} still running"
    results = [f.read_text() for f in files]
    if nan_steps == 1:
        assert all(r.startswith("finished ") for r in results), results
        assert results[0] == results[1] and math.isfinite(float(results[0].split()[1])), results
        return
    for r in results:
        assert r.startswith("UserError: 2 optimiser steps in a row skipped at step 4 (the loss is not finite"), results
        assert "lower --lr" in r, r


# --- data stream ---------------------------------------------------------------------------

class _Codec:
    """Stand-in text codec: ids = key number, so batches are easy to compare."""

    def encode(self, referral, answer=None, name_loss=False, art=None):
        return [len(referral)], [1]

    def collate(self, seqs, left_pad=False):
        return {"input_ids": torch.tensor([s[0] for s in seqs]),
                "attention_mask": torch.ones(len(seqs), 1, dtype=torch.long),
                "labels": torch.tensor([s[1] for s in seqs])}


def _keys(loader, n):
    it = iter(loader)
    return [tuple(next(it)["keys"]) for _ in range(n)]


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_resume_continues_the_same_batches(tmp_path, workers):
    shards = [str(p) for p in write_shards(tmp_path / "s", 20, canvas=32, grid=4, per_shard=5)]
    cfg = StreamConfig(shards=shards, batch_size=3, seed=1, shuffle_buffer=4)
    full = _keys(make_loader(cfg, _Codec(), workers=workers), 14)
    resumed = _keys(make_loader(cfg, _Codec(), workers=workers, start_batch=9), 5)
    assert resumed == full[9:]
    flat = [k for b in full for k in b]
    first_epoch = flat[:20] if workers == 0 else None
    if first_epoch:
        assert sorted(first_epoch) == sorted(f"{i:09d}" for i in range(20))  # each scene once
        assert first_epoch != sorted(first_epoch)  # shuffled


def test_stream_splits_ranks_and_workers_disjointly(tmp_path):
    shards = [str(p) for p in write_shards(tmp_path / "s", 12, canvas=32, grid=4, per_shard=4)]
    seen = []
    for rank in range(2):
        for worker in range(2):
            ds = SceneStream(StreamConfig(shards=shards, batch_size=1, rank=rank, world_size=2), _Codec())
            split = rank * 2 + worker
            keys = [s["__key__"] for s in ds.raw_epoch(split, 4, 0)]
            seen.append(set(keys))
    assert sum(len(s) for s in seen) == 12 == len(set().union(*seen))  # 3 shards < 4 splits: by sample


def test_uneven_shard_split_reads_every_scene_equally_often(tmp_path):
    """5 shards over 4 data splits: no split may get two whole shards while another gets one
    (that read the scenes of the lone shards twice as often)."""
    from collections import Counter

    shards = [str(p) for p in write_shards(tmp_path / "s", 40, canvas=32, grid=4, per_shard=8)]
    ds = SceneStream(StreamConfig(shards=shards, batch_size=1, shuffle_buffer=4), _Codec())
    n = 4
    epoch = [[s["__key__"] for s in ds.raw_epoch(split, n, 0)] for split in range(n)]
    assert sorted(k for keys in epoch for k in keys) == [f"{i:09d}" for i in range(40)]  # disjoint
    assert [len(keys) for keys in epoch] == [10] * n  # equal epoch lengths
    gens = [ds.samples(split, n) for split in range(n)]
    reads = Counter(next(gens[i % n])["key"] for i in range(400))  # the DataLoader's round-robin
    per_shard = Counter()
    for key, c in reads.items():
        per_shard[int(key) // 8] += c
    assert dict(per_shard) == {i: 80 for i in range(5)}, dict(sorted(per_shard.items()))
    assert set(reads.values()) == {10}  # every scene 10 times


def test_uneven_shard_split_resumes_exactly(tmp_path):
    shards = [str(p) for p in write_shards(tmp_path / "s", 40, canvas=32, grid=4, per_shard=8)]
    cfg = StreamConfig(shards=shards, batch_size=3, seed=2, shuffle_buffer=4, rank=1, world_size=2)
    full = _keys(make_loader(cfg, _Codec(), workers=2), 17)
    assert _keys(make_loader(cfg, _Codec(), workers=2, start_batch=11), 6) == full[11:]


def test_target_object_is_drawn_per_read(tmp_path):
    shards = [str(p) for p in write_shards(tmp_path / "s", 4, canvas=64, grid=8, per_shard=4,
                                           max_objects=3, seed=3)]

    class Names(_Codec):
        def encode(self, referral, answer=None, name_loss=False, art=None):
            self.seen.append((referral, answer))
            return [0], [0]

    codec = Names()
    codec.seen = []
    ds = SceneStream(StreamConfig(shards=shards, batch_size=4, shuffle_buffer=1), codec)
    it = ds.batches(0, 1)
    for _ in range(10):
        next(it)
    assert len({r for r, _ in codec.seen}) >= 2  # different objects of the scenes become targets
    assert all(a.startswith("[") and a.count(",") == 3 for _, a in codec.seen)


def test_list_shards_errors(tmp_path):
    with pytest.raises(UserError, match="no .tar shards"):
        list_shards(tmp_path)
    with pytest.raises(UserError, match="no .tar shards in"):
        list_shards(str(tmp_path / "x-*.tar"))


def test_refcoco_p_at_03_with_uniform_baseline(tmp_path):
    from PIL import Image

    d = tmp_path / "refcoco"
    (d / "img").mkdir(parents=True)
    Image.new("RGB", (448, 448)).save(d / "img" / "COCO_train2014_000000000001.jpg")
    refs = [{"ref_id": 1, "ann_id": 7, "image_id": 1, "split": "testA", "category_id": 1,
             "file_name": "COCO_train2014_000000000001_7.jpg",
             "sentences": [{"sent": "left man", "raw": "Left man"},
                           {"sent": "man on left", "raw": "Man on the left."}]},
            {"ref_id": 2, "ann_id": 7, "image_id": 1, "split": "val", "category_id": 1,
             "sentences": [{"sent": "ignored", "raw": "ignored"}]}]
    (d / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    (d / "instances.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "width": 448, "height": 448}],
        "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [0, 0, 448, 448]}]}))
    run = tmp_path / "run"
    run.mkdir()
    (run / "pin.json").write_text(json.dumps({"canvas": 224, "grid": 16, "vlm": "blip2"}))
    # today's rules as options: every sentence's 'sent', exact boxes
    m = ev.evaluate_refcoco(run, d, d / "img", split="testA", baseline="uniform", refcoco_sentences="all",
                            gt_boxes="exact")
    recs = [json.loads(x) for x in Path(m["preds_file"]).read_text().splitlines()]
    assert [r["query"] for r in recs] == ["left man", "man on left"]
    assert all(r["gt_box"] == [0, 0, 224, 224] for r in recs)
    # against the whole canvas, IoU = the predicted box's share of the canvas
    for r in recs:
        b = r["pred_box"]
        assert r["iou"] == pytest.approx((b[2] - b[0]) * (b[3] - b[1]) / 224 ** 2, abs=1e-3)
    assert m["p@0.3"] == pytest.approx(sum(r["iou"] >= 0.3 for r in recs) / 2)
    assert m["protocol"]["refcoco_sentences"] == "all"
    # the authors': one query per ref, its last sentence's raw text, in the same prompt
    m = ev.evaluate_refcoco(run, d, d / "img", split="testA", baseline="uniform")
    recs = [json.loads(x) for x in Path(m["preds_file"]).read_text().splitlines()]
    assert [r["query"] for r in recs] == ["Man on the left."]
    assert recs[0]["prompt"] == "In the image is a Man on the left. located at"
    assert recs[0]["gt_box"] == [0, 0, 223, 223]
    assert m["protocol"]["refcoco_sentences"] == "last" and m["protocol"]["set_kind"] == "refcoco"


# --- predict's picture ---------------------------------------------------------------------

def test_a_fallback_box_is_drawn_apart_from_a_parsed_one():
    import numpy as np
    from PIL import Image

    from synthgen.pin.evaluation.predict import BOX_COLOUR, FALLBACK_COLOUR, draw_prediction

    def drawn(parsed):
        im = draw_prediction(Image.new("RGB", (224, 112), (40, 90, 160)), [0.0, 0.0, 14.0, 14.0], "cat",
                             parsed=parsed)
        return np.asarray(im).reshape(-1, 3)

    def count(px, colour):
        return int((px == colour).all(axis=1).sum())

    parsed, fallback = drawn(True), drawn(False)
    assert count(parsed, BOX_COLOUR) > 0 and count(parsed, FALLBACK_COLOUR) == 0
    assert count(fallback, FALLBACK_COLOUR) > 0 and count(fallback, BOX_COLOUR) == 0
    # dashed: the top edge of the fallback box has gaps, the parsed box's is a solid line
    assert (parsed.reshape(112, 224, 3)[0, :14] == BOX_COLOUR).all()
    top = (fallback.reshape(112, 224, 3)[0, :14] == FALLBACK_COLOUR).all(axis=1)
    assert top.any() and not top.all()
    # the label under the box is the long "no box in answer: fallback", not "cat"
    below = (fallback.reshape(112, 224, 3)[15:] != (40, 90, 160)).any(axis=2)
    assert np.nonzero(below.any(axis=0))[0].max() > 80
    # labels are white text on a plate of the box's colour: readable on any image
    for px, colour in ((parsed, BOX_COLOUR), (fallback, FALLBACK_COLOUR)):
        assert count(px, colour) > 11 * 11 and int((px > 200).all(axis=1).sum()) > 5
