"""The Flamingo model (Alayrac et al. 2022) as OpenFlamingo builds it, with its state-dict keys.

Data flow for one image per sequence::

    pixels [B,3,H,W] -> frozen CLIP ViT (run under no_grad) -> patch tokens x_v [B, v, D_v] (CLS dropped)
                     -> feature_hook (PIN: x_v + pi, the only trainable tensor)
                     -> perceiver resampler -> 64 latents [B, 1, 64, D_v]
                     -> a gated cross-attention block before every ``cross_attn_every``-th decoder
                        layer of the language model; text after an ``<image>`` token attends to the
                        latents of that image (and only that one)

PIN goes between the vision encoder and the perceiver because that is where the paper puts it
(``x_v* = x_v + PIN``, before the fusion network): the encoder stays frozen and gradient-free, and
everything after it (perceiver, cross-attention, LM) is frozen too but passes gradients to PIN.

Which tokens the encoder gives (``vision_tokens``): ``"raw"`` is the last transformer block's
output, what open_clip < 2.23 returned and so what OpenFlamingo v2 (June 2023) was trained on;
``"ln_post"`` is the same after the ViT's final LayerNorm, what open_clip >= 2.23 (also 3.x)
returns with ``output_tokens=True`` and what the PIN authors' environment (open_clip 2.23.0) fed
the perceiver when they trained the released ``PIN_OF.pt``.

Module names and nesting follow open_flamingo 2.0.1 so that ``state_dict()`` has its keys:
``vision_encoder.*`` (open_clip ``VisionTransformer``), ``perceiver.*``, and the language model
under ``lang_encoder.*`` whose decoder-layer list (e.g. ``transformer.blocks``) holds
:class:`FlamingoLayer` s with ``gated_cross_attn_layer`` and ``decoder_layer``; the package's aliases
``lang_encoder.gated_cross_attn_layers.*`` and ``lang_encoder.old_decoder_blocks.*`` name the same
modules again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

# where transformers' causal LMs keep their decoder layers, tried in this order
DECODER_LAYER_PATHS = ("transformer.blocks", "gpt_neox.layers", "model.layers", "model.decoder.layers",
                       "transformer.h")
VISION_TOKENS = ("raw", "ln_post")


def _feed_forward(dim: int, mult: int = 4) -> nn.Sequential:
    """LayerNorm -> Linear -> GELU -> Linear (no biases): keys ``0.*``, ``1.weight``, ``3.weight``."""
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * mult, bias=False), nn.GELU(),
                         nn.Linear(dim * mult, dim, bias=False))


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[..., n, h*d]`` -> ``[..., h, n, d]``."""
    *lead, n, hd = x.shape
    return x.reshape(*lead, n, heads, hd // heads).transpose(-3, -2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``[..., h, n, d]`` -> ``[..., n, h*d]``."""
    x = x.transpose(-3, -2)
    return x.reshape(*x.shape[:-2], -1)


class PerceiverAttention(nn.Module):
    """Latents attend to the image tokens and to themselves."""

    def __init__(self, dim: int, dim_head: int = 64, heads: int = 8) -> None:
        super().__init__()
        self.heads, self.scale = heads, dim_head ** -0.5
        inner = dim_head * heads
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """``x`` ``[b, T, v, D]`` image tokens, ``latents`` ``[b, T, n, D]`` -> ``[b, T, n, D]``."""
        x, latents = self.norm_media(x), self.norm_latents(latents)
        q = _heads(self.to_q(latents), self.heads) * self.scale
        k, v = self.to_kv(torch.cat((x, latents), dim=-2)).chunk(2, dim=-1)
        attn = (q @ _heads(k, self.heads).transpose(-1, -2)).softmax(dim=-1)
        return self.to_out(_merge_heads(attn @ _heads(v, self.heads)))


class PerceiverResampler(nn.Module):
    """Any number of image tokens -> ``num_latents`` tokens per image (OpenFlamingo: 6 layers, 64)."""

    def __init__(self, dim: int, depth: int = 6, dim_head: int = 64, heads: int = 8,
                 num_latents: int = 64, ff_mult: int = 4) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(num_latents, dim))
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, dim_head, heads), _feed_forward(dim, ff_mult)])
            for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[b, T, v, D]`` -> ``[b, T, num_latents, D]``."""
        latents = self.latents.expand(*x.shape[:2], *self.latents.shape)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm(latents)


class MaskedCrossAttention(nn.Module):
    """Text tokens attend to the latents of the image whose ``<image>`` token last preceded them."""

    def __init__(self, dim: int, dim_visual: int, dim_head: int = 64, heads: int = 8) -> None:
        super().__init__()
        self.heads, self.scale = heads, dim_head ** -0.5
        inner = dim_head * heads
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim_visual, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, media: torch.Tensor, media_locations: torch.Tensor,
                use_cached_media: bool = False) -> torch.Tensor:
        """``x`` ``[B, L, D]``, ``media`` ``[B, T, n, D_v]``, ``media_locations`` bool ``[B, L']``.

        A text token's "time" is the number of ``<image>`` tokens up to and including it
        (``use_cached_media``: while generating, every new token comes after all of them).
        """
        b, length = x.shape[:2]
        t_img, n = media.shape[1:3]
        if use_cached_media:
            text_time = media_locations.sum(dim=1, keepdim=True).expand(b, length)
        else:
            text_time = media_locations.long().cumsum(dim=-1)
        q = _heads(self.to_q(self.norm(x)), self.heads) * self.scale
        k, v = self.to_kv(media.reshape(b, t_img * n, -1)).chunk(2, dim=-1)
        sim = q @ _heads(k, self.heads).transpose(-1, -2)                     # [B, h, L, T*n]
        media_time = torch.arange(1, t_img + 1, device=x.device).repeat_interleave(n)
        allowed = text_time[:, None, :, None] == media_time[None, None, None, :]
        sim = sim.masked_fill(~allowed, -torch.finfo(sim.dtype).max)
        attn = sim.softmax(dim=-1).masked_fill((text_time == 0)[:, None, :, None], 0.0)
        return self.to_out(_merge_heads(attn @ _heads(v, self.heads)))


class GatedCrossAttentionBlock(nn.Module):
    """``x + tanh(g_a) * xattn(x)``, then ``x + tanh(g_f) * ff(x)``; the gates start at 0."""

    def __init__(self, dim: int, dim_visual: int, dim_head: int = 64, heads: int = 8,
                 ff_mult: int = 4) -> None:
        super().__init__()
        self.attn = MaskedCrossAttention(dim, dim_visual, dim_head, heads)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.ff = _feed_forward(dim, ff_mult)
        self.ff_gate = nn.Parameter(torch.zeros(1))

    def forward(self, x, media, media_locations, use_cached_media=False):
        x = self.attn(x, media, media_locations, use_cached_media) * self.attn_gate.tanh() + x
        return self.ff(x) * self.ff_gate.tanh() + x


@dataclass
class _Conditioning:
    """What the cross-attention layers read during one forward or generate call."""

    vis_x: torch.Tensor | None = None
    media_locations: torch.Tensor | None = None
    use_cached_media: bool = False
    generating: bool = False


class FlamingoLayer(nn.Module):
    """A decoder layer of the LM with (optionally) a gated cross-attention block in front of it."""

    def __init__(self, gated_cross_attn_layer: GatedCrossAttentionBlock | None, decoder_layer: nn.Module,
                 conditioning: _Conditioning) -> None:
        super().__init__()
        self.gated_cross_attn_layer = gated_cross_attn_layer
        self.decoder_layer = decoder_layer
        self._cond = conditioning

    # what gradient checkpointing recomputes (the images are its arguments: in backward the
    # model's conditioning has been cleared)
    checkpointed_method = "block"

    def forward(self, hidden_states, *args, **kwargs):
        c = self._cond
        if self.gated_cross_attn_layer is not None and (c.vis_x is None or c.media_locations is None):
            raise RuntimeError("Flamingo layers called without images: use Flamingo.forward/generate")
        return self.block(hidden_states, c.vis_x, c.media_locations, c.use_cached_media, *args, **kwargs)

    def block(self, hidden_states, vis_x, media_locations, use_cached_media, *args, **kwargs):
        """Gated cross-attention to the images, then the LM's decoder layer."""
        if self.gated_cross_attn_layer is not None:
            hidden_states = self.gated_cross_attn_layer(hidden_states, vis_x, media_locations, use_cached_media)
        return self.decoder_layer(hidden_states, *args, **kwargs)

    def __getattr__(self, name: str):
        # transformers' decoder loops may read attributes of their layers (e.g. attention_type)
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("decoder_layer"), name)


