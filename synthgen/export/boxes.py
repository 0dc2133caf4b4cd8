"""Box conventions of the VLM families (pure): a scene question re-rendered in a model's own
coordinates and box syntax, from the boxes of its ``targets`` (never by parsing the text).

Scene boxes are ``[x1, y1, x2, y2]`` canvas pixels (x2/y2 exclusive), points ``(x, y)``. Each
convention (:data:`CONVENTIONS`) maps them to what the family was trained to read and write:

* ``pin``: the record's text as it is (PIN's ``[x1,y1,x2,y2]`` canvas pixels).
* ``qwen2_5_vl``: JSON ``[{"bbox_2d": [x1, y1, x2, y2], "label": ...}]`` (``point_2d`` for points)
  in absolute pixels of the image as Qwen2.5-VL's processor resizes it: ``smart_resize`` of
  transformers' Qwen2-VL image processor (factor 28, its default min / max pixels); the image
  itself is exported at its canvas size (:func:`frame` says which size the boxes refer to).
* ``qwen2_vl``: ``<|object_ref_start|>name<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>``,
  coordinates ``round(v / side * 1000)`` in 0..1000.
* ``internvl``: ``<ref>name</ref><box>[[x1, y1, x2, y2]]</box>``, 0..1000 as above.
* ``paligemma``: prompt ``detect name`` (the name or referral: ``name``, ``referral``, ``all``)
  -> ``<locY1><locX1><locY2><locX2> name`` (y first, 1024 bins: ``round(v / side * 1024)`` clipped
  to 1023; several boxes joined by `` ; ``); the other tasks (a relation or an attribute designates
  one of several objects of the name) are asked as ``answer en {question}``, boxes in loc tokens.
* ``florence2``: ``<loc_N>`` with 1000 bins (``floor(v / side * 1000)`` clipped to 999: the
  quantiser of transformers' ``Florence2PostProcessor``), x first; ``<CAPTION_TO_PHRASE_GROUNDING>``
  for names, ``<REGION_TO_CATEGORY>`` for regions, the question text for the other tasks.
* ``llava``: ``[x1, y1, x2, y2]`` as fractions of the side with 2 decimals (LLaVA-1.5's RefCOCO
  data; Shikra's are the same with 3). LLaVA-1.5 pads the image to a square (its
  ``expand2square``) before normalising: the offsets of that padding are applied, a no-op on
  synthgen's square canvas.
"""

from __future__ import annotations

import json
import math
from typing import Any, Sequence

from synthgen.grounding import format_box

CONVENTIONS = ("pin", "qwen2_5_vl", "qwen2_vl", "internvl", "paligemma", "florence2", "llava")
BOX_TASKS = ("name", "referral", "relation", "attribute")   # one target -> its box
TEXT_TASKS = ("count", "absent")                            # no coordinates in question or answer
KNOWN_TASKS = BOX_TASKS + TEXT_TASKS + ("all", "region", "point")
QWEN_FACTOR = 28                    # patch 14 x merge 2
QWEN_MIN_PIXELS = 56 * 56           # the processor's defaults
QWEN_MAX_PIXELS = 28 * 28 * 1280
PALIGEMMA_BINS = 1024
FLORENCE_BINS = 1000
LLAVA_DECIMALS = 2


def qwen_size(width: int, height: int) -> tuple[int, int]:
    """``(width, height)`` of the image as Qwen2.5-VL's processor resizes it (transformers'
    ``smart_resize``, imported here: the one convention that needs transformers)."""
    try:
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize
    except ImportError:
        from synthgen.errors import UserError

        raise UserError("--boxes qwen2_5_vl needs transformers (Qwen2.5-VL's resize rule): "
                        "pip install 'synthgen[train]'") from None
    h, w = smart_resize(height, width, factor=QWEN_FACTOR, min_pixels=QWEN_MIN_PIXELS, max_pixels=QWEN_MAX_PIXELS)
    return int(w), int(h)


def frame(convention: str, width: int, height: int) -> tuple[int, int]:
    """The image size ``(w, h)`` the convention's absolute coordinates refer to (the canvas but
    for ``qwen2_5_vl``; the normalised conventions refer to the canvas too)."""
    return qwen_size(width, height) if convention == "qwen2_5_vl" else (width, height)


