"""eval-pin --baseline in-context (issue 21): OpenFlamingo without PIN shown K images of the set with
their boxes before each query, repeated with seeds (seed, r), scored as mean +- std over repeats."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from synthgen.errors import UserError
from synthgen.grounding import parse_box
from synthgen.pin.evaluation import incontext as ic
from synthgen.pin.evaluation import protocol as P
from tests.pin.fixtures import (
    one_thread,  # noqa: F401 (an autouse fixture: one torch thread)
    write_shards,
)

CANVAS, GRID = 112, 8


def _entries(n_images: int, per_image: int = 2) -> list[tuple]:
    rng = np.random.default_rng(5)
    out = []
    for k in range(n_images):
        for j in range(per_image):
            x, y = rng.uniform(0, 60, 2)
            out.append((k, f"{k}.jpg", f"thing{j}", [x, y, x + rng.uniform(5, 50), y + rng.uniform(5, 50)]))
    return out


# --- pure -------------------------------------------------------------------------------------

def test_context_answer_is_the_box_on_the_nearest_grid_lines():
    cell = CANVAS / GRID
    rng = np.random.default_rng(0)
    for _ in range(200):
        x1, y1 = rng.uniform(0, CANVAS - 1, 2)
        box = [x1, y1, rng.uniform(x1, CANVAS), rng.uniform(y1, CANVAS)]
        got = parse_box(ic.context_answer(box, CANVAS, GRID))
        # each side on the grid line nearest the box's among those that keep the box one cell or more
        lines = np.arange(GRID + 1) * cell

        def nearest(v, allowed):
            return float(allowed[np.argmin(np.abs(allowed - v))])

        assert got[0] == nearest(box[0], lines[:-1]) and got[1] == nearest(box[1], lines[:-1])
        assert got[2] == nearest(box[2], lines[lines > got[0]]) and got[3] == nearest(box[3], lines[lines > got[1]])
        # the strict parser (what scores the answers) reads it back
        assert P.parse_box_strict(" " + ic.context_answer(box, CANVAS, GRID), CANVAS, GRID) == got


def test_draws_are_k_other_images_seeded_by_seed_and_repeat():
    pool = ic.ContextPool(_entries(12), CANVAS, GRID)
    for k in (1, 2, 5, 11):
        for query in range(12):
            ctx = pool.draw(np.random.default_rng([0, 0]), query, k)
            keys = [c.image_id for c in ctx]
            assert len(keys) == k and len(set(keys)) == k and query not in keys
            for c in ctx:  # one of that image's objects, with its answer
                assert (c.text, c.answer) in {(t, ic.context_answer(b, CANVAS, GRID))
                                              for i, _, t, b in _entries(12) if i == c.image_id}
    with pytest.raises(ValueError, match="12 context images"):
        pool.draw(np.random.default_rng(0), 3, 12)

    def repeat(seed, r):
        rng = np.random.default_rng([seed, r])
        return [[c.image_id for c in pool.draw(rng, q, 3)] for q in range(12)]

    assert repeat(0, 1) == repeat(0, 1)
    assert repeat(0, 0) != repeat(0, 1) and repeat(0, 1) != repeat(1, 1)
    # an unreadable image is never drawn again
    pool.bad.add(4)
    assert all(4 not in [c.image_id for c in pool.draw(np.random.default_rng(r), 0, 10)] for r in range(20))
    with pytest.raises(ValueError):
        pool.draw(np.random.default_rng(0), 0, 11)


def test_metrics_are_mean_and_std_over_repeats():
    rng = np.random.default_rng(2)
    records = [{"repeat": r, "iou": float(rng.uniform()), "bucket": ["medium", "large"][q % 2], "parsed": q != 3,
                "parsed_strict": q != 3, "parsed_lenient": True} for r in range(4) for q in range(9)]
    m = P.summarize_repeats(records)
    per = [P.summarize([x for x in records if x["repeat"] == r]) for r in range(4)]
    assert m["n"] == 9 and len(m["repeats"]) == 4
    for key in ("miou", "miou_M", "miou_L", "p@0.3"):
        vals = [p[key] for p in per]
        assert m[key] == pytest.approx(np.mean(vals)) and m[f"{key}_std"] == pytest.approx(np.std(vals))
        assert [r[key] for r in m["repeats"]] == vals
    assert m["miou_std"] > 0 and m["query_iou_std"] == pytest.approx(np.std([x["iou"] for x in records]))
    # without repeats: summarize as before
    plain = [{k: v for k, v in x.items() if k != "repeat"} for x in records[:9]]
    assert json.dumps(P.summarize_repeats(plain)) == json.dumps(P.summarize(plain))


def test_protocol_checks_and_labels_shots():
    assert "--shots must be an integer >= 1 (got 0)" in P.EvalProtocol(baseline="in-context", shots=0).problems()
    assert P.EvalProtocol(baseline="in-context", shots=5).label("coco-json") == "in-context-baseline+shots-5"
    assert (P.EvalProtocol(baseline="in-context", repeats=3).label("voc")
            == "in-context-baseline+shots-2+repeats-3")
    rec = P.EvalProtocol(baseline="in-context").record("coco-json", CANVAS, GRID)
    assert rec["shots"] == 2 and rec["repeats"] == 10 and rec["num_beams"] == 3
    assert "shots" not in P.EvalProtocol(baseline="random").record("coco-json", CANVAS, GRID)
    assert "shots" not in P.EvalProtocol().record("coco-json", CANVAS, GRID)


# --- on the tiny OpenFlamingo -----------------------------------------------------------------

def _coco_set(tmp_path: Path, n: int = 6) -> tuple[Path, Path]:
    """``n`` images of different sizes and colours, 1-2 objects each, as a COCO json."""
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(7)
    coco = {"images": [], "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}], "annotations": []}
    for k in range(1, n + 1):
        w, h = int(rng.integers(80, 200)), int(rng.integers(80, 200))
        img = np.full((h, w, 3), 40 * k % 255, np.uint8)
        coco["images"].append({"id": k, "file_name": f"{k}.jpg", "width": w, "height": h})
        for j in range(1 + k % 2):
            bw, bh = int(rng.integers(10, w // 2)), int(rng.integers(10, h // 2))
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            img[y:y + bh, x:x + bw] = (230, 40 * j, 40)
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": k, "category_id": 1 + j,
                                        "bbox": [x, y, bw, bh], "iscrowd": 0})
        Image.fromarray(img).save(images / f"{k}.jpg", quality=95)
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    return tmp_path / "coco.json", images


@pytest.fixture(scope="module")
def of_run(tmp_path_factory):
    """A tiny OpenFlamingo run (PIN trained 2 steps: the baseline detaches it)."""
    from typer.testing import CliRunner

    from synthgen.cli import app
    from synthgen.demo.tiny_flamingo import build_tiny_openflamingo

    tmp = tmp_path_factory.mktemp("incontext")
    vlm = build_tiny_openflamingo(tmp / "of", image_size=CANVAS, vision_width=32, gate=1.0, perceiver_depth=1,
                                  heads=1, num_latents=8, lm_steps=20)
    write_shards(tmp / "shards", 8, canvas=CANVAS, grid=GRID, per_shard=4)
    r = CliRunner().invoke(app, ["train-pin", str(tmp / "shards"), "--vlm", "openflamingo", "--model", str(vlm),
                                 "--out", str(tmp / "run"), "--steps", "2", "--batch-size", "4",
                                 "--loader-workers", "0", "--hidden", "16,16", "--no-progress", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    return tmp / "run"


@pytest.mark.slow
def test_prompt_holds_k_contexts_with_their_boxes_and_never_the_query(of_run, tmp_path):
    from synthgen.pin.evaluation.evaluate import canvas_tensor
    from synthgen.pin.training.checkpoint import load_run

    coco, images = _coco_set(tmp_path)
    _, adapter = load_run(of_run, device="cpu")
    adapter.detach_pin()
    data = json.loads(coco.read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    size = {i["id"]: (i["width"], i["height"]) for i in data["images"]}
    entries = [(a["image_id"], f"{a['image_id']}.jpg", names[a["category_id"]],
                P.coco_box_on_canvas(a["bbox"], *size[a["image_id"]], CANVAS)) for a in data["annotations"]]
    pixels = {k: canvas_tensor(images / f"{k}.jpg", CANVAS)[0] for k in size}
    for k in (1, 3, 5):
        ctx = ic.in_context(adapter, entries, lambda fn: pixels[int(fn.split(".")[0])], shots=k, seed=0,
                            canvas=CANVAS, grid=GRID, set_name="coco.json")
        queries = [1, 2, 6]
        vision, ids, mask, drawn = ctx.inputs(
            [pixels[q] for q in queries], ["cat"] * 3, queries)
        assert vision.shape == (3, k + 1, 3, CANVAS, CANVAS)
        eoc, media = adapter.model.eoc_token_id, adapter.model.media_token_id
        for row, q in enumerate(queries):
            keys = [c.image_id for c in drawn[row]]
            assert len(set(keys)) == k and q not in keys
            # the images the model sees: the K context images, then the query's; none is the query's
            assert all(vision[row, i].equal(pixels[key]) for i, key in enumerate(keys))
            assert vision[row, k].equal(pixels[q])
            assert not any(vision[row, i].equal(pixels[q]) for i in range(k))
            seq = ids[row][mask[row].bool()].tolist()
            assert seq.count(media) == k + 1 and seq.count(eoc) == k
            text = adapter.tokenizer.decode(seq)
            chunks = text.split("<|endofchunk|>")
            assert len(chunks) == k + 1 and chunks[-1] == "<image>In the image is a cat located at"
            for chunk, c in zip(chunks, drawn[row]):
                assert chunk == f"<image>In the image is a {c.text} located at {c.answer}."
                box = next(b for key, _, t, b in entries if key == c.image_id and t == c.text)
                assert c.answer == ic.context_answer(box, CANVAS, GRID)
        texts = ctx.generate(vision[:, -1], ["cat"] * 3, image_ids=queries, num_beams=2, max_new_tokens=4)
        assert len(texts) == 3 and len(ctx.drawn) == 3  # (what generate drew, kept for preds.jsonl)


@pytest.mark.slow
def test_eval_pin_in_context_through_the_cli(of_run, tmp_path):
    from typer.testing import CliRunner

    from synthgen.cli import app

    coco, images = _coco_set(tmp_path)
    runner = CliRunner()
    base = ["eval-pin", str(of_run), "--coco-json", str(coco), "--images", str(images), "--baseline", "in-context",
            "--shots", "3", "--repeats", "3", "--num-beams", "2", "--max-new-tokens", "6", "--device", "cpu",
            "--batch-size", "4"]
    r = runner.invoke(app, base)
    assert r.exit_code == 0, r.output
    proto = P.EvalProtocol(baseline="in-context", shots=3, repeats=3, num_beams=2, max_new_tokens=6)
    label = proto.label("coco-json")
    assert label.startswith("in-context-baseline+shots-3+repeats-3+")
    out = of_run / "eval" / "coco" / label
    m = json.loads((out / "metrics.json").read_text())
    preds = [json.loads(x) for x in (out / "preds.jsonl").read_text().splitlines()]
    n = len(json.loads(coco.read_text())["annotations"])
    assert m["n"] == n and len(preds) == 3 * n and m["baseline"] == "in-context"
    assert m["protocol"]["shots"] == 3 and m["protocol"]["repeats"] == 3
    for p in preds:
        keys = [c["image_id"] for c in p["context"]]
        assert len(set(keys)) == 3 and p["image_id"] not in keys
    per = [[p["iou"] for p in preds if p["repeat"] == r] for r in range(3)]
    assert m["miou"] == pytest.approx(np.mean([np.mean(x) for x in per]))
    assert m["miou_std"] == pytest.approx(np.std([np.mean(x) for x in per]))
    assert [x["miou"] for x in m["repeats"]] == pytest.approx([np.mean(x) for x in per])
    draws = [[tuple(c["image_id"] for c in p["context"]) for p in preds if p["repeat"] == r] for r in range(3)]
    assert draws[0] != draws[1] != draws[2]
    # seeded: the same run (another batch size) writes the same file; another --seed draws others
    first = (out / "preds.jsonl").read_bytes()
    r = runner.invoke(app, base[:-1] + ["1", "--overwrite"])
    assert r.exit_code == 0, r.output
    assert (out / "preds.jsonl").read_bytes() == first
    r = runner.invoke(app, base + ["--seed", "1"])
    assert r.exit_code == 0, r.output
    other = [json.loads(x) for x in (out.parent / replace(proto, seed=1).label("coco-json") / "preds.jsonl").read_text().splitlines()]
    assert [p["context"] for p in other] != [p["context"] for p in preds]
    # the table's K-context row: mean +- std over the repeats, the paper's 2-context figure only for K = 2
    r = runner.invoke(app, ["table", str(out), "--out", str(tmp_path / "t.md")])
    assert r.exit_code == 0, r.output
    row = next(x for x in (tmp_path / "t.md").read_text().splitlines() if x.startswith("| 3 context |"))
    assert f"{m['miou']:.3f} ± {m['miou_std']:.3f}" in row and "openflamingo" in row
    # an unreadable image: skipped and counted once (not once per repeat), never drawn as a context
    (tmp_path / "bad").mkdir()
    bad, bad_images = _coco_set(tmp_path / "bad", n=7)
    (bad_images / "7.jpg").write_bytes(b"not a jpeg")
    r = runner.invoke(app, ["eval-pin", str(of_run), "--coco-json", str(bad), "--images", str(bad_images),
                            "--baseline", "in-context", "--shots", "4", "--repeats", "3", "--max-new-tokens", "4",
                            "--out", str(tmp_path / "bad.jsonl")])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "bad.metrics.json").read_text())
    assert m["skipped"]["unreadable_image"]["count"] == 1 and len(m["repeats"]) == 3
    preds = [json.loads(x) for x in (tmp_path / "bad.jsonl").read_text().splitlines()]
    assert preds and all(c["image_id"] != 7 and p["image_id"] != 7 for p in preds for c in p["context"])
    # too few images for the shots: one line
    r = runner.invoke(app, base[:8] + ["--shots", "6", "--out", str(tmp_path / "x.jsonl")])
    assert r.exit_code == 2 and "--shots 6" in r.output and "Traceback" not in r.output, r.output
    # a prompt longer than the language model takes (the tiny MPT: 128 tokens): one line
    (tmp_path / "big").mkdir()
    big, big_images = _coco_set(tmp_path / "big", n=12)
    r = runner.invoke(app, ["eval-pin", str(of_run), "--coco-json", str(big), "--images", str(big_images),
                            "--baseline", "in-context", "--shots", "10", "--out", str(tmp_path / "y.jsonl")])
    assert r.exit_code == 2 and "128-token context" in r.output and "Traceback" not in r.output, r.output


def test_another_family_is_refused_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from synthgen.cli import app

    run = tmp_path / "run"
    run.mkdir()
    (run / "pin.json").write_text(json.dumps({"vlm": "blip2", "model": "nowhere", "canvas": 224, "grid": 32}))
    r = CliRunner().invoke(app, ["eval-pin", str(run), "--coco-json", str(tmp_path / "none.json"), "--images",
                                 str(tmp_path), "--baseline", "in-context"])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert "in-context" in r.output and "blip2" in r.output and len(r.output.strip().splitlines()) == 1
    with pytest.raises(UserError, match="--repeats must be an integer >= 1"):
        from synthgen.pin.evaluation.job import EvalJob

        EvalJob(run=str(run), coco_json="x", images="y", protocol=P.EvalProtocol(baseline="in-context", repeats=0))
    with pytest.raises(UserError, match="apply to --baseline in-context only"):
        EvalJob(run=str(run), coco_json="x", images="y", protocol=P.EvalProtocol(baseline="random", shots=5))
