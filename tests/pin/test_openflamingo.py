"""OpenFlamingo: tiny random OpenFlamingo folders built from configs, saved and loaded by path.

The equivalence tests need the open-flamingo package, installed without its torch==2.0.1 pin:
``pip install --no-deps open-flamingo==2.0.1`` (plus ``einops einops-exts`` from the test extra).
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from synthgen.errors import UserError
from tests.pin.fixtures import (
    one_image_coco,
    one_thread,  # noqa: E402, F401 (an autouse fixture: one torch thread)
    )

CANVAS, GRID = 112, 8            # the tiny ViT: 112 px, 14-px patches -> 8x8 = 64 patch tokens
VISION_WIDTH = 32
FAST = dict(perceiver_depth=2, heads=1, num_latents=16)  # smaller than OpenFlamingo's 6/8/64: trains fast



@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny OpenFlamingo with a MosaicML-format (mosaic_gpt, QK-LayerNorm) MPT LM, fitted on text."""
    from synthgen.demo.tiny_flamingo import build_tiny_openflamingo

    return build_tiny_openflamingo(tmp_path_factory.mktemp("of") / "tiny-of", image_size=CANVAS,
                                   vision_width=VISION_WIDTH, gate=1.0, **FAST)


@pytest.fixture(scope="module")
def of_dir(tmp_path_factory):
    """OpenFlamingo's own perceiver/cross-attention sizes (what open_flamingo 2.0.1 builds), every
    2nd layer of a 4-layer MPT, random LM."""
    from synthgen.demo.tiny_flamingo import build_tiny_openflamingo

    return build_tiny_openflamingo(tmp_path_factory.mktemp("of") / "of-sizes", image_size=CANVAS,
                                   vision_width=VISION_WIDTH, lm_layers=4, cross_attn_every=2, gate=0.7,
                                   lm_steps=0, seed=3)


def _cfg(shards, out, model, **kw):
    from synthgen.pin.training.train import TrainConfig

    base = dict(shards=str(shards), out=str(out), vlm="openflamingo", model=str(model), batch_size=16,
                loader_workers=0, log_every=1, save_every=1000, progress=False, shuffle_buffer=16)
    base.update(kw)
    return TrainConfig(**base)


def _losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.fixture(scope="module")
def trained(tiny_dir, shards, tmp_path_factory):
    """400 steps of PIN training on the tiny OpenFlamingo: ``(run dir, adapter, VLM state before)``."""
    from synthgen.pin.models.adapters import load_adapter
    from synthgen.pin.training.train import train

    a = load_adapter("openflamingo", str(tiny_dir))
    before = {k: v.clone() for k, v in a.model.state_dict().items()}
    run = tmp_path_factory.mktemp("runs") / "trained"
    train(_cfg(shards, run, tiny_dir, steps=400, log_every=10), echo=lambda *_: None, adapter=a)
    return run, a, before


# --- the adapter ----------------------------------------------------------------------------

@pytest.mark.slow
def test_adapter_geometry_and_pin_shape(tiny_dir):
    from synthgen.pin.models.adapters import load_adapter
    from synthgen.pin.models.module import PIN

    a = load_adapter("openflamingo", str(tiny_dir))
    assert (a.name, a.input_size, a.patch_grid, a.num_positions, a.vision_width) == (
        "openflamingo", CANVAS, GRID, GRID * GRID, VISION_WIDTH)
    px = a.preprocess(torch.randint(0, 256, (2, 3, CANVAS, CANVAS), dtype=torch.uint8))
    tokens = a.model.patch_tokens(px)
    assert tokens.shape == (2, a.num_positions, a.vision_width)  # patch tokens, CLS dropped
    assert PIN(a.num_positions, a.vision_width)().shape == tokens.shape[1:]
    # the parts as resolved from flamingo.json (absolute paths), the interval read off checkpoint.pt
    assert a.model_id == str(tiny_dir.resolve())
    assert a.vlm_options == {"lm": str(tiny_dir / "lm"), "tokenizer": str(tiny_dir / "lm"),
                             "vision": f"local-dir:{tiny_dir / 'vision'}", "vision_pretrained": None,
                             "cross_attn_every": 1, "vision_tokens": "raw"}
    with pytest.raises(UserError, match="takes 112x112"):
        a.preprocess(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(UserError, match="unknown openflamingo option 'lmm'"):
        load_adapter("openflamingo", str(tiny_dir), lmm="x")
    with pytest.raises(UserError, match="takes no VLM options"):
        load_adapter("blip2", str(tiny_dir), lm="x")


@pytest.mark.slow
def test_text_layout_is_the_authors(tiny_dir):
    from synthgen.pin.models.adapters import load_adapter

    a = load_adapter("openflamingo", str(tiny_dir))
    codec = pickle.loads(pickle.dumps(a.codec))  # DataLoader workers get a pickled copy
    ids, labels = codec.encode("teddy bear", "[14,28,56,70]")
    whole = "<image>In the image is a teddy bear located at [14,28,56,70].<|endofchunk|>"
    assert ids == a.tokenizer(whole)["input_ids"]  # parts tokenise as the authors' whole string
    n = sum(1 for x in labels if x != -100)
    assert labels[:-n] == [-100] * (len(labels) - n) and labels[-n:] == ids[-n:]
    assert a.tokenizer.decode(ids[-n:]) == " [14,28,56,70].<|endofchunk|>"  # box, "." and <|endofchunk|>
    assert ids[0] == a.model.media_token_id and ids[-1] == a.model.eoc_token_id
    _, with_name = codec.encode("teddy bear", "[14,28,56,70]", name_loss=True)
    assert a.tokenizer.decode([x for x in with_name if x != -100]).startswith(" teddy bear [")
    prompt, _ = codec.encode("apple")
    assert a.tokenizer.decode(prompt) == "<image>In the image is an apple located at"
    # a question as the prompt (train-pin --tasks): an answer ending in "." gets no second one
    q_ids, q_labels = codec.encode(None, "There is no dog in the image.", prompt="Where is the dog?")
    assert a.tokenizer.decode(q_ids) == "<image>Where is the dog? There is no dog in the image.<|endofchunk|>"
    assert a.tokenizer.decode([x for x in q_labels if x != -100]) == " There is no dog in the image.<|endofchunk|>"
    batch = codec.collate([codec.encode("cat"), codec.encode("teddy bear")], left_pad=True)
    assert batch["input_ids"][0, 0] == codec.pad_id == a.tokenizer.convert_tokens_to_ids("<PAD>")
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][:, -1].all()


