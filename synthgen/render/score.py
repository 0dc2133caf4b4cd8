"""Stage 3: CLIP score of a cut-out (X-Paste).

``score = 100 * cos(image_embedding, text_embedding("a photo of {name}"))`` with the cut-out
composited on white. Any open_clip model: a built-in name with a ``pretrained`` tag or checkpoint
file (``ViT-L-14`` + ``openai``, X-Paste's CLIP), ``hf-hub:org/repo``, or a local directory
(``local-dir:PATH`` or just ``PATH``) holding ``open_clip_config.json`` and the weights.

The model gets the activation its weights were trained with (:mod:`synthgen.clip_models`):
QuickGELU for the ``openai`` tag, as X-Paste's open_clip 2.x built it (open_clip 3.x would build
GELU and only warn, which shifts every score). A checkpoint file takes the name's activation:
OpenAI's weights as a file go with ``ViT-L-14-quickgelu``.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from synthgen.errors import ModelLoadError
from synthgen.render.config import CLIP_TEXT, DEFAULT_CLIP_MODEL, DEFAULT_CLIP_PRETRAINED
from synthgen.render.models import device_of, short


def resolve_clip(model: str, pretrained: str | None) -> tuple[str, str | None]:
    """(open_clip model name, pretrained) with a plain directory turned into ``local-dir:``."""
    if not model.startswith(("hf-hub:", "local-dir:")) and os.path.isdir(model):
        model = f"local-dir:{model}"
    if model.startswith(("hf-hub:", "local-dir:")):
        return model, None
    return model, (pretrained or None)


def _clip_hint(model: str, pretrained: str | None, err: str) -> str:
    what = model + (f" (pretrained {pretrained!r})" if pretrained else "")
    return (f"cannot load the CLIP model {what}: {err}. Pass a local copy: --clip-pretrained "
            f"/path/to/checkpoint.bin with a built-in --clip-model name (OpenAI's weights: "
            f"ViT-L-14-quickgelu), or --clip-model PATH (a directory with open_clip_config.json "
            f"and weights, as on the hub)")


def fetch_clip(model: str, pretrained: str | None) -> None:
    """Validate the model name and make sure the weights are available (downloads them into the
    cache once). Raises :class:`ModelLoadError`."""
    from synthgen.prefetch import hub_problem

    def check_hub(repo: str) -> None:  # (offline: one line at once, with the way to a local copy)
        why = hub_problem(repo)
        if why is not None:
            raise ModelLoadError(_clip_hint(model, pretrained, why))

    name, tag = resolve_clip(model, pretrained)
    try:
        import open_clip
        from open_clip.factory import get_model_config

        if name.startswith("local-dir:"):
            path = name[len("local-dir:"):]
            if not os.path.isfile(os.path.join(path, "open_clip_config.json")):
                raise FileNotFoundError(f"no open_clip_config.json in {path}")
            return
        if name.startswith("hf-hub:"):
            check_hub(name[len("hf-hub:"):])
            get_model_config(name)
            open_clip.pretrained.download_pretrained_from_hf(name[len("hf-hub:"):])
            return
        if name not in open_clip.list_models():
            raise ValueError("unknown open_clip model name (see open_clip.list_models())")
        if tag is None or os.path.isfile(tag):
            return
        cfg = open_clip.get_pretrained_cfg(name, tag)
        if not cfg:
            raise ValueError(f"unknown pretrained tag; known for {name}: "
                             f"{', '.join(open_clip.list_pretrained_tags_by_model(name))}")
        if cfg.get("hf_hub"):  # (weights on the hub: offline, one line at once; others come from a URL)
            check_hub("/".join(cfg["hf_hub"].strip("/").split("/")[:2]))
        open_clip.download_pretrained(cfg)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(_clip_hint(model, pretrained, short(exc))) from None


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    a = rgba[..., 3:4].astype(np.float32) / 255.0
    rgb = rgba[..., :3].astype(np.float32) * a + 255.0 * (1.0 - a)
    return (rgb + 0.5).astype(np.uint8)


class Scorer:
    """``__call__(rgba_images, names)`` -> float32 scores (100 x cosine), computed in batches."""

    def __init__(self, model: str = DEFAULT_CLIP_MODEL, pretrained: str | None = DEFAULT_CLIP_PRETRAINED,
                 *, device: str | None = None, batch_size: int = 64, text: str = CLIP_TEXT):
        import open_clip
        import torch

        from synthgen.clip_models import quick_gelu_kwargs

        name, tag = resolve_clip(model, pretrained)
        self.device = device_of(device)
        try:
            m, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=tag, device=self.device,
                                                                      **quick_gelu_kwargs(name, tag))
            self.tokenizer = open_clip.get_tokenizer(name)
        except Exception as exc:
            raise ModelLoadError(_clip_hint(model, pretrained, short(exc))) from None
        self.model = m.eval()
        if self.device.startswith("cuda"):
            self.model = self.model.half()
        self.dtype = next(self.model.parameters()).dtype
        self.preprocess = preprocess
        self.batch_size = int(batch_size)
        self.text = text
        self._text_cache: dict[str, "torch.Tensor"] = {}

    def _text_features(self, names: Sequence[str]):
        import torch

        missing = sorted({n for n in names if n not in self._text_cache})
        if missing:
            tokens = self.tokenizer([self.text.replace("{name}", n) for n in missing]).to(self.device)
            with torch.inference_mode():
                feats = self.model.encode_text(tokens).float()
            feats = feats / feats.norm(dim=-1, keepdim=True)
            for n, f in zip(missing, feats):
                self._text_cache[n] = f
        return torch.stack([self._text_cache[n] for n in names])

    def __call__(self, rgba_images: Sequence[np.ndarray], names: Sequence[str]) -> np.ndarray:
        import torch
        from PIL import Image

        if len(rgba_images) != len(names):
            raise ValueError("one name per image")
        scores = np.zeros(len(names), dtype=np.float32)
        for start in range(0, len(names), self.batch_size):
            imgs = rgba_images[start:start + self.batch_size]
            batch = torch.stack([self.preprocess(Image.fromarray(composite_on_white(im)))
                                 for im in imgs]).to(self.device, self.dtype)
            with torch.inference_mode():
                feats = self.model.encode_image(batch).float()
            feats = feats / feats.norm(dim=-1, keepdim=True)
            text = self._text_features(list(names[start:start + self.batch_size]))
            scores[start:start + len(imgs)] = (100.0 * (feats * text).sum(-1)).cpu().numpy()
        return scores
