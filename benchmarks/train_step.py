"""Where a PIN training step spends its time: vision encoder / PIN / fusion + LM forward and backward.

One optimiser step of ``train-pin`` is ``adapter.loss(batch).backward()`` + Adam on PIN. It is timed
whole and in parts on the same batch:

- ``vision``  the frozen vision encoder's forward (it runs under no_grad, so it has no backward);
- ``pin``     PIN's forward and backward (the MLP over the sinusoid table);
- ``rest``    the remainder: for OpenFlamingo the perceiver resampler, the gated cross-attention
              and the language model, forward and backward (input gradients only: all frozen);
              for BLIP-2 the Q-Former and OPT; for LLaVA / SmolVLM / Qwen2.5-VL / PaliGemma the
              fusion module's backward and the LM.

For the transformers VLMs (llava, smolvlm, qwen2_5_vl, paligemma) ``vision`` is
``model.get_image_features``: the encoder and the fusion module's forward (projector / connector /
merger, a few percent of it).

The last columns are the input pipeline with that model's own codec: samples/s of one DataLoader
worker (read the tar, decode the JPEG, draw the target, tokenise prompt + answer, collate), on
photo-like scenes at the model's canvas (``benchmarks/train_input.py``'s shards).

Because PIN is added *after* the frozen encoder, the encoder's output for a scene never changes
during training: caching it per scene would save the ``vision`` share of every step. The last
column prints that share.

    python benchmarks/train_step.py [--vlm openflamingo blip2 llava smolvlm qwen2_5_vl paligemma]
                                    [--model DIR] [--batch 16] [--steps 10]

Without ``--model`` it builds the tiny OpenFlamingo (at ``--canvas`` 224: ViT 16x16 patches like
ViT-L/14, OpenFlamingo's perceiver/cross-attention sizes, tiny widths), the tiny BLIP-2 and the
tiny transformers VLMs of :mod:`synthgen.demo.tiny_vlms` (at ``--canvas``), since this machine
has no model hub. Their splits are not those of the real models: the tiny ones have
a 2-layer 32-wide ViT against ViT-L/14's 24 x 1024, so the vision share here is a lower bound.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def _median_ms(fn, steps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def _vision_fn(adapter, pixels):
    if hasattr(adapter, "image_features"):  # the transformers VLMs (synthgen.pin.models.adapters.hf)
        return lambda: adapter.image_features(pixels)
    x = adapter.preprocess(pixels)
    if adapter.name == "openflamingo":
        return lambda: adapter.model.patch_tokens(x)
    return lambda: adapter.model.vision_model(pixel_values=x)


def input_rate(adapter, root: Path, scenes: int, batch_size: int) -> float:
    """Samples/s one DataLoader worker delivers with ``adapter.codec`` (decode + tokenise + collate)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from train_input import write_scene_shards

    from synthgen.pin.training.data import SceneStream, StreamConfig

    shards = write_scene_shards(root / f"scenes-{adapter.input_size}", scenes, adapter.input_size)
    ds = SceneStream(StreamConfig(shards=shards, batch_size=batch_size, shuffle_buffer=100,
                                  image_size=adapter.input_size), adapter.codec)
    n = scenes // batch_size
    it = ds.batches(0, 1)
    t = time.perf_counter()
    for _ in range(n):
        next(it)
    return n * batch_size / (time.perf_counter() - t)


def measure(adapter, batch_size: int, steps: int) -> dict:
    from synthgen.pin.models.module import PIN

    torch.manual_seed(0)
    pin = PIN(adapter.num_positions, adapter.vision_width)
    adapter.attach_pin(pin)
    names = ["teddy bear", "cat", "left dog", "apple"]
    seqs = [adapter.codec.encode(names[i % 4], "[14,28,112,126]") for i in range(batch_size)]
    batch = adapter.codec.collate(seqs)
    batch["pixels"] = torch.randint(0, 256, (batch_size, 3, adapter.input_size, adapter.input_size),
                                    dtype=torch.uint8)

    def step():
        pin.zero_grad(set_to_none=True)
        adapter.loss(batch).backward()

    def pin_only():
        pin.zero_grad(set_to_none=True)
        pin().sum().backward()

    vision = _vision_fn(adapter, batch["pixels"])
    with torch.no_grad():
        t_vision = _median_ms(vision, steps)
    t_step = _median_ms(step, steps)
    t_pin = _median_ms(pin_only, steps)
    adapter.detach_pin()
    rest = t_step - t_vision - t_pin
    return {"step_ms": t_step, "vision_ms": t_vision, "pin_ms": t_pin, "rest_ms": rest,
            "vision_share": t_vision / t_step, "tokens": int(batch["input_ids"].shape[1])}


