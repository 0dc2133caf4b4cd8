"""open_clip models built with the activation their weights were trained with.

open_clip 3.x builds a built-in model name with the activation of the name's config, whatever the
weights: ``ViT-L-14`` gets GELU even with the ``openai`` weights, which were trained with
QuickGELU, and open_clip only warns ("QuickGELU mismatch"). open_clip 2.x, and so X-Paste's CLIP
and OpenFlamingo's vision encoder, built the OpenAI models with QuickGELU. The rule, written once
here for the render scorer (:mod:`synthgen.render.score`) and OpenFlamingo
(:mod:`synthgen.pin.models.flamingo.loading`):

* a built-in name with a pretrained **tag**: QuickGELU exactly when open_clip's pretrained entry
  for the tag says ``quick_gelu`` (``ViT-L-14`` + ``openai``: yes; ``ViT-L-14`` +
  ``laion2b_s32b_b82k``: no);
* a built-in name with a checkpoint **file**, or without weights: the name decides, as a file
  carries no activation. ``ViT-L-14`` is GELU and ``ViT-L-14-quickgelu`` QuickGELU, so OpenAI's
  weights saved as a file go with the ``-quickgelu`` name (OpenAI's own TorchScript ``.pt``
  release is refused by open_clip's ``weights_only`` loading; its conversion on the hub,
  ``timm/vit_large_patch14_clip_224.openai``, loads);
* ``hf-hub:org/repo`` and ``local-dir:DIR``: their ``open_clip_config.json`` decides
  (``"quick_gelu": true`` in its ``model_cfg``).

Light to import: open_clip is imported inside the functions.
"""

from __future__ import annotations

import os

from synthgen.errors import UserError

SCHEMAS = ("hf-hub:", "local-dir:")


def quick_gelu_kwargs(model: str, pretrained: str | None) -> dict:
    """Extra ``open_clip.create_model`` / ``create_model_and_transforms`` arguments that build
    ``model`` with the activation its weights ``pretrained`` (a tag, a file or None) were trained
    with (module doc): ``{"force_quick_gelu": bool}`` for a tag, ``{}`` where the model's own
    config decides. Raises :class:`UserError` for a value that is neither a tag of ``model`` nor
    an existing file."""
    import open_clip

    if not pretrained or model.startswith(SCHEMAS):
        return {}
    name = model.replace("/", "-")  # (as open_clip cleans names)
    tag = open_clip.get_pretrained_cfg(name, pretrained)
    if tag:
        return {"force_quick_gelu": bool(tag.get("quick_gelu", False))}
    if os.path.isfile(pretrained):
        return {}
    known = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
    raise UserError(f"unknown open_clip weights {pretrained!r} for {model}; known: {known}, or a file path")

