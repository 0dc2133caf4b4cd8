"""What one PIN training step keeps in memory at the real size of each VLM family, before and after
issue 18 (logits at the labelled positions only, the frozen VLM in its compute dtype, gradient
checkpointing), and the micro-batch that fits a 24 GB and an 80 GB GPU.

For every family (blip2, openflamingo, llava, smolvlm, qwen2_5_vl, paligemma) the model is built
from its REAL config (``benchmarks/real_configs.py``: the hub ``config.json`` values of synthgen's
default checkpoint, each named there) with random weights at real width, but with ``--layers``
decoder layers of its language model, and loaded through synthgen's own adapter
(``load_adapter(family, folder, device=, dtype=, attn_implementation=)``, exactly the code real
weights go through). How the folder is made: synthgen's tiny builder (:mod:`synthgen.demo`) writes a
model + processor + tokenizer folder with the REAL image geometry (image size, patch, pixel-shuffle
factor, query tokens), so prompts carry the real number of image tokens; its ``config.json`` is
then replaced by the real config (the tiny tokenizer's special-token ids kept: they are below every
real vocabulary size) and a model of that config, instantiated with random weights straight in
the weights' dtype, is saved over the tiny weights. OpenFlamingo's folder (open_clip ViT-L/14,
MPT-1B in MosaicML's layout, ``checkpoint.pt``) is written the same way, its tokenizer padded to
GPT-NeoX's 50277 tokens so that the embeddings are resized to OpenFlamingo's real 50280.

Then a PIN (``PIN(adapter.num_positions, adapter.vision_width)``) is attached and training steps
run: ``adapter.loss(batch)`` under ``torch.autocast(device, AUTOCAST[precision])`` and backward,
the frozen weights in ``WEIGHTS[precision]`` (:mod:`synthgen.pin.runtime`). ``--before`` runs the
loss path before this issue with its defaults: the model's own full-logits loss
(``adapter.model(**adapter.inputs(...)).loss``; BLIP-2 / OpenFlamingo
``adapter._forward(..., labels=).loss``) with fp32 weights under fp16 autocast (``fp16-mixed``).

``--method NAME`` (default ``pin``; the names of ``train-pin --method``, ``synthgen.pin.models.METHODS``)
trains the paper's Table 1 method instead of PIN, put in as training puts it
(:func:`synthgen.pin.models.methods.make_method` with the paper's options, ``attach``; taken out
after): ``coop`` (16 tokens before the text), ``vpt-fusion`` / ``vpt-vision`` (100 tokens appended
to the features the fusion network reads / to the vision encoder's input), ``lora-vision`` (LoRA r 16
in the vision encoder's attention, fp32) and ``full`` (every weight, turned to fp32 by the method, as
in ``train-pin``: the frozen weights load in ``WEIGHTS[precision]`` and only ``full`` changes them).
The gradients of the trained tensors are zeroed before each step.

Measured, per family and setting:

- **kept for backward**: the bytes of the tensors autograd saves during the forward
  (:func:`synthgen.pin.training.memory.saved_for_backward`, the frozen weights excepted), at two
  depths of the language model (``--layers`` - 1 and ``--layers``) and two micro-batch sizes
  (1 and ``--micro-batch``, at least 2). Bytes are linear in both, so four points give, exactly:
  per layer and sample, per layer whatever the batch (with fp32 weights under fp16 autocast: the
  fp16 copies of the weights that the matmuls keep), outside the layers per sample (logits, loss,
  embeddings, projector / Q-Former / perceiver, ...) and outside the layers whatever the batch.
  They are extrapolated to the real depth: **per sample at full depth** and **of which outside
  the layers**. The vision tower runs with ``--vision-layers`` layers (default 1 with PIN, 2 with
  the other methods; all with ``--layers 0``). With PIN it runs before PIN with frozen weights and
  so keeps nothing for backward, which every measurement verifies (saved-tensor hooks around the
  tower count what it keeps: 0 bytes in every family) - its depth changes the time and the weights,
  not what is kept. With a method trained inside the tower or before it (``vpt-vision``,
  ``lora-vision``, ``full``) the tower keeps activations in each of its blocks: the same hooks count
  apart what is kept while each of its repeated blocks runs (:func:`tower_blocks`: the tower's
  ``ModuleList`` with the most parameters, e.g. open_clip's ``transformer.resblocks``), per sample
  and whatever the batch (from the 1- and m-sample points, the mean of both language-model depths);
  the blocks that did not run (real vision depth - ``--vision-layers``) are added to the full-depth
  figures at the rate of the last block that ran. (The first block is not typical: under LoRA its
  input needs no gradient and it keeps less; hence 2 vision layers by default for the methods, and
  a run at 3 gives the same full-depth figures.) What the tower keeps outside its blocks (patch
  embedding, appended VPT tokens, final norm) and in the blocks that ran is in **outside the
  layers**. Trained parameters inside the blocks (LoRA's) are scaled to the real vision depth;
- the **step time** (median of ``--steps`` steps of ``--batch`` samples in micro-batches of
  ``--micro-batch``), the **peak RSS** on the CPU (the process's high-water mark, reset before
  each setting where Linux allows, else ``resource.getrusage``), ``torch.cuda.max_memory_allocated``
  on a GPU and there also the **largest micro-batch that fits** (binary search over powers of two
  up to 64, catching ``torch.cuda.OutOfMemoryError``);
- from the full-depth figures, the **micro-batch that fits** a 24 GB and an 80 GB GPU:
  (GiB - the full model's weights in the setting's dtype (parameters counted from the real config
  on the meta device; ``full``: fp32) - the training state (per trained parameter an fp32 gradient
  and Adam's two fp32 moments, and its fp32 copy unless it is a VLM weight: PIN, tokens, LoRA) -
  2 GiB overhead - what is kept whatever the batch) / per sample, rounded down to a power of two,
  at most 64; and whether a global batch of 64 trains with micro-batches (it does when
  micro-batch 1 fits). Weights + training state is ``memory_full`` in the JSON (``weights_full``,
  ``train_state_full``); for ``full`` it is 16 bytes a parameter, the dominant term.

``--table`` runs every family after the issue (``--precision``), after with
``--grad-checkpointing`` and ``--before``, each family in a process of its own (its peak RSS is its
own and its memory is returned), and prints a Markdown table for the README and the details::

    .venv/bin/python benchmarks/real_size.py --table              # CPU: layers 1 and 2, batch 2 (~17 min on 2 busy cores)
    .venv/bin/python benchmarks/real_size.py --vlm paligemma --before --json out.json
    .venv/bin/python benchmarks/real_size.py --vlm openflamingo --method lora-vision --json lora.json

``--methods-table`` runs every method that fits each ``--vlm`` family (``vpt-fusion`` needs a
Q-Former or perceiver, ``vpt-vision`` a growable vision sequence), each in a process of its own, in
the setting its flags name, and prints a table per family (trained parameters, kept per sample and
whatever the batch at full depth, weights + gradients + Adam, the step time at the measured depth,
the micro-batch that fits)::

    .venv/bin/python benchmarks/real_size.py --vlm openflamingo blip2 --methods-table --json methods.json

On a GPU, at full depth (all decoder and vision layers: the measured bytes are then the real
ones, the extrapolation is exact by construction, and the step time and the largest micro-batch
are those of the real model, random weights)::

    python benchmarks/real_size.py --table --device cuda --layers 0 --batch 8 --json real.json

The full-size folders are written under ``--work-dir`` (default a temporary folder; LLaVA-1.5-7B
takes 13.5 GB of disk in bf16) and removed after each family.

On the CPU, the matrix products and CPU flash attention of bf16 / fp16 tensors are computed in fp32
and rounded back to the tensors' dtype (``--exact-cpu-kernels`` turns that off): this CPU has no
bf16 instructions and torch's fallback kernels run 20-100x slower than fp32, far too slow at real
width. It is a :class:`~torch.utils._python_dispatch.TorchDispatchMode` under autograd: the graph,
the autocast casts and every tensor saved for backward (shape, dtype, storage) are those of the
native kernels - only the arithmetic inside a product is fp32, as a GPU's tensor cores do it.

Caveats: the text is the tiny tokenizer's (``In the image is a red teddy bear located at`` and the
box ``[14,28,56,70]``), a few tokens off the real tokenizers' count; the image tokens are exact. The
step times on the CPU are those of reduced depths and of the fp32 kernels above.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
GiB, MiB = 2 ** 30, 2 ** 20
GPUS_GIB = (24, 80)
OVERHEAD_GIB = 2
MAX_MICRO = 64
GLOBAL_BATCH = 64
PROMPT, ANSWER = "red teddy bear", "[14,28,56,70]"
MEAN_CLIP, STD_CLIP = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def _real():
    """``benchmarks/real_configs.py`` (beside this file)."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    import real_configs

    return real_configs


