"""Helpers shared by the generator, the cut-out sessions and the CLIP scorer."""

from __future__ import annotations


def short(exc: BaseException, limit: int = 400) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def device_of(prefer: str | None = None) -> str:
    import torch

    if prefer:
        return prefer
    return "cuda" if torch.cuda.is_available() else "cpu"
