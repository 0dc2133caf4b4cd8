"""Images in and out, for every stage: decode (or :class:`Skip`), fit to the canvas, encode.

Every real-world oddity is either normalised or turned into a :class:`Skip` with a reason:
EXIF orientation is applied; CMYK, palette (with or without transparency), 16-bit, float,
grayscale and bilevel images become 8-bit RGB(A); truncated/corrupt files, decompression bombs
(Pillow's guard stays on) and images too small to use are skipped. Large JPEGs are decoded at
reduced size with ``draft`` when that cannot lose resolution for the target canvas.

:func:`fit_square` is the one way an image becomes the square canvas: compose uses it for
backgrounds, evaluation and ``predict`` for the images they query (:func:`load_canvas`), so a
model sees its inputs resampled the same way in training and evaluation.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps

from synthgen.errors import Skip, UserError
from synthgen.storage.local import regular_file

Source = Union[str, Path, bytes, BinaryIO]

# file suffixes read as images (objects, backgrounds, evaluation sets)
IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})

# The largest image decoded in full: Pillow's own warning threshold (~89.5 MP; its error, the
# decompression bomb, is at twice that). A JPEG above it is still used when ``draft`` reduces it
# below; any other larger image is skipped as ``too_large`` (decoding a 144 MP PNG for a 224 px
# canvas costs ~1.2 GB and seconds per draw).
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


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


def normalise(img: Image.Image, keep_alpha: bool, orient: bool = True) -> Image.Image:
    """EXIF-rotate (unless ``orient`` is off) and convert any Pillow mode to ``RGB`` (or
    ``RGBA`` with ``keep_alpha``)."""
    if orient:
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
           min_side: int = 1, orient: bool = True, max_pixels: int = MAX_PIXELS) -> Image.Image | Skip:
    """Decode ``src`` into an RGB/RGBA image or a :class:`Skip`. ``draft_to`` lets JPEGs decode
    at a reduced scale that keeps both sides at least ``draft_to`` pixels; ``orient=False``
    keeps the stored pixel grid (annotations of evaluation sets refer to it). Only regular files
    are opened; images above ``max_pixels`` after the draft are skipped (``too_large``)."""
    if isinstance(src, (str, Path)):
        bad = regular_file(src)
        if bad is not None:
            return bad
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = _open(src)
            if draft_to and img.format == "JPEG":
                img.draft("RGB" if img.mode != "CMYK" else "CMYK", (draft_to, draft_to))
            if img.size[0] * img.size[1] > max_pixels:
                img.close()
                return Skip("too_large", f"{img.size[0]}x{img.size[1]} pixels (> {max_pixels:,}); "
                                         "only JPEGs this large are decoded, at reduced size")
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
        return normalise(img, keep_alpha=keep_alpha, orient=orient)
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


def load_canvas(src: str | Path | bytes, size: int, *, orient: bool = True, what: str = "image"
                ) -> tuple[np.ndarray, tuple[int, int]]:
    """An image squashed to the ``size`` x ``size`` canvas as uint8 ``[size, size, 3]``, and its
    full-resolution size ``(w, h)`` (after EXIF rotation with ``orient``); an unusable image is a
    one-line UserError naming ``what``."""
    img = decode(src, draft_to=size, orient=orient)
    if isinstance(img, Skip):
        raise UserError(f"{what}: {img.reason.replace('_', ' ')} ({img.detail})")
    with Image.open(io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else src) as im:
        w, h = im.size  # the header: the size before any draft reduction
        if orient and im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # a quarter turn
            w, h = h, w
    arr = np.asarray(fit_square(img, size, "squash", np.random.default_rng(0)))
    return arr.copy(), (int(w), int(h))


def encode_jpeg(img: np.ndarray | Image.Image, quality: int) -> bytes:
    """JPEG bytes of pixels only: no metadata of the image's source (Pillow would copy a decoded
    source's comment from ``img.info``)."""
    buf = io.BytesIO()
    (img if isinstance(img, Image.Image) else Image.fromarray(img)).save(
        buf, format="JPEG", quality=quality, comment=b"")
    return buf.getvalue()


def encode_png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()