# --- CPU kernels ----------------------------------------------------------------------------------

class Fp32Products:
    """A dispatch mode (under autograd) that computes bf16/fp16 matrix products and CPU flash
    attention in fp32 and rounds the results back to the inputs' dtype; every other op runs as is.
    Built lazily: ``torch.utils._python_dispatch`` is imported only when it is used."""

    def __new__(cls):
        from torch.utils._python_dispatch import TorchDispatchMode

        aten = torch.ops.aten
        products = {aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default,
                    aten.convolution.default}
        attention = {aten._scaled_dot_product_flash_attention_for_cpu.default: (1,),  # logsumexp stays fp32
                     aten._scaled_dot_product_flash_attention_for_cpu_backward.default: ()}
        halves = (torch.bfloat16, torch.float16)

        def up(x):
            return x.float() if isinstance(x, torch.Tensor) and x.dtype in halves else x

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                if func in products or func in attention:
                    half = next((a.dtype for a in args if isinstance(a, torch.Tensor) and a.dtype in halves), None)
                    if half is not None and all(a.device.type == "cpu" for a in args if isinstance(a, torch.Tensor)):
                        out = func(*[up(a) for a in args], **{k: up(v) for k, v in kwargs.items()})
                        if isinstance(out, torch.Tensor):
                            return out.to(half)
                        keep = attention.get(func, ())
                        return type(out)(o if i in keep else o.to(half) for i, o in enumerate(out))
                return func(*args, **kwargs)

        return Mode()


# --- real-size folders ----------------------------------------------------------------------------

def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _text_config(cfg: dict) -> dict:
    return cfg.get("text_config", cfg)


def _instantiate(family: str, config, dtype: torch.dtype | None = None):
    """The model of ``config`` with random weights (in ``dtype``), on the current default device."""
    import transformers

    kw = {} if dtype is None else {"dtype": dtype}
    if family == "blip2":
        return transformers.Blip2ForConditionalGeneration._from_config(config, **kw)
    return transformers.AutoModelForImageTextToText.from_config(config, **kw)


def real_hf_config(family: str, tiny: dict, depth: int, vision_depth: int | None) -> dict:
    """The tiny folder's ``config.json`` with the real values; ``depth`` language-model layers and
    ``vision_depth`` vision layers (None: the real ones)."""
    rc = _real()
    entry = rc.REAL[family]
    cfg = _merge(tiny, entry["config"])
    rc.put(cfg, entry["text_layers"], depth)
    if vision_depth is not None:
        rc.put(cfg, entry["vision_layers"], vision_depth)
    _text_config(cfg).pop("layer_types", None)  # (rebuilt for the depth by the config class)
    cfg.pop("dtype", None)
    return cfg


def build_hf(family: str, out: Path, depth: int, vision_depth: int, device: str, dtype: torch.dtype) -> None:
    from transformers import AutoConfig

    from synthgen.demo.tiny_blip2 import build_tiny_blip2
    from synthgen.demo.tiny_vlms import BUILDERS

    geometry = _real().REAL[family].get("geometry", {})
    if family == "blip2":
        build_tiny_blip2(out, lm_steps=0, **geometry)
    else:
        BUILDERS[family](out, **geometry)
    tiny = json.loads((out / "config.json").read_text())
    for f in out.glob("model*.safetensors*"):
        f.unlink()
    (out / "config.json").write_text(json.dumps(real_hf_config(family, tiny, depth, vision_depth), indent=2))
    config = AutoConfig.from_pretrained(str(out))
    torch.manual_seed(0)
    with torch.device(device):
        model = _instantiate(family, config, dtype)
    model.eval().save_pretrained(str(out))
    del model


