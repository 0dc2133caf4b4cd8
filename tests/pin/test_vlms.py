"""PIN on LLaVA, SmolVLM / Idefics3, Qwen2.5-VL and PaliGemma 2: tiny random models built from
their real config classes (:mod:`synthgen.demo.tiny_vlms`), saved and loaded back by path with their
real processor classes, no mocks. Pure checks (native answer decoding) run without a model."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from synthgen.errors import UserError
from tests.pin.fixtures import (
    one_image_coco,
    one_thread,  # noqa: E402, F401 (an autouse fixture: one torch thread)
    write_shards,
)

CANVAS, GRID = 112, 8              # the tiny models: 112 px, 14-px patches -> 8x8 = 64 positions
WIDTH = 32                         # their vision width
FAMILIES = ("llava", "smolvlm", "qwen2_5_vl", "paligemma")
OPTIONS = {"qwen2_5_vl": {"canvas": CANVAS}}  # Qwen's tiny processor is saved with dynamic resolution



@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """family -> folder of its tiny model (built lazily, once)."""
    from synthgen.demo.tiny_vlms import BUILDERS

    root, built = tmp_path_factory.mktemp("vlms"), {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = BUILDERS[family](root / f"tiny-{family}")
        return built[family]
    return get


@pytest.fixture(scope="module")
def adapters(tiny):
    from synthgen.pin.models.adapters import load_adapter

    cache = {}

    def get(family: str):
        if family not in cache:
            cache[family] = load_adapter(family, str(tiny(family)), **OPTIONS.get(family, {}))
        return cache[family]
    return get


def _pixels(n: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, CANVAS, CANVAS), dtype=torch.uint8, generator=g)


def _pil(px: torch.Tensor):
    from PIL import Image

    return Image.fromarray(px.permute(1, 2, 0).numpy())


def _cfg(shards, out, model, **kw):
    from synthgen.pin.training.train import TrainConfig

    base = dict(shards=str(shards), out=str(out), vlm="auto", model=str(model), batch_size=8, loader_workers=0,
                log_every=1, save_every=1000, progress=False, shuffle_buffer=16, hidden=(64, 64), lr=3e-3)
    base.update(kw)
    return TrainConfig(**base)


def _losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "loss" in r]


# --- pure: the native answers ------------------------------------------------------------------

def test_paligemma_loc_tokens_decode_to_canvas_boxes():
    from synthgen.pin.models.native import loc_tokens_to_box

    # y1 x1 y2 x2 over 1024 bins: x 256/1024, y 512/1024 of a 224 canvas
    assert loc_tokens_to_box("<loc0512><loc0256><loc1023><loc0768> cat", 224) == [56.0, 112.0, 168.0, 223.78125]
    assert loc_tokens_to_box("<loc0000><loc0000><loc0512><loc0512> cat ; <loc0600><loc0600><loc0700><loc0700> cat",
                             112) == [0.0, 0.0, 56.0, 56.0]  # the first object
    assert loc_tokens_to_box("<loc0700><loc0600><loc0100><loc0200> dog", 1024) == [200.0, 100.0, 600.0, 700.0]
    assert loc_tokens_to_box("<loc0512><loc0256><loc1023> cat", 224) is None  # three tokens
    assert loc_tokens_to_box("a cat on a mat", 224) is None


def test_qwen_bbox_2d_json_decodes_to_canvas_boxes():
    from synthgen.pin.models.native import bbox_2d_to_box

    fenced = '```json\n[\n\t{"bbox_2d": [12, 30, 100, 211], "label": "cat"},\n\t{"bbox_2d": [1, 2, 3, 4]}\n]\n```'
    assert bbox_2d_to_box(fenced, 224) == [12.0, 30.0, 100.0, 211.0]
    assert bbox_2d_to_box('{"bbox_2d":[120.5,40,10,300]}', 224) == [10.0, 40.0, 120.5, 224.0]  # ordered, clipped
    assert bbox_2d_to_box("{'bbox_2d': [-3, 0, 50, 60]}", 224) == [0.0, 0.0, 50.0, 60.0]
    assert bbox_2d_to_box('[{"bbox": [1, 2, 3, 4]}]', 224) is None
    assert bbox_2d_to_box('{"bbox_2d": [1, 2, 3]}', 224) is None


# --- the adapters on tiny models ---------------------------------------------------------------

def _fusion_input(a, px):
    """The tensor the fusion module reads (captured by a hook of the test's own)."""
    got = []
    h = a.model.get_submodule(a.fusion_module).register_forward_pre_hook(lambda m, args: got.append(args[0]))
    with torch.no_grad():
        a.image_features(px)
    h.remove()
    return got[0]


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_geometry_pin_shape_and_insertion_point(adapters, family):
    from synthgen.pin.models.module import PIN

    a = adapters(family)
    assert (a.name, a.input_size, a.patch_grid, a.num_positions, a.vision_width) == (family, CANVAS, GRID, 64, WIDTH)
    px = _pixels()
    feats = _fusion_input(a, px)
    vm = a.model.get_submodule(a.vision_module)
    x = a.pixel_inputs(a.preprocess(px))
    with torch.no_grad():
        if family == "llava":  # layer -2, CLS dropped
            expect = vm(x["pixel_values"], output_hidden_states=True).hidden_states[-2][:, 1:]
        elif family == "smolvlm":
            expect = vm(pixel_values=x["pixel_values"][:, 0]).last_hidden_state
        elif family == "paligemma":
            expect = vm(x["pixel_values"]).last_hidden_state
        else:  # Qwen: the tower's tokens in window order, flat over the batch
            expect = vm(x["pixel_values"], grid_thw=x["image_grid_thw"]).last_hidden_state
    assert torch.equal(feats, expect)
    pin = PIN(a.num_positions, a.vision_width)
    placed = a.place_pin(pin(), feats)
    assert placed.shape == ((1, 64, WIDTH) if family != "qwen2_5_vl" else (2 * 64, WIDTH))
    assert (feats + placed).shape == feats.shape
    with pytest.raises(UserError, match="takes 112x112"):
        a.preprocess(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_pixel_inputs_are_the_processors(adapters, family):
    a = adapters(family)
    px = _pixels(2, seed=1)
    mine = a.pixel_inputs(a.preprocess(px))
    images = [[_pil(p)] if family == "smolvlm" else _pil(p) for p in px]  # (SmolVLM: a list per sample)
    ref = a.processor.image_processor(images=images, return_tensors="pt")
    assert set(mine) <= set(ref)
    for k, v in mine.items():
        assert v.shape == ref[k].shape, k
        assert torch.allclose(v.float(), ref[k].float(), atol=1e-5), k


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_text_is_the_processors_and_the_loss_covers_the_answer(adapters, family):
    a = adapters(family)
    c, tok = a.codec, a.processor.tokenizer
    image = _pil(_pixels(1)[0])
    prompt, box = "In the image is an apple located at", "[14,28,56,70]"
    ids, labels = c.encode("apple", box)
    gen_ids, gen_labels = c.encode("apple")
    assert set(gen_labels) == {-100}
    if family == "paligemma":
        ref = a.processor(text="<image>" + prompt, images=image, suffix=box)
        assert ids == list(ref["input_ids"][0]) and labels == list(ref["labels"][0])
        tt = a.text_inputs(torch.tensor([ids]), torch.tensor([labels]))["token_type_ids"]
        assert tt[0].tolist() == list(ref["token_type_ids"][0])
        assert gen_ids == list(a.processor(text="<image>" + prompt, images=image)["input_ids"][0])
    else:
        user = {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": prompt}]}
        answer = {"role": "assistant", "content": [{"type": "text", "text": box}]}
        gen = a.processor.apply_chat_template([user], add_generation_prompt=True, tokenize=True, return_dict=True)
        assert gen_ids == list(gen["input_ids"][0])
        if family == "llava":  # its template ends the answer with " ": EOS instead
            text = a.processor.apply_chat_template([user, answer]).rstrip(" ")
            ref = list(a.processor(text=text, images=image)["input_ids"][0]) + [tok.eos_token_id]
        else:
            ref = list(a.processor.apply_chat_template([user, answer], tokenize=True, return_dict=True)["input_ids"][0])
        assert ids == ref
    if family == "qwen2_5_vl":
        mm = a.processor(text=[a.processor.apply_chat_template([user])], images=[image])["mm_token_type_ids"]
        assert a.text_inputs(torch.tensor([gen_ids]), None)["mm_token_type_ids"][0, :len(mm[0])].tolist() == list(mm[0])
    labelled = [t for t, y in zip(ids, labels) if y != -100]
    assert tok.decode(labelled, skip_special_tokens=True).strip() == box  # the box ...
    assert labelled[-1] == c.end_token_id  # ... and the end-of-turn marker that stops generation
    assert ids.count(c.image_token_id) == {"llava": 64, "smolvlm": 16, "qwen2_5_vl": 16, "paligemma": 64}[family]
    # the name loss spans (inside the user turn / PaliGemma's prefix), and the article override
    for span, words in (("name", "apple"), ("name_prompt", "apple located at")):
        _, lab = c.encode("apple", box, name_loss=span)
        extra = [t for t, y, y0 in zip(ids, lab, labels) if y != -100 and y0 == -100]
        assert tok.decode(extra).strip() == words, span
    a_ids, _ = c.encode("apple", box, art="a")
    assert tok.decode(a_ids).count("is a apple") == 1
    # picklable, as DataLoader workers need
    assert pickle.loads(pickle.dumps(c)).encode("dog", box, name_loss=True) == c.encode("dog", box, name_loss=True)
    # a question's whole text as the prompt (train-pin --tasks); PIN's prompt gives today's ids
    assert c.encode(None, box, prompt=prompt) == (ids, labels)
    for answer in ("3 apples", "no apples", "[14,28,56,70] [0,0,14,14]"):  # (a one-character first token too)
        q_ids, q_labels = c.encode(None, answer, prompt="how many apples are there?")
        assert tok.decode([t for t, y in zip(q_ids, q_labels) if y != -100], skip_special_tokens=True).strip() == answer


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_pin_off_restores_the_vlm_exactly_and_only_pin_gets_gradients(adapters, family):
    from synthgen.pin.models.module import PIN

    a = adapters(family)
    a.detach_pin()
    px = _pixels()
    enc = a.codec.collate([a.codec.encode("cat", "[14,28,56,70]"), a.codec.encode("teddy bear", "[0,0,14,14]")])
    base = a.logits(px, enc["input_ids"], enc["attention_mask"])
    base_gen = a.generate(px, ["cat", "dog"], num_beams=2, max_new_tokens=4)
    torch.manual_seed(0)
    pin = PIN(a.num_positions, a.vision_width, hidden=(32, 32))
    a.attach_pin(pin)
    assert not torch.allclose(a.logits(px, enc["input_ids"], enc["attention_mask"]), base)
    with a.pin_disabled():
        assert torch.equal(a.logits(px, enc["input_ids"], enc["attention_mask"]), base)
        assert a.generate(px, ["cat", "dog"], num_beams=2, max_new_tokens=4) == base_gen
    assert a.pin_enabled
    a.assert_frozen()
    loss = a.loss({**enc, "pixels": px})
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in pin.parameters())
    assert all(p.grad is None for _, p in a.vlm_parameters())
    a.detach_pin()
    assert torch.equal(a.logits(px, enc["input_ids"], enc["attention_mask"]), base)


@pytest.mark.slow
def test_qwen_pin_follows_the_patches_through_the_window_order(adapters):
    """PIN row i must land on the token of the patch at (i // G, i % G): recover the tower's token
    order from the pixels themselves (each patch a distinct colour) and compare."""
    a = adapters("qwen2_5_vl")
    assert not torch.equal(a._order, torch.arange(64))  # 2x2-unit windows: not row order
    img = torch.zeros(1, 3, CANVAS, CANVAS, dtype=torch.uint8)
    for i in range(GRID * GRID):
        r, c = divmod(i, GRID)
        img[0, :, r * 14:(r + 1) * 14, c * 14:(c + 1) * 14] = torch.tensor([i * 3, 255 - i * 3, (i * 7) % 256])[:, None, None]
    x = a.pixel_inputs(a.preprocess(img))
    visual = a.model.model.visual
    seen = {}
    h1 = visual.patch_embed.register_forward_hook(lambda m, args, out: seen.setdefault("proc", out))
    h2 = visual.blocks[0].register_forward_pre_hook(lambda m, args: seen.setdefault("window", args[0]))
    with torch.no_grad():
        visual(x["pixel_values"], grid_thw=x["image_grid_thw"])
    h1.remove(), h2.remove()
    # processor row -> raster index, read off the colours; window row -> processor row, by equality
    colours = x["pixel_values"].view(64, 3, 2, 14, 14)[:, :, 0, 0, 0]
    mean, std = a._mean.view(3), a._std.view(3)
    raw = torch.round((colours * std + mean) * 255).long()
    proc_to_raster = [int(torch.nonzero(raw[:, 0] == p * 3)[0]) for p in range(64)]
    raster_of_proc = torch.empty(64, dtype=torch.long)
    raster_of_proc[proc_to_raster] = torch.arange(64)
    window_rows = [int(torch.nonzero((seen["proc"] == seen["window"][r]).all(1))[0]) for r in range(64)]
    assert a._order.tolist() == [int(raster_of_proc[p]) for p in window_rows]


@pytest.mark.slow
def test_idefics3_smolvlm_v1_and_model_checks(tiny, tmp_path):
    """SmolVLM v1 checkpoints are Idefics3 classes: the same adapter. Other families, bad Qwen
    canvases and unknown options are refused with one line, before the weights are read."""
    from synthgen.demo.tiny_vlms import build_tiny_smolvlm
    from synthgen.pin.models.adapters import detect_family, load_adapter

    v1 = build_tiny_smolvlm(tmp_path / "idefics3", idefics3=True)
    a = load_adapter("auto", str(v1))
    assert (a.name, type(a.model).__name__, a.num_positions, a.vision_width) == (
        "smolvlm", "Idefics3ForConditionalGeneration", 64, WIDTH)
    px = _pixels()
    enc = a.codec.collate([a.codec.encode("cat", "[14,28,56,70]")] * 2)
    base = a.logits(px, enc["input_ids"], enc["attention_mask"])
    from synthgen.pin.models.module import PIN

    a.attach_pin(PIN(64, WIDTH, hidden=(16, 16)))
    with a.pin_disabled():
        assert torch.equal(a.logits(px, enc["input_ids"], enc["attention_mask"]), base)

    for family in FAMILIES:
        assert detect_family(str(tiny(family))) == family
    (tmp_path / "of").mkdir()
    (tmp_path / "of" / "flamingo.json").write_text("{}")
    assert detect_family(str(tmp_path / "of")) == "openflamingo"
    with pytest.raises(UserError, match="is a 'smolvlm' model, not LLaVA"):
        load_adapter("llava", str(tiny("smolvlm")))
    with pytest.raises(UserError, match="give --model"):
        load_adapter("auto")
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UserError, match="'bert' model; PIN supports"):
        load_adapter("auto", str(tmp_path / "bert"))
    with pytest.raises(UserError, match="multiple of 28"):
        load_adapter("qwen2_5_vl", str(tiny("qwen2_5_vl")), canvas=100)
    with pytest.raises(UserError, match="takes no VLM options"):
        load_adapter("paligemma", str(tiny("paligemma")), canvas=112)
    q = load_adapter("auto", str(tiny("qwen2_5_vl")), canvas="224")  # (auto: typed once resolved)
    assert (q.input_size, q.patch_grid, q.num_positions, q.vlm_options) == (224, 16, 256, {"canvas": 224})
    assert load_adapter("qwen2_5_vl", str(tiny("qwen2_5_vl"))).input_size == 224  # the default canvas
    from synthgen.pin.training.portable import vlm_geometry

    with pytest.raises(UserError, match="authors released PINs for openflamingo and blip2, not llava"):
        vlm_geometry("llava", str(tiny("llava")), {})  # import-pin: no authors' PIN for these VLMs


# --- training, evaluation, prediction ----------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tiny, adapters, shards, tmp_path_factory):
    """family -> (run folder of 80 train-pin steps with --vlm auto, adapter, VLM state before)."""
    from synthgen.pin.training.train import train

    runs = {}

    def get(family: str):
        if family not in runs:
            a = adapters(family)
            a.detach_pin()
            before = {k: v.clone() for k, v in a.model.state_dict().items()}
            run = tmp_path_factory.mktemp("runs") / family
            train(_cfg(shards, run, tiny(family), steps=80, vlm_options=OPTIONS.get(family, {})),
                  echo=lambda *_: None, adapter=a)
            runs[family] = (run, a, before)
        return runs[family]
    return get


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_train_pin_learns_and_the_vlm_stays_bit_identical(trained, family):
    run, a, before = trained(family)
    after = a.model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    a.assert_frozen()
    meta = json.loads((run / "pin.json").read_text())
    assert meta["vlm"] == family and meta["canvas"] == CANVAS  # --vlm auto, recorded resolved
    assert (meta["num_positions"], meta["vision_width"]) == (64, WIDTH)
    assert meta["vlm_options"] == OPTIONS.get(family, {})
    losses = _losses(run)
    assert len(losses) == 80
    # the loss falls on 16 fixed scenes (by 17-40% in 100 steps here: random tiny LMs learn slowly)
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5]), losses


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_eval_pin_and_predict_read_the_run(trained, shards, family, tmp_path):
    from PIL import Image

    from synthgen.pin.evaluation.evaluate import evaluate_coco, evaluate_scenes
    from synthgen.pin.evaluation.predict import predict
    from synthgen.shards import find_shards

    run, a, _ = trained(family)
    m = evaluate_scenes(a, find_shards(str(shards)), canvas=CANVAS, grid=GRID, limit=4, batch_size=4)
    assert m["n"] == 4 and 0 <= m["unparseable"] <= 4  # random answers: the one-cell fallback, counted
    coco, images = one_image_coco(tmp_path)
    m = evaluate_coco(run, coco, images, out=tmp_path / "ev" / "preds.jsonl", max_new_tokens=6)
    rec = json.loads((tmp_path / "ev" / "preds.jsonl").read_text())
    assert m["n"] == 1 and rec["gt_box"] == [0, 0, 30, 40] and rec["output"].startswith(" ")
    assert rec["parsed"] == rec["parsed_strict"]
    r = predict(run, images / "1.jpg", "cat", out=tmp_path / "p.png")
    assert len(r["box"]) == 4 and Image.open(tmp_path / "p.png").size == (224, 112)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["paligemma", "qwen2_5_vl", "llava"])
