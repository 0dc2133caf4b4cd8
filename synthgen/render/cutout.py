"""Stage 2: cut-outs with rembg sessions.

Several sessions form X-Paste's ensemble: each session's mask becomes a candidate cut-out, the
scorer picks the candidate with the best CLIP score. Each mask is binarised at 128 (X-Paste), its
largest connected component is kept (holes filled, as X-Paste's filled outer contour), the soft
alpha is kept inside it, and the image is cropped tight to it. Candidates travel as PNG bytes.

Session specs: a rembg session name (``u2net``, ``isnet-general-use``, ``birefnet-general``, ...)
or ``u2net_custom:/path/model.onnx`` for a custom u2net-style ONNX model (rembg requires it to lie
under ``REMBG_HOME``/``U2NET_HOME``).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from synthgen.errors import ModelLoadError
from synthgen.render.models import short

CUSTOM_SESSIONS = ("u2net_custom", "dis_custom", "ben_custom")


@dataclass(frozen=True)
class SessionSpec:
    name: str
    model_path: str | None = None

    @property
    def label(self) -> str:
        return self.name if self.model_path is None else f"{self.name}:{self.model_path}"


def parse_cutout(spec: str | Sequence[str]) -> list[SessionSpec]:
    from synthgen.errors import UserError

    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        name, sep, path = item.partition(":")
        if sep and name in CUSTOM_SESSIONS:
            out.append(SessionSpec(name, path))
        elif sep:
            raise UserError(f"--cutout {item!r}: only {', '.join(CUSTOM_SESSIONS)} take a "
                            f"':MODEL_PATH'")
        elif name in CUSTOM_SESSIONS:
            raise UserError(f"--cutout {name} needs a model path: {name}:/path/to/model.onnx")
        else:
            out.append(SessionSpec(name))
    if not out:
        raise UserError("--cutout needs at least one rembg session name (e.g. u2net)")
    labels = [s.label for s in out]
    if len(set(labels)) != len(labels):
        raise UserError(f"--cutout lists a session twice: {','.join(labels)}")
    return out


def _cutout_hint(spec: SessionSpec, err: str) -> str:
    if spec.model_path is not None:
        how = ("the ONNX file must exist under rembg's model root (REMBG_HOME or U2NET_HOME, "
               "default ~/.rembg)")
    else:
        how = (f"rembg downloads it to REMBG_HOME (default ~/.rembg/models/{spec.name}/) on first "
               f"use; offline, copy the file there or pass u2net_custom:/path/to/model.onnx")
    return f"cannot load the cut-out model {spec.label!r}: {err}. {how}"


def fetch_cutout(spec: SessionSpec) -> None:
    """Make sure the session's model file is available (downloads it once; for custom models
    checks the path), without building the session. Raises :class:`ModelLoadError`."""
    try:
        from rembg.sessions import sessions

        if spec.name not in sessions:
            raise ValueError(f"unknown rembg session; known: {', '.join(sorted(sessions))}")
        cls = sessions[spec.name]
        if spec.model_path is not None:
            path = cls.download_models(model_path=spec.model_path)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"no such file: {path}")
        else:
            from synthgen.render.categories import _offline

            if _offline() and cls.resolve_existing(f"{spec.name}.onnx") is None:
                raise FileNotFoundError(f"offline and {spec.name}.onnx is not in "
                                        f"{cls.model_dir()}")
            cls.download_models()
    except Exception as exc:
        raise ModelLoadError(_cutout_hint(spec, short(exc))) from None


def new_session(spec: SessionSpec, providers: Sequence[str] | None = None):
    """A rembg session for ``spec`` on onnxruntime's ``providers`` (None: rembg's choice, CUDA
    whenever onnxruntime-gpu is installed, even where no GPU share was reserved)."""
    try:
        from rembg import new_session as _new
        from rembg.sessions import sessions

        if spec.name not in sessions:
            raise ValueError(f"unknown rembg session; known: {', '.join(sorted(sessions))}")
        import onnxruntime as ort

        # no busy-waiting ONNX threads: they slow down torch running in the same process
        opts = ort.SessionOptions()
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        kwargs = {} if providers is None else {"providers": list(providers)}  # (rembg wants a list)
        if spec.model_path is not None:
            kwargs["model_path"] = spec.model_path
        return _new(spec.name, sess_opts=opts, **kwargs)
    except Exception as exc:
        raise ModelLoadError(_cutout_hint(spec, short(exc))) from None


@dataclass
class Candidate:
    png: bytes               # b"" when the mask is empty
    area_fraction: float     # NaN when empty
    width: int
    height: int


def encode_png(rgba: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGBA"))


def mask_to_cutout(image: np.ndarray, mask: np.ndarray, threshold: int = 128) -> Candidate:
    """Largest connected component of ``mask > threshold`` (holes filled), soft alpha inside it,
    tight crop. ``area_fraction`` = component pixels / image pixels."""
    from scipy import ndimage

    h, w = mask.shape
    binary = mask > threshold
    labels, n = ndimage.label(binary, structure=np.ones((3, 3), bool))
    if n == 0:
        return Candidate(b"", float("nan"), 0, 0)
    sizes = np.bincount(labels.ravel())[1:]
    comp = ndimage.binary_fill_holes(labels == (int(np.argmax(sizes)) + 1))
    ys, xs = np.nonzero(comp)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    alpha = np.where(comp, mask, 0).astype(np.uint8)
    rgba = np.dstack([image[..., :3], alpha])[y0:y1, x0:x1]
    return Candidate(encode_png(np.ascontiguousarray(rgba)), float(comp.sum()) / float(h * w),
                     int(x1 - x0), int(y1 - y0))


class Cutter:
    """Holds one rembg session per spec (on onnxruntime's ``providers``, :func:`new_session`);
    ``__call__(images)`` -> per image, one candidate per session (same order as the specs)."""

    def __init__(self, specs: str | Sequence[str] | Sequence[SessionSpec],
                 providers: Sequence[str] | None = None):
        if isinstance(specs, str) or (specs and not isinstance(specs[0], SessionSpec)):
            specs = parse_cutout(specs)  # type: ignore[arg-type]
        self.specs: list[SessionSpec] = list(specs)  # type: ignore[arg-type]
        self.sessions = [new_session(s, providers) for s in self.specs]

    def masks(self, image: np.ndarray) -> list[np.ndarray]:
        from PIL import Image

        pil = Image.fromarray(image[..., :3])
        out = []
        for sess in self.sessions:
            m = sess.predict(pil)[0].convert("L")
            if m.size != pil.size:
                m = m.resize(pil.size, Image.Resampling.BILINEAR)
            out.append(np.asarray(m))
        return out

    def __call__(self, images: Sequence[np.ndarray]) -> list[list[Candidate]]:
        return [[mask_to_cutout(img, m) for m in self.masks(img)] for img in images]