def _padded_tokenizer(length: int):
    """synthgen's tiny GPT-NeoX-style tokenizer with vocabulary entries added (never produced: no
    merge makes them) up to ``length`` tokens, the real tokenizer's length."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from synthgen.demo.tiny_flamingo import build_lm_tokenizer

    tok = build_lm_tokenizer()
    data = json.loads(tok.backend_tokenizer.to_str())
    vocab = data["model"]["vocab"]
    taken = set(vocab.values()) | {t["id"] for t in data.get("added_tokens", [])}
    i, n = 0, len(taken)
    while n < length:
        while i in taken:
            i += 1
        vocab[f"<|unused{i}|>"] = i
        taken.add(i)
        n += 1
    fast = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(data)), bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    if len(fast) != length:
        raise RuntimeError(f"padded tokenizer has {len(fast)} tokens, not {length}")
    return fast


def _open_clip_cfg(real: dict, vision_depth: int | None) -> dict:
    vc = dict(real["vision_cfg"])
    if vision_depth is not None:
        vc["layers"] = vision_depth
    return {"embed_dim": real["embed_dim"], "vision_cfg": vc,
            "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 64, "heads": 1, "layers": 1}}


def build_openflamingo(out: Path, depth: int, vision_depth: int, device: str, dtype: torch.dtype) -> None:
    """An OpenFlamingo-3B folder (layout of :mod:`synthgen.demo.tiny_flamingo`) at real widths."""
    import open_clip
    from safetensors.torch import save_file

    from synthgen.pin.models.flamingo.loading import build_flamingo
    from synthgen.pin.models.flamingo.model import Architecture
    from synthgen.pin.models.flamingo.mpt import build_mpt, hf_to_mosaic_key, mpt_config
    from synthgen.pin.models.flamingo.variants import CHECKPOINT_FILE, MANIFEST_FILE, FlamingoParts

    real = _real().REAL["openflamingo"]["config"]
    vision, lm_dir = out / "vision", out / "lm"
    vision.mkdir(parents=True)
    lm_dir.mkdir()
    model_cfg = _open_clip_cfg(real, vision_depth)
    (vision / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": model_cfg, "preprocess_cfg": {"mean": MEAN_CLIP, "std": STD_CLIP}}, indent=2))
    torch.manual_seed(0)
    clip = open_clip.CLIP(**model_cfg).to(dtype)
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(vision / "open_clip_model.safetensors"))
    del clip
    _padded_tokenizer(real["tokenizer_length"]).save_pretrained(str(lm_dir))
    raw = {**real["lm"], "n_layers": depth}
    config, qk_ln = mpt_config(raw)
    lm = build_mpt(config, qk_ln, device=device).to(dtype)
    torch.save({hf_to_mosaic_key(k): v.contiguous().cpu() for k, v in lm.state_dict().items() if k != "lm_head.weight"},
               lm_dir / "pytorch_model.bin")
    (lm_dir / "config.json").write_text(json.dumps(raw, indent=2))
    del lm
    parts = FlamingoParts(model_id=str(out), checkpoint=str(out / CHECKPOINT_FILE), lm=str(lm_dir),
                          tokenizer=str(lm_dir), vision=f"local-dir:{vision}", vision_pretrained=None,
                          cross_attn_every=real["cross_attn_every"], vision_tokens="ln_post")
    arch = Architecture(perceiver_depth=real["perceiver_depth"], perceiver_heads=real["heads"],
                        num_latents=real["num_latents"], xattn_heads=real["heads"])
    model, _, _, _ = build_flamingo(parts, dtype, arch=arch)
    with torch.no_grad():  # (open gates: OpenFlamingo's trained gates are not 0, where images are ignored)
        for name, p in model.lang_encoder.gated_cross_attn_layers.named_parameters():
            if name.endswith("_gate"):
                p.fill_(0.5)
    emb = model.lang_encoder.get_input_embeddings()
    emb_key = next(f"lang_encoder.{n}.weight" for n, m in model.lang_encoder.named_modules() if m is emb)
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()
                if k.startswith("perceiver.") or ".gated_cross_attn_layer." in k or k == emb_key},
               out / CHECKPOINT_FILE)
    (out / MANIFEST_FILE).write_text(json.dumps({"lm": "lm", "vision": "local-dir:vision",
                                                 "cross_attn_every": real["cross_attn_every"]}, indent=2) + "\n")
    del model


_XATTN_LAYER = re.compile(r"\.(\d+)\.gated_cross_attn_layer\.|gated_cross_attn_layers\.(\d+)\.")


def shallower(family: str, src: Path, dst: Path, depth: int) -> None:
    """``src`` with ``depth`` language-model layers: the weights linked (the layers past ``depth``
    are left unread), the config (and OpenFlamingo's ``checkpoint.pt``) cut to ``depth``."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.name == "config.json":
            cfg = json.loads(f.read_text())
            text = _text_config(cfg)
            text["num_hidden_layers"] = depth
            if isinstance(text.get("layer_types"), list):
                text["layer_types"] = text["layer_types"][:depth]
            (dst / f.name).write_text(json.dumps(cfg, indent=2))
        elif f.name == "lm":  # OpenFlamingo's language model
            (dst / "lm").mkdir()
            for g in f.iterdir():
                if g.name == "config.json":
                    raw = json.loads(g.read_text())
                    raw["n_layers"] = depth
                    (dst / "lm" / g.name).write_text(json.dumps(raw, indent=2))
                else:
                    _link(g, dst / "lm" / g.name)
        elif f.name == "checkpoint.pt":
            sd = torch.load(f, map_location="cpu", weights_only=True)
            keep = {}
            for k, v in sd.items():
                m = _XATTN_LAYER.search(k)
                if m is None or int(m.group(1) or m.group(2)) < depth:
                    keep[k] = v
            torch.save(keep, dst / f.name)
        else:
            _link(f, dst / f.name)


def _link(src: Path, dst: Path) -> None:
    try:
        dst.symlink_to(src.resolve(), target_is_directory=src.is_dir())
    except OSError:
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)


def build(family: str, out: Path, depth: int, vision_depth: int, device: str, dtype: torch.dtype) -> None:
    if family == "openflamingo":
        build_openflamingo(out, depth, vision_depth, device, dtype)
    else:
        build_hf(family, out, depth, vision_depth, device, dtype)


def full_depth(family: str) -> tuple[int, int]:
    """``(language-model layers, vision layers)`` of the real model."""
    rc = _real()
    e = rc.REAL[family]
    return int(rc.get(e["config"], e["text_layers"])), int(rc.get(e["config"], e["vision_layers"]))


def count_parameters(family: str, folder: Path) -> int:
    """Parameters of the real model at full depth (all layers), counted on the meta device from the
    real config (shared tensors once: tied embeddings)."""
    rc = _real()
    if family == "openflamingo":
        import open_clip

        from synthgen.pin.models.flamingo.model import Architecture, Flamingo
        from synthgen.pin.models.flamingo.mpt import build_mpt, mpt_config

        real = rc.REAL[family]["config"]
        config, qk_ln = mpt_config({**real["lm"], "vocab_size": real["tokenizer_length"] + 3})  # (resized)
        with torch.device("meta"):
            visual = open_clip.CLIP(**_open_clip_cfg(real, None)).visual
            lm = build_mpt(config, qk_ln, device="meta")
            model = Flamingo(visual, lm, media_token_id=0, eoc_token_id=1, vis_dim=int(real["vision_cfg"]["width"]),
                             cross_attn_every=real["cross_attn_every"],
                             arch=Architecture(perceiver_depth=real["perceiver_depth"], perceiver_heads=real["heads"],
                                               num_latents=real["num_latents"], xattn_heads=real["heads"]))
    else:
        from transformers import AutoConfig

        tiny = json.loads((folder / "config.json").read_text())
        cfg = real_hf_config(family, tiny, full_depth(family)[0], None)
        config = AutoConfig.for_model(**cfg)
        with torch.device("meta"):
            model = _instantiate(family, config)
    return sum(p.numel() for p in model.parameters())


