"""The Python API: one function per command, with the command's option names (underscored) and
defaults; the CLI is a thin layer over these functions.

    import synthgen

    bank = synthgen.render(categories="coco", out="objects/", per_category=60)
    synthgen.prepare_backgrounds("BG-20k/train", out="bg-448/")
    synthgen.compose(objects="objects/", backgrounds="bg-448/", out="shards/", num_samples=60_000, a_max=3)
    scenes = synthgen.SceneGenerator("objects/", "bg-448/", num_samples=1000)   # scene k in memory
    synthgen.train_pin("shards/", out="runs/pin", vlm="blip2", steps=1000)
    metrics = synthgen.eval_pin("runs/pin", coco_json="instances_val2017.json", images="val2017/")
    answer = synthgen.predict("runs/pin", "photo.jpg", "teddy bear")

Every function takes ``recipe=PATH`` as the commands' ``--recipe`` does (keyword arguments win
over the recipe), raises :class:`synthgen.errors.UserError` (one line) for bad input, and
resumes its output like the command. Nothing heavy is imported until a function is called.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from synthgen.errors import UserError, raise_problems
from synthgen.extras import require


def _recipe(recipe: str | Path | None, section: str) -> dict[str, Any]:
    from synthgen.recipes import load_recipe

    return load_recipe(recipe, section) if recipe is not None else {}


def _floats(value: Any, name: str) -> tuple[float, ...]:
    if isinstance(value, str):
        from synthgen.cli.common import floats

        return floats(value, f"--{name.replace('_', '-')}")
    try:
        return tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise UserError(f"{name} takes numbers (got {value!r})") from None


def _unknown(kind: str, names: Sequence[str], allowed: Sequence[str]) -> None:
    if names:
        raise UserError(f"{kind}: unknown option(s) {', '.join(sorted(names))} (known: {', '.join(sorted(allowed))})")


# --- compose -------------------------------------------------------------------------------


def compose_params(**options: Any):
    """:class:`~synthgen.compose.config.ComposeParams` from flat option names (``a_max``,
    ``s_min``, ``same_category_p``, ... as ``synthgen compose`` spells them); unknown names are
    a one-line error. Lists may be sequences or ``"0.3,0.2,0.1"``."""
    from synthgen.compose.config import ComposeParams, LayoutParams

    layout_names = {f.name for f in dataclasses.fields(LayoutParams)}
    param_names = {f.name for f in dataclasses.fields(ComposeParams)} - {"layout"}
    _unknown("compose", [k for k in options if k not in layout_names | param_names],
             sorted(layout_names | param_names))
    layout = {k: v for k, v in options.items() if k in layout_names and v is not None}
    for key in ("s_min", "s_max"):
        if key in layout:
            layout[key] = _floats(layout[key], key)
    rest = {k: v for k, v in options.items() if k in param_names and v is not None}
    return ComposeParams(layout=LayoutParams(**layout), **rest)


def compose_job(objects: str, backgrounds: str, out: str, num_samples: int | None = None, *,
                samples_per_shard: int = 1000, extra_object_roots: Sequence[str] = (),
                prepare_backgrounds: bool = False, min_usable: float | None = None,
                recipe: str | Path | None = None, **params: Any):
    """The :class:`~synthgen.compose.run.ComposeJob` that :func:`compose` runs."""
    from synthgen.compose.config import MIN_USABLE
    from synthgen.compose.run import ComposeJob

    rec = _recipe(recipe, "compose")
    num_samples = num_samples if num_samples is not None else rec.pop("num_samples", None)
    samples_per_shard = rec.pop("samples_per_shard", samples_per_shard)
    prepare_backgrounds = prepare_backgrounds or bool(rec.pop("prepare_backgrounds", False))
    if num_samples is None:
        raise UserError("num_samples is required (or compose.num_samples in the recipe)")
    return ComposeJob(objects=str(objects), backgrounds=str(backgrounds), out=str(out), num_samples=int(num_samples),
                      samples_per_shard=int(samples_per_shard), params=compose_params(**{**rec, **params}),
                      extra_object_roots=tuple(str(r) for r in extra_object_roots),
                      prepare_backgrounds=prepare_backgrounds,
                      min_usable=float(MIN_USABLE if min_usable is None else min_usable))


def compose(objects: str, backgrounds: str, out: str, num_samples: int | None = None, *,
            workers: int | None = None, ray_address: str | None = None, executor: str = "ray",
            progress: bool = True, echo: Callable[[str], None] | None = print, **options: Any) -> dict[str, Any]:
    """``synthgen compose``: write ``num_samples`` scenes as WebDataset shards under ``out``
    (resuming); the manifest. ``options``: the composition options (``a_max=3``, ``s_min=...``,
    ``seed``, ``masks``, ...), ``samples_per_shard``, ``extra_object_roots``,
    ``prepare_backgrounds``, ``min_usable`` (refuse a bank with a smaller usable fraction; 0: never),
    ``recipe``. ``echo`` gets the line about the bank read (None: quiet)."""
    from synthgen.compose.run import run_compose

    job = compose_job(objects, backgrounds, out, num_samples, **options)
    return run_compose(job, workers=workers, ray_address=ray_address, executor=executor, progress=progress,
                       echo=echo)


def prepare_backgrounds(backgrounds: str, out: str, *, size: int = 448, per_shard: int = 500,
                        jpeg_quality: int = 95, workers: int | None = None, ray_address: str | None = None,
                        executor: str = "ray", progress: bool = True) -> dict[str, Any]:
    """``synthgen prepare-backgrounds``: decode every background once, shorter side ``size``,
    into WebDataset shards; the manifest."""
    from synthgen.compose.prepare import PrepareJob
    from synthgen.compose.prepare import prepare_backgrounds as run_prepare

    job = PrepareJob(source=str(backgrounds), out=str(out), size=size, per_shard=per_shard, quality=jpeg_quality)
    return run_prepare(job, workers=workers, ray_address=ray_address, executor=executor, progress=progress)


class SceneGenerator:
    """Scenes of the composition function in memory, for a DataLoader or a notebook: item ``k``
    is the scene ``synthgen compose`` writes under key ``k`` with the same inputs and options
    (the same pixels before JPEG encoding, the same record). Picklable: each DataLoader worker
    opens the bank and lists the backgrounds once, on first use.

        gen = SceneGenerator("objects/", "bg/", num_samples=10_000, a_max=3, seed=0)
        scene = gen[0]   # .image (H, W, 3) uint8 (.canvas: PIL), .mask, .record (boxes, names, referral), .key
        loader = torch.utils.data.DataLoader(gen, batch_size=None, num_workers=4, collate_fn=...)
    """

    def __init__(self, objects: str, backgrounds: str, num_samples: int | None = None, *,
                 extra_object_roots: Sequence[str] = (), recipe: str | Path | None = None, **params: Any):
        rec = _recipe(recipe, "compose")
        for key in ("num_samples", "samples_per_shard", "prepare_backgrounds"):
            rec.pop(key, None)
        self.objects, self.backgrounds = str(objects), str(backgrounds)
        self.num_samples = num_samples
        self.extra_object_roots = tuple(str(r) for r in extra_object_roots)
        self.params = compose_params(**{**rec, **params})
        raise_problems(self.params.problems() if hasattr(self.params, "problems") else [])
        self._composer = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_composer": None}

    def composer(self):
        if self._composer is None:
            from synthgen.bank.reader import ObjectBank
            from synthgen.compose.backgrounds import list_backgrounds
            from synthgen.compose.scene import Composer

            bank = ObjectBank.open(self.objects, extra_roots=self.extra_object_roots, max_side=self.params.size)
            listing = list_backgrounds(self.backgrounds)
            if not listing.items:
                raise UserError(f"no usable backgrounds in {self.backgrounds}")
            self._composer = Composer(self.params, bank, listing.items)
        return self._composer

    def __len__(self) -> int:
        if self.num_samples is None:
            raise TypeError("SceneGenerator without num_samples is endless: iterate it, or give num_samples")
        return self.num_samples

    def __getitem__(self, k: int):
        if not isinstance(k, int) or k < 0 or (self.num_samples is not None and k >= self.num_samples):
            raise IndexError(f"scene {k!r} out of range")
        return self.composer().scene(k)

    def __iter__(self) -> Iterator:
        k = 0
        while self.num_samples is None or k < self.num_samples:
            yield self[k]
            k += 1


# --- render --------------------------------------------------------------------------------


def render(categories: str | Sequence[str], out: str, *, categories_file: str | None = None,
           exclude: str | Sequence[str] | None = None, only: str | Sequence[str] | None = None,
           recipe: str | Path | None = None, on_category: Callable[[str, dict], None] | None = None,
           **options: Any):
    """``synthgen render``: objects from text (Stable Diffusion -> rembg -> CLIP filter) into the
    object bank ``out``; the :class:`~synthgen.render.pipeline.RenderResult`. ``categories``:
    lvis, coco, voc, a names file, or a list of names; ``options``: RenderConfig's fields
    (``per_category``, ``sd_model``, ``steps``, ``workers``, ``ray_address``, ...)."""
    require("render", "synthgen.render()")
    from synthgen.render.categories import Category, select_categories
    from synthgen.render.config import RenderConfig
    from synthgen.render.pipeline import render as run_render

    names = {f.name for f in dataclasses.fields(RenderConfig)} - {"out"}
    kw = {**_recipe(recipe, "render"), **options}
    _unknown("render", [k for k in kw if k not in names], sorted(names))
    if "area" in kw and isinstance(kw["area"], str):
        kw["area"] = _floats(kw["area"], "area")
    cfg = RenderConfig(out=str(out), **kw)
    raise_problems(cfg.problems())
    if isinstance(categories, (list, tuple)):
        cats = [Category(str(name), None) for name in categories]
    else:
        cats = select_categories(categories, categories_file=categories_file, exclude=_csv(exclude),
                                 only=_csv(only)).categories
    return run_render(cats, cfg, on_category=on_category)


def _csv(value: str | Sequence[str] | None) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else ",".join(value)


# --- PIN -----------------------------------------------------------------------------------


def train_config(shards: str | Sequence[str] | None = None, *, recipe: str | Path | None = None, **options: Any):
    """The :class:`~synthgen.pin.training.config.TrainConfig` that :func:`train_pin` trains with."""
    from synthgen.pin.training.config import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    rec = _recipe(recipe, "train")
    kw = {**rec, **options}
    if kw.get("objects") is not None and "compose" not in options:
        kw["compose"] = _recipe(recipe, "compose")
    _unknown("train_pin", [k for k in kw if k not in names], sorted(names - {"shards"}))
    if isinstance(kw.get("hidden"), str):
        kw["hidden"] = tuple(int(v) for v in kw["hidden"].split(","))
    elif kw.get("hidden") is not None:
        kw["hidden"] = tuple(int(v) for v in kw["hidden"])
    return TrainConfig(shards=shards, **kw)


def train_pin(shards: str | Sequence[str] | None = None, *, recipe: str | Path | None = None,
              echo: Callable[[str], None] = print, **options: Any) -> dict[str, Any]:
    """``synthgen train-pin``: fit PIN on a frozen VLM from scene shards, or from scenes composed
    on the fly (``objects=``, ``backgrounds=``); the run's summary. ``options``: TrainConfig's
    fields (``out``, ``vlm``, ``model``, ``steps``, ``batch_size``, ``resume``, ...)."""
    require("train", "synthgen.train_pin()")
    from synthgen.pin.training.train import train

    return train(train_config(shards, recipe=recipe, **options), echo=echo)


def eval_pin(run: str, *, coco_json: str | None = None, voc: str | None = None, refcoco: str | None = None,
             images: str | None = None, split: str | None = None, **options: Any) -> dict[str, Any]:
    """``synthgen eval-pin``: score a run on one set (``coco_json`` + ``images``, ``voc``, or
    ``refcoco`` + ``images``) with the authors' protocol unless ``options`` say otherwise
    (``baseline``, ``article``, ``parse``, ... ``out``, ``model``, ``batch_size``, ``limit``);
    writes ``preds.jsonl`` + ``metrics.json`` and returns the metrics."""
    require("train", "synthgen.eval_pin()")
    from synthgen.pin.evaluation import evaluate as ev

    sets = [name for name, v in (("coco_json", coco_json), ("voc", voc), ("refcoco", refcoco)) if v is not None]
    if len(sets) != 1:
        raise UserError("give one of coco_json=, voc= or refcoco=" + (f" (got {' and '.join(sets)})" if sets else ""))
    if voc is not None:
        return ev.evaluate_voc(run, voc, split=split or "test", **options)
    if images is None:
        raise UserError("images= is required (the images of the set)")
    if refcoco is not None:
        return ev.evaluate_refcoco(run, refcoco, images, split=split or "testA", **options)
    if split is not None:
        raise UserError("split= applies to voc and refcoco only")
    return ev.evaluate_coco(run, coco_json, images, **options)


def predict(run: str, image: str, text: str, *, out: str | None = None, model: str | None = None,
            vlm_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``synthgen predict``: the box of ``text`` in ``image`` (original pixels), drawn to ``out``
    when given; ``{"box", "box_text", "parsed", "output", ...}``."""
    require("train", "synthgen.predict()")
    from synthgen.pin.evaluation.predict import predict as run_predict

    return run_predict(run, image, text, out=out, model=model, vlm_options=dict(vlm_options) if vlm_options else None)
