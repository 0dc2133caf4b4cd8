"""Settings of the compose stage: their defaults (the paper's) and their checks, in one place.

:class:`LayoutParams` decides where objects go (pure layout maths, :mod:`.layout`);
:class:`ComposeParams` everything else that decides a scene's content. Both are recorded in a
run's ``run.json`` and ``manifest.json``. The CLI takes its defaults from these classes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from synthgen.errors import raise_problems

# compose refuses a bank of which fewer than this fraction of the cut-outs are usable (--min-usable;
# 0: never). A check of the inputs, not a scene setting: not in ComposeParams, nor in run.json
MIN_USABLE = 0.5


def min_usable_problems(value: float) -> list[str]:
    return [] if 0.0 <= value <= 1.0 else [f"--min-usable must lie in [0, 1] (got {value})"]


@dataclass(frozen=True)
class LayoutParams:
    grid: int = 16
    a_max: int = 3
    fixed_count: bool = False
    s_min: tuple[float, ...] = (0.3, 0.2, 0.1)
    s_max: tuple[float, ...] = (1.0, 1.0, 1.0)
    o_max: float = 0.5
    min_visible: float = 0.5
    max_aspect_error: float = 0.1
    size_retries: int = 10

    def problems(self) -> list[str]:
        """Human-readable reasons why these parameters are invalid (empty when valid)."""
        out = []
        if self.grid < 1:
            out.append(f"--grid must be >= 1 (got {self.grid})")
        if self.a_max < 1:
            out.append(f"--a-max must be >= 1 (got {self.a_max})")
        for name, vals in (("--s-min", self.s_min), ("--s-max", self.s_max)):
            if len(vals) < self.a_max:
                out.append(f"{name} needs at least a_max={self.a_max} values (got {len(vals)}: "
                           f"{','.join(map(str, vals))})")
            if any(not (0 < v <= 1) for v in vals):
                out.append(f"{name} values must lie in (0, 1] (got {','.join(map(str, vals))})")
        for i, (lo, hi) in enumerate(zip(self.s_min, self.s_max)):
            if lo > hi:
                out.append(f"--s-min[{i}]={lo} is larger than --s-max[{i}]={hi}")
        if not (0.0 <= self.o_max <= 1.0):
            out.append(f"--o-max must lie in [0, 1] (got {self.o_max})")
        if not (0.0 <= self.min_visible <= 1.0):
            out.append(f"--min-visible must lie in [0, 1] (got {self.min_visible})")
        if not (self.max_aspect_error >= 0):  # also refuses NaN
            out.append(f"--max-aspect-error must be >= 0 (got {self.max_aspect_error})")
        if self.size_retries < 1:
            out.append(f"size retries must be >= 1 (got {self.size_retries})")
        return out


@dataclass(frozen=True)
class ComposeParams:
    """Everything that decides the content of the scenes (recorded in the manifest)."""

    layout: LayoutParams = field(default_factory=LayoutParams)
    size: int = 224
    same_category_p: float = 0.0      # Table 1 (recipes/pin-refcoco.yaml: 0.7 for RefCOCO)
    repeat_rule: str = "previous"     # the authors': repeat the previous category, pairs only
    object_sampling: str = "pairs"    # the authors': uniform over (category, image) pairs
    strip_qualifiers: bool = True     # the authors': "bow (weapon)" is asked for as "bow"
    paste: str = "soft"               # the authors': blend with the cut-out's soft alpha
    paste_alpha: int = 64             # alpha from which a pixel belongs to the object (box, mask)
    absolute_referral_p: float = 0.0
    referral_grammar: str = "grammatical"  # English phrases; "authors": their templates (cup on below)
    depth_overlap: float = 0.75
    background_fit: str = "squash"
    min_background_side: int = 32
    masks: bool = False
    jpeg_quality: int = 95
    seed: int = 0
    # question tasks written into each record (synthgen.compose.questions); name / referral only:
    # nothing written (the record's prompt is that question), today's bytes
    tasks: tuple[str, ...] = ("name",)

    @property
    def records_questions(self) -> bool:
        """Whether the records carry questions and their fields (schema ``synthgen.scene/2``)."""
        return not set(self.tasks) <= {"name", "referral"}

    @property
    def scene_schema(self) -> str:
        """The schema of the records these settings write (run.json and the manifest say it)."""
        from synthgen.schema import SCENE_SCHEMA, SCENE_SCHEMA_2

        return SCENE_SCHEMA_2 if self.records_questions else SCENE_SCHEMA

    @property
    def cell(self) -> int:
        return self.size // self.layout.grid

    def problems(self) -> list[str]:
        out = self.layout.problems()
        if self.size < 1:
            out.append(f"--size must be >= 1 (got {self.size})")
        elif self.layout.grid >= 1 and self.size % self.layout.grid:
            out.append(f"--size {self.size} is not divisible by --grid {self.layout.grid}: "
                       "boxes must lie on whole grid cells")
        if not (0.0 <= self.same_category_p <= 1.0):
            out.append(f"--same-category-p must lie in [0, 1] (got {self.same_category_p})")
        if not (0.0 <= self.absolute_referral_p <= 1.0):
            out.append(f"--absolute-referral-p must lie in [0, 1] (got {self.absolute_referral_p})")
        if self.repeat_rule not in REPEAT_RULES:
            out.append(f"--repeat-rule must be one of {', '.join(REPEAT_RULES)} (got {self.repeat_rule!r})")
        if self.object_sampling not in OBJECT_SAMPLING:
            out.append(f"--object-sampling must be one of {', '.join(OBJECT_SAMPLING)} "
                       f"(got {self.object_sampling!r})")
        if self.paste not in PASTES:
            out.append(f"--paste must be one of {', '.join(PASTES)} (got {self.paste!r})")
        if self.referral_grammar not in REFERRAL_GRAMMARS:
            out.append(f"--referral-grammar must be one of {', '.join(REFERRAL_GRAMMARS)} "
                       f"(got {self.referral_grammar!r})")
        if not (1 <= self.paste_alpha <= 255):
            out.append(f"--paste-alpha must lie in 1..255 (got {self.paste_alpha})")
        if self.background_fit not in BACKGROUND_FITS:
            out.append(f"--background-fit must be squash or crop (got {self.background_fit!r})")
        if not (0 <= self.seed < 2**63):
            out.append(f"--seed must be a non-negative integer (got {self.seed})")
        if not (1 <= self.jpeg_quality <= 100):
            out.append(f"--jpeg-quality must lie in 1..100 (got {self.jpeg_quality})")
        from synthgen.compose.questions import TASKS

        bad = [t for t in self.tasks if t not in TASKS]
        if bad or not self.tasks:
            out.append(f"--tasks: {'unknown task ' + repr(bad[0]) if bad else 'no task given'} "
                       f"(the tasks: {', '.join(TASKS)})")
        if self.layout.a_max > 254 and self.masks:
            out.append("--masks supports at most 254 objects per scene")
        return out

    def validate(self) -> None:
        raise_problems(self.problems())

    def to_dict(self) -> dict[str, Any]:
        """The settings as recorded; ``tasks`` only where questions are written (the runs of
        earlier versions, and of name / referral only, have the same record)."""
        d = dataclasses.asdict(self)
        if not self.records_questions:
            del d["tasks"]
        return d

    def text_name(self, category: str) -> str:
        """The name a category is asked for by (qualifier stripped: ``bow (weapon)`` -> ``bow``)."""
        if not self.strip_qualifiers:
            return category
        return category.split(" (")[0].strip() or category

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ComposeParams":
        d = dict(d)
        lay = dict(d.pop("layout"))
        lay["s_min"] = tuple(lay["s_min"])
        lay["s_max"] = tuple(lay["s_max"])
        if "tasks" in d:
            d["tasks"] = tuple(d["tasks"])
        return cls(layout=LayoutParams(**lay), **d)


BACKGROUND_FITS = ("squash", "crop")
REPEAT_RULES = ("previous", "any")     # repeat the previous object's category once / any category
OBJECT_SAMPLING = ("pairs", "category")  # uniform over objects / a category, then one of its objects
PASTES = ("soft", "hard")              # alpha blending / pixels with alpha >= paste_alpha
REFERRAL_GRAMMARS = ("grammatical", "authors")  # = synthgen.compose.referral.GRAMMARS
