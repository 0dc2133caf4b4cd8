"""Stage 1: text-to-image with any diffusers pipeline (hub id or local directory).

X-Paste's setting: Stable Diffusion v1.5, DPM-Solver multistep, 50 steps, guidance 7.5, fp16 on
GPU. One ``torch.Generator`` per sample, seeded from :func:`synthgen.render.seeds.object_seed`,
so every image is reproducible on its own.

The NSFW safety checker of SD v1.x pipelines is not loaded: X-Paste decodes the latents itself,
so its checker never runs, and the checker replaces flagged images with black ones that would
only waste cut-out and scoring time. A pipeline that still flags images (one whose checker is not
a separate component) gets them rejected with reason ``nsfw_blacked_out`` instead of kept.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from synthgen.errors import ModelLoadError
from synthgen.render.filter import NSFW
from synthgen.render.models import device_of, short


def _sd_hint(model: str) -> str:
    return (f"cannot load the text-to-image model {model!r}: {{err}}. Pass a local directory with "
            f"--sd-model PATH (a diffusers pipeline saved with save_pretrained, with "
            f"model_index.json), or a hub id reachable from every worker (HF_HOME cache or network)")


def fetch_sd(model: str) -> str:
    """Resolve ``model`` at start: a local diffusers directory, or download (or find cached) the
    hub files. Raises :class:`ModelLoadError` naming the model."""
    if os.path.isdir(model):
        if not (Path(model) / "model_index.json").is_file():
            raise ModelLoadError(_sd_hint(model).format(err="no model_index.json in that directory"))
        return model
    from diffusers.utils import logging as dlog

    from synthgen.prefetch import hub_problem

    why = hub_problem(model)  # (offline: one line at once, no retries)
    if why is not None:
        raise ModelLoadError(_sd_hint(model).format(err=why))
    level = dlog.get_verbosity()
    dlog.set_verbosity_error()  # the error below says it all; no "will try the cache" noise
    try:
        from diffusers import DiffusionPipeline

        return str(DiffusionPipeline.download(model))
    except Exception as exc:
        raise ModelLoadError(_sd_hint(model).format(err=short(exc))) from None
    finally:
        dlog.set_verbosity(level)


def no_safety_checker_kwargs(model: str) -> dict:
    """``from_pretrained`` kwargs that leave out the NSFW safety checker, for pipelines that have
    one (``safety_checker`` in ``model_index.json`` or in the pipeline class's signature); empty
    for pipelines without it (or when the pipeline's config cannot be read here)."""
    import inspect

    import diffusers
    from diffusers import DiffusionPipeline

    cfg = None
    for local_only in (True, False):  # the cache first (fetch_sd filled it): no network round trip
        try:
            cfg = dict(DiffusionPipeline.load_config(model, local_files_only=local_only))
            break
        except Exception:
            if os.path.isdir(model):
                break
    if cfg is None:
        return {}
    cls = getattr(diffusers, str(cfg.get("_class_name", "")), None)
    try:
        params = inspect.signature(cls.__init__).parameters if cls is not None else {}
    except (TypeError, ValueError):
        params = {}
    kw: dict = {}
    if "safety_checker" in cfg or "safety_checker" in params:
        kw["safety_checker"] = None
        if "requires_safety_checker" in cfg or "requires_safety_checker" in params:
            kw["requires_safety_checker"] = False
    return kw


def images_and_reasons(out) -> tuple[np.ndarray, list[str | None]]:
    """A pipeline's output (``output_type="np"``) -> uint8 ``[B, H, W, 3]`` and, per image, the
    reason to reject it before any further work: ``NSFW`` when the pipeline's own safety checker
    flagged it (and blacked it out), else ``None``."""
    images = np.asarray(out.images, dtype=np.float32)
    images = (np.clip(images, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    flags = getattr(out, "nsfw_content_detected", None)
    if flags is None:
        flags = getattr(out, "nsfw_detected", None)  # DeepFloyd IF's name for it
    if flags is None:
        flags = [False] * len(images)
    flags = [bool(f) for f in np.asarray(flags, dtype=bool).reshape(-1)]
    if len(flags) != len(images):
        raise ValueError(f"{len(flags)} NSFW flags for {len(images)} images")
    return images, [NSFW if f else None for f in flags]


class Generator:
    """Loads the pipeline once (without its NSFW safety checker); ``__call__(prompts, seeds)`` ->
    uint8 ``[B, size, size, 3]`` and one rejection reason (or ``None``) per image."""

    def __init__(self, model: str, *, steps: int = 50, guidance: float = 7.5, size: int = 512,
                 device: str | None = None, scheduler: str = "dpm-multistep"):
        import torch
        from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler
        from diffusers.utils import logging as dlogging
        from transformers.utils import logging as tlogging

        dlogging.disable_progress_bar()  # loading bars; sampling bars are disabled below
        tlogging.disable_progress_bar()
        self.device = device_of(device)
        self.dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        try:
            pipe = DiffusionPipeline.from_pretrained(model, dtype=self.dtype,
                                                     **no_safety_checker_kwargs(model))
        except Exception as exc:
            raise ModelLoadError(_sd_hint(model).format(err=short(exc))) from None
        if scheduler == "dpm-multistep":
            pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe.to(self.device)
        self.steps, self.guidance, self.size = int(steps), float(guidance), int(size)

    def __call__(self, prompts: Sequence[str], seeds: Sequence[int]
                 ) -> tuple[np.ndarray, list[str | None]]:
        import torch

        # CPU generators: the initial noise is the same on every device.
        gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        with torch.inference_mode():
            out = self.pipe(list(prompts), generator=gens, num_inference_steps=self.steps,
                            guidance_scale=self.guidance, height=self.size, width=self.size,
                            output_type="np")
        return images_and_reasons(out)
