"""Training at real size (issue 18): the loss keeps logits at the labelled positions only, gradient
checkpointing on the frozen eval-mode VLM, micro-batches with gradient accumulation, the frozen
weights in their compute dtype, attention kernels, skipped non-finite steps, devices, and beams
that share one image encoding. Every family, through its real adapter and tiny random weights."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from synthgen.errors import UserError
from synthgen.pin.training.memory import saved_for_backward
from tests.pin.fixtures import one_thread  # noqa: E402, F401 (an autouse fixture: one torch thread)

FAMILIES = ("blip2", "openflamingo", "llava", "smolvlm", "qwen2_5_vl", "paligemma")
CANVAS = 112
OPTIONS = {"qwen2_5_vl": {"canvas": CANVAS}}



@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """family -> folder of its tiny model (built once)."""
    from synthgen.demo.tiny_blip2 import build_tiny_blip2
    from synthgen.demo.tiny_flamingo import build_tiny_openflamingo
    from synthgen.demo.tiny_vlms import BUILDERS

    builders = {**BUILDERS, "blip2": lambda d: build_tiny_blip2(d, image_size=CANVAS),
                "openflamingo": lambda d: build_tiny_openflamingo(d, image_size=CANVAS)}
    root, built = tmp_path_factory.mktemp("memory"), {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = builders[family](root / family)
        return built[family]
    return get


def _load(tiny, family: str, **kw):
    from synthgen.pin.models.adapters import load_adapter

    return load_adapter(family, str(tiny(family)), **OPTIONS.get(family, {}), **kw)


def _batch(a, n: int = 3) -> dict:
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (n, 3, a.input_size, a.input_size), dtype=torch.uint8, generator=g)
    texts = [("cat", "[14,28,56,70]"), ("red teddy bear", "[0,0,14,14]"), ("dog", "[7,7,98,105]")]
    return {**a.codec.collate([a.codec.encode(r, b) for r, b in texts[:n]]), "pixels": pixels}


def _attach_pin(a, seed: int = 0):
    from synthgen.pin.models.module import PIN

    torch.manual_seed(seed)
    pin = PIN(a.num_positions, a.vision_width, hidden=(16, 16))
    with torch.no_grad():  # (PIN's last layer starts at zero: make its output matter)
        for p in pin.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    a.attach_pin(pin)
    return pin


def _full_logits_loss(a, batch) -> torch.Tensor:
    """The model's own loss, from its full ``[B, T, vocab]`` logits."""
    from synthgen.pin.models.adapters.base import PixelsTextAdapter

    if isinstance(a, PixelsTextAdapter):
        return a._forward(batch["pixels"], batch["input_ids"], batch["attention_mask"],
                          labels=batch["labels"]).loss
    return a.model(**a.inputs(batch["pixels"], batch["input_ids"], batch["attention_mask"], batch["labels"])).loss


def _vocab(a) -> int:
    return int(a.model.get_output_embeddings().weight.shape[0]) if hasattr(a.model, "get_output_embeddings") \
        else int(a.model.lang_encoder.get_output_embeddings().weight.shape[0])


@pytest.mark.parametrize("family", FAMILIES)
def test_loss_is_the_models_own_from_the_labelled_positions_only(tiny, family):
    """The adapter's loss equals the model's own loss over its full logits, and autograd keeps
    no logits tensor of the whole sequence (today's loss kept ``[B, T, vocab]``)."""
    a = _load(tiny, family)
    _attach_pin(a)
    batch = _batch(a)
    want = _full_logits_loss(a, batch)
    got, saved = saved_for_backward(lambda a=a, batch=batch: a.loss(batch), exclude=[p for _, p in a.vlm_parameters()])
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6), (float(got), float(want))
    b, t = batch["input_ids"].shape
    vocab = _vocab(a)
    n_labelled = int((batch["labels"][:, 1:] != -100).sum())
    big = [s for s, _ in saved.shapes if s and s[-1] == vocab and torch.Size(s).numel() > n_labelled * vocab]
    assert not big, f"logits kept beyond the {n_labelled} labelled positions: {big} (B={b}, T={t})"