def _vit_macs(tokens: int, width: int, layers: int, mlp: int) -> float:
    return layers * (4 * tokens * width ** 2 + 2 * tokens * width * mlp + 2 * tokens ** 2 * width)


def _decoder_macs(tokens: int, width: int, layers: int, vocab: int) -> float:
    return layers * (12 * tokens * width ** 2 + 2 * tokens ** 2 * width) + tokens * width * vocab


def _layers(tokens: int, width: int, layers: int, mlp: int, kv: int | None = None, glu: bool = False,
            attn_tokens: int | None = None) -> float:
    """MACs of transformer layers: q/o and k/v projections (``kv`` wide: grouped-query attention),
    attention over ``attn_tokens`` (windows), a 2-matrix MLP or a 3-matrix gated one (``glu``)."""
    per_token = 2 * width * width + 2 * width * (kv or width) + (3 if glu else 2) * width * mlp
    return layers * tokens * (per_token + 2 * (attn_tokens or tokens) * width)


def estimate(vlm: str, text_tokens: int = 25) -> dict:
    """Multiply-accumulates per sample of the real models' training step, from their sizes. The
    frozen parts after PIN need only input gradients in the backward pass (about as many MACs as
    their forward); the encoder before PIN has no backward."""
    t = text_tokens
    if vlm == "llava":  # CLIP ViT-L/14 @336 (577 tokens); 2-layer projector; Vicuna-7B (+ template ~10 tokens)
        vision = _layers(577, 1024, 24, 4096)
        fused = 576 * (1024 * 4096 + 4096 * 4096) + _layers(576 + t + 10, 4096, 32, 11008, glu=True) \
            + (576 + t + 10) * 4096 * 32064
        return {"vision": vision, "rest": 2 * fused, "vision_share": vision / (vision + 2 * fused)}
    if vlm == "smolvlm":  # SigLIP so400m @384 (729); pixel shuffle 3 -> 81 tokens; SmolLM2-1.7B
        vision = _layers(729, 1152, 27, 4304)
        n = 81 + 3 + t + 8
        fused = 81 * 1152 * 9 * 2048 + _layers(n, 2048, 24, 8192, glu=True) + n * 2048 * 49280
        return {"vision": vision, "rest": 2 * fused, "vision_share": vision / (vision + 2 * fused)}
    if vlm == "qwen2_5_vl":  # ViT 32 x 1280 @224 (256 patches, 64-patch windows, 4 full layers); Qwen2.5-3B
        vision = _layers(256, 1280, 28, 3420, glu=True, attn_tokens=64) + _layers(256, 1280, 4, 3420, glu=True)
        n = 64 + 2 + t + 25  # + the default system prompt and ChatML markers
        fused = 64 * (5120 * 5120 + 5120 * 2048) + _layers(n, 2048, 36, 11008, kv=256, glu=True) + n * 2048 * 151936
        return {"vision": vision, "rest": 2 * fused, "vision_share": vision / (vision + 2 * fused)}
    if vlm == "paligemma":  # SigLIP so400m @224 (256); linear projector; Gemma 2 2B (256k vocabulary)
        vision = _layers(256, 1152, 27, 4304)
        n = 256 + 2 + t
        fused = 256 * 1152 * 2304 + _layers(n, 2304, 26, 9216, kv=1024, glu=True) + n * 2304 * 256000
        return {"vision": vision, "rest": 2 * fused, "vision_share": vision / (vision + 2 * fused)}
    if vlm == "openflamingo":  # ViT-L/14 @224; perceiver 6 x 1024; 24 x (xattn + MPT-1B layer)
        vision = _vit_macs(257, 1024, 24, 4096)
        perceiver = 6 * (64 * 1024 * 512 * 2 + 320 * 1024 * 1024 + 64 * 1024 * 4096 * 2)
        xattn = 24 * (text_tokens * 2048 * 512 * 2 + 64 * 1024 * 1024 + text_tokens * 2048 * 8192 * 2)
        fused = perceiver + xattn + _decoder_macs(text_tokens, 2048, 24, 50280)
    else:  # EVA ViT-g/14 @224 (39 of 40 layers); Q-Former (12 x 768, 32 queries); OPT-2.7B
        vision = _vit_macs(257, 1408, 39, 6144)
        qformer = 12 * (12 * 32 * 768 ** 2 + 257 * 1408 * 768) + 6 * 257 * 1408 * 768
        fused = qformer + _decoder_macs(32 + text_tokens, 2560, 32, 50272)
    return {"vision": vision, "rest": 2 * fused, "vision_share": vision / (vision + 2 * fused)}


