"""train-pin --method: CoOp, VPT (fusion / vision), LoRA (peft) and full fine-tuning beside PIN, on
the tiny BLIP-2, the tiny OpenFlamingo and the tiny LLaVA (real config classes, random weights)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from synthgen.errors import UserError
from synthgen.pin.models import METHOD_OPTIONS, METHODS
from synthgen.pin.models.registry import method_options, method_refusal
from tests.pin.fixtures import (
    one_image_coco,
    one_thread,  # noqa: F401 (an autouse fixture: one torch thread)
    )

CANVAS, GRID = 112, 8
FAMILIES = ("blip2", "openflamingo", "llava")
# the fast lane keeps one case of each test (LoRA through peft on BLIP-2; CoOp's resume), the slow lane the rest
FAST = {("blip2", "lora-vision"), "coop"}
CASES = [pytest.param(f, m, marks=() if (f, m) in FAST else pytest.mark.slow)
         for f in FAMILIES for m in METHODS[1:] if method_refusal(m, f) is None]


# --- fast: the option, its checks and the refusals ---------------------------------------------

def _cfg(shards, out, model, **kw):
    from synthgen.pin.training.config import TrainConfig

    base = dict(shards=str(shards), out=str(out), model=str(model), batch_size=4, loader_workers=0, log_every=1,
                save_every=1000, progress=False, shuffle_buffer=8, lr=1e-2)
    base.update(kw)
    return TrainConfig(**base)


def test_method_options_default_to_the_papers_sizes_and_are_checked():
    assert METHOD_OPTIONS["coop"] == {"tokens": 16} and METHOD_OPTIONS["vpt-vision"] == {"tokens": 100}
    assert method_options("lora-vision", {}) == {"r": 16, "alpha": 16}
    assert method_options("lora-vision", {"r": "8"}) == {"r": 8, "alpha": 16}  # (typed on a command line)
    assert method_options("pin", None) == {}
    with pytest.raises(UserError, match="takes the options tokens, got 'r'"):
        method_options("coop", {"r": 4})
    with pytest.raises(UserError, match="positive integer"):
        method_options("vpt-fusion", {"tokens": "0"})
    with pytest.raises(UserError, match="no --method-option"):
        method_options("full", {"tokens": 3})


@pytest.mark.parametrize("method, family", [("vpt-fusion", "llava"), ("vpt-fusion", "qwen2_5_vl"),
                                            ("vpt-vision", "smolvlm"), ("vpt-vision", "qwen2_5_vl")])
def test_a_method_without_its_place_is_refused_in_one_line_before_any_work(method, family, tmp_path):
    from synthgen.pin.training.train import train

    cfg = _cfg(tmp_path / "no-shards", tmp_path / "run", tmp_path / "no-model", vlm=family, method=method)
    with pytest.raises(UserError) as exc:
        train(cfg, echo=lambda *_: None)
    msg = str(exc.value)
    assert "\n" not in msg and f"--method {method} does not fit --vlm {family}" in msg, msg
    assert not (tmp_path / "run").exists()  # nothing was started
    if family == "llava":  # --vlm auto: refused once the checkpoint's config named the family, before any weights
        from synthgen.demo.tiny_vlms import BUILDERS

        cfg = _cfg(tmp_path / "no-shards", tmp_path / "run", BUILDERS["llava"](tmp_path / "llava"), vlm="auto",
                   method=method)
        with pytest.raises(UserError, match=f"--method {method} does not fit --vlm llava"):
            train(cfg, echo=lambda *_: None)
    assert any("--method must be one of" in p for p in _cfg(tmp_path, tmp_path, tmp_path, method="lora").problems())
    assert any("trains no PIN" in p for p in _cfg(tmp_path, tmp_path, tmp_path, method="coop", hidden=(8,)).problems())


def test_the_coop_codec_pickles_and_prefixes_every_text():
    from synthgen.pin.models.methods import PromptCodec
    from tests.pin.fixtures import FakeCodec

    class Switch:  # (the adapter's PIN switch)
        _enabled = False

    c = PromptCodec(FakeCodec(), 3, 99, Switch())
    assert c.encode("cat") == ([1, 2], [-100, 1])  # switched off: the plain text
    ids, labels = pickle.loads(pickle.dumps(c)).encode("cat", "[0,0,1,1]")  # (a worker's copy: always on)
    assert ids == [99, 99, 99, 1, 2] and labels == [-100, -100, -100, -100, 1]
    Switch._enabled = True
    assert c.collate([c.encode("cat")])["input_ids"].tolist() == [[99, 99, 99, 1, 2]]


# --- the tiny VLMs ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root, built = tmp_path_factory.mktemp("vlms"), {}

    def get(family: str) -> Path:
        if family not in built:
            if family == "blip2":
                from synthgen.demo.tiny_blip2 import build_tiny_blip2

                built[family] = build_tiny_blip2(root / "blip2", image_size=CANVAS)
            elif family == "openflamingo":
                from synthgen.demo.tiny_flamingo import build_tiny_openflamingo

                built[family] = build_tiny_openflamingo(root / "of", image_size=CANVAS, vision_width=32, gate=1.0,
                                                        perceiver_depth=1, heads=1, num_latents=8, lm_steps=0)
            else:
                from synthgen.demo.tiny_vlms import BUILDERS

                built[family] = BUILDERS[family](root / family)
        return built[family]
    return get


def _losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "loss" in r]


def _coco(tmp_path: Path) -> tuple[Path, Path]:

    return one_image_coco(tmp_path, (CANVAS, CANVAS), (0, 0, 56, 42), painted=True, ext="png")


def _scene_ious(adapter, shards) -> list[tuple[str, float]]:
    from synthgen.pin.evaluation.evaluate import score_queries
    from synthgen.pin.training.data import iter_scene_queries

    items = ((img, ref, box, {}) for img, ref, box, _ in iter_scene_queries([str(p) for p in sorted(
        Path(shards).glob("*.tar"))], limit=4, image_size=CANVAS, bad={}))
    return [(r["output"], r["iou"]) for r in score_queries(items, adapter, canvas=CANVAS, grid=GRID, batch_size=4,
                                                           parse="lenient")]


def _unwrapped(key: str) -> str:
    return key.replace(".base_layer", "")  # (peft's LoRA layer holds the original as base_layer)


@pytest.mark.parametrize("family, method", CASES)
def test_each_method_trains_only_its_own_tensors_and_eval_reproduces_it(tiny, shards, tmp_path, family, method):
    from safetensors.torch import load_file

    from synthgen.pin.evaluation.evaluate import canvas_tensor, evaluate_coco, generate_boxes
    from synthgen.pin.models.adapters import load_adapter
    from synthgen.pin.training.checkpoint import load_run
    from synthgen.pin.training.train import train

    model = tiny(family)
    a = load_adapter(family, str(model))
    before = {k: v.clone() for k, v in a.model.state_dict().items()}
    run = tmp_path / "run"
    said: list[str] = []
    res = train(_cfg(shards, run, model, vlm=family, method=method, steps=3), echo=said.append, adapter=a)
    trained = a._method
    assert trained is not None and trained.name == method

    # only the method's tensors changed; the VLM's own weights are bit-identical (but for full)
    after = a.model.state_dict()
    own = set(trained.trainable())
    if method == "full":
        assert own == set(dict(a.model.named_parameters()))
        assert any(not torch.equal(before[k], after[k]) for k in own)
    else:
        vlm_after = {_unwrapped(k): v for k, v in after.items() if "lora_" not in k}
        assert set(vlm_after) == set(before)
        assert all(torch.equal(before[k], vlm_after[k]) for k in before)
        a.assert_frozen(trained.owned())
    weights = load_file(str(run / "pin.safetensors"))
    assert set(weights) == own
    if "tokens" in weights:  # CoOp, VPT: the tokens moved from their (seeded) start
        from synthgen.pin.models.methods import make_method

        torch.manual_seed(0)
        assert not torch.equal(make_method(method, load_adapter(family, str(model))).tokens.detach(), weights["tokens"])
    if method == "lora-vision":
        assert all("lora_" in k for k in own) and any(float(v.abs().sum()) > 0 for k, v in weights.items()
                                                      if "lora_B" in k)  # (B starts at zero)
    meta = json.loads((run / "pin.json").read_text())
    n = sum(v.numel() for v in weights.values())
    assert meta["method"] == method and meta["trainable_parameters"] == res["trainable_parameters"] == n
    assert meta["method_options"] == METHOD_OPTIONS[method] and "pin" not in meta
    assert any(f"{method}: {n:,} trainable parameters" in s for s in said), said

    # eval loads the run's method the same way: the same answers and IoUs as the trained model
    mine = _scene_ious(a, shards)
    _, b = load_run(run, device="cpu")
    assert _scene_ious(b, shards) == mine
    coco, images = _coco(tmp_path)
    m1 = evaluate_coco(run, coco, images, out=tmp_path / "e1" / "preds.jsonl", device="cpu", parse="lenient")
    m2 = evaluate_coco(run, coco, images, out=tmp_path / "e2" / "preds.jsonl", device="cpu", parse="lenient")
    r1 = [json.loads(x) for x in (tmp_path / "e1" / "preds.jsonl").read_text().splitlines()]
    r2 = [json.loads(x) for x in (tmp_path / "e2" / "preds.jsonl").read_text().splitlines()]
    assert [(r["output"], r["iou"]) for r in r1] == [(r["output"], r["iou"]) for r in r2] and m1["miou"] == m2["miou"]
    px, _ = canvas_tensor(images / "1.png", CANVAS)
    (raw, _, _), = generate_boxes(a, [px], ["cat"], canvas=CANVAS, grid=GRID, parse="lenient")
    assert r1[0]["output"] == raw.strip() or r1[0]["output"] == raw

    # switched off (but full: the VLM itself) or taken out (eval-pin --baseline raw), the VLM is
    # exactly the untrained one again
    fresh = load_adapter(family, str(model))
    pixels = torch.randint(0, 256, (2, 3, CANVAS, CANVAS), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    untrained = fresh.generate(pixels, ["cat", "dog"])
    if method != "full":
        with b.pin_disabled():
            assert b.generate(pixels, ["cat", "dog"]) == untrained
    b.detach_pin()
    assert b.generate(pixels, ["cat", "dog"]) == untrained
    assert {_unwrapped(k) for k in b.model.state_dict()} == set(before)


@pytest.mark.parametrize("method", [pytest.param(m, marks=() if m in FAST else pytest.mark.slow)
                                    for m in METHODS[1:]])
def test_resume_continues_the_same_curve(tiny, shards, tmp_path, method):
    from safetensors.torch import load_file

    from synthgen.pin.training.train import train

    model = tiny("blip2")
    kw = dict(vlm="blip2", method=method, save_every=2)
    train(_cfg(shards, tmp_path / "whole", model, steps=4, **kw), echo=lambda *_: None)
    train(_cfg(shards, tmp_path / "part", model, steps=2, **kw), echo=lambda *_: None)
    with pytest.raises(UserError, match="same --method"):
        train(_cfg(shards, tmp_path / "part", model, steps=4, resume=True, vlm="blip2",
                   method="pin" if method != "pin" else "coop"), echo=lambda *_: None)
    train(_cfg(shards, tmp_path / "part", model, steps=4, resume=True, **kw), echo=lambda *_: None)
    whole, part = _losses(tmp_path / "whole"), _losses(tmp_path / "part")
    assert len(whole) == 4 and part == whole  # identical floats
    a, b = (load_file(str(tmp_path / r / "pin.safetensors")) for r in ("whole", "part"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