@pytest.mark.parametrize("family", FAMILIES)
def test_grad_checkpointing_on_the_frozen_eval_model(tiny, family):
    """Same loss and PIN gradient with checkpointing; the model stays in eval mode (dropout off:
    two losses are equal); less is kept for backward."""
    grads, kept, losses = [], [], []
    for ckpt in (False, True):
        a = _load(tiny, family)
        pin = _attach_pin(a)
        if ckpt:
            assert a.enable_grad_checkpointing() >= 1
            assert a.enable_grad_checkpointing() >= 1  # (a second call wraps nothing twice)
        batch = _batch(a)
        loss, saved = saved_for_backward(lambda a=a, batch=batch: a.loss(batch), exclude=[p for _, p in a.vlm_parameters()])
        loss.backward()
        assert not a.model.training
        assert torch.equal(a.loss(batch).detach(), loss.detach())
        grads.append([p.grad.clone() for p in pin.parameters()])
        kept.append(saved.bytes)
        losses.append(float(loss.detach()))
        a.assert_frozen()
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    for g0, g1 in zip(*grads):
        assert torch.allclose(g0, g1, rtol=1e-4, atol=1e-7)
    assert kept[1] < kept[0], kept


def test_micro_batches_update_like_the_whole_batch_and_resume_on_the_same_curve(tiny, tmp_path):
    """--micro-batch: the PIN after 3 steps is the whole batch's (pieces of 1, of 3+1), and a run
    resumed with another micro-batch continues the same curve."""
    from safetensors.torch import load_file

    from synthgen.pin.training.train import TrainConfig, train
    from tests.pin.fixtures import write_shards

    write_shards(tmp_path / "s", 16, canvas=CANVAS, grid=8, per_shard=8)
    model = str(tiny("blip2"))

    def run(out: str, micro, steps: int = 3, resume: bool = False):
        cfg = TrainConfig(shards=str(tmp_path / "s"), out=str(tmp_path / out), vlm="blip2", model=model,
                          steps=steps, batch_size=4, micro_batch=micro, loader_workers=0, log_every=1,
                          save_every=1, progress=False, hidden=(16, 16), shuffle_buffer=8, resume=resume)
        train(cfg, echo=lambda *_: None)
        return load_file(str(tmp_path / out / "pin.safetensors"))

    whole = run("whole", "auto")
    for micro in (1, 3):
        pieces = run(f"micro{micro}", micro)
        for k in whole:
            assert torch.allclose(whole[k], pieces[k], rtol=1e-4, atol=1e-6), (micro, k)
    run("resumed", 2, steps=2)
    resumed = run("resumed", 1, steps=3, resume=True)
    for k in whole:
        assert torch.allclose(whole[k], resumed[k], rtol=1e-4, atol=1e-6), k
    assert any(not torch.equal(whole[k], run("other", "auto", steps=2)[k]) for k in whole)  # (steps matter)


def test_fp16_holds_the_frozen_weights_in_fp16_and_keeps_no_cast_copies(tiny):
    """--precision fp16 loads the VLM in fp16: under fp16 autocast nothing is re-cast, so the
    bytes kept for backward drop by the half copies of the weights that fp16-mixed (fp32
    weights, the authors') keeps (~2 bytes a weight on the gradient path)."""
    from synthgen.pin.runtime import AUTOCAST, WEIGHTS

    kept = {}
    for precision in ("fp16", "fp16-mixed"):
        a = _load(tiny, "llava", dtype=WEIGHTS[precision])
        assert {p.dtype for _, p in a.vlm_parameters()} == {WEIGHTS[precision]}
        _attach_pin(a)
        batch = _batch(a)
        with torch.autocast("cpu", dtype=AUTOCAST[precision]):
            _, saved = saved_for_backward(lambda a=a, batch=batch: a.loss(batch), exclude=[p for _, p in a.vlm_parameters()])
        kept[precision] = saved.bytes
    lm = sum(p.numel() for n, p in a.vlm_parameters() if "language_model" in n and "embed" not in n)
    assert kept["fp16-mixed"] - kept["fp16"] >= lm, kept  # >= 1 byte a weight of the LM saved


def test_attention_implementation(tiny):
    a = _load(tiny, "llava", attn_implementation="eager")
    assert a.model.config._attn_implementation == "eager"
    _attach_pin(a)
    batch = _batch(a)
    b = _load(tiny, "llava")  # auto: transformers' choice (sdpa)
    assert b.model.config._attn_implementation == "sdpa"
    _attach_pin(b)
    assert torch.allclose(a.loss(batch), b.loss(batch), rtol=1e-5, atol=1e-6)
    with pytest.raises(UserError, match="OpenFlamingo's attention"):
        _load(tiny, "openflamingo", attn_implementation="eager")
    with pytest.raises(UserError, match="--attn-implementation must be one of"):
        _load(tiny, "llava", attn_implementation="fast")
    import importlib.util

    if importlib.util.find_spec("flash_attn") is None:
        with pytest.raises(UserError, match="flash-attn"):
            _load(tiny, "llava", attn_implementation="flash_attention_2")