def test_baseline_native(trained, family, tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from synthgen.cli import app

    run, _, _ = trained(family)
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (160, 160), (90, 120, 200)).save(images / "1.jpg")
    coco = {"images": [{"id": 1, "file_name": "1.jpg", "width": 160, "height": 160}],
            "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 60, 40]},
                            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [80, 80, 60, 60]}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    r = CliRunner().invoke(app, ["eval-pin", str(run), "--coco-json", str(tmp_path / "coco.json"), "--images",
                                 str(images), "--baseline", "native", "--out", str(tmp_path / "ev" / "preds.jsonl")])
    if family == "llava":
        assert r.exit_code == 2 and "llava has no native detector" in r.output and "Traceback" not in r.output
        assert len(r.output.strip().splitlines()) == 1
        return
    assert r.exit_code == 0, r.output
    assert "native baseline" in r.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["baseline"] == "native" and metrics["n"] == 2
    assert metrics["native"]["prompt"] in ("detect {name}", "Locate the {name} in the image, output its bbox "
                                                             "coordinates using JSON format.")
    recs = [json.loads(x) for x in (tmp_path / "ev" / "preds.jsonl").read_text().splitlines()]
    assert metrics["unparseable"] == sum(not x["parsed"] for x in recs)  # random model: counted fallbacks


