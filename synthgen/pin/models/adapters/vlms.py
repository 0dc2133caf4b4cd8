"""LLaVA, SmolVLM / Idefics3, Qwen2.5-VL and PaliGemma 2: one small class each, holding only what
differs between them; the rest is :class:`~synthgen.pin.models.adapters.hf.HFVisionLanguageAdapter`.

=============  ==============================  =====================================  ==================
adapter        PIN is added to the input of    canvas (fixed by)                      PIN at the default
=============  ==============================  =====================================  ==================
llava          ``model.multi_modal_projector``  vision ``image_size`` (resize/crop are  576 x 1024
                                                identities at it)                      (336 px, ViT-L/14)
smolvlm        ``model.connector``              vision ``image_size``;                 729 x 1152
                                                ``do_image_splitting=False``           (384 px, SigLIP)
qwen2_5_vl     ``model.visual.merger``          ``canvas`` option (default 224):       256 x 1280
                                                ``min_pixels = max_pixels = canvas^2``  (224 px)
paligemma      ``model.multi_modal_projector``  vision ``image_size`` (224/448/896)    256 x 1152
=============  ==============================  =====================================  ==================
"""

from __future__ import annotations

import math

import torch

from synthgen.errors import UserError
from synthgen.pin.models.adapters.hf import ChatCodec, HFVisionLanguageAdapter
from synthgen.pin.models.native import bbox_2d_to_box, loc_tokens_to_box


def _grid(vc) -> tuple[int, int]:
    canvas = int(vc.image_size)
    return canvas, canvas // int(vc.patch_size)


class LlavaAdapter(HFVisionLanguageAdapter):
    """LLaVA (``LlavaForConditionalGeneration``, default ``llava-hf/llava-1.5-7b-hf``).

    PIN goes on the patch features of the selected vision layer (``vision_feature_layer``, -2 for
    LLaVA-1.5) after the ``default`` strategy dropped CLS (``full`` keeps it: one more position),
    right before ``multi_modal_projector``: ``[576, 1024]`` for LLaVA-1.5's CLIP ViT-L/14 at 336 px
    (several feature layers concatenate their widths). The canvas is the vision tower's
    ``image_size``; the CLIP processor's shortest-edge resize and centre crop are identities on a
    square image of that side. Text: the llava-hf chat template
    (``USER: <image>\\n{prompt} ASSISTANT: {box}</s>``), 576 ``<image>`` tokens as the processor
    expands them.
    """

    name = "llava"
    fusion_module = "model.multi_modal_projector"
    vision_module = "model.vision_tower"

    def geometry(self, config):
        canvas, grid = _grid(config.vision_config)
        layers = config.vision_feature_layer
        width = int(config.vision_config.hidden_size) * (1 if isinstance(layers, int) else len(layers))
        cls = 1 if config.vision_feature_select_strategy == "full" else 0
        return canvas, grid, grid * grid + cls, width


class SmolVLMAdapter(HFVisionLanguageAdapter):
    """SmolVLM / SmolVLM2 / Idefics3 (``SmolVLMForConditionalGeneration`` or
    ``Idefics3ForConditionalGeneration``; default ``HuggingFaceTB/SmolVLM2-2.2B-Instruct``, the
    256M/500M checkpoints too).

    PIN goes on the vision encoder's output (``model.vision_model(...).last_hidden_state``, after
    its post-layernorm), right before the pixel-shuffle ``connector``: ``[729, 1152]`` for
    SmolVLM2-2.2B (SigLIP at 384 px, 14-px patches), ``[1024, 768]`` for the 256M/500M (512 px,
    16-px patches). The canvas is the encoder's ``image_size``, fixed by
    ``do_image_splitting=False`` (the hub checkpoints split a 300x500 image into 13 tiles) and
    ``size = max_image_size = canvas``: one image, stretched to the square (what the processor
    makes of a non-square image too), with an all-ones ``pixel_attention_mask``. Text: the
    checkpoint's chat template (``<|im_start|>User:<image>{prompt}<end_of_utterance>\\nAssistant:
    {box}<end_of_utterance>``), the image as ``<fake_token_around_image><global-img><image>*N
    <fake_token_around_image>``.
    """

    name = "smolvlm"
    fusion_module = "model.connector"
    vision_module = "model.vision_model"

    def geometry(self, config):
        canvas, grid = _grid(config.vision_config)
        return canvas, grid, grid * grid, int(config.vision_config.hidden_size)

    def processor_options(self, config):
        canvas = int(config.vision_config.image_size)
        return {"do_image_splitting": False, "size": {"longest_edge": canvas},
                "max_image_size": {"longest_edge": canvas}}

    def pixel_inputs(self, x):
        b, _, h, w = x.shape
        return {"pixel_values": x[:, None],
                "pixel_attention_mask": torch.ones(b, 1, h, w, dtype=torch.bool, device=x.device)}