@pytest.mark.parametrize("family", FAMILIES)
def test_beams_share_one_image_encoding(tiny, family):
    """Beam search encodes each image once: the vision tower sees as many images with 3 beams
    as with 1."""
    a = _load(tiny, family)
    _attach_pin(a)
    tower = {"blip2": "vision_model", "openflamingo": "vision_encoder"}.get(family) or a.vision_module
    seen: list[int] = []

    def count(module, args, kwargs, out):
        t = out if isinstance(out, torch.Tensor) else out[0]
        seen.append(int(t.shape[0]))

    a.model.get_submodule(tower).register_forward_hook(count, with_kwargs=True)
    px = _batch(a, 2)["pixels"]
    a.generate(px, ["cat", "dog"], num_beams=1, max_new_tokens=3)
    one, seen[:] = sum(seen), []
    a.generate(px, ["cat", "dog"], num_beams=3, max_new_tokens=3)
    assert sum(seen) == one, (one, seen)


def test_non_finite_steps_are_skipped_then_stop_with_the_remedy(tmp_path):
    """fp16 with a grad scaler (on the CPU's scaler): NaN losses are skipped, PIN untouched, and
    --max-skipped-steps in a row stop the run naming bf16."""
    from synthgen.pin.models.module import PIN
    from synthgen.pin.training.loop import Loop
    from synthgen.pin.training.train import TrainConfig, _Env
    from tests.pin.fixtures import FakeAdapter

    adapter = FakeAdapter(0, nan_rank=0, nan_step=2)
    torch.manual_seed(0)
    pin = PIN(adapter.num_positions, adapter.vision_width, hidden=(8, 8))
    adapter.attach_pin(pin)
    opt = torch.optim.Adam(pin.parameters(), lr=1e-3)
    cfg = TrainConfig(shards="x", max_skipped_steps=3, batch_size=2)
    loop = Loop(cfg, _Env(1, 0, torch.device("cpu"), lambda *_: None), adapter, pin, pin, opt,
                torch.amp.GradScaler("cpu", init_scale=16.0), "fp16", lambda *_: None, {}, None, CANVAS, 8)
    batch = {"input_ids": torch.ones(2, 2, dtype=torch.long), "labels": torch.tensor([[-100, 1]] * 2)}
    before = [p.detach().clone() for p in pin.parameters()]
    assert math.isfinite(loop.step(batch, 1)) and loop.skipped == 0
    after_good = [p.detach().clone() for p in pin.parameters()]
    assert any(not torch.equal(p, q) for p, q in zip(before, after_good))  # (a real step)
    for at in (2, 3):
        assert math.isnan(loop.step(batch, at))
    assert loop.skipped == 2
    assert all(torch.equal(p, q) for p, q in zip(after_good, pin.parameters()))
    with pytest.raises(UserError, match=r"3 optimiser steps in a row skipped at step 4 \(fp16 overflowed.*bf16"):
        loop.step(batch, 4)


def test_devices():
    from synthgen.pin.runtime import inference_dtype, pick_device

    assert pick_device(None, 0, 1, cuda=False) == torch.device("cpu")
    assert pick_device(None, 3, 4, cuda=True) == torch.device("cuda:3")
    assert pick_device("cuda", 2, 4, cuda=True) == torch.device("cuda:2")  # each rank its own GPU
    assert pick_device("cuda", 0, 1, cuda=True) == torch.device("cuda:0")  # (an index: set_device takes it)
    assert pick_device("cuda:1", 0, 1, cuda=True) == torch.device("cuda:1")
    assert pick_device("cpu", 1, 2, cuda=True) == torch.device("cpu")
    with pytest.raises(UserError, match="would put all 2 ranks on one GPU"):
        pick_device("cuda:0", 1, 2, cuda=True)
    with pytest.raises(UserError, match="no CUDA GPU"):
        pick_device("cuda", 0, 1, cuda=False)
    with pytest.raises(UserError, match="is not a device"):
        pick_device("gpu0", 0, 1, cuda=True)
    for precision in (None, "bf16", "fp16", "fp16-mixed", "fp32"):
        assert inference_dtype(precision, torch.device("cpu")) == torch.float32


@pytest.mark.parametrize("bf16", [True, False])
def test_eval_loads_the_vlm_in_the_runs_dtype_as_far_as_the_gpu_allows(monkeypatch, bf16):
    """eval-pin / predict: the weights' dtype the run trained with; bf16 falls back to fp16 on a
    GPU without it (this machine has no GPU: the capability query is what is replaced)."""
    from synthgen.pin.runtime import inference_dtype

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    gpu = torch.device("cuda:0")
    half = torch.bfloat16 if bf16 else torch.float16
    assert [inference_dtype(p, gpu) for p in ("bf16", None, "fp16", "fp16-mixed", "fp32")] == [
        half, half, torch.float16, torch.float16, torch.float32]
