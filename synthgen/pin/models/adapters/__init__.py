"""VLM adapters: where PIN goes in each VLM family, and how prompts and answers are encoded.

- :mod:`.base`   the interface (:class:`VLMAdapter`) and the prompt/label codec (:class:`TextCodec`)
- :mod:`.blip2`  BLIP-2 (PIN before the Q-Former)
- :mod:`.openflamingo`  OpenFlamingo (PIN before the perceiver resampler)
- :mod:`.hf`     the shared machinery of the transformers image-text-to-text VLMs, and
  :mod:`.vlms` one small class per model: LLaVA, SmolVLM / Idefics3, Qwen2.5-VL, PaliGemma 2

``--vlm auto`` reads the family from the checkpoint (:func:`detect_family`).
"""

from __future__ import annotations

import os

import torch

from synthgen.errors import UserError
from synthgen.pin.models.adapters.base import TextCodec, VLMAdapter
from synthgen.pin.models.registry import (
    AUTO,
    DEFAULT_MODELS,
    FAMILIES,
    MODEL_TYPES,
    VLMS,
    typed_options,
    vlm_option_problems,
)

__all__ = ["TextCodec", "VLMAdapter", "adapter_class", "detect_family", "load_adapter"]


def adapter_class(vlm: str) -> type[VLMAdapter]:
    """The adapter class of a VLM family (its row in :mod:`synthgen.pin.models.registry`; imports
    no weights)."""
    if vlm not in FAMILIES:
        raise UserError(f"unknown --vlm {vlm!r}; choose one of: {', '.join(VLMS)} or {AUTO}")
    return FAMILIES[vlm].adapter_class()


def detect_family(model: str) -> str:
    """The VLM family of a checkpoint (hub id or local folder), from its config's ``model_type``
    (an OpenFlamingo folder or variant: by its ``checkpoint.pt`` / ``flamingo.json`` / hub id)."""
    from synthgen.pin.models.flamingo.variants import CHECKPOINT_FILE, MANIFEST_FILE, VARIANTS

    path = os.path.expanduser(str(model))
    if str(model) in VARIANTS or (os.path.isfile(path) and path.endswith(".pt")) or any(
            os.path.isfile(os.path.join(path, f)) for f in (CHECKPOINT_FILE, MANIFEST_FILE)):
        return "openflamingo"
    from transformers import PreTrainedConfig

    from synthgen.prefetch import check_hub

    check_hub(str(model), f"the config of {model!r} (--vlm auto)")  # (offline: one line at once)
    try:
        kind = PreTrainedConfig.get_config_dict(str(model))[0].get("model_type")
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"--vlm auto: cannot read the config of {model!r}: {first}") from None
    if kind not in MODEL_TYPES:
        raise UserError(f"--vlm auto: {model} is a {kind!r} model; PIN supports "
                        + ", ".join(f"{t} ({v})" for t, v in MODEL_TYPES.items()))
    return MODEL_TYPES[kind]


def load_adapter(vlm: str = "blip2", model: str | None = None, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, attn_implementation: str = "auto", **vlm_options) -> VLMAdapter:
    """The adapter for ``vlm`` (a family, or ``auto``: read from ``model``'s config) with weights
    from ``model`` (hub id or local dir; default per VLM) and the VLM's extra options
    (:data:`synthgen.pin.models.registry.VLM_OPTIONS`, e.g. OpenFlamingo's ``lm=``, Qwen2.5-VL's
    ``canvas=``), loaded in ``dtype`` on ``device`` with ``attn_implementation`` (sdpa,
    flash_attention_2, eager, or auto: transformers' choice; OpenFlamingo's own attention is
    always sdpa). The adapter's ``name``
    is the family resolved."""
    if vlm == AUTO:
        if not model:
            raise UserError("--vlm auto reads the VLM family from the checkpoint: give --model")
        vlm = detect_family(model)
    vlm_options = typed_options(vlm, vlm_options)  # (options typed on a command line come as text)
    if vlm not in DEFAULT_MODELS:
        raise UserError(f"unknown --vlm {vlm!r}; choose one of: {', '.join(VLMS)} or {AUTO}")
    problems = vlm_option_problems(vlm, vlm_options)
    if problems:
        raise UserError("; ".join(problems))
    model_id = model or DEFAULT_MODELS[vlm]
    cls = adapter_class(vlm)
    if vlm == "openflamingo":
        if attn_implementation not in ("auto", "sdpa"):
            raise UserError(f"--attn-implementation {attn_implementation}: OpenFlamingo's attention is synthgen's "
                            "own (torch sdpa); leave the option at auto")
        return cls(model_id, device=device, dtype=dtype, **vlm_options)
    return cls(model_id, device=device, dtype=dtype, attn_implementation=attn_implementation, **vlm_options)
