"""Which optional install (``pip install 'synthgen[EXTRA]'``) each stage needs, and the one-line
error when it is missing.

The core install is compose / prepare-backgrounds / preview / stats / export-coco / run: NumPy,
Pillow, Ray and WebDataset, no torch. The extras (declared in pyproject.toml, kept in step with
:data:`EXTRAS` by tests/test_extras.py):

* ``render``: Stable Diffusion (diffusers, torch), the CLIP filter (open_clip), cut-outs (rembg,
  onnxruntime);
* ``train``: train-pin / eval-pin / predict / import-pin / export-pin (torch, transformers,
  open_clip for OpenFlamingo's vision encoder, safetensors, peft for ``--method lora-vision``);
* ``remote``: s3:// paths (s3fs; gs:// and hf:// need gcsfs / huggingface_hub);
* ``demo``: render + train + what the offline demo draws its data with (scikit-image, onnx);
* ``all``: render + train + remote.
"""

from __future__ import annotations

import importlib.util

from synthgen.errors import UserError

#: the modules each extra provides that synthgen imports (import names, not package names)
EXTRAS: dict[str, tuple[str, ...]] = {
    "render": ("torch", "torchvision", "diffusers", "transformers", "accelerate", "safetensors",
               "open_clip", "rembg", "onnxruntime", "scipy"),
    "train": ("torch", "torchvision", "transformers", "accelerate", "safetensors", "open_clip",
              "huggingface_hub", "peft"),
    "demo": ("skimage", "onnx"),
    "remote": ("s3fs",),
}

#: the extra a command needs beyond the core install
COMMAND_EXTRA = {
    "render": "render",
    "train-pin": "train", "eval-pin": "train", "predict": "train",
    "import-pin": "train", "export-pin": "train",
    "demo": "demo", "demo-data": "demo",
    "prefetch": "all",
}


class MissingExtra(UserError):
    """An optional dependency is not installed: one line naming the pip command."""


def pip_command(extra: str) -> str:
    return f"pip install 'synthgen[{extra}]'"


def _extra_of_module(module: str) -> str | None:
    """The extra that installs ``module`` (``train`` for what render and train share)."""
    for extra in ("demo", "remote", "train", "render"):
        if module in EXTRAS[extra]:
            return extra
    return None


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(extra: str, what: str) -> None:
    """Raise :class:`MissingExtra` if a module of ``extra`` is missing (checked before any work,
    so a run does not start Ray and then die in a worker)."""
    wanted = [m for e in (("render", "train") if extra == "all" else (extra,)) for m in EXTRAS[e]]
    missing = [m for m in dict.fromkeys(wanted) if not _installed(m)]
    if missing:
        raise MissingExtra(f"{what} needs {', '.join(missing)}, which the core install leaves out: "
                           f"{pip_command(extra)}")


def missing_extra(exc: ModuleNotFoundError, command: str | None = None) -> MissingExtra | None:
    """The one-line error for an import of an optional dependency that failed, or ``None`` when
    the module is not one of synthgen's optional dependencies (a real bug: let it through)."""
    module = (exc.name or "").split(".")[0]
    by_module = _extra_of_module(module)
    if by_module is None:
        return None
    extra = by_module if by_module in ("demo", "remote") else COMMAND_EXTRA.get(command or "", by_module)
    what = f"synthgen {command}" if command in COMMAND_EXTRA else "this"
    return MissingExtra(f"{what} needs {module}, which the core install leaves out: {pip_command(extra)}")
