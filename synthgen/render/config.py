"""Settings of the render stage: their defaults (X-Paste's and the paper's) and their checks.

The CLI takes its defaults from :class:`RenderConfig`; :meth:`RenderConfig.fingerprint` is
what decides a bank's content (a resumed run must match it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

# X-Paste used runwayml/stable-diffusion-v1-5, which was removed from the hub in 2024; this is
# the official mirror of the same weights.
DEFAULT_SD_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DEFAULT_CLIP_MODEL = "ViT-L-14"
DEFAULT_CLIP_PRETRAINED = "openai"
DEFAULT_PROMPT = "a photo of a single {name}"
CLIP_TEXT = "a photo of {name}"
SCHEDULER = "DPMSolverMultistepScheduler"


def split_list(value: str | Sequence[str]) -> list[str]:
    items = value.split(",") if isinstance(value, str) else list(value)
    return [i.strip() for i in items if i and i.strip()]


@dataclass
class RenderConfig:
    """Every setting of a render run (CLI options map 1:1)."""

    out: str | Path
    per_category: int = 60
    sd_model: str = DEFAULT_SD_MODEL
    steps: int = 50
    guidance: float = 7.5
    size: int = 512
    prompt: str = DEFAULT_PROMPT
    clip_model: str = DEFAULT_CLIP_MODEL
    clip_pretrained: str | None = DEFAULT_CLIP_PRETRAINED
    cutout: Sequence[str] | str = ("u2net",)
    min_clip: float = 21.0
    tolerance: float = 1.0
    area: tuple[float, float] = (0.05, 0.95)
    min_per_category: int = 20
    batch_size: int = 8
    seed: int = 0
    gpus_per_worker: float = 1.0
    workers: int | None = None          # CPUs of the local Ray (None: all of this machine)
    ray_address: str | None = None
    object_store_mb: int = 2048         # object store of the local Ray (images in flight)
    keep_rejected: bool = False
    flush_interval: float = 10.0        # seconds between rebuilds of index.jsonl during a run

    def __post_init__(self) -> None:
        self.cutout = split_list(self.cutout)
        self.area = (float(self.area[0]), float(self.area[1]))
        if self.clip_pretrained == "":
            self.clip_pretrained = None

    def problems(self) -> list[str]:
        from synthgen.errors import UserError
        from synthgen.render.cutout import parse_cutout

        out = []
        try:
            self.cutout = [s.label for s in parse_cutout(self.cutout)]
        except UserError as exc:
            out.append(str(exc))
        checks = [
            (self.per_category >= 1, "--per-category must be >= 1"),
            (self.steps >= 1, "--steps must be >= 1"),
            (self.size >= 8 and self.size % 8 == 0, "--size must be a multiple of 8 (>= 8)"),
            ("{name}" in self.prompt, "--prompt must contain {name}"),
            (0.0 <= self.area[0] <= self.area[1] <= 1.0, "--area must be LO,HI with 0 <= LO <= HI <= 1"),
            (self.min_per_category >= 0, "--min-per-category must be >= 0"),
            (self.per_category >= self.min_per_category,
             f"--per-category {self.per_category} is below --min-per-category "
             f"{self.min_per_category}, so every category would be dropped and the bank would be "
             f"empty; lower --min-per-category to {self.per_category} or less (the paper keeps "
             f"categories with 20 of 60 objects), or raise --per-category"),
            (self.tolerance >= 0, "--tolerance must be >= 0"),
            (self.batch_size >= 1, "--batch-size must be >= 1"),
            (self.gpus_per_worker >= 0.01,
             "--gpus-per-worker must be >= 0.01 (at most 100 generators per GPU)"),
            (self.gpus_per_worker <= 1,
             f"--gpus-per-worker must be <= 1 (got {self.gpus_per_worker:g}): one Stable Diffusion "
             f"generator uses one GPU, more would sit idle; use 1, or a fraction <= 1 to share a GPU"),
            (self.workers is None or self.workers >= 1, f"--workers must be >= 1 (got {self.workers})"),
            (self.object_store_mb >= 64, "the object store needs at least 64 MB"),
        ]
        return out + [msg for ok, msg in checks if not ok]

    @property
    def filter(self):
        from synthgen.render.filter import FilterConfig

        return FilterConfig(min_clip=self.min_clip, tolerance=self.tolerance, area_lo=self.area[0],
                            area_hi=self.area[1], min_per_category=self.min_per_category)

    def fingerprint(self) -> dict:
        """The settings that decide the bank's content (a resumed run must match them)."""
        keys = ("per_category", "sd_model", "steps", "guidance", "size", "prompt", "clip_model",
                "clip_pretrained", "cutout", "min_clip", "tolerance", "area", "min_per_category",
                "seed")
        d = {k: getattr(self, k) for k in keys}
        d["area"] = list(d["area"])
        d["cutout"] = list(d["cutout"])
        d["scheduler"] = SCHEDULER
        d["clip_text"] = CLIP_TEXT
        return d


@dataclass(frozen=True)
class RenderJob:
    """A render run: the categories to render (``lvis``, ``coco``, ``voc``, a names file, or a
    list of names; narrowed by ``only`` then ``exclude``) and the settings."""

    config: RenderConfig
    categories: str | tuple[str, ...] = "lvis"
    categories_file: str | None = None
    exclude: tuple[str, ...] = ()
    only: tuple[str, ...] = ()
    prepared: str | None = None      # also write the finished bank's prepared form here (prepare-objects)
    prepared_size: int = 224         # ... at this canvas