@pytest.mark.slow
def test_pin_off_restores_the_vlm_exactly(tiny_dir):
    from synthgen.pin.models.adapters import load_adapter
    from synthgen.pin.models.module import PIN

    a = load_adapter("openflamingo", str(tiny_dir))
    px = torch.randint(0, 256, (2, 3, CANVAS, CANVAS), dtype=torch.uint8)
    enc = a.codec.collate([a.codec.encode("cat"), a.codec.encode("dog")], left_pad=True)
    base = a.logits(px, enc["input_ids"], enc["attention_mask"])
    base_gen = a.generate(px, ["cat", "dog"])
    a.attach_pin(PIN(a.num_positions, a.vision_width))
    with_pin = a.logits(px, enc["input_ids"], enc["attention_mask"])
    assert not torch.allclose(with_pin, base)  # PIN changes what the LM sees
    with a.pin_disabled():
        assert torch.equal(a.logits(px, enc["input_ids"], enc["attention_mask"]), base)
        assert a.generate(px, ["cat", "dog"]) == base_gen
    assert a.pin_enabled
    a.detach_pin()
    assert torch.equal(a.logits(px, enc["input_ids"], enc["attention_mask"]), base)


@pytest.mark.slow
def test_only_pin_gets_gradients_and_the_vision_encoder_runs_without_them(tiny_dir):
    from synthgen.pin.models.adapters import load_adapter
    from synthgen.pin.models.module import PIN

    a = load_adapter("openflamingo", str(tiny_dir))
    a.assert_frozen()
    seen = []
    for m in (a.model.vision_encoder.conv1, a.model.vision_encoder.transformer.resblocks[-1]):
        m.register_forward_hook(lambda m, args, out: seen.append((torch.is_grad_enabled(), out.requires_grad)))
    pin = PIN(a.num_positions, a.vision_width, hidden=(32, 32))
    a.attach_pin(pin)
    batch = a.codec.collate([a.codec.encode("cat", "[14,28,56,70]"), a.codec.encode("dog", "[0,0,14,14]")])
    batch["pixels"] = torch.randint(0, 256, (2, 3, CANVAS, CANVAS), dtype=torch.uint8)
    a.loss(batch).backward()
    assert seen == [(False, False)] * 2  # the encoder (first and last layer) ran once, under no_grad
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in pin.parameters())
    assert all(p.grad is None for _, p in a.vlm_parameters())


@pytest.mark.slow
def test_pin_learns_and_the_vlm_stays_bit_identical(trained, shards):
    from synthgen.pin.evaluation.evaluate import evaluate_scenes
    from synthgen.pin.models.module import PIN
    from synthgen.shards import find_shards

    run, a, before = trained
    after = a.model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # VLM untouched, bit for bit
    a.assert_frozen()
    losses = _losses(run)
    assert len(losses) == 40 and losses[-1] <= 0.5 * losses[0], losses
    val = find_shards(str(shards))
    learned = evaluate_scenes(a, val, canvas=CANVAS, grid=GRID, limit=16)
    pin = a._pin
    a.detach_pin()
    torch.manual_seed(0)  # the trained PIN's initialisation (TrainConfig.seed = 0)
    a.attach_pin(PIN(a.num_positions, a.vision_width))
    untrained = evaluate_scenes(a, val, canvas=CANVAS, grid=GRID, limit=16)
    a.attach_pin(pin)
    # before training no answer is a box; after it most are
    assert untrained["unparseable"] == 16 and learned["unparseable"] <= 4, (learned, untrained)


