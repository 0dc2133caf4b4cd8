"""Robust image decoding shared by the background and object readers.

Every real-world oddity is either normalised or turned into a :class:`Skip` with a reason:
EXIF orientation is applied; CMYK, palette (with or without transparency), 16-bit, float,
grayscale and bilevel images become 8-bit RGB(A); truncated/corrupt files, decompression bombs
(Pillow's guard stays on) and images too small to use are skipped. Large JPEGs are decoded at
reduced size with ``draft`` when that cannot lose resolution for the target canvas.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps

Source = Union[str, Path, bytes, BinaryIO]


@dataclass(frozen=True)
class Skip:
    """An input that cannot be used, with the reason (a short snake_case word)."""

    reason: str
    detail: str = ""


def _open(src: Source) -> Image.Image:
    if isinstance(src, (bytes, bytearray)):
        src = io.BytesIO(src)
    return Image.open(src)


def _to_8bit(img: Image.Image) -> Image.Image:
    """Bring high-bit-depth single-channel modes to 8-bit ``L`` by scaling, not clipping."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16"):
            scale = 255.0 / 65535.0
        else:
            top = float(np.nanmax(arr)) if arr.size else 0.0
            scale = 255.0 / 65535.0 if top > 255.0 else (255.0 if img.mode == "F" and top <= 1.0 else 1.0)
            arr = np.nan_to_num(arr)
        arr = np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(arr)
    return img


def normalise(img: Image.Image, keep_alpha: bool) -> Image.Image:
    """EXIF-rotate and convert any Pillow mode to ``RGB`` (or ``RGBA`` with ``keep_alpha``)."""
    img = ImageOps.exif_transpose(img)
    img = _to_8bit(img)
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode == "P" and "transparency" in img.info) or (
        img.mode in ("L", "RGB") and "transparency" in img.info)
    if keep_alpha:
        return img.convert("RGBA") if img.mode != "RGBA" else img
    if has_alpha:
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return img.convert("RGB") if img.mode != "RGB" else img


def has_alpha_channel(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


def decode(src: Source, *, keep_alpha: bool = False, draft_to: int | None = None,
           min_side: int = 1) -> Image.Image | Skip:
    """Decode ``src`` into an RGB/RGBA image or a :class:`Skip`. ``draft_to`` lets JPEGs decode
    at a reduced scale that keeps both sides at least ``draft_to`` pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = _open(src)
            if draft_to and img.format == "JPEG":
                img.draft("RGB" if img.mode != "CMYK" else "CMYK", (draft_to, draft_to))
            img.load()
    except Image.DecompressionBombError as exc:
        return Skip("decompression_bomb", str(exc)[:200])
    except FileNotFoundError as exc:
        return Skip("missing", str(exc)[:200])
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a skip, never a crash
        return Skip("unreadable", f"{type(exc).__name__}: {str(exc)[:200]}")
    if keep_alpha and not has_alpha_channel(img):
        return Skip("no_alpha", f"mode {img.mode} has no alpha channel")
    if min(img.size) < min_side:
        return Skip("too_small", f"{img.size[0]}x{img.size[1]} < {min_side}px")
    try:
        return normalise(img, keep_alpha=keep_alpha)
    except Exception as exc:  # noqa: BLE001
        return Skip("unreadable", f"{type(exc).__name__}: {str(exc)[:200]}")


def fit_square(img: Image.Image, size: int, fit: str, rng: np.random.Generator) -> Image.Image:
    """Fit an RGB image to the ``size`` x ``size`` canvas: ``squash`` resizes without keeping the
    aspect ratio (the paper); ``crop`` takes a random square crop of the shorter side first."""
    if fit == "crop":
        w, h = img.size
        side = min(w, h)
        x0 = int(rng.integers(0, w - side + 1))
        y0 = int(rng.integers(0, h - side + 1))
        img = img.crop((x0, y0, x0 + side, y0 + side))
    elif fit != "squash":
        raise ValueError(f"unknown fit {fit!r}")
    if img.size == (size, size):
        return img
    return img.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)


def encode_jpeg(arr: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def encode_png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()