def _get(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def find_decoder_layers(lm: nn.Module) -> str:
    """The attribute path of the LM's decoder-layer list (e.g. ``transformer.blocks`` for MPT)."""
    for path in DECODER_LAYER_PATHS:
        try:
            layers = _get(lm, path)
        except AttributeError:
            continue
        if isinstance(layers, nn.ModuleList):
            return path
    raise ValueError(f"{type(lm).__name__}: no decoder-layer list at any of {', '.join(DECODER_LAYER_PATHS)}")


@dataclass(frozen=True)
class Architecture:
    """Sizes of the trained Flamingo parts; the defaults are OpenFlamingo's (open_flamingo 2.0.1
    hard-codes them), and :func:`synthgen.pin.models.flamingo.loading.architecture` reads them off a
    checkpoint (attention heads are always 64 wide there)."""

    perceiver_depth: int = 6
    perceiver_heads: int = 8
    num_latents: int = 64
    perceiver_ff_mult: int = 4
    xattn_heads: int = 8
    xattn_ff_mult: int = 4
    dim_head: int = 64


class Flamingo(nn.Module):
    """Vision encoder + perceiver + LM with gated cross-attention; see the module docstring.

    ``feature_hook``, when set, maps the encoder's patch tokens ``[N, v, D_v]`` to what the
    perceiver reads: the PIN adapter sets it to add PIN.
    """

    def __init__(self, vision_encoder: nn.Module, lang_encoder: nn.Module, *, media_token_id: int,
                 eoc_token_id: int, vis_dim: int, cross_attn_every: int = 1, vision_tokens: str = "raw",
                 decoder_layers: str | None = None, arch: Architecture = Architecture()) -> None:
        super().__init__()
        if vision_tokens not in VISION_TOKENS:
            raise ValueError(f"vision_tokens must be one of {VISION_TOKENS}, got {vision_tokens!r}")
        if cross_attn_every < 1:
            raise ValueError("cross_attn_every must be >= 1")
        self.arch = arch
        self.vision_encoder = vision_encoder
        self.perceiver = PerceiverResampler(vis_dim, arch.perceiver_depth, arch.dim_head, arch.perceiver_heads,
                                            arch.num_latents, arch.perceiver_ff_mult)
        self.lang_encoder = lang_encoder
        self.media_token_id, self.eoc_token_id = int(media_token_id), int(eoc_token_id)
        self.vis_dim, self.cross_attn_every, self.vision_tokens = int(vis_dim), int(cross_attn_every), vision_tokens
        self.decoder_layers = decoder_layers or find_decoder_layers(lang_encoder)
        self.feature_hook: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.vision_grad = False  # the encoder records gradients (a method trained inside it: LoRA, VPT)
        self._cond = _Conditioning()
        self._wrap_decoder_layers()
        lang_encoder.register_forward_pre_hook(self._locate_media, with_kwargs=True)

    def _wrap_decoder_layers(self) -> None:
        lm, path = self.lang_encoder, self.decoder_layers
        blocks = _get(lm, path)
        width = int(lm.config.hidden_size)
        xattn = nn.ModuleList([
            GatedCrossAttentionBlock(width, self.vis_dim, self.arch.dim_head, self.arch.xattn_heads,
                                     self.arch.xattn_ff_mult) if (i + 1) % self.cross_attn_every == 0 else None
            for i in range(len(blocks))])
        lm.old_decoder_blocks = blocks          # open_flamingo's aliases (same modules, more keys)
        lm.gated_cross_attn_layers = xattn
        parent, _, name = path.rpartition(".")
        setattr(_get(lm, parent) if parent else lm, name, nn.ModuleList(
            FlamingoLayer(x, blk, self._cond) for x, blk in zip(xattn, blocks)))

    @property
    def layers(self) -> nn.ModuleList:
        return _get(self.lang_encoder, self.decoder_layers)

    # --- vision -------------------------------------------------------------------------------
    def patch_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised pixels ``[N,3,H,W]`` -> patch tokens ``[N, v, D_v]`` (``vision_tokens``)."""
        out = self.vision_encoder.forward_intermediates(
            pixels, indices=1, intermediates_only=True, output_fmt="NLC",
            normalize_intermediates=self.vision_tokens == "ln_post")
        return out["image_intermediates"][-1]

    def encode_vision(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B,3,H,W]`` (one image per sequence) or ``[B,T,3,H,W]`` -> latents ``[B,T,64,D_v]``.

        The encoder runs without gradients (unless ``vision_grad``); ``feature_hook`` (PIN) is applied after it, with
        gradients, and the perceiver reads its output."""
        if pixels.ndim == 4:
            pixels = pixels[:, None]
        b, t = pixels.shape[:2]
        with torch.set_grad_enabled(self.vision_grad and torch.is_grad_enabled()):
            tokens = self.patch_tokens(pixels.flatten(0, 1))
        if self.feature_hook is not None:
            tokens = self.feature_hook(tokens)
        return self.perceiver(tokens.reshape(b, t, *tokens.shape[1:]))

    # --- language -----------------------------------------------------------------------------
    def _locate_media(self, module, args, kwargs):
        """Before every LM forward: where the ``<image>`` tokens are. While generating, steps
        without one keep the prompt's positions (every new token follows all images)."""
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            raise RuntimeError("Flamingo's language model needs input_ids: <image> tokens mark the images")
        c = self._cond
        loc = ids == self.media_token_id
        if c.generating and c.media_locations is not None and not bool(loc.any()):
            c.use_cached_media = True
        else:
            c.media_locations, c.use_cached_media = loc, False
        return None

    def _clear(self) -> None:
        c = self._cond
        c.vis_x = c.media_locations = None
        c.use_cached_media = c.generating = False

    def forward(self, vision_x: torch.Tensor, lang_x: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **lm_kwargs):
        """The LM's output (``logits``, and ``loss`` with ``labels``) for images + token ids."""
        self._clear()
        self._cond.vis_x = self.encode_vision(vision_x)
        try:
            return self.lang_encoder(input_ids=lang_x, attention_mask=attention_mask, labels=labels,
                                     **{"use_cache": False, **lm_kwargs})
        finally:
            self._clear()

    @torch.no_grad()
    def generate(self, vision_x: torch.Tensor, lang_x: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 *, num_beams: int = 1, eos_token_id: int | None = None, **kwargs) -> torch.Tensor:
        """``lang_x`` followed by generated ids (transformers' ``generate``); stops at
        ``<|endofchunk|>`` unless ``eos_token_id`` says otherwise."""
        self._clear()
        vis = self.encode_vision(vision_x)
        self._cond.vis_x = vis.repeat_interleave(num_beams, dim=0) if num_beams > 1 else vis
        self._cond.generating = True
        try:
            return self.lang_encoder.generate(
                input_ids=lang_x, attention_mask=attention_mask, num_beams=num_beams,
                eos_token_id=self.eoc_token_id if eos_token_id is None else eos_token_id, **kwargs)
        finally:
            self._clear()
