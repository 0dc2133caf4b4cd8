"""VLM adapters: where PIN goes in each VLM family, and how prompts and answers are encoded.

- :mod:`.base`   the interface (:class:`VLMAdapter`) and the prompt/label codec (:class:`TextCodec`)
- :mod:`.blip2`  BLIP-2 (PIN before the Q-Former)
- :mod:`.openflamingo`  OpenFlamingo (PIN before the perceiver resampler)
"""

from __future__ import annotations

import torch

from synthgen.errors import UserError
from synthgen.pin.adapters.base import TextCodec, VLMAdapter
from synthgen.pin.config import DEFAULT_MODELS, VLMS, vlm_option_problems

__all__ = ["TextCodec", "VLMAdapter", "load_adapter"]


def load_adapter(vlm: str = "blip2", model: str | None = None, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, **vlm_options) -> VLMAdapter:
    """The adapter for ``vlm`` with weights from ``model`` (hub id or local dir; default per VLM)
    and the VLM's extra options (:data:`synthgen.pin.config.VLM_OPTIONS`, e.g. OpenFlamingo's
    ``lm=``)."""
    if vlm not in DEFAULT_MODELS:
        raise UserError(f"unknown --vlm {vlm!r}; choose one of: {', '.join(VLMS)}")
    problems = vlm_option_problems(vlm, vlm_options)
    if problems:
        raise UserError("; ".join(problems))
    model_id = model or DEFAULT_MODELS[vlm]
    if vlm == "blip2":
        from synthgen.pin.adapters.blip2 import Blip2Adapter

        return Blip2Adapter(model_id, device=device, dtype=dtype)
    if vlm == "openflamingo":
        from synthgen.pin.adapters.openflamingo import OpenFlamingoAdapter

        return OpenFlamingoAdapter(model_id, device=device, dtype=dtype, **vlm_options)
    raise AssertionError(vlm)