@pytest.mark.slow
def test_train_pin_resumes_the_same_curve_and_records_the_vlm_options(tiny_dir, shards, tmp_path):
    from safetensors.torch import load_file

    from synthgen.pin.training.train import train

    opts = {"vision_tokens": "ln_post"}  # a VLM option, passed to load_adapter and recorded
    kw = dict(hidden=(64, 64), batch_size=4, save_every=3, shuffle_buffer=8, vlm_options=opts)
    train(_cfg(shards, tmp_path / "full", tiny_dir, steps=8, **kw), echo=lambda *_: None)
    train(_cfg(shards, tmp_path / "part", tiny_dir, steps=3, **kw), echo=lambda *_: None)
    said = []
    train(_cfg(shards, tmp_path / "part", tiny_dir, steps=8, resume=True, **kw), echo=said.append)
    assert f"resuming {tmp_path / 'part'} at step 3" in said
    full, part = _losses(tmp_path / "full"), _losses(tmp_path / "part")
    assert len(full) == 8 and part == full  # identical floats
    a = load_file(str(tmp_path / "full" / "pin.safetensors"))
    b = load_file(str(tmp_path / "part" / "pin.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    meta = json.loads((tmp_path / "part" / "pin.json").read_text())
    assert meta["vlm"] == "openflamingo" and meta["model"] == str(tiny_dir.resolve())
    assert meta["vlm_options"]["vision_tokens"] == "ln_post" and meta["vlm_options"]["cross_attn_every"] == 1
    assert (meta["num_positions"], meta["vision_width"], meta["canvas"]) == (GRID * GRID, VISION_WIDTH, CANVAS)
    with pytest.raises(UserError, match="VLM options"):  # other VLM options: another VLM, refused
        train(_cfg(shards, tmp_path / "part", tiny_dir, steps=9, resume=True,
                   **dict(kw, vlm_options={"vision_tokens": "raw"})), echo=lambda *_: None)
    with pytest.raises(UserError, match="vision_tokens must be one of raw, ln_post"):
        train(_cfg(shards, tmp_path / "x", tiny_dir, steps=1, vlm_options={"vision_tokens": "post"}),
              echo=lambda *_: None)


def _coco(tmp_path: Path) -> tuple[Path, Path]:

    return one_image_coco(tmp_path, painted=True)


@pytest.mark.slow
def test_eval_pin_and_predict_read_the_run(trained, tmp_path):
    from synthgen.pin.evaluation.evaluate import evaluate_coco
    from synthgen.pin.evaluation.predict import predict

    run, _, _ = trained
    coco, images = _coco(tmp_path)
    # (the tiny model's boxes are not on the grid lines the strict rule wants: parse leniently)
    m = evaluate_coco(run, coco, images, out=tmp_path / "ev" / "preds.jsonl", device="cpu", parse="lenient")
    rec = json.loads((tmp_path / "ev" / "preds.jsonl").read_text())
    assert m["n"] == 1 and rec["gt_box"] == [0, 0, 30, 40] and rec["parsed"], rec
    assert m["protocol"]["parse"] == "lenient" and m["rejected"]["lenient"] == 0
    assert re.search(r"\[\d+,\d+,\d+,\d+\]", rec["output"]) and len(rec["pred_box"]) == 4
    r = predict(run, images / "1.jpg", "cat", out=tmp_path / "p.png", device="cpu")
    assert r["parsed"] and re.fullmatch(r"\[\d+,\d+,\d+,\d+\]", r["box_text"]), r
    assert Path(r["drawn"]).is_file()


# --- open_flamingo 2.0.1 -------------------------------------------------------------------

def _package_flamingo(model_dir: Path, adapter):
    """open_flamingo's Flamingo on the same parts (its classes; the MosaicML-format LM through
    synthgen's loader, since the package would need the LM's remote code)."""
    import open_clip
    from open_flamingo import Flamingo as PackageFlamingo
    from open_flamingo.src.flamingo_lm import FlamingoLMMixin
    from open_flamingo.src.utils import extend_instance

    from synthgen.pin.models.flamingo.loading import load_tokenizer
    from synthgen.pin.models.flamingo.mpt import load_language_model

    tok = load_tokenizer(str(model_dir / "lm"))
    lm = load_language_model(str(model_dir / "lm"))
    extend_instance(lm, FlamingoLMMixin)
    lm.set_decoder_layers_attr_name("transformer.blocks")
    lm.resize_token_embeddings(len(tok))
    clip = open_clip.create_model(f"local-dir:{model_dir / 'vision'}")
    clip.visual.output_tokens = True
    every = adapter.vlm_options["cross_attn_every"]
    pkg = PackageFlamingo(clip, lm, tok.encode("<|endofchunk|>")[-1], tok.encode("<image>")[-1],
                          vis_dim=VISION_WIDTH, cross_attn_every_n_layers=every)
    return pkg


def _compare(adapter, pkg, px, with_pin: torch.Tensor | None) -> None:
    """Same logits, greedy and 3-beam generations; PIN added to the patch tokens in both."""
    a = adapter
    hook = None
    if with_pin is not None:
        a.attach_pin(lambda: with_pin)
        hook = pkg.vision_encoder.register_forward_hook(lambda m, args, out: (out[0], out[1] + with_pin))
    try:
        x = a.preprocess(px)
        enc = a.codec.collate([a.codec.encode("cat", "[14,28,56,70]"), a.codec.encode("teddy bear", "[0,0,14,14]")])
        with torch.no_grad():
            mine = a.logits(px, enc["input_ids"], enc["attention_mask"])
            theirs = pkg(x[:, None, None], enc["input_ids"], attention_mask=enc["attention_mask"]).logits
        assert mine.shape == theirs.shape and torch.allclose(mine, theirs, atol=1e-5, rtol=1e-5), \
            (mine - theirs).abs().max()
        g = a.codec.collate([a.codec.encode("cat"), a.codec.encode("teddy bear")], left_pad=True)
        for beams in (1, 3):
            kw = dict(num_beams=beams, max_new_tokens=12, do_sample=False, pad_token_id=a.codec.pad_id)
            ours = a.model.generate(x, g["input_ids"], attention_mask=g["attention_mask"], **kw)
            ref = pkg.generate(x[:, None, None], g["input_ids"], attention_mask=g["attention_mask"], **kw)
            assert torch.equal(ours, ref), (beams, ours, ref)
        texts = a.generate(px, ["cat", "teddy bear"])  # the adapter's own call: 3 beams, 12 tokens
        assert texts == [a.codec.decode(o[g["input_ids"].shape[1]:]) for o in ref]  # as generated
    finally:
        a.detach_pin()
        if hook is not None:
            hook.remove()


@pytest.mark.slow
def test_same_model_as_open_flamingo_2_0_1(of_dir):
    pytest.importorskip("open_flamingo", reason="pip install --no-deps open-flamingo==2.0.1")
    from synthgen.pin.models.adapters import load_adapter
    from synthgen.pin.models.module import PIN

    a = load_adapter("openflamingo", str(of_dir))
    assert a.vlm_options["cross_attn_every"] == 2
    pkg = _package_flamingo(of_dir, a)
    # the same state-dict keys, and this checkpoint.pt loads into the package by them
    assert set(pkg.state_dict()) == set(a.model.state_dict())
    result = pkg.load_state_dict(torch.load(of_dir / "checkpoint.pt", weights_only=True), strict=False)
    assert not result.unexpected_keys
    assert not [k for k in result.missing_keys if k.startswith("perceiver.") or "gated_cross_attn_layer." in k]
    pkg.eval()
    torch.manual_seed(0)
    px = torch.randint(0, 256, (2, 3, CANVAS, CANVAS), dtype=torch.uint8)
    pin = PIN(a.num_positions, a.vision_width)().detach()
    # open_clip 3.3 (like >= 2.23) gives tokens after ln_post: synthgen's vision_tokens="ln_post"
    a.model.vision_tokens = "ln_post"
    for p in (None, pin):
        _compare(a, pkg, px, p)
    # "raw" (what OpenFlamingo was trained on, open_clip < 2.23) = the package without ln_post
    a.model.vision_tokens = "raw"
    pkg.vision_encoder.ln_post = nn.Identity()
    for p in (None, pin):
        _compare(a, pkg, px, p)


@pytest.mark.slow
def test_create_model_and_transforms_and_synthgen_agree(tmp_path):
    """The package's own factory (open_clip model name + weights file, transformers LM by path)
    and synthgen given the same parts as VLM options build the same model."""
    pytest.importorskip("open_flamingo", reason="pip install --no-deps open-flamingo==2.0.1")
    import open_clip
    from open_flamingo import create_model_and_transforms

    from synthgen.demo.tiny_flamingo import build_tiny_openflamingo
    from synthgen.pin.models.adapters import load_adapter

    d = build_tiny_openflamingo(tmp_path / "of-hf", image_size=CANVAS, vision_width=VISION_WIDTH, lm_format="hf",
                                qk_ln=False, lm_steps=0, gate=0.7, seed=5)
    cfg = json.loads((d / "vision" / "open_clip_config.json").read_text())["model_cfg"]
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "TinyOpenFlamingoViT.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "configs")
    weights = str(d / "vision" / "open_clip_model.safetensors")
    pkg, _, _ = create_model_and_transforms("TinyOpenFlamingoViT", weights, str(d / "lm"), str(d / "lm"),
                                            cross_attn_every_n_layers=1)
    pkg.load_state_dict(torch.load(d / "checkpoint.pt", weights_only=True), strict=False)
    pkg.eval()
    a = load_adapter("openflamingo", str(d / "checkpoint.pt"), lm=str(d / "lm"), vision="TinyOpenFlamingoViT",
                     vision_pretrained=weights, vision_tokens="ln_post")
    assert set(pkg.state_dict()) == set(a.model.state_dict())
    theirs = pkg.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in a.model.state_dict().items())  # every weight
    torch.manual_seed(1)
    _compare(a, pkg, torch.randint(0, 256, (2, 3, CANVAS, CANVAS), dtype=torch.uint8), None)


# --- MosaicML MPT ----------------------------------------------------------------------------

def _mosaic_checkpoint(d: int = 32, heads: int = 4, layers: int = 2, vocab: int = 50, seed: int = 0):
    """``(config.json, state dict)`` of a tiny MPT-1B-style model (MosaicML's mosaic_gpt layout),
    made from key names and shapes alone."""
    g = torch.Generator().manual_seed(seed)
    sd = {"transformer.wte.weight": torch.randn(vocab, d, generator=g) * 0.5,
          "transformer.ln_f.weight": 1 + 0.1 * torch.randn(d, generator=g)}
    for i in range(layers):
        p = f"transformer.blocks.{i}."
        sd.update({p + "ln_1.weight": 1 + 0.1 * torch.randn(d, generator=g),
                   p + "attn.Wqkv.weight": torch.randn(3 * d, d, generator=g) / d ** 0.5,
                   p + "attn.q_ln.weight": 1 + 0.1 * torch.randn(d, generator=g),
                   p + "attn.k_ln.weight": 1 + 0.1 * torch.randn(d, generator=g),
                   p + "attn.out_proj.weight": torch.randn(d, d, generator=g) / d ** 0.5,
                   p + "ln_2.weight": 1 + 0.1 * torch.randn(d, generator=g),
                   p + "mlp.mlp_up.weight": torch.randn(4 * d, d, generator=g) / d ** 0.5,
                   p + "mlp.mlp_down.weight": torch.randn(d, 4 * d, generator=g) / (4 * d) ** 0.5})
    config = {"model_type": "mosaic_gpt", "architectures": ["MosaicGPT"], "d_model": d, "n_heads": heads,
              "n_layers": layers, "mlp_ratio": 4, "max_seq_len": 64, "vocab_size": vocab, "attn_qk_ln": True,
              "attn_clip_qkv": None, "softmax_scale": None, "alibi": True, "alibi_bias_max": 8, "no_bias": True,
              "logit_scale": None, "low_precision_layernorm": True, "attn_impl": "torch"}
    return config, sd


def _mosaic_reference(config: dict, sd: dict, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MosaicGPT's forward written out from its description: pre-LN blocks, QK-LayerNorm over the
    full width, ALiBi (slope 2^(-8 h/H)), no biases, logits through the tied embedding."""
    import torch.nn.functional as F

    d, h = config["d_model"], config["n_heads"]
    b, n = ids.shape
    ln = lambda t, w: F.layer_norm(t, (d,), w, None, 1e-5)
    slopes = 2.0 ** (-8.0 * torch.arange(1, h + 1) / h)
    alibi = slopes[:, None, None] * (torch.arange(n) - (n - 1)).float()[None, None, :]
    pos = torch.arange(n)
    allowed = (pos[None, :] <= pos[:, None])[None, None] & mask.bool()[:, None, None, :]
    x = sd["transformer.wte.weight"][ids]
    for i in range(config["n_layers"]):
        p = f"transformer.blocks.{i}."
        q, k, v = (ln(x, sd[p + "ln_1.weight"]) @ sd[p + "attn.Wqkv.weight"].T).chunk(3, dim=-1)
        q, k = ln(q, sd[p + "attn.q_ln.weight"]), ln(k, sd[p + "attn.k_ln.weight"])
        q, k, v = (t.view(b, n, h, d // h).transpose(1, 2) for t in (q, k, v))
        s = (q @ k.transpose(-1, -2)) / (d // h) ** 0.5 + alibi
        s = s.masked_fill(~allowed, torch.finfo(s.dtype).min)
        x = x + (s.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d) @ sd[p + "attn.out_proj.weight"].T
        m = ln(x, sd[p + "ln_2.weight"])
        x = x + F.gelu(m @ sd[p + "mlp.mlp_up.weight"].T) @ sd[p + "mlp.mlp_down.weight"].T
    return ln(x, sd["transformer.ln_f.weight"]) @ sd["transformer.wte.weight"].T


def test_mosaic_gpt_mpt_maps_onto_transformers_mpt(tmp_path):
    from synthgen.pin.models.flamingo.mpt import hf_to_mosaic_key, load_language_model, mosaic_to_hf_key

    config, sd = _mosaic_checkpoint()
    (tmp_path / "mpt1b").mkdir()
    (tmp_path / "mpt1b" / "config.json").write_text(json.dumps(config))
    torch.save(sd, tmp_path / "mpt1b" / "pytorch_model.bin")
    lm = load_language_model(str(tmp_path / "mpt1b"))
    assert type(lm).__name__ == "MptForCausalLM"
    assert {hf_to_mosaic_key(k) for k in lm.state_dict() if k != "lm_head.weight"} == set(sd)
    assert all(hf_to_mosaic_key(mosaic_to_hf_key(k)) == k for k in sd)
    ids = torch.randint(0, 50, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :3] = 0  # left padding
    with torch.no_grad():
        ours = lm(input_ids=ids, attention_mask=mask).logits
    ref = _mosaic_reference(config, sd, ids, mask)
    real = mask.bool()
    assert torch.allclose(ours[real], ref[real], atol=1e-4), (ours[real] - ref[real]).abs().max()
    # greedy decoding with transformers' KV cache = the reference recomputed from scratch each step
    seq = ids[:1, :4]
    for _ in range(5):
        seq = torch.cat([seq, _mosaic_reference(config, sd, seq, torch.ones_like(seq))[:, -1:].argmax(-1)], 1)
    with torch.no_grad():
        cached = lm.generate(ids[:1, :4], max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(cached, seq), (cached, seq)
    # without QK-LayerNorm the logits differ: the q_ln/k_ln weights are really used
    plain = dict(config, attn_qk_ln=False)
    ref_plain = _mosaic_reference(plain, {**sd, **{k: torch.ones_like(v) for k, v in sd.items() if "_ln." in k}},
                                  ids, mask)
    assert not torch.allclose(ours[real], ref_plain[real], atol=1e-3)


def test_mpt_in_transformers_layout_loads_natively(tmp_path):
    """MPT-7B's layout (model_type mpt) = transformers' MptForCausalLM: saved and loaded back."""
    from synthgen.pin.models.flamingo.mpt import build_mpt, load_language_model, mpt_config

    config, _ = _mosaic_checkpoint()
    cfg, _ = mpt_config(dict(config, attn_qk_ln=False))
    torch.manual_seed(0)
    ref = build_mpt(cfg, qk_ln=False).eval()
    ref.save_pretrained(tmp_path / "mpt7b")
    assert json.loads((tmp_path / "mpt7b" / "config.json").read_text())["model_type"] == "mpt"
    lm = load_language_model(str(tmp_path / "mpt7b"))
    ids = torch.randint(0, 50, (1, 7))
    with torch.no_grad():
        assert torch.equal(lm(input_ids=ids).logits, ref(input_ids=ids).logits)


@pytest.mark.parametrize("change, message", [
    ({"no_bias": False}, "biases"),
    ({"n_heads": 2, "d_model": 30}, None),       # fine: power-of-two heads
    ({"n_heads": 3, "d_model": 30}, "3 attention heads"),
    ({"alibi": False}, "no ALiBi"),
    ({"logit_scale": 0.5}, "logit_scale"),
    ("bias", "unexpected MPT weight"),
])
def test_mpt_that_transformers_cannot_express_is_refused(tmp_path, change, message):
    from synthgen.pin.models.flamingo.mpt import load_language_model

    d = 30 if isinstance(change, dict) and "d_model" in change else 32
    config, sd = _mosaic_checkpoint(d=d, heads=2 if d == 30 else 4)
    if change == "bias":
        sd["transformer.blocks.0.attn.Wqkv.bias"] = torch.zeros(3 * d)
    else:
        config.update(change)
    (tmp_path / "lm").mkdir()
    (tmp_path / "lm" / "config.json").write_text(json.dumps(config))
    torch.save(sd, tmp_path / "lm" / "pytorch_model.bin")
    if message is None:
        load_language_model(str(tmp_path / "lm"))
        return
    with pytest.raises(UserError, match=message) as exc:
        load_language_model(str(tmp_path / "lm"))
    assert "\n" not in str(exc.value)


# --- variants and checkpoint.pt ------------------------------------------------------------

def test_variants_by_hub_id_and_overrides(tmp_path):
    from synthgen.pin.models.flamingo.variants import resolve_parts
    from synthgen.pin.training.config import DEFAULT_MODELS

    p = resolve_parts(None)
    assert p.model_id == DEFAULT_MODELS["openflamingo"] == "openflamingo/OpenFlamingo-3B-vitl-mpt1b-langinstruct"
    assert (p.lm, p.tokenizer, p.vision, p.vision_pretrained, p.cross_attn_every, p.vision_tokens) == (
        "anas-awadalla/mpt-1b-redpajama-200b-dolly", "anas-awadalla/mpt-1b-redpajama-200b-dolly", "ViT-L-14",
        "openai", 1, "ln_post")
    assert resolve_parts("openflamingo/OpenFlamingo-9B-vitl-mpt7b").options()["cross_attn_every"] == 4
    p4 = resolve_parts("openflamingo/OpenFlamingo-4B-vitl-rpj3b-langinstruct", lm=str(tmp_path))
    assert (p4.lm, p4.cross_attn_every) == (str(tmp_path.resolve()), 2)  # local override made absolute
    # a local copy named like its variant (a hub cache folder) gets that variant's parts
    cache = tmp_path / "models--openflamingo--OpenFlamingo-3B-vitl-mpt1b" / "snapshots" / "abc"
    cache.mkdir(parents=True)
    (cache / "checkpoint.pt").write_bytes(b"")
    assert resolve_parts(str(cache)).lm == "anas-awadalla/mpt-1b-redpajama-200b"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(UserError, match="lm=HUB_ID_OR_DIR"):
        resolve_parts(str(tmp_path / "mine"))
    with pytest.raises(UserError, match="has no checkpoint.pt"):
        resolve_parts(str(tmp_path))
    with pytest.raises(UserError, match="cross_attn_every must be a positive integer"):
        resolve_parts(None, cross_attn_every=0)
    # a vision encoder by name alone would be random: its weights must be named too
    assert resolve_parts(None, vision="ViT-L-14").vision_pretrained == "openai"
    assert resolve_parts(None, vision="ViT-B-32", vision_pretrained="openai").vision_pretrained == "openai"
    with pytest.raises(UserError, match="vision=ViT-B-32 needs its weights: vision_pretrained=TAG"):
        resolve_parts(None, vision="ViT-B-32")


@pytest.mark.slow
def test_checkpoint_that_does_not_fit_is_a_one_line_error(tiny_dir, of_dir, tmp_path):
    import shutil

    from synthgen.pin.models.adapters import load_adapter

    bad = shutil.copytree(tiny_dir, tmp_path / "bad")
    sd = torch.load(tiny_dir / "checkpoint.pt", weights_only=True)
    emb = "lang_encoder.transformer.wte.weight"
    rows = sd[emb].shape[0]  # the tokenizer's tokens + <|endofchunk|>, <image>, <PAD>
    torch.save({**sd, emb: sd[emb][:-1]}, bad / "checkpoint.pt")
    with pytest.raises(UserError, match=rf"wte.weight is \({rows - 1}, 64\) but this Flamingo's is \({rows}, 64\)") as exc:
        load_adapter("openflamingo", str(bad))
    assert "\n" not in str(exc.value)
    with pytest.raises(UserError, match="cross-attention every 1 layers, not every 2"):
        load_adapter("openflamingo", str(tiny_dir), cross_attn_every=2)
    # of_dir's checkpoint (OpenFlamingo's perceiver sizes, 4 layers, every 2nd) on tiny_dir's 2-layer LM
    with pytest.raises(UserError, match="does not have"):
        load_adapter("openflamingo", str(of_dir / "checkpoint.pt"), lm=str(tiny_dir / "lm"),
                     vision=f"local-dir:{tiny_dir / 'vision'}")


# --- the authors' PIN file -----------------------------------------------------------------

def _authors_table(n: int, d: int) -> torch.Tensor:
    """The authors' get_sinusoid_encoding_table (numpy, float64 -> float32), [1, n, d]."""
    angle = np.array([[p / np.power(10000, 2 * (j // 2) / d) for j in range(d)] for p in range(n)])
    angle[:, 0::2], angle[:, 1::2] = np.sin(angle[:, 0::2]), np.cos(angle[:, 1::2])
    return torch.FloatTensor(angle).unsqueeze(0)


def _authors_file(path: Path, n: int = GRID * GRID, out_dim: int = VISION_WIDTH, **tweak) -> dict:
    """A file in exactly PIN_OF.pt's layout: {"mlp": the 7-layer Sequential's state dict, "pos_enc"}."""
    torch.manual_seed(7)
    mlp = nn.Sequential(nn.Linear(64, 512), nn.SiLU(), nn.LayerNorm(512), nn.Linear(512, 768), nn.SiLU(),
                        nn.LayerNorm(768), nn.Linear(768, out_dim))
    with torch.no_grad():
        for m in mlp:
            if isinstance(m, nn.LayerNorm):  # not the default 1/0, so a mix-up would show
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    data = {"mlp": mlp.state_dict(), "pos_enc": _authors_table(n, 64)}
    data.update(tweak)
    torch.save(data, path)
    return data


@pytest.mark.slow
def test_import_pin_gives_a_run_that_evaluates_and_export_round_trips(tiny_dir, tmp_path):
    from typer.testing import CliRunner

    from synthgen.cli import app
    from synthgen.pin.training.checkpoint import load_run

    src = _authors_file(tmp_path / "PIN_OF.pt")
    assert sorted(src["mlp"]) == [f"{i}.{w}" for i in (0, 2, 3, 5, 6) for w in ("bias", "weight")]
    runner = CliRunner()
    r = runner.invoke(app, ["import-pin", str(tmp_path / "PIN_OF.pt"), "--vlm", "openflamingo",
                            "--model", str(tiny_dir), "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "run" / "pin.json").read_text())
    assert meta["pin"] == {"num_positions": 64, "out_dim": VISION_WIDTH, "table": "sinusoid", "table_dim": 64,
                           "hidden": [512, 768], "activation": "silu"}
    assert meta["vlm_options"]["vision_tokens"] == "ln_post"  # what the authors' open_clip 2.23 gave
    assert (meta["canvas"], meta["grid"], meta["step"]) == (CANVAS, GRID, 0)
    # the run's PIN is the authors' MLP applied to their table
    mlp = nn.Sequential(nn.Linear(64, 512), nn.SiLU(), nn.LayerNorm(512), nn.Linear(512, 768), nn.SiLU(),
                        nn.LayerNorm(768), nn.Linear(768, VISION_WIDTH))
    mlp.load_state_dict(src["mlp"])
    _, adapter = load_run(tmp_path / "run", device="cpu")
    assert adapter.model.vision_tokens == "ln_post"
    with torch.no_grad():
        assert torch.allclose(adapter._pin(), mlp(src["pos_enc"][0]), atol=1e-6)
    coco, images = _coco(tmp_path)
    r = runner.invoke(app, ["eval-pin", str(tmp_path / "run"), "--coco-json", str(coco), "--images", str(images)])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "run" / "eval" / "coco" / "model" / "metrics.json").read_text())["n"] == 1
    r = runner.invoke(app, ["export-pin", str(tmp_path / "run"), "-o", str(tmp_path / "back.pt")])
    assert r.exit_code == 0, r.output
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    assert set(back) == {"mlp", "pos_enc"} and back["mlp"].keys() == src["mlp"].keys()
    assert all(torch.equal(back["mlp"][k], v) for k, v in src["mlp"].items())
    assert torch.equal(back["pos_enc"], src["pos_enc"])  # bit for bit, [1, 64, 64]
    r = runner.invoke(app, ["import-pin", str(tmp_path / "back.pt"), "--model", str(tiny_dir), "--out",
                            str(tmp_path / "run")])
    assert r.exit_code == 2 and "already holds a PIN run" in r.output


def test_import_pin_of_for_the_released_openflamingo_and_back(tmp_path):
    """PIN_OF.pt's own shapes (256 x 1024) for the default OpenFlamingo-3B: imported from the configs
    alone (no weights needed), exported back bit for bit."""
    from synthgen.pin.training.config import DEFAULT_MODELS
    from synthgen.pin.training.portable import export_pin, import_pin

    src = _authors_file(tmp_path / "PIN_OF.pt", n=256, out_dim=1024)
    meta = import_pin(tmp_path / "PIN_OF.pt", tmp_path / "pin-of", vlm="openflamingo")
    assert meta["model"] == DEFAULT_MODELS["openflamingo"]
    assert (meta["canvas"], meta["grid"], meta["num_positions"], meta["vision_width"]) == (224, 16, 256, 1024)
    assert meta["vlm_options"] == {"lm": "anas-awadalla/mpt-1b-redpajama-200b-dolly",
                                   "tokenizer": "anas-awadalla/mpt-1b-redpajama-200b-dolly", "vision": "ViT-L-14",
                                   "vision_pretrained": "openai", "cross_attn_every": 1, "vision_tokens": "ln_post"}
    assert 1.1e6 < meta["pin_parameters"] < 1.3e6  # ~1.2M (SPEC section 3)
    back = torch.load(export_pin(tmp_path / "pin-of", tmp_path / "back.pt"), weights_only=True)
    assert back["mlp"].keys() == src["mlp"].keys() and back["pos_enc"].shape == (1, 256, 64)
    assert all(torch.equal(back["mlp"][k], v) for k, v in src["mlp"].items())
    assert torch.equal(back["pos_enc"], src["pos_enc"])


@pytest.mark.parametrize("case, message", [
    ("width", r"is a PIN of 64x1024 but openflamingo .* has 64x32 vision tokens"),
    ("patches", r"is a PIN of 256x32 but openflamingo .* has 64x32"),
    ("layout", r"'mlp' keys .* are not the authors' Sequential"),
    ("keys", r"expected the PIN authors' layout .*found \['mlp', 'pos_enc', 'step'\]"),
    ("table", r"pos_enc differs from the sinusoid table"),
    ("chain", r"Linear 3 is \(768, 500\)"),
])
@pytest.mark.slow
def test_import_refuses_what_is_not_that_layout(tiny_dir, tmp_path, case, message):
    from typer.testing import CliRunner

    from synthgen.cli import app

    f = tmp_path / "x.pt"
    if case == "width":
        _authors_file(f, out_dim=1024)
    elif case == "patches":
        _authors_file(f, n=256)
    elif case == "layout":
        _authors_file(f, mlp={"weight": torch.zeros(32, 64), "bias": torch.zeros(32)})
    elif case == "keys":
        _authors_file(f, step=torch.tensor(3))
    elif case == "table":
        _authors_file(f, pos_enc=torch.randn(1, 64, 64))
    else:
        data = _authors_file(f)
        data["mlp"]["3.weight"] = torch.zeros(768, 500)
        torch.save(data, f)
    r = CliRunner().invoke(app, ["import-pin", str(f), "--model", str(tiny_dir), "--out", str(tmp_path / "run")])
    assert r.exit_code == 2, r.output
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and re.search(message, err[0]), err
    assert "Traceback" not in r.output and not (tmp_path / "run" / "pin.json").exists()


class _Evil:
    def __reduce__(self):
        return (Path.write_text, (Path(_Evil.marker), "pwned"))


def test_import_refuses_a_pickle_that_runs_code(tmp_path):
    from synthgen.pin.training.portable import import_pin

    _Evil.marker = str(tmp_path / "marker")
    torch.save({"mlp": _Evil(), "pos_enc": torch.zeros(1, 4, 64)}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="weights_only") as exc:
        import_pin(tmp_path / "evil.pt", tmp_path / "run")
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "marker").exists() and not (tmp_path / "run").exists()


def test_openai_clip_weights_get_quick_gelu():
    """open_clip 3.x builds ViT-L-14 with GELU even for the QuickGELU-trained openai weights (a
    warning only); OpenFlamingo's encoder is the QuickGELU one."""
    from synthgen.pin.models.flamingo.loading import geometry, open_clip_kwargs

    assert open_clip_kwargs("ViT-L-14", "openai") == {"force_quick_gelu": True}
    assert open_clip_kwargs("ViT-L-14", "laion2b_s32b_b82k") == {"force_quick_gelu": False}
    assert open_clip_kwargs("ViT-L-14", None) == {}
    with pytest.raises(UserError, match="unknown open_clip weights 'nope' for ViT-L-14; known: .*openai"):
        open_clip_kwargs("ViT-L-14", "nope")
    assert geometry("ViT-L-14") == {"input_size": 224, "patch_grid": 16, "num_positions": 256, "vision_width": 1024}
    with pytest.raises(UserError, match="not an open_clip model name"):
        geometry("ViT-Q-99")


def _released_checkpoint(pkg) -> dict:
    """What OpenFlamingo's training saves as checkpoint.pt (its filter_state_dict_to_trainable):
    trainable parameters and every embedding, minus the alias and vision-encoder keys."""
    state = pkg.state_dict()
    for name, p in pkg.named_parameters():
        if "embed" not in name and not p.requires_grad:
            state.pop(name, None)
    return {k: v for k, v in state.items()
            if not any(s in k for s in ("lang_encoder.old_decoder_blocks", "lang_encoder.gated_cross_attn_layers",
                                         "vision_encoder"))}


@pytest.mark.slow
def test_gpt_neox_lm_as_in_openflamingo_4b(tmp_path):
    """The 4B variants' LM family (RedPajama-INCITE, GPT-NeoX: untied embed_in / embed_out, cross-attention
    every 2nd layer): a checkpoint.pt saved the way OpenFlamingo saves it loads by key and runs the same."""
    pytest.importorskip("open_flamingo", reason="pip install --no-deps open-flamingo==2.0.1")
    import open_clip
    from open_flamingo import create_model_and_transforms
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from synthgen.demo.tiny_flamingo import _write_vision, build_lm_tokenizer
    from synthgen.pin.models.adapters import load_adapter
    from synthgen.pin.models.module import PIN

    _write_vision(tmp_path / "vision", CANVAS, 14, VISION_WIDTH, 1, seed=0)
    tok = build_lm_tokenizer()
    torch.manual_seed(0)
    GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=4, num_attention_heads=2,
                                     intermediate_size=128, max_position_embeddings=128, tie_word_embeddings=False)
                       ).save_pretrained(tmp_path / "neox")
    tok.save_pretrained(tmp_path / "neox")
    cfg = json.loads((tmp_path / "vision" / "open_clip_config.json").read_text())["model_cfg"]
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "TinyNeoXFlamingoViT.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "configs")
    weights = str(tmp_path / "vision" / "open_clip_model.safetensors")
    pkg, _, _ = create_model_and_transforms("TinyNeoXFlamingoViT", weights, str(tmp_path / "neox"),
                                            str(tmp_path / "neox"), cross_attn_every_n_layers=2)
    with torch.no_grad():  # an OpenFlamingo after training: images matter (gates open)
        for name, p in pkg.named_parameters():
            if name.endswith("_gate"):
                p.fill_(0.7)
    (tmp_path / "of4b").mkdir()
    released = _released_checkpoint(pkg)
    # transformers 4.x (2023, when the OpenFlamingo-4B checkpoint was saved) named GPT-NeoX's output
    # embedding embed_out, which the "embed" rule kept; transformers 5 calls it lm_head
    released["lang_encoder.embed_out.weight"] = pkg.state_dict()["lang_encoder.lm_head.weight"]
    assert "lang_encoder.gpt_neox.embed_in.weight" in released and "lang_encoder.lm_head.weight" not in released
    torch.save(released, tmp_path / "of4b" / "checkpoint.pt")
    pkg.eval()
    a = load_adapter("openflamingo", str(tmp_path / "of4b"), lm=str(tmp_path / "neox"),
                     vision="TinyNeoXFlamingoViT", vision_pretrained=weights, vision_tokens="ln_post")
    assert a.model.decoder_layers == "gpt_neox.layers" and a.vlm_options["cross_attn_every"] == 2
    torch.manual_seed(2)
    px = torch.randint(0, 256, (2, 3, CANVAS, CANVAS), dtype=torch.uint8)
    _compare(a, pkg, px, None)
    _compare(a, pkg, px, PIN(a.num_positions, a.vision_width)().detach())