class Qwen25VLAdapter(HFVisionLanguageAdapter):
    """Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``, default ``Qwen/Qwen2.5-VL-3B-Instruct``).

    PIN goes on the vision tower's patch tokens right before its ``merger`` (``model.visual.merger``,
    whose RMSNorm + 2x2 merge MLP is the fusion into the LM): ``[256, 1280]`` at the default 224-px
    canvas (16x16 patches of 14 px, 64 merged tokens), ``[1024, 1280]`` at 448. PIN's positions
    are in row order; the tower holds its tokens in window-attention order (2x2 merge units, then
    windows: :func:`transformers.vision_utils.get_vision_window_index`), so PIN is permuted into
    that order and repeated over the flat ``[sum of patches, width]`` batch. Dynamic resolution is
    pinned by ``min_pixels = max_pixels = canvas^2`` (the ``canvas`` option, a multiple of 28;
    default: what the checkpoint's processor pins, else 224); ``pixel_values`` are the image
    processor's own ``patchify`` of the canvas, ``image_grid_thw`` ``[1, G, G]`` per image, and
    ``mm_token_type_ids`` mark the image tokens (without them the LM silently loses its 3-D
    M-RoPE positions). Text: the ChatML chat template, the image as ``<|vision_start|>
    <|image_pad|>*N<|vision_end|>``. ``--baseline native`` asks for its grounding JSON (``bbox_2d``
    in canvas pixels).
    """

    name = "qwen2_5_vl"
    fusion_module = "model.visual.merger"
    vision_module = "model.visual"
    native_prompt = "Locate the {name} in the image, output its bbox coordinates using JSON format."
    native_max_new_tokens = 64
    DEFAULT_CANVAS = 224

    def resolve_options(self, config, options):
        unknown = [k for k in options if k != "canvas"]
        if unknown:
            raise UserError(f"unknown qwen2_5_vl option {unknown[0]!r}; the options are canvas")
        vc = config.vision_config
        factor = int(vc.patch_size) * int(vc.spatial_merge_size)
        canvas = options.get("canvas") or self._pinned_canvas() or self.DEFAULT_CANVAS
        if not isinstance(canvas, int) or canvas < factor or canvas % factor:
            raise UserError(f"qwen2_5_vl option canvas must be a multiple of {factor} "
                            f"(patch {vc.patch_size} x merge {vc.spatial_merge_size}), got {canvas!r}")
        return {"canvas": canvas}

    def _pinned_canvas(self) -> int | None:
        """The side a checkpoint's processor pins (``min_pixels == max_pixels``, a square)."""
        from transformers.image_processing_base import ImageProcessingMixin

        try:
            d = ImageProcessingMixin.get_image_processor_dict(self.model_id)[0]
        except (OSError, ValueError):
            return None
        size = d.get("size") or {}
        lo, hi = d.get("min_pixels", size.get("shortest_edge")), d.get("max_pixels", size.get("longest_edge"))
        side = math.isqrt(lo) if isinstance(lo, int) and lo == hi else 0
        return side if side and side * side == lo else None

    def processor_options(self, config):
        area = self.options["canvas"] ** 2
        return {"size": {"shortest_edge": area, "longest_edge": area}}

    def geometry(self, config):
        from transformers.vision_utils import get_vision_window_index

        vc = config.vision_config
        canvas, patch, merge = self.options["canvas"], int(vc.patch_size), int(vc.spatial_merge_size)
        grid = canvas // patch
        # window-order row r -> processor row (2x2 merge units, row-major) -> raster index
        window, _ = get_vision_window_index(torch.tensor([[1, grid, grid]]), merge, int(vc.window_size), patch)
        unit = merge * merge
        rows = torch.arange(grid * grid)
        proc_row = window[rows // unit] * unit + rows % unit
        u, w = proc_row // unit, proc_row % unit
        mr, mc, sr, sc = u // (grid // merge), u % (grid // merge), w // merge, w % merge
        self._order = ((mr * merge + sr) * grid + (mc * merge + sc)).to(self.device)
        return canvas, grid, grid * grid, int(vc.hidden_size)

    def pixel_inputs(self, x):
        vc = self.config.vision_config
        patches, gh, gw = self.processor.image_processor.patchify(
            x, patch_size=int(vc.patch_size), merge_size=int(vc.spatial_merge_size),
            temporal_patch_size=int(vc.temporal_patch_size))
        grid_thw = torch.tensor([[1, gh, gw]] * x.shape[0], dtype=torch.long, device=x.device)
        return {"pixel_values": patches.reshape(-1, patches.shape[-1]), "image_grid_thw": grid_thw}

    def text_inputs(self, input_ids, labels):
        return {"mm_token_type_ids": (input_ids == self.codec.image_token_id).long()}

    def place_pin(self, pin, features):
        n = self.num_positions
        if pin.shape != (n, features.shape[-1]) or features.shape[0] % n:
            raise RuntimeError(f"PIN shape {tuple(pin.shape)} does not match vision tokens "
                               f"{tuple(features.shape)} ({n} per image)")
        return pin[self._order].to(features.dtype).repeat(features.shape[0] // n, 1)

    def native_decode(self, text):
        return bbox_2d_to_box(text, self.input_size)


class PaliGemmaAdapter(HFVisionLanguageAdapter):
    """PaliGemma / PaliGemma 2 (``PaliGemmaForConditionalGeneration``, default
    ``google/paligemma2-3b-pt-224``).

    PIN goes on the SigLIP encoder's output (``last_hidden_state``, after its post-layernorm),
    right before ``multi_modal_projector``: ``[256, 1152]`` at 224 px (14-px patches; 1024 at 448,
    4096 at 896). The canvas is the encoder's ``image_size``, the one size its processor resizes
    to. Text: PaliGemma has no chat template; as its processor lays out ``"<image>" + prefix`` with
    ``suffix``: ``<image>*256 <bos>{prompt}\\n`` is the prefix and ``{box}<eos>`` the suffix
    (tokenised as the second sequence of a pair). ``token_type_ids`` are 0 on the prefix, which
    attends bidirectionally, and 1 from the first token under the loss on: with ``--name-loss`` /
    the warm-up the causal part starts at the name, so no token under the loss sees the tokens
    after it. The PIN answer stays PIN's box text; PaliGemma's own ``<loc0000>``..``<loc1023>``
    tokens are what ``--baseline native`` (``detect {name}``) reads.
    """

    name = "paligemma"
    fusion_module = "model.multi_modal_projector"
    vision_module = "model.vision_tower"
    native_prompt = "detect {name}"
    native_max_new_tokens = 16

    def geometry(self, config):
        canvas, grid = _grid(config.vision_config)
        return canvas, grid, grid * grid, int(config.vision_config.hidden_size)

    def layout(self):
        tok = self.processor.tokenizer
        return ChatCodec(tok, self.image_text + tok.bos_token, "\n", "\n", tok.eos_token, pair=True,
                         image_token_id=int(self.config.image_token_id), end_token_id=tok.eos_token_id)

    def text_inputs(self, input_ids, labels):
        if labels is None:  # generation: the whole prompt is the prefix
            return {"token_type_ids": torch.zeros_like(input_ids)}
        return {"token_type_ids": ((labels != -100).long().cumsum(1) > 0).long()}

    def native_decode(self, text):
        return loc_tokens_to_box(text, self.input_size)


