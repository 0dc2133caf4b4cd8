"""Build an OpenFlamingo from its parts (:mod:`.variants`) and load its ``checkpoint.pt`` by key.

As open_flamingo 2.0.1's ``create_model_and_transforms`` does: the tokenizer gets the special
tokens ``<|endofchunk|>`` and ``<image>`` (and ``<PAD>`` when it has no pad token), the LM's token
embeddings are resized to the tokenizer, and the checkpoint then fills the perceiver, the gated
cross-attention layers and the embeddings (the rows of the new tokens were trained). Everything
else comes frozen from the vision encoder (open_clip) and the language model (transformers).

Differences on purpose: no ``trust_remote_code`` (MPT is mapped onto transformers' own classes,
:mod:`.mpt`); open_clip tags trained with QuickGELU (``openai``) get it (open_clip 3.x only warns
and builds GELU, which the package then silently uses); ``checkpoint.pt`` is read with
``weights_only=True`` and must match the model key for key and shape for shape.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import torch

from synthgen.errors import ModelLoadError, UserError
from synthgen.pin.models.flamingo.model import Architecture, Flamingo, find_decoder_layers
from synthgen.pin.models.flamingo.mpt import _first_line, fetch, load_language_model
from synthgen.pin.models.flamingo.variants import CHECKPOINT_FILE, FlamingoParts
from synthgen.prefetch import check_hub

MEDIA_TOKEN, EOC_TOKEN, PAD_TOKEN = "<image>", "<|endofchunk|>", "<PAD>"


# --- parts --------------------------------------------------------------------------------------

def vision_config(vision: str) -> dict:
    """The open_clip ``vision_cfg`` of ``vision`` (a model name or ``local-dir:``), without weights."""
    import open_clip

    try:
        cfg = open_clip.get_model_config(vision)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read the open_clip config of {vision!r}: {_first_line(exc)}") from None
    if not cfg or "vision_cfg" not in cfg:
        raise UserError(f"{vision!r} is not an open_clip model name (see open_clip.list_models()) nor "
                        "local-dir:DIR holding open_clip_config.json")
    vc = dict(cfg["vision_cfg"])
    if "timm_model_name" in vc:
        raise UserError(f"{vision}: timm vision towers are not supported; OpenFlamingo uses open_clip ViTs")
    return vc


def geometry(vision: str) -> dict:
    """``input_size``, ``patch_grid``, ``num_positions`` (patches, no CLS) and ``vision_width`` of
    an open_clip ViT, from its config alone."""
    vc = vision_config(vision)
    size = vc.get("image_size", 224)
    size = int(size[0] if isinstance(size, (list, tuple)) else size)
    patch = int(vc["patch_size"])
    if size % patch:
        raise UserError(f"{vision}: image size {size} is not a multiple of its patch size {patch}")
    return {"input_size": size, "patch_grid": size // patch, "num_positions": (size // patch) ** 2,
            "vision_width": int(vc["width"])}


def open_clip_kwargs(vision: str, pretrained: str | None) -> dict:
    """Extra ``open_clip.create_model`` arguments for weights ``pretrained`` of ``vision``: QuickGELU
    for tags trained with it (``openai``: open_clip 3.x only warns about the mismatch, while 2.x
    built the OpenAI models, OpenFlamingo's ViT-L/14 among them, with QuickGELU); the rule for
    files and ``local-dir:`` is in :mod:`synthgen.clip_models`."""
    from synthgen.clip_models import quick_gelu_kwargs

    return quick_gelu_kwargs(vision, pretrained)


def load_vision(vision: str, pretrained: str | None, dtype: torch.dtype):
    """``(visual, mean, std)``: the open_clip ViT of ``vision`` with weights ``pretrained`` (a tag,
    a file, or None for ``local-dir:``)."""
    import open_clip

    vision_config(vision)  # refuse unknown names / timm towers before loading anything
    kwargs = open_clip_kwargs(vision, pretrained)
    try:
        clip = open_clip.create_model(vision, pretrained=pretrained, **kwargs)
    except (RuntimeError, OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load the vision encoder {vision} ({pretrained or 'no weights tag'}): "
                             f"{_first_line(exc)}; pass vision=local-dir:DIR or vision_pretrained=FILE "
                             "for a local copy") from None
    if not hasattr(clip.visual, "forward_intermediates"):
        raise UserError("OpenFlamingo needs open_clip_torch >= 2.32 (VisionTransformer.forward_intermediates)")
    pre = open_clip.get_model_preprocess_cfg(clip)
    visual = clip.visual.to(dtype).eval()
    return visual, tuple(pre["mean"]), tuple(pre["std"])


def load_tokenizer(tokenizer: str):
    """The LM's tokenizer with OpenFlamingo's special tokens added (in the package's order)."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # (a mosaic_gpt config.json beside the tokenizer draws a warning)
    try:
        tok = AutoTokenizer.from_pretrained(tokenizer, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"cannot load the tokenizer {tokenizer!r}: {_first_line(exc)}; pass "
                             "lm=/path/to/local/dir (or tokenizer=, when it lives elsewhere)") from None
    finally:
        hf_logging.set_verbosity(before)
    if tok.pad_token is not None and not _declares_pad(tokenizer):
        tok.pad_token = None  # a class default of transformers 5, not the tokenizer's own (see _declares_pad)
    tok.add_special_tokens({"additional_special_tokens": [EOC_TOKEN, MEDIA_TOKEN]})
    if tok.pad_token is None:
        tok.add_special_tokens({"pad_token": PAD_TOKEN})
    return tok


def _declares_pad(tokenizer: str) -> bool:
    """Whether the tokenizer's own files (``tokenizer_config.json``, ``special_tokens_map.json``)
    name a pad token; True where that cannot be told (its config unreadable).

    OpenFlamingo was trained with transformers 4, whose ``GPTNeoXTokenizerFast`` had a pad token only
    when its files named one, so it added ``<PAD>`` to MPT's GPT-NeoX tokenizer (which names none):
    OpenFlamingo-3B's checkpoint.pt embeddings have 50277 + 3 = 50280 rows. transformers 5 gives
    ``GPTNeoXTokenizer`` a pad token of its own (``<|padding|>``), which would leave ``<PAD>`` out and
    the embeddings one row short of the checkpoint's."""
    found = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        try:
            path = fetch(tokenizer, name, "the tokenizer")
            found[name] = json.loads(path.read_text()) if path is not None else {}
        except (ModelLoadError, OSError, ValueError):
            continue
    if not isinstance(found.get("tokenizer_config.json"), dict):
        return True
    return any(isinstance(d, dict) and bool(d.get("pad_token")) for d in found.values())


# --- checkpoint.pt ------------------------------------------------------------------------------

def read_checkpoint(checkpoint: str) -> dict[str, torch.Tensor]:
    """The tensors of an OpenFlamingo ``checkpoint.pt`` (a hub repo id or a file), read with
    ``weights_only=True``; a training checkpoint's ``model_state_dict`` and DDP ``module.`` prefixes
    are unwrapped."""
    path = Path(checkpoint)
    if not path.is_file():
        fetched = fetch(checkpoint, CHECKPOINT_FILE, "the OpenFlamingo model")
        if fetched is None:
            raise ModelLoadError(f"{checkpoint} has no {CHECKPOINT_FILE}; pass --model /path/to/{CHECKPOINT_FILE}")
        path = fetched
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling refused, corrupt zip, not a torch file
        raise UserError(f"cannot read {path} as a plain tensor file (weights_only): {_first_line(exc)}") from None
    if isinstance(sd, dict) and isinstance(sd.get("model_state_dict"), dict):
        sd = sd["model_state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"{path} is not an OpenFlamingo state dict (a mapping of names to tensors)")
    return {k.removeprefix("module."): v for k, v in sd.items()}


_XATTN = re.compile(r"^lang_encoder\.(?:gated_cross_attn_layers\.(\d+)\.|.+\.(\d+)\.gated_cross_attn_layer\.)")


def cross_attn_layers(sd: dict) -> set[int]:
    """Indices of the decoder layers that have a gated cross-attention block in ``sd``."""
    out = set()
    for k in sd:
        m = _XATTN.match(k)
        if m:
            out.add(int(m.group(1) or m.group(2)))
    return out


def infer_cross_attn_every(sd: dict, where: str) -> int:
    """The cross-attention interval of a checkpoint: its blocks sit before layers every-1, 2*every-1, ..."""
    layers = cross_attn_layers(sd)
    if not layers:
        raise UserError(f"{where} holds no gated cross-attention weights: not an OpenFlamingo checkpoint.pt")
    every = min(layers) + 1
    if layers != set(range(every - 1, max(layers) + 1, every)):
        raise UserError(f"{where}: cross-attention before layers {sorted(layers)[:6]}... is not one block "
                        "every N decoder layers")
    return every


def architecture(sd: dict[str, torch.Tensor], where: str) -> Architecture:
    """Perceiver and cross-attention sizes read off a checkpoint's shapes (64-wide heads, as
    open_flamingo's), so that an OpenFlamingo-style checkpoint of other sizes builds the model
    it fits; the released ones give the defaults."""
    try:
        depth = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("perceiver.layers."))
        to_q = sd["perceiver.layers.0.0.to_q.weight"]
        ff_in = sd["perceiver.layers.0.1.1.weight"]
        x = next(k for k in sd if k.endswith("gated_cross_attn_layer.attn.to_q.weight")
                 or (k.startswith("lang_encoder.gated_cross_attn_layers.") and k.endswith(".attn.to_q.weight")))
        xq, xff = sd[x], sd[x.replace(".attn.to_q.", ".ff.1.")]
        arch = Architecture(perceiver_depth=depth, perceiver_heads=to_q.shape[0] // 64,
                            num_latents=int(sd["perceiver.latents"].shape[0]),
                            perceiver_ff_mult=ff_in.shape[0] // ff_in.shape[1], xattn_heads=xq.shape[0] // 64,
                            xattn_ff_mult=xff.shape[0] // xff.shape[1])
    except (KeyError, StopIteration, ValueError, IndexError):
        raise UserError(f"{where} lacks the perceiver or cross-attention weights of an OpenFlamingo "
                        "checkpoint.pt") from None
    if min(arch.perceiver_heads, arch.xattn_heads) < 1 or to_q.shape[0] % 64 or xq.shape[0] % 64:
        raise UserError(f"{where}: attention widths {to_q.shape[0]}/{xq.shape[0]} are not multiples of 64")
    return arch


def _alias(model: Flamingo, key: str) -> str:
    """``lang_encoder.<layers>.{i}.gated_cross_attn_layer.X`` -> ``lang_encoder.gated_cross_attn_layers.{i}.X``."""
    i, _, rest = key[len(f"lang_encoder.{model.decoder_layers}."):].partition(".gated_cross_attn_layer.")
    return f"lang_encoder.gated_cross_attn_layers.{i}.{rest}"


# names that changed in transformers since the checkpoints were saved (transformers 4.x, 2023)
_RENAMED = (("lang_encoder.embed_out.", "lang_encoder.lm_head."),)  # GPT-NeoX's output embedding (OpenFlamingo-4B)


def _renamed(key: str, own: dict) -> str:
    if key in own:
        return key
    for old, new in _RENAMED:
        if key.startswith(old) and new + key[len(old):] in own:
            return new + key[len(old):]
    return key


def load_checkpoint_state(model: Flamingo, sd: dict[str, torch.Tensor], where: str) -> None:
    """Copy ``sd`` into ``model`` by key: every perceiver and cross-attention weight must be there
    (under either of open_flamingo's names), nothing may be unknown, and shapes must agree."""
    own = model.state_dict()
    sd = {_renamed(k, own): v for k, v in sd.items()}
    unknown = sorted(k for k in sd if k not in own)
    if unknown:
        raise UserError(f"{where}: {len(unknown)} weights this Flamingo does not have, e.g. {unknown[:3]} "
                        "(another language model, or another cross-attention interval?)")
    missing = sorted(k for k in own if (k.startswith("perceiver.") or ".gated_cross_attn_layer." in k)
                     and k not in sd and _alias(model, k) not in sd)
    if missing:
        raise UserError(f"{where} lacks {len(missing)} Flamingo weights, e.g. {missing[:3]} (another "
                        "language model, or another cross-attention interval?)")
    for k, v in sd.items():
        if own[k].shape != v.shape:
            hint = (" (is it the language model and tokenizer the checkpoint was trained with?)"
                    if own[k].ndim == 2 and "perceiver" not in k and "gated_cross_attn" not in k else "")
            raise UserError(f"{where}: {k} is {tuple(v.shape)} but this Flamingo's is {tuple(own[k].shape)}{hint}")
    model.load_state_dict(sd, strict=False)


# --- all together -------------------------------------------------------------------------------

def build_flamingo(parts: FlamingoParts, dtype: torch.dtype = torch.float32, arch: Architecture = Architecture()):
    """``(model, tokenizer, mean, std)``: a Flamingo from its parts with a fresh perceiver and
    fresh cross-attention (what ``checkpoint.pt`` then fills)."""
    visual, mean, std = load_vision(parts.vision, parts.vision_pretrained, dtype)
    tokenizer = load_tokenizer(parts.tokenizer)
    lm = load_language_model(parts.lm, dtype)
    lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model = Flamingo(visual, lm, media_token_id=tokenizer.convert_tokens_to_ids(MEDIA_TOKEN),
                     eoc_token_id=tokenizer.convert_tokens_to_ids(EOC_TOKEN), vis_dim=int(visual.conv1.out_channels),
                     cross_attn_every=parts.cross_attn_every or 1, vision_tokens=parts.vision_tokens, arch=arch)
    return model.to(dtype), tokenizer, mean, std


def load_flamingo(parts: FlamingoParts, dtype: torch.dtype = torch.float32):
    """``(model, tokenizer, mean, std, parts)``: the OpenFlamingo of ``parts`` with its
    ``checkpoint.pt`` loaded, frozen, in eval mode; ``parts`` with ``cross_attn_every`` filled in
    (read off the checkpoint when not given, checked against it when given)."""
    for name, what in ((parts.checkpoint, "checkpoint"), (parts.lm, "language model"), (parts.tokenizer, "tokenizer")):
        check_hub(name, f"OpenFlamingo's {what} {name!r}")  # (offline: one line at once, before any load)
    sd = read_checkpoint(parts.checkpoint)
    where = f"{parts.model_id} ({CHECKPOINT_FILE})"
    every = infer_cross_attn_every(sd, where)
    if parts.cross_attn_every not in (None, every):
        raise UserError(f"{where} has cross-attention every {every} layers, not every {parts.cross_attn_every}")
    parts = replace(parts, cross_attn_every=every)
    model, tokenizer, mean, std = build_flamingo(parts, dtype, architecture(sd, where))
    load_checkpoint_state(model, {k: v.to(dtype) for k, v in sd.items()}, where)
    model.requires_grad_(False)
    return model.eval(), tokenizer, mean, std, parts


__all__ = ["build_flamingo", "load_flamingo", "geometry", "read_checkpoint", "find_decoder_layers"]
