"""synthgen: synthetic grounding data for vision-language models (the PIN pipeline).

Stages: ``render`` (objects from text), ``compose`` (the composition function C over
backgrounds, written as WebDataset shards) and ``train-pin`` (PIN on a frozen VLM).
The Python API is the commands' (:mod:`synthgen.api`): ``synthgen.render(...)``,
``synthgen.compose(...)``, ``synthgen.prepare_backgrounds(...)``, ``synthgen.SceneGenerator``,
``synthgen.train_pin(...)``, ``synthgen.eval_pin(...)``, ``synthgen.predict(...)``, ...
ARCHITECTURE.md says where each concern lives. Heavy libraries (torch, diffusers, rembg, ray) are
imported lazily by the stage that needs them.
"""

from synthgen._version import __version__  # noqa: F401  (one place: pyproject reads it too)

# The Python API (synthgen/api.py), loaded on first use so `import synthgen` stays light.
# synthgen.compose, synthgen.render and synthgen.export are also packages: called, they are the API.
__all__ = ["render", "bank_from_annotations", "prepare_backgrounds", "prepare_objects", "compose", "SceneGenerator", "compose_params",
           "preview", "stats", "export", "export_coco", "train_pin", "eval_pin", "predict", "import_pin", "export_pin", "run"]
_LAZY = tuple(n for n in __all__ if n not in ("compose", "render", "export"))


def __getattr__(name: str):
    if name in ("compose", "render", "export"):
        import importlib

        return importlib.import_module(f"synthgen.{name}")
    if name in _LAZY:
        from synthgen import api

        return getattr(api, name)
    raise AttributeError(f"module 'synthgen' has no attribute {name!r}")