# --- measuring ------------------------------------------------------------------------------------

def make_batch(adapter, n: int) -> dict:
    seq = adapter.codec.encode(PROMPT, ANSWER)
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (n, 3, adapter.input_size, adapter.input_size), dtype=torch.uint8, generator=g)
    return {**adapter.codec.collate([seq] * n), "pixels": pixels}


def loss_fn(adapter, before: bool):
    """The training loss: the adapter's (after the issue) or the model's own full-logits one (before)."""
    if not before:
        return adapter.loss
    from synthgen.pin.models.adapters.base import PixelsTextAdapter

    def full_logits_loss(batch):
        if isinstance(adapter, PixelsTextAdapter):
            return adapter._forward(batch["pixels"], batch["input_ids"], batch["attention_mask"],
                                    labels=batch["labels"].to(adapter.device)).loss
        return adapter.model(**adapter.inputs(batch["pixels"], batch["input_ids"], batch["attention_mask"],
                                              batch["labels"])).loss
    return full_logits_loss


def _tower_name(adapter) -> str:
    return "vision_encoder" if adapter.name == "openflamingo" else adapter.frozen_towers()[0]


def _tower_named_modules(adapter) -> list[tuple[str, torch.nn.Module]]:
    name = _tower_name(adapter)
    fusion = getattr(adapter, "fusion_module", "")
    out = []
    for sub, module in adapter.model.get_submodule(name).named_modules():
        full = f"{name}.{sub}" if sub else name
        if fusion and (full == fusion or full.startswith(fusion + ".") or fusion.startswith(full + ".")):
            continue
        out.append((full, module))
    return out


def tower_modules(adapter) -> list[torch.nn.Module]:
    """Every module of the frozen vision tower (before PIN), but the fusion module where it sits
    inside the tower (Qwen2.5-VL's merger) and the modules that hold it: what runs before PIN.
    (All of them, not only the tower's root: OpenFlamingo calls its ViT's blocks one by one.)"""
    return [module for _, module in _tower_named_modules(adapter)]


def tower_blocks(adapter) -> tuple[str, torch.nn.ModuleList]:
    """``(name in adapter.model, blocks)``: the vision tower's repeated blocks, the ``ModuleList``
    of the tower with the most parameters (open_clip's ``transformer.resblocks``, transformers'
    ``encoder.layers``): the ``--vision-layers`` that run of its real depth."""
    lists = [(n, m) for n, m in _tower_named_modules(adapter) if isinstance(m, torch.nn.ModuleList)]
    if not lists:
        raise RuntimeError(f"{adapter.name}: no ModuleList of blocks in the vision tower")
    return max(lists, key=lambda nm: sum(p.numel() for p in nm[1].parameters()))


class TowerProbe:
    """What the vision tower keeps for backward: saved-tensor hooks pushed while its modules run
    (innermost hooks win, so these see exactly the tower's saved tensors); ``per_block`` the part
    kept while each of its repeated blocks (:func:`tower_blocks`) runs, the part that grows with the
    tower's depth when a method trains inside it or before it."""

    def __init__(self, adapter, exclude) -> None:
        self.skip = {p.untyped_storage().data_ptr() for p in exclude}
        self.bytes, self.tensors = 0, 0
        self._seen: set[int] = set()
        self._open: list = []
        self._handles = []
        blocks = {id(b): i for i, b in enumerate(tower_blocks(adapter)[1])}
        self.per_block = [0] * len(blocks)
        self._blocks_open: list[int] = []
        for m in tower_modules(adapter):
            block = blocks.get(id(m))
            self._handles.append(m.register_forward_pre_hook(partial(self._enter, block=block)))
            self._handles.append(m.register_forward_hook(partial(self._exit, block=block), prepend=True))

    def _pack(self, t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in self.skip:
            self.tensors += 1
            if ptr not in self._seen:
                self._seen.add(ptr)
                self.bytes += t.untyped_storage().nbytes()
                if self._blocks_open:
                    self.per_block[self._blocks_open[-1]] += t.untyped_storage().nbytes()
        return t

    def _enter(self, module, args, block: int | None = None):
        ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        ctx.__enter__()
        self._open.append(ctx)
        if block is not None:
            self._blocks_open.append(block)

    def _exit(self, module, args, output, block: int | None = None):
        if block is not None and self._blocks_open:
            self._blocks_open.pop()
        if self._open:
            self._open.pop().__exit__(None, None, None)

    def close(self) -> None:
        while self._open:
            self._open.pop().__exit__(None, None, None)
        for h in self._handles:
            h.remove()


class Runner:
    """Steps of one loaded adapter: ``fn`` the loss, under autocast (and the CPU's fp32 products);
    ``params`` the trained tensors (PIN's, or the method's), their gradients zeroed before each step."""

    def __init__(self, adapter, params: list, precision: str, before: bool, exact_cpu: bool) -> None:
        from synthgen.pin.runtime import AUTOCAST

        self.adapter, self.params, self.fn = adapter, list(params), loss_fn(adapter, before)
        self.device = adapter.device
        self.amp_dtype, self.amp = AUTOCAST[precision], precision != "fp32"
        self.cpu_products = self.device.type == "cpu" and not exact_cpu
        # (parameters are weights, counted apart: the VLM's, and a method's own tokens)
        vlm = [p for _, p in adapter.vlm_parameters()]
        ids = {id(p) for p in vlm}
        self.exclude = vlm + [p for p in self.params if id(p) not in ids]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @contextlib.contextmanager
    def context(self):
        with contextlib.ExitStack() as stack:
            if self.cpu_products:
                stack.enter_context(Fp32Products())
            stack.enter_context(torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp))
            yield

    def kept(self, n: int) -> dict:
        """Forward + backward of ``n`` samples: what autograd kept, and what the vision tower kept."""
        from synthgen.pin.training.memory import saved_for_backward

        batch = make_batch(self.adapter, n)
        self.zero_grad()
        probe = TowerProbe(self.adapter, self.exclude)
        try:
            with self.context():
                loss, saved = saved_for_backward(lambda: self.fn(batch), exclude=self.exclude)
            with self.context():
                loss.backward()
        finally:
            probe.close()
        largest = [[list(s), str(d).removeprefix("torch.")] for s, d in saved.largest(3)]
        # (the probe's hooks are the innermost while the tower runs: what it counts, the outer hooks
        # do not see; with PIN it is 0 in every family, the tower being frozen and before PIN)
        out = {"samples": n, "bytes": saved.bytes + probe.bytes, "tensors": len(saved.shapes) + probe.tensors,
               "largest": largest, "vision_bytes": probe.bytes, "vision_tensors": probe.tensors,
               "vision_block_bytes": probe.per_block, "loss": float(loss.detach())}
        del loss, saved
        return out

    def step(self, batch: dict, micro: int) -> float:
        """One training step (micro-batches weighted by their loss tokens); its loss."""
        from synthgen.pin.models.adapters.base import loss_tokens
        from synthgen.pin.training.loop import micro_batches

        self.zero_grad()
        pieces = micro_batches(batch, micro)
        total = sum(loss_tokens(p["labels"]) for p in pieces) or 1
        value = 0.0
        for piece in pieces:
            with self.context():
                loss = self.fn(piece) * (loss_tokens(piece["labels"]) / total)
                loss.backward()
            value += float(loss.detach())
        return value

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def timed(self, batch_size: int, micro: int, steps: int) -> list[float]:
        batch = make_batch(self.adapter, batch_size)
        times = []
        for _ in range(steps):
            self.sync()
            t = time.perf_counter()
            self.step(batch, micro)
            self.sync()
            times.append(time.perf_counter() - t)
        return times

    def largest_micro_batch(self) -> int:
        """The largest power of two up to 64 samples whose step fits the GPU (0: not even 1)."""
        def fits(k: int) -> bool:
            try:
                self.step(make_batch(self.adapter, 2 ** k), 2 ** k)
                return True
            except torch.cuda.OutOfMemoryError:
                return False
            finally:
                self.zero_grad()
                gc.collect()
                torch.cuda.empty_cache()

        lo, hi = -1, int(math.log2(MAX_MICRO))  # fits(lo) holds (lo = -1: nothing), answer in [lo, hi]
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if fits(mid):
                lo = mid
            else:
                hi = mid - 1
        return 0 if lo < 0 else 2 ** lo


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss(reset_worked: bool) -> int:
    if reset_worked:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


