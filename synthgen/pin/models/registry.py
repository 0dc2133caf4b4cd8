"""The VLM families PIN supports: one row each, the one table every part of synthgen reads.

A row says what ``--vlm NAME`` is: its default checkpoint (``--model``), the transformers config
``model_type`` values that ``--vlm auto`` maps to it, the extra options its adapter takes
(``--vlm-option KEY=VALUE``: name -> ``str``, ``int`` or a tuple of allowed values), and the adapter
class (imported only when a model is loaded). Light: no torch import.

Adding a family: write its adapter (:mod:`.adapters`), add its row here, and a tiny builder for the
tests (:mod:`synthgen.demo`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Mapping

AUTO = "auto"  # --vlm auto: the family read from the checkpoint's config (adapters.detect_family)
_ADAPTERS = "synthgen.pin.models.adapters"


@dataclass(frozen=True)
class Family:
    name: str                       # --vlm
    title: str                      # in messages
    default_model: str              # hub id of the default checkpoint
    model_types: tuple[str, ...]    # transformers config model_type values it takes (--vlm auto)
    adapter: str                    # "module:Class" of its adapter
    options: Mapping[str, Any] = field(default_factory=dict)  # --vlm-option name -> str | int | choices

    def adapter_class(self):
        module, _, cls = self.adapter.partition(":")
        return getattr(importlib.import_module(module), cls)


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("blip2", "BLIP-2", "Salesforce/blip2-opt-2.7b", ("blip-2",), f"{_ADAPTERS}.blip2:Blip2Adapter"),
    # see synthgen.pin.models.flamingo.variants for what the OpenFlamingo options choose
    Family("openflamingo", "OpenFlamingo", "openflamingo/OpenFlamingo-3B-vitl-mpt1b-langinstruct", (),
           f"{_ADAPTERS}.openflamingo:OpenFlamingoAdapter",
           {"lm": str, "tokenizer": str, "vision": str, "vision_pretrained": str, "cross_attn_every": int,
            "vision_tokens": ("raw", "ln_post")}),
    Family("llava", "LLaVA", "llava-hf/llava-1.5-7b-hf", ("llava",), f"{_ADAPTERS}.vlms:LlavaAdapter"),
    Family("smolvlm", "SmolVLM", "HuggingFaceTB/SmolVLM2-2.2B-Instruct", ("smolvlm", "idefics3"),
           f"{_ADAPTERS}.vlms:SmolVLMAdapter"),
    # canvas: the square side its dynamic resolution is pinned to (a multiple of 28)
    Family("qwen2_5_vl", "Qwen2.5-VL", "Qwen/Qwen2.5-VL-3B-Instruct", ("qwen2_5_vl",),
           f"{_ADAPTERS}.vlms:Qwen25VLAdapter", {"canvas": int}),
    Family("paligemma", "PaliGemma", "google/paligemma2-3b-pt-224", ("paligemma",),
           f"{_ADAPTERS}.vlms:PaliGemmaAdapter"),
)}

VLMS = tuple(FAMILIES)
DEFAULT_MODELS = {f.name: f.default_model for f in FAMILIES.values()}
MODEL_TYPES = {t: f.name for f in FAMILIES.values() for t in f.model_types}
VLM_OPTIONS = {f.name: dict(f.options) for f in FAMILIES.values()}


def vlm_option_problems(vlm: str, options) -> list[str]:
    """Problems with the extra options of ``vlm`` (their names and value types)."""
    if not isinstance(options, dict):
        return [f"VLM options must be a mapping of names to values, got {type(options).__name__}"]
    allowed = VLM_OPTIONS.get(vlm, {})
    if options and not allowed:
        return [f"--vlm {vlm} takes no VLM options, got {', '.join(map(str, options))}"]
    out = [f"unknown {vlm} option {k!r}; the options are {', '.join(allowed)}" for k in options if k not in allowed]
    for k, v in options.items():
        kind = allowed.get(k)
        if v is None:  # not set
            continue
        if isinstance(kind, tuple) and v not in kind:
            out.append(f"{vlm} option {k} must be one of {', '.join(kind)}, got {v!r}")
        elif kind is int and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            out.append(f"{vlm} option {k} must be a positive integer, got {v!r}")
        elif kind is str and not (isinstance(v, str) and v.strip()):
            out.append(f"{vlm} option {k} must be a non-empty string, got {v!r}")
    return out


def typed_options(vlm: str, options) -> dict:
    """``options`` with text values of integer options as integers (``--vlm-option cross_attn_every=2``
    comes as text; a recipe's YAML already typed it). Other values are left as they are: a wrong one
    is named by :func:`vlm_option_problems`."""
    kinds = VLM_OPTIONS.get(vlm, {})
    return {k: int(v) if kinds.get(k) is int and isinstance(v, str) and v.strip().isdigit() else v
            for k, v in dict(options or {}).items()}


# --- train-pin --method: which families each method fits (synthgen.pin.models.methods) ------------

# families with the method's place; a method not listed fits every family
METHOD_FAMILIES = {
    # a fusion network that reads any number of vision tokens (Q-Former, perceiver)
    "vpt-fusion": ("blip2", "openflamingo"),
    # a vision encoder whose token sequence can grow (no window order, no per-patch mask)
    "vpt-vision": ("blip2", "openflamingo", "llava", "paligemma"),
}
_WHY_NOT = {
    "vpt-fusion": "its fusion network maps each vision token to a fixed LLM position, so appended tokens have "
                  "no place (vpt-fusion needs a Q-Former or perceiver",
    "vpt-vision": "its vision encoder's token layout is fixed (window order or a per-patch attention mask), "
                  "so appended tokens have no place (vpt-vision works on",
}


def method_refusal(method: str, family: str) -> str | None:
    """Why ``method`` has no place in ``family`` (one line), or None."""
    fits = METHOD_FAMILIES.get(method)
    if fits is None or family in fits:
        return None
    return f"--method {method} does not fit --vlm {family}: {_WHY_NOT[method]}: {', '.join(fits)})"


def method_options(method: str, options) -> dict:
    """The method's size options (``tokens``; ``r``/``alpha``) with the paper's defaults, text
    values as integers; a wrong name or value is one line."""
    from synthgen.errors import UserError
    from synthgen.pin.models import METHOD_OPTIONS

    allowed = METHOD_OPTIONS.get(method, {})
    out = dict(allowed)
    for k, v in dict(options or {}).items():
        if k not in allowed:
            takes = f"the options {', '.join(allowed)}" if allowed else "no --method-option"
            raise UserError(f"--method {method} takes {takes}, got {k!r}")
        text = str(v).strip()
        if isinstance(v, bool) or not text.isdigit() or int(text) < 1:
            raise UserError(f"--method-option {k} must be a positive integer, got {v!r}")
        out[k] = int(text)
    return out
