"""OpenFlamingo (default ``openflamingo/OpenFlamingo-3B-vitl-mpt1b-langinstruct``), built by
:mod:`synthgen.pin.models.flamingo` without the open-flamingo package.

PIN is added to the frozen CLIP ViT's patch tokens (``[256, 1024]`` for ViT-L/14 at 224 px, no
CLS) right before the perceiver resampler, through :attr:`Flamingo.feature_hook
<synthgen.pin.models.flamingo.model.Flamingo>`, which both ``forward`` and ``generate`` go through. The
vision encoder runs under ``no_grad``; perceiver, cross-attention and LM are frozen but pass
gradients back to PIN.

Text as the authors' ``utils/text_constructor.py``:
``<image>In the image is {a|an} {name} located at [x1,y1,x2,y2].<|endofchunk|>``, loss on the box,
``.`` and ``<|endofchunk|>``; generation with left padding stops at ``<|endofchunk|>``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from synthgen.pin.models.adapters.base import (
    PinFn,
    PixelsTextAdapter,
    TextCodec,
    loss_span,
    outermost_layers,
    text_parts,
)
from synthgen.pin.models.registry import DEFAULT_MODELS


@dataclass
class FlamingoCodec(TextCodec):
    """The authors' OpenFlamingo text layout. Picklable (used in DataLoader workers).

    ``num_query_tokens``/``image_token_id`` are the one ``<image>`` token that starts every text;
    ``eoc_token_id`` is ``<|endofchunk|>``, which ends answers (instead of EOS).
    """

    eoc_token_id: int = -1

    def encode(self, referral: str | None, answer: str | None = None, name_loss: bool | str = False,
               art: str | None = None, prompt: str | None = None) -> tuple[list[int], list[int]]:
        """``(input_ids, labels)`` of ``<image>`` + prompt (+ `` {answer}.<|endofchunk|>``).

        Tokenised in parts that split at word boundaries and special tokens, which byte-level BPE
        never merges across, so the ids are those of the whole string; labels are -100 but on the
        answer, its ``.`` and ``<|endofchunk|>`` (and the name with ``name_loss``).
        """
        on_name, on_post = loss_span(name_loss)
        pre, name, post = text_parts(referral, art, prompt)
        head = self._ids(self.tokenizer.convert_ids_to_tokens(self.image_token_id) + pre, special=True)
        n, p = (self._ids(name) if name else []), (self._ids(post) if post else [])
        ids = head + n + p
        labels = ([-100] * len(head) + (n if on_name else [-100] * len(n))
                  + (p if on_post else [-100] * len(p)))
        if answer is not None:
            a = self._ids(f" {answer}" + ("" if answer.endswith(".") else ".")) + [self.eoc_token_id]
            ids, labels = ids + a, labels + a
        return ids, labels


class OpenFlamingoAdapter(PixelsTextAdapter):
    """OpenFlamingo; PIN added to the vision encoder's patch tokens, before the perceiver."""

    name = "openflamingo"

    def __init__(self, model_id: str = DEFAULT_MODELS["openflamingo"], *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, **vlm_options) -> None:
        from transformers.utils import logging as hf_logging

        from synthgen.pin.models.flamingo.loading import load_flamingo
        from synthgen.pin.models.flamingo.variants import resolve_parts

        hf_logging.disable_progress_bar()
        parts = resolve_parts(model_id, **vlm_options)
        model, self.tokenizer, mean, std, self.parts = load_flamingo(parts, dtype)
        self.model_id = self.parts.model_id
        self.device, self.dtype = torch.device(device), dtype
        self.model = model.to(self.device)
        visual = self.model.vision_encoder
        self.input_size = int(visual.image_size[0])
        self.patch_grid = self.input_size // int(visual.patch_size[0])
        self.num_positions = self.patch_grid ** 2  # patch tokens; OpenFlamingo drops CLS
        self.vision_width = self.model.vis_dim
        self.set_pixel_normalisation(mean, std)  # open_clip's ToTensor: x / 255
        self.codec = FlamingoCodec(self.tokenizer, 1, self.model.media_token_id, add_eos=False,
                                   eoc_token_id=self.model.eoc_token_id)
        self._pin: PinFn | None = None
        self._enabled = True
        self.model.feature_hook = self._add_pin_to

    def checkpoint_layers(self) -> list[str]:
        """The LM's layers, each with its gated cross-attention block in front (where PIN's
        gradient flows through the perceiver's output)."""
        from synthgen.pin.models.flamingo.model import FlamingoLayer

        return outermost_layers(self.model, (FlamingoLayer,))

    @property
    def vlm_options(self) -> dict:
        """The options that rebuild this VLM (all parts resolved), recorded in ``pin.json``."""
        return self.parts.options()