SETTINGS = {  # name -> (before, grad checkpointing)
    "after": (False, False),
    "after+ckpt": (False, True),
    "before": (True, False),
    "before+ckpt": (True, True),
}


def settings_of(args) -> list[str]:
    """The settings a run measures: ``--table`` after, after with checkpointing and before; else the
    one its flags name."""
    if args.table:
        return ["after", "after+ckpt", "before"]
    return [("before" if args.before else "after") + ("+ckpt" if args.grad_checkpointing else "")]


def _precision(name: str, args) -> str:
    return "fp16-mixed" if name.startswith("before") else args.precision


def attach_trained(adapter, method: str, device: torch.device):
    """Put what ``train-pin --method`` trains into ``adapter`` as training does
    (:mod:`synthgen.pin.training.train`): ``(trained tensors, their names, a function that takes it
    out again)``. PIN: ``PIN(num_positions, vision_width)`` + ``attach_pin``; a Table 1 method:
    ``make_method`` (the paper's options) + ``attach`` (``full`` turns every weight to fp32)."""
    torch.manual_seed(0)
    if method == "pin":
        from synthgen.pin.models.module import PIN

        pin = PIN(adapter.num_positions, adapter.vision_width).to(device)
        adapter.attach_pin(pin)
        named = dict(pin.named_parameters())
        return list(named.values()), list(named), adapter.detach_pin
    from synthgen.pin.models.methods import make_method

    trained = make_method(method, adapter)
    trained.attach(adapter)
    trained.train()
    adapter.assert_frozen(trained.owned())
    named = trained.trainable()
    return list(named.values()), list(named), trained.detach


def default_vision_layers(method: str) -> int:
    """Vision layers run below the real depth: 1 for PIN (its tower keeps nothing); 2 for the other
    methods, so that the last block's rate, used for the blocks not run, is not the first block's
    (whose input needs no gradient under LoRA: it keeps less)."""
    return 1 if method == "pin" else 2


