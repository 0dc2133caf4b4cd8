"""BLIP-2 (transformers ``Blip2ForConditionalGeneration``, default ``Salesforce/blip2-opt-2.7b``).

PIN is added to ``vision_model``'s output (``last_hidden_state``, which already ends with the
vision post-layernorm), i.e. right before the Q-Former, through a forward hook that both
``forward`` and ``generate`` go through. Only decoder-only (OPT) BLIP-2 checkpoints fit PIN's
prompt/label layout.
"""

from __future__ import annotations

from pathlib import Path

import torch

from synthgen.errors import UserError
from synthgen.pin.models.adapters.base import PinFn, PixelsTextAdapter, TextCodec, pretrained_placement
from synthgen.pin.models.registry import DEFAULT_MODELS
from synthgen.prefetch import check_hub


class Blip2Adapter(PixelsTextAdapter):
    """BLIP-2 from transformers; PIN added to ``vision_model`` output, before the Q-Former."""

    name = "blip2"

    def __init__(self, model_id: str = DEFAULT_MODELS["blip2"], *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, attn_implementation: str = "auto") -> None:
        # a local checkpoint is recorded by absolute path so a run can be evaluated from anywhere
        self.model_id = str(Path(model_id).resolve()) if Path(model_id).exists() else str(model_id)
        check_hub(self.model_id, f"BLIP-2 from {self.model_id!r}")  # (offline: one line at once)
        from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.device = torch.device(device)
        self.dtype = dtype
        try:
            config = Blip2Config.from_pretrained(self.model_id)
            # before the weights: the prompt/label layout (image tokens + prompt + answer in one
            # sequence, -100 on the prompt) is that of a decoder-only LM (OPT); the Flan-T5
            # checkpoints put the prompt in an encoder and the answer in a decoder
            if not getattr(config, "use_decoder_only_language_model", True):
                raise UserError(
                    f"{self.model_id} is a BLIP-2 with an encoder-decoder language model "
                    f"({config.text_config.model_type}); PIN needs a decoder-only BLIP-2 such as "
                    f"{DEFAULT_MODELS['blip2']}")
            self.processor = Blip2Processor.from_pretrained(self.model_id)
            model = Blip2ForConditionalGeneration.from_pretrained(
                self.model_id, config=config, **pretrained_placement(self.device, dtype, attn_implementation))
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"cannot load BLIP-2 from {self.model_id!r}: {first}") from None
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        cfg = self.model.config
        if cfg.image_token_index is None:
            raise UserError(f"{self.model_id}: config has no image_token_index; transformers 5 needs "
                            "a BLIP-2 checkpoint whose input_ids carry the image tokens")
        vc = cfg.vision_config
        self.input_size = int(vc.image_size)
        self.patch_grid = int(vc.image_size) // int(vc.patch_size)
        self.num_positions = self.patch_grid ** 2 + 1  # + CLS
        self.vision_width = int(vc.hidden_size)
        ip = self.processor.image_processor
        self.set_pixel_normalisation(ip.image_mean, ip.image_std, float(getattr(ip, "rescale_factor", None) or 1 / 255))
        self.codec = TextCodec(self.processor.tokenizer, int(cfg.num_query_tokens),
                               int(cfg.image_token_index))
        self._pin: PinFn | None = None
        self._enabled = True
        self._hook = self.model.vision_model.register_forward_hook(self._add_pin)

    # PIN ---------------------------------------------------------------------------------
    def _add_pin(self, module, args, output):
        output.last_hidden_state = self._add_pin_to(output.last_hidden_state)
        return output

    def frozen_towers(self) -> tuple[str, ...]:
        return ("vision_model",)

    def generate_options(self) -> dict:
        return {"eos_token_id": self.codec.tokenizer.eos_token_id}