class Converter:
    """Coordinates of one scene in one convention (canvas ``width`` x ``height``)."""

    def __init__(self, convention: str, width: int, height: int):
        if convention not in CONVENTIONS:
            raise ValueError(f"unknown box convention {convention!r} (the conventions: {', '.join(CONVENTIONS)})")
        self.convention, self.width, self.height = convention, width, height
        self.frame = frame(convention, width, height)

    def _xy(self, x: float, y: float) -> tuple[Any, Any]:
        c, w, h = self.convention, self.width, self.height
        if c == "qwen2_5_vl":
            return round(x * self.frame[0] / w), round(y * self.frame[1] / h)
        if c in ("qwen2_vl", "internvl"):
            return min(1000, max(0, round(x / w * 1000))), min(1000, max(0, round(y / h * 1000)))
        if c == "paligemma":
            return (min(PALIGEMMA_BINS - 1, max(0, round(x / w * PALIGEMMA_BINS))),
                    min(PALIGEMMA_BINS - 1, max(0, round(y / h * PALIGEMMA_BINS))))
        if c == "florence2":
            return (min(FLORENCE_BINS - 1, max(0, math.floor(x / (w / FLORENCE_BINS)))),
                    min(FLORENCE_BINS - 1, max(0, math.floor(y / (h / FLORENCE_BINS)))))
        if c == "llava":
            side = max(w, h)
            return (round((x + (side - w) / 2) / side, LLAVA_DECIMALS),
                    round((y + (side - h) / 2) / side, LLAVA_DECIMALS))
        return round(x), round(y)   # pin

    def box(self, box: Sequence[float]) -> list:
        """The four coordinates in the convention's order (x1, y1, x2, y2; PaliGemma: y1, x1, y2, x2)."""
        (x1, y1), (x2, y2) = self._xy(box[0], box[1]), self._xy(box[2], box[3])
        return [y1, x1, y2, x2] if self.convention == "paligemma" else [x1, y1, x2, y2]

    def box_text(self, box: Sequence[float]) -> str:
        """One box as the convention writes it inside a text (without a label)."""
        c, v = self.convention, self.box(box)
        if c == "qwen2_vl":
            return f"<|box_start|>({v[0]},{v[1]}),({v[2]},{v[3]})<|box_end|>"
        if c == "internvl":
            return f"<box>[[{v[0]}, {v[1]}, {v[2]}, {v[3]}]]</box>"
        return self._coordinates_text(v) or format_box(v)   # (pin, qwen2_5_vl in a question: format_box)

    def point(self, point: Sequence[float]) -> list:
        x, y = self._xy(point[0], point[1])
        return [y, x] if self.convention == "paligemma" else [x, y]

    def point_text(self, point: Sequence[float]) -> str:
        v = self.point(point)
        return self._coordinates_text(v) or f"({v[0]},{v[1]})"

    def _coordinates_text(self, v: Sequence) -> str | None:
        """Coordinates (a box's or a point's, already converted) as the conventions that write
        them alike for both do (location tokens, LLaVA's list); None for the others."""
        c = self.convention
        if c == "paligemma":
            return "".join(f"<loc{n:04d}>" for n in v)
        if c == "florence2":
            return "".join(f"<loc_{n}>" for n in v)
        if c == "llava":
            return "[" + ", ".join(f"{n:.{LLAVA_DECIMALS}f}" for n in v) + "]"
        return None

    def boxes_answer(self, label: str, boxes: Sequence[Sequence[float]]) -> str:
        """The answer naming ``label`` at ``boxes`` (one or several, in order)."""
        c = self.convention
        if c == "qwen2_5_vl":
            items = [{"bbox_2d": self.box(b), "label": label} for b in boxes]
            return "```json\n" + json.dumps(items) + "\n```"
        if c == "qwen2_vl":
            return f"<|object_ref_start|>{label}<|object_ref_end|>" + "".join(self.box_text(b) for b in boxes)
        if c == "internvl":
            inner = ", ".join("[" + ", ".join(str(n) for n in self.box(b)) + "]" for b in boxes)
            return f"<ref>{label}</ref><box>[{inner}]</box>"
        if c == "paligemma":
            return " ; ".join(f"{self.box_text(b)} {label}" for b in boxes)
        if c == "florence2":
            return label + "".join(self.box_text(b) for b in boxes)
        return " ".join(self.box_text(b) for b in boxes)   # llava, pin

    def point_answer(self, label: str, point: Sequence[float]) -> str:
        if self.convention == "qwen2_5_vl":
            return "```json\n" + json.dumps([{"point_2d": self.point(point), "label": label}]) + "\n```"
        if self.convention == "qwen2_vl":
            return f"<|object_ref_start|>{label}<|object_ref_end|>{self.point_text(point)}"
        if self.convention == "internvl":
            return f"<ref>{label}</ref>{self.point_text(point)}"
        if self.convention == "florence2":
            return label + self.point_text(point)
        return self.point_text(point)


def _label(obj: dict, task: str) -> str:
    """The text a box answer names: the referral for PIN's prompts, else the object's name."""
    name = obj.get("name") or obj["category"]
    return (obj.get("referral") or name) if task in ("name", "referral") else name


def render(conv: Converter, objects: Sequence[dict], q: dict) -> tuple[str, str] | None:
    """``(question, answer)`` of scene question ``q`` in ``conv``'s convention; None for a task
    this module does not know (its text may hold coordinates it cannot re-render)."""
    task, text, answer, targets = q["task"], q["text"], q["answer"], list(q.get("targets") or [])
    c = conv.convention
    if c == "pin":
        return text, answer
    if task not in KNOWN_TASKS:
        return None
    objs = [objects[t] for t in targets]
    if task in BOX_TASKS or task == "all":
        label = _label(objs[0], task)
        ans = conv.boxes_answer(label, [o["box"] for o in objs])
        if c == "paligemma" and task in ("name", "referral", "all"):   # (a relation or attribute is asked)
            return f"detect {label}", ans
        if c == "paligemma":
            return f"answer en {text}", ans
        if c == "florence2" and task in ("name", "referral", "all"):
            return f"<CAPTION_TO_PHRASE_GROUNDING>{label}", ans
        return text, ans
    if task == "region":
        box = objs[0]["box"]
        asked = conv.box_text(box)
        if format_box(box) not in text:
            return None   # (not the question text of compose's region task)
        if c == "florence2":
            return f"<REGION_TO_CATEGORY>{asked}", answer
        text = text.replace(format_box(box), asked)
    elif task == "point" and objs and objs[0].get("point") is not None:
        answer = conv.point_answer(_label(objs[0], task), objs[0]["point"])
    elif task == "point":
        return None   # (a point question without the object's recorded point)
    return (f"answer en {text}" if c == "paligemma" else text), answer