def _tiny(vlm: str, root: Path, canvas: int) -> str:
    from synthgen.demo.tiny_vlms import BUILDERS

    if vlm == "qwen2_5_vl":  # (its canvas is the adapter's option; the tiny processor is hub-like)
        return str(BUILDERS[vlm](root / f"tiny-{vlm}"))
    if vlm in BUILDERS:
        return str(BUILDERS[vlm](root / f"tiny-{vlm}", image_size=canvas))
    if vlm == "openflamingo":
        from synthgen.demo.tiny_flamingo import build_tiny_openflamingo

        return str(build_tiny_openflamingo(root / "tiny-of", image_size=canvas, gate=0.5, lm_steps=0))
    from synthgen.demo.tiny_blip2 import build_tiny_blip2

    return str(build_tiny_blip2(root / "tiny-blip2", image_size=canvas, lm_steps=0))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    vlms = ["openflamingo", "blip2", "llava", "smolvlm", "qwen2_5_vl", "paligemma"]
    ap.add_argument("--vlm", nargs="+", default=vlms, choices=vlms)
    ap.add_argument("--model", default=None, help="model of the (single) --vlm; default: a tiny one")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10, help="timed repetitions (median)")
    ap.add_argument("--canvas", type=int, default=224)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--scenes", type=int, default=512, help="scenes of the input-pipeline rate (0: skip)")
    args = ap.parse_args(argv)
    if args.model and len(args.vlm) != 1:
        ap.error("--model needs exactly one --vlm")
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from synthgen.pin.models.adapters import load_adapter

    print(f"batch {args.batch}, median of {args.steps}, {args.threads} thread(s), torch {torch.__version__}")
    print(f"{'vlm':<14}{'tokens':>7}{'PIN':>10}{'step ms':>10}{'vision ms':>11}{'pin ms':>9}{'rest ms':>10}"
          f"{'vision share':>14}{'input samples/s':>17}")
    with tempfile.TemporaryDirectory() as tmp:
        for vlm in args.vlm:
            model = args.model or _tiny(vlm, Path(tmp), args.canvas)
            adapter = load_adapter(vlm, model, **({"canvas": args.canvas} if vlm == "qwen2_5_vl" else {}))
            r = measure(adapter, args.batch, args.steps)
            rate = input_rate(adapter, Path(tmp), args.scenes, args.batch) if args.scenes else float("nan")
            shape = f"{adapter.num_positions}x{adapter.vision_width}"
            print(f"{vlm:<14}{r['tokens']:>7}{shape:>10}{r['step_ms']:>10.1f}{r['vision_ms']:>11.1f}{r['pin_ms']:>9.1f}"
                  f"{r['rest_ms']:>10.1f}{100 * r['vision_share']:>13.1f}%{rate:>17.0f}")
    print("\nestimate for the real models (MACs per sample, forward + input-gradient backward; PIN itself is "
          "~0.3 GMAC per step, input-agnostic):")
    for vlm, name in (("openflamingo", "OpenFlamingo-3B"), ("blip2", "BLIP-2 OPT-2.7B"),
                      ("llava", "LLaVA-1.5-7B"), ("smolvlm", "SmolVLM2-2.2B"), ("qwen2_5_vl", "Qwen2.5-VL-3B"),
                      ("paligemma", "PaliGemma2-3B-224")):
        e = estimate(vlm)
        print(f"{name:<17} vision {e['vision'] / 1e9:6.1f} GMAC, rest {e['rest'] / 1e9:6.1f} GMAC: "
              f"a cached vision feature saves {100 * e['vision_share']:.0f}% of the step")


if __name__ == "__main__":
    main()