def run_family(family: str, args, say) -> dict:
    """Build, load and measure ``family`` in every setting; the results (see :func:`derive`)."""
    from synthgen.pin.models.adapters import load_adapter
    from synthgen.pin.runtime import WEIGHTS

    rc = _real()
    entry = rc.REAL[family]
    device = torch.device(args.device)
    real_depth, real_vision = full_depth(family)
    hi = real_depth if args.layers == 0 else max(args.layers, 2)
    lo = hi - 1
    vision_depth = args.vision_layers or (real_vision if args.layers == 0 else default_vision_layers(args.method))
    names = settings_of(args)
    micro = args.micro_batch or args.batch
    m = max(2, micro)
    work = Path(tempfile.mkdtemp(prefix=f"real-size-{family}-", dir=args.work_dir))
    result: dict = {"family": family, "model": entry["model"], "method": args.method, "depth": real_depth,
                    "vision_depth": real_vision, "measured_depths": [lo, hi], "vision_layers_run": vision_depth,
                    "settings": {}}
    t0 = time.perf_counter()
    try:
        folder = {hi: work / f"L{hi}"}
        build(family, folder[hi], hi, vision_depth, str(device), WEIGHTS[args.precision])
        folder[lo] = work / f"L{lo}"
        shallower(family, folder[hi], folder[lo], lo)
        result["params"] = count_parameters(family, folder[hi])
        result["build_s"] = time.perf_counter() - t0
        say(f"{family}: built {entry['model']} at {hi} of {real_depth} layers (vision {vision_depth} of "
            f"{real_vision}), {result['params'] / 1e9:.2f}B parameters at full depth, {result['build_s']:.0f}s")
        groups: dict[torch.dtype, list[str]] = {}
        for name in names:
            groups.setdefault(WEIGHTS[_precision(name, args)], []).append(name)
        for name in names:
            result["settings"][name] = {"precision": _precision(name, args), "before": SETTINGS[name][0],
                                        "grad_checkpointing": SETTINGS[name][1], "points": {}}
        options = entry.get("options", {})
        for depth in (lo, hi):
            for dtype, group in groups.items():
                t = time.perf_counter()
                adapter = load_adapter(family, str(folder[depth]), device=device, dtype=dtype,
                                       attn_implementation=args.attn_implementation, **options)
                load_s = time.perf_counter() - t
                params, names_trained, take_out = attach_trained(adapter, args.method, device)
                if depth == hi:
                    result["trainable"] = trainable_count(adapter, params, names_trained, vision_depth, real_vision,
                                                          result["params"], args.method)
                result.setdefault("num_positions", adapter.num_positions)
                result.setdefault("vision_width", adapter.vision_width)
                probe_batch = make_batch(adapter, 1)
                result.setdefault("tokens", int(probe_batch["input_ids"].shape[1]))
                result.setdefault("loss_tokens", int((probe_batch["labels"][:, 1:] != -100).sum()))
                for name in sorted(group, key=lambda n: SETTINGS[n][1]):  # (checkpointing last: it stays on)
                    s = result["settings"][name]
                    if "error" in s:  # (out of GPU memory at the other depth)
                        continue
                    before, ckpt = SETTINGS[name]
                    if ckpt:
                        s["checkpointed_layers"] = adapter.enable_grad_checkpointing()
                    runner = Runner(adapter, params, s["precision"], before, args.exact_cpu_kernels)
                    reset = _reset_peak_rss() if device.type == "cpu" else False
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(device)
                    try:
                        point = measure(runner, depth == hi, m, micro, args, reset)
                    except torch.cuda.OutOfMemoryError:
                        s["error"] = f"out of GPU memory at {m} samples, {depth} layers"
                        say(f"{family} {name} L={depth}: {s['error']}")
                        del runner
                        gc.collect()
                        torch.cuda.empty_cache()
                        continue
                    point["load_s"] = load_s
                    s["points"][str(depth)] = point
                    say(f"{family} {name} L={depth}: kept {point['one']['bytes'] / MiB:.1f} MiB (1 sample), "
                        f"{point['many']['bytes'] / MiB:.1f} MiB ({m}); vision kept {point['many']['vision_bytes']} B"
                        + (f"; step {point['step_s']:.1f}s (batch {args.batch})" if "step_s" in point else "")
                        + (f"; peak RSS {point['peak_rss'] / GiB:.1f} GiB" if "peak_rss" in point else "")
                        + (f"; GPU peak {point['gpu_peak'] / GiB:.1f} GiB, micro-batch up to "
                           f"{point['largest_micro_batch']}" if "gpu_peak" in point else ""))
                    del runner
                take_out()
                del adapter, params, probe_batch
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        for s in result["settings"].values():
            if "error" not in s:
                s.update(derive(s, lo, hi, m, real_depth, result["params"],
                                (vision_depth, real_vision, result["trainable"]["full_depth"], args.method)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["wall_s"] = time.perf_counter() - t0
    result["process_peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return result


def measure(runner: Runner, timed: bool, m: int, micro: int, args, reset: bool) -> dict:
    """What is kept for 1 and ``m`` samples; at the deeper depth (``timed``) also the step time, the
    peak memory and, on a GPU, the largest micro-batch. On the CPU the ``m``-sample forward and
    backward is the first timed step when it is one (``m`` = micro-batch = batch): a step at this
    width takes seconds to minutes there, and the hooks that count saved tensors cost microseconds."""
    device = runner.device
    point = {"one": runner.kept(1)}
    runner.sync()
    t = time.perf_counter()
    point["many"] = runner.kept(m)
    runner.sync()
    many_s = time.perf_counter() - t
    if not timed:
        return point
    first = [many_s] if device.type == "cpu" and m == micro == args.batch else []
    times = first + runner.timed(args.batch, micro, max(0, args.steps - len(first)))
    point.update(step_s=statistics.median(times), step_times=times, batch=args.batch, micro=micro)
    if device.type == "cpu":
        point["peak_rss"] = _peak_rss(reset)
    else:
        point["gpu_peak"] = torch.cuda.max_memory_allocated(device)
        point["largest_micro_batch"] = runner.largest_micro_batch()
    return point


def trainable_count(adapter, params: list, names: list[str], vision_run: int, vision_real: int,
                    params_full: int, method: str) -> dict:
    """Trained parameters as run and at full depth: ``full`` trains every weight (the real model's
    count); the others' tensors inside the vision tower's blocks (LoRA's) scale with its depth."""
    measured = sum(p.numel() for p in params)
    block_name, blocks = tower_blocks(adapter)
    inside = {id(p) for p in blocks.parameters()}
    in_blocks = sum(p.numel() for p in params if id(p) in inside)
    full = params_full if method == "full" else measured + in_blocks * (vision_real - vision_run) // vision_run
    return {"measured": measured, "in_vision_blocks": in_blocks, "vision_blocks": block_name,
            "full_depth": full, "tensors": len(names)}


def training_state(method: str, params: int, trainable: int, precision: str) -> dict:
    """Bytes of the weights (the frozen ones in the precision's dtype; ``full`` turns them all to
    fp32) and of what training adds per trained parameter: its fp32 copy when it is not a VLM weight
    (PIN, tokens, LoRA), its fp32 gradient and Adam's two fp32 moments."""
    from synthgen.pin.runtime import WEIGHTS

    if method == "full":
        weights = params * 4
        extra = trainable * (4 + 8)
    else:
        weights = params * torch.empty((), dtype=WEIGHTS[precision]).element_size()
        extra = trainable * (4 + 4 + 8)
    return {"weights_full": weights, "train_state_full": extra, "memory_full": weights + extra}


def fit(free: float, per_sample: float) -> int:
    """The largest power-of-two micro-batch (at most 64) whose ``per_sample`` bytes fit in ``free``."""
    if per_sample <= 0:
        return MAX_MICRO if free > 0 else 0
    n = int(free // per_sample)
    if n < 1:
        return 0
    return min(MAX_MICRO, 2 ** int(math.log2(n)))


def derive(s: dict, lo: int, hi: int, m: int, depth: int, params: int, trained: tuple) -> dict:
    """Per-layer / outside-the-layers bytes, per sample and whatever the batch, from the four points
    (bytes are linear in depth and in samples), at the real ``depth``; the vision tower's blocks from
    the ``vision_run`` that ran to its real depth at the rate of the last block that ran (what it
    keeps, linear in the samples, at both depths alike: their mean; the first block keeps less when
    its input needs no gradient, LoRA's); the micro-batches that fit beside the weights and training
    state. ``trained``: ``(vision_run, vision_real, trained parameters at full depth, method)``."""
    vision_run, vision_real, trainable, method = trained
    vb = [(p["many"]["vision_block_bytes"][-1], p["one"]["vision_block_bytes"][-1]) for p in
          (s["points"][str(d)] for d in (lo, hi))]
    block_sample = statistics.mean((many - one) / (m - 1) for many, one in vb)
    block_fixed = statistics.mean(one - (many - one) / (m - 1) for many, one in vb)
    more_blocks = vision_real - vision_run
    b = {(d, k): s["points"][str(d)][k]["bytes"] for d in (lo, hi) for k in ("one", "many")}
    per_sample = {d: (b[d, "many"] - b[d, "one"]) / (m - 1) for d in (lo, hi)}
    fixed = {d: b[d, "one"] - per_sample[d] for d in (lo, hi)}
    layer_sample = (per_sample[hi] - per_sample[lo]) / (hi - lo)
    layer_fixed = (fixed[hi] - fixed[lo]) / (hi - lo)
    outside_sample = per_sample[lo] - lo * layer_sample
    outside_fixed = fixed[lo] - lo * layer_fixed
    full_sample = outside_sample + depth * layer_sample + more_blocks * block_sample
    full_fixed = outside_fixed + depth * layer_fixed + more_blocks * block_fixed
    memory = training_state(method, params, trainable, s["precision"])
    fits = {}
    for gib in GPUS_GIB:
        free = gib * GiB - memory["memory_full"] - OVERHEAD_GIB * GiB - full_fixed
        fits[str(gib)] = fit(free, full_sample)
    vision = max(p[k]["vision_bytes"] for p in s["points"].values() for k in ("one", "many"))
    return {"per_layer_per_sample": layer_sample, "per_layer_fixed": layer_fixed,
            "outside_per_sample": outside_sample, "outside_fixed": outside_fixed,
            "vision_block_per_sample": block_sample, "vision_block_fixed": block_fixed,
            "per_sample_full": full_sample, "fixed_full": full_fixed, **memory,
            "fits": fits, "batch64": {g: n >= 1 for g, n in fits.items()}, "vision_kept_max": vision}


# --- report ---------------------------------------------------------------------------------------

def _mib(x: float) -> str:
    return f"{x / MiB:,.0f}" if abs(x) >= 10 * MiB else f"{x / MiB:,.1f}"


def _fits(s: dict) -> str:
    return " / ".join(str(s["fits"][str(g)]) if s["fits"][str(g)] else "none" for g in GPUS_GIB)


def _batch64(s: dict) -> str:
    return " / ".join("yes" if s["batch64"][str(g)] else "no" for g in GPUS_GIB)


def _cell(s: dict | None, fmt) -> str:
    """``fmt(s)``; ``-`` for a setting not run, ``OOM`` for one that ran out of GPU memory."""
    if s is None:
        return "-"
    return "OOM" if "error" in s else fmt(s)


def readme_table(results: dict[str, dict]) -> str:
    """The Markdown table for the README: before -> after per family (and with checkpointing)."""
    head = ("| family | real model | kept for backward per sample, before → after (MiB) | of which outside the "
            "layers, before → after (MiB) | kept per step whatever the batch, before → after (GiB) | micro-batch "
            f"that fits 24 GB / 80 GB, before → after | batch {GLOBAL_BATCH} (micro-batches) on 24 / 80 GB, "
            "before → after | with --grad-checkpointing: per sample (MiB); micro-batch 24 / 80 GB |")
    lines = [head, "|" + "---|" * 8]
    for family, r in results.items():
        if "error" in r:
            lines.append(f"| {family} | {r.get('model', '')} | failed: {r['error']} | | | | | |")
            continue
        st = r["settings"]
        a, b, c = st.get("after"), st.get("before"), st.get("after+ckpt")

        def both(fmt, a=a, b=b):
            return " → ".join(_cell(x, fmt) for x in (b, a))

        per_sample = both(lambda x: _mib(x["per_sample_full"]))
        outside = both(lambda x: _mib(x["outside_per_sample"]))
        fixed = both(lambda x: f"{x['fixed_full'] / GiB:.2f}")
        ckpt = _cell(c, lambda x: f"{_mib(x['per_sample_full'])}; {_fits(x)}")
        lines.append(f"| {family} | {r['model']} | {per_sample} | {outside} | {fixed} | {both(_fits)} | "
                     f"{both(_batch64)} | {ckpt} |")
    return "\n".join(lines)


def details_table(results: dict[str, dict]) -> str:
    head = ("| family | setting | tokens | depths run | kept 1 / m samples at each depth (MiB) | per layer per "
            "sample (MiB) | outside per sample (MiB) | whatever the batch, full depth (GiB) | weights, full depth "
            "(GiB) | vision tower kept (B) | step (s) | peak RSS / GPU (GiB) | largest micro-batch (GPU) |")
    lines = [head, "|" + "---|" * 13]
    for family, r in results.items():
        if "error" in r:
            continue
        lo, hi = r["measured_depths"]
        for name, s in r["settings"].items():
            if "error" in s:
                lines.append(f"| {family} | {name} ({s['precision']}) | {r['tokens']} | {s['error']} |"
                             + " |" * 9)
                continue
            pts = s["points"]
            kept = "; ".join(f"L{d}: {pts[str(d)]['one']['bytes'] / MiB:.1f} / "
                             f"{pts[str(d)]['many']['bytes'] / MiB:.1f}" for d in (lo, hi))
            top = pts[str(hi)]
            peak = top.get("peak_rss", top.get("gpu_peak"))
            lines.append(
                f"| {family} | {name} ({s['precision']}) | {r['tokens']} | {lo}, {hi} of {r['depth']} | {kept} | "
                f"{s['per_layer_per_sample'] / MiB:.2f} | {s['outside_per_sample'] / MiB:.2f} | "
                f"{s['fixed_full'] / GiB:.3f} | {s['weights_full'] / GiB:.2f} | {s['vision_kept_max']} | "
                f"{top['step_s']:.2f} | {peak / GiB:.1f} | {top.get('largest_micro_batch', '-')} |")
    return "\n".join(lines)


def summary_lines(results: dict[str, dict]) -> list[str]:
    out = []
    for family, r in results.items():
        if "error" in r:
            out.append(f"{family}: FAILED ({r['error']})")
            continue
        st = r["settings"]
        line = f"{family}: {r.get('wall_s', 0):.0f}s (build {r.get('build_s', 0):.0f}s)"
        a, b = st.get("after"), st.get("before")
        if a and b and "error" not in a and "error" not in b:
            ratio = b["outside_per_sample"] / a["outside_per_sample"] if a["outside_per_sample"] > 0 else float("inf")
            line += (f"; outside the layers per sample {_mib(b['outside_per_sample'])} → "
                     f"{_mib(a['outside_per_sample'])} MiB ({ratio:.1f}x lower); per sample at full depth "
                     f"{_mib(b['per_sample_full'])} → {_mib(a['per_sample_full'])} MiB")
        out.append(line)
    return out


def methods_table(family: str, runs: dict[str, dict]) -> str:
    """One family's Markdown table, a row per method (``runs``: method -> its ``results[family]``)."""
    head = ("| method | trainable params (full depth) | kept per sample, full depth (MiB) | kept whatever the batch, "
            "full depth (GiB) | weights + grads + Adam (GiB) | step (s) at the measured depth | micro-batch that fits "
            f"24 / 80 GB | batch {GLOBAL_BATCH} (micro-batches) on 24 / 80 GB |")
    lines = [head, "|" + "---|" * 8]
    for method, r in runs.items():
        s = next(iter(r.get("settings", {}).values()), None)
        if "error" in r or s is None or "error" in s:
            lines.append(f"| {method} | {(r if 'error' in r else s or {}).get('error', 'not run')} |" + " |" * 6)
            continue
        top = s["points"][str(r["measured_depths"][1])]
        lines.append(f"| {method} | {r['trainable']['full_depth']:,} | {_mib(s['per_sample_full'])} | "
                     f"{s['fixed_full'] / GiB:.2f} | {s['memory_full'] / GiB:.1f} | "
                     f"{top['step_s']:.1f} (L{r['measured_depths'][1]}, batch {top['batch']}) | "
                     f"{_fits(s)} | {_batch64(s)} |")
    return "\n".join(lines)


def run_child(args, family: str, out: Path, method: str | None = None) -> dict:
    """``family`` measured in a process of its own (its own peak RSS; all its memory back after)."""
    rc = subprocess.run(_child_argv(args, family, out, method), check=False).returncode
    if rc == 0 and out.is_file():
        return json.loads(out.read_text())["results"][family]
    return {"model": _real().REAL[family]["model"], "error": f"exit status {rc}"}


def run_methods(args, say) -> dict[str, dict[str, dict]]:
    """``--methods-table``: every method that fits each family, each in a process of its own."""
    from synthgen.pin.models import METHODS
    from synthgen.pin.models.registry import method_refusal

    out: dict[str, dict[str, dict]] = {}
    if not args.vision_layers and args.layers:  # (every method at the same vision depth: comparable step times)
        args.vision_layers = max(default_vision_layers(m) for m in METHODS)
    with tempfile.TemporaryDirectory(prefix="real-size-json-") as tmp:
        for family in args.vlm:
            out[family] = {}
            for method in METHODS:
                if method_refusal(method, family):
                    say(f"{family} {method}: skipped (no place for it in this family)")
                    continue
                t = time.perf_counter()
                out[family][method] = run_child(args, family, Path(tmp) / f"{family}-{method}.json", method)
                say(f"{family} {method}: done in {time.perf_counter() - t:.0f}s")
    return out


# --- main -----------------------------------------------------------------------------------------

def _child_argv(args, family: str, out: Path, method: str | None = None) -> list[str]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--vlm", family, "--json", str(out),
            "--method", method or args.method,
            "--layers", str(args.layers), "--batch", str(args.batch), "--precision", args.precision,
            "--device", args.device, "--steps", str(args.steps), "--attn-implementation", args.attn_implementation,
            "--quiet"]
    for flag, value in (("--vision-layers", args.vision_layers), ("--micro-batch", args.micro_batch),
                        ("--work-dir", args.work_dir)):
        if value:
            argv += [flag, str(value)]
    flags = (("--table", args.table), ("--before", args.before), ("--grad-checkpointing", args.grad_checkpointing),
             ("--exact-cpu-kernels", args.exact_cpu_kernels))
    for flag, on in flags:
        if on:
            argv.append(flag)
    return argv


def main(argv: list[str] | None = None) -> int:
    families = _real().FAMILIES
    if str(HERE.parent) not in sys.path:
        sys.path.insert(0, str(HERE.parent))
    from synthgen.pin.models import METHODS
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vlm", nargs="+", default=list(families), choices=families)
    ap.add_argument("--layers", type=int, default=2,
                    help="language-model layers: measured at N-1 and N (N >= 2); 0: the real depth")
    ap.add_argument("--vision-layers", type=int, default=None,
                    help="vision-tower layers (default 1 for pin, 2 for the other methods; the real depth with --layers 0)")
    ap.add_argument("--batch", type=int, default=None,
                    help="samples of a timed step (default 2 on the CPU, 4 on a GPU)")
    ap.add_argument("--micro-batch", type=int, default=None, help="samples a forward takes (default: the batch)")
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp16-mixed", "fp32"])
    ap.add_argument("--grad-checkpointing", action="store_true")
    ap.add_argument("--before", action="store_true",
                    help="the loss path before issue 18: full-logits model loss, fp16-mixed (fp32 weights)")
    ap.add_argument("--table", action="store_true", help="after, after with checkpointing and before, every family")
    ap.add_argument("--method", default="pin", choices=METHODS,
                    help="what is trained, as train-pin --method (its weights' dtype and trained tensors)")
    ap.add_argument("--methods-table", action="store_true",
                    help="every method that fits each --vlm family, each in a process of its own")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=None, help="timed steps, median (default 2 on the CPU, 5 on a GPU)")
    ap.add_argument("--attn-implementation", default="auto")
    ap.add_argument("--exact-cpu-kernels", action="store_true",
                    help="the CPU's own bf16/fp16 matrix products (slow without bf16 instructions)")
    ap.add_argument("--work-dir", default=None, help="where the real-size folders are written (and removed)")
    ap.add_argument("--json", default=None, help="write every measurement here")
    ap.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.methods_table and args.table:
        ap.error("--methods-table measures one setting per method (its flags): leave out --table")
    if args.layers < 0 or args.layers == 1:
        ap.error("--layers must be 0 (the real depth) or at least 2 (two depths are measured: N-1 and N)")
    gpu = args.device.startswith("cuda")
    if args.batch is None:
        args.batch = 4 if gpu else 2
    if args.steps is None:
        args.steps = 5 if gpu else 2
    if args.micro_batch is not None and not 1 <= args.micro_batch <= args.batch:
        ap.error("--micro-batch must be between 1 and --batch")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: torch sees no CUDA GPU here")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # (the shallower folders leave the deeper layers' weights unread)
    hf_logging.disable_progress_bar()

    def say(msg: str) -> None:
        print(msg, flush=True)

    results: dict[str, dict] = {}
    t0 = time.perf_counter()
    if args.methods_table:
        runs = run_methods(args, say)
        payload = {"settings": {k: v for k, v in vars(args).items() if k not in ("json", "quiet")},
                   "torch": torch.__version__, "wall_s": time.perf_counter() - t0, "methods": runs}
        if args.json:
            Path(args.json).write_text(json.dumps(payload, indent=2))
        for family, by_method in runs.items():
            print(f"\n{family} ({_real().REAL[family]['model']}), {args.device}, {args.precision}:\n")
            print(methods_table(family, by_method))
        print(f"\ntotal {payload['wall_s']:.0f}s on {args.device}")
        return 0 if all("error" not in r for m in runs.values() for r in m.values()) else 1
    if len(args.vlm) == 1:
        results[args.vlm[0]] = run_family(args.vlm[0], args, say)
    else:  # one process a family: its own peak RSS, and all its memory back before the next
        with tempfile.TemporaryDirectory(prefix="real-size-json-") as tmp:
            for family in args.vlm:
                t = time.perf_counter()
                results[family] = run_child(args, family, Path(tmp) / f"{family}.json")
                say(f"{family}: done in {time.perf_counter() - t:.0f}s")
    payload = {"settings": {k: v for k, v in vars(args).items() if k not in ("json", "quiet")},
               "torch": torch.__version__, "wall_s": time.perf_counter() - t0, "results": results}
    if args.json:
        Path(args.json).write_text(json.dumps(payload, indent=2))
    if not args.quiet:
        print()
        print(readme_table(results))
        print()
        print(details_table(results))
        print()
        for line in summary_lines(results):
            print(line)
        if args.method != "pin":
            for family, r in results.items():
                print(f"\n{methods_table(family, {args.method: r})}")
        print(f"total {payload['wall_s']:.0f}s on {args.device}; batch {args.batch}, language-model layers "
              f"{'all' if args.layers == 0 else f'{max(args.layers, 2) - 1} and {max(args.layers, 2)}'}")
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