@pytest.mark.slow
def test_resume_continues_the_same_curve_with_the_vlm_options(tiny, shards, tmp_path):
    from synthgen.pin.training.train import train

    kw = dict(batch_size=4, save_every=3, shuffle_buffer=8, hidden=(16, 16), vlm_options={"canvas": CANVAS})
    model = tiny("qwen2_5_vl")
    train(_cfg(shards, tmp_path / "full", model, steps=6, **kw), echo=lambda *_: None)
    train(_cfg(shards, tmp_path / "part", model, steps=3, **kw), echo=lambda *_: None)
    said = []
    train(_cfg(shards, tmp_path / "part", model, steps=6, resume=True, **dict(kw, vlm_options={})), echo=said.append)
    assert f"resuming {tmp_path / 'part'} at step 3" in said  # the run's canvas option, from pin.json
    assert _losses(tmp_path / "part") == _losses(tmp_path / "full")
    with pytest.raises(UserError, match="other settings|VLM options"):
        train(_cfg(shards, tmp_path / "part", model, steps=8, resume=True, **dict(kw, vlm_options={"canvas": 224})),
              echo=lambda *_: None)


@pytest.mark.slow
def test_shards_of_another_canvas_are_a_one_line_error(tiny, tmp_path):
    from synthgen.pin.training.train import train

    write_shards(tmp_path / "s64", 2, canvas=64, grid=4)
    with pytest.raises(UserError, match=r"64x64 canvas but paligemma \(.*\) takes 112x112") as exc:
        train(_cfg(tmp_path / "s64", tmp_path / "run", tiny("paligemma"), steps=1), echo=lambda *_: None)
    assert "\n" not in str(exc.value)


@pytest.mark.slow
def test_cli_train_pin_with_vlm_auto_and_a_typed_vlm_option(tiny, shards, tmp_path):
    from typer.testing import CliRunner

    from synthgen.cli import app

    run = tmp_path / "run"
    r = CliRunner().invoke(app, ["train-pin", str(shards), "--vlm", "auto", "--model", str(tiny("qwen2_5_vl")),
                                 "--vlm-option", "canvas=112", "--out", str(run), "--steps", "2", "--batch-size", "2",
                                 "--loader-workers", "0", "--hidden", "16,16", "--no-progress"])
    assert r.exit_code == 0, r.output
    meta = json.loads((run / "pin.json").read_text())
    assert (meta["vlm"], meta["vlm_options"], meta["num_positions"]) == ("qwen2_5_vl", {"canvas": 112}, 64)
