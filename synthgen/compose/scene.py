"""The composition function C: one scene from (seed, sample index, inputs).

``(t_p, I_p) = C(I_b, r, a_max, s_min, s_max, o_max)``: pick a background and 1..a_max objects,
lay them out on the grid (:mod:`.layout`), paste them in order, name each one
(:mod:`.referral`) and build the training text for a target object. A scene depends only
on ``(seed, index)`` and the inputs, never on which worker makes it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from synthgen.bank.reader import CutOut, ObjectBank
from synthgen.compose.attributes import hard_negatives, interior_point, object_colors
from synthgen.compose.backgrounds import display_name, read_background
from synthgen.compose.config import ComposeParams
from synthgen.compose.layout import cells_to_pixels, draw_count, place_objects
from synthgen.compose.questions import scene_questions
from synthgen.compose.referral import make_referral
from synthgen.errors import Skip, UserError
from synthgen.grounding import format_box, query_prompt
from synthgen.images import decode, encode_jpeg, encode_png, fit_square
from synthgen.schema import SceneObject, SceneRecord

MAX_INPUT_DRAWS = 200
MAX_SCENE_ATTEMPTS = 20
PASTE_ALPHA = 64          # resized alpha at or above this is pasted (hard paste)
DROP_EMPTY = "empty_after_resize"


def fit_cutout(cut: CutOut, w: int, h: int, passes: int = 3,
               alpha_min: int = PASTE_ALPHA) -> tuple[Image.Image, np.ndarray]:
    """Resize a cut-out to its ``w`` x ``h`` box and return ``(rgba image, opaque)``.

    Downscaling averages area (thin parts fade instead of vanishing); ``opaque`` (the object's
    pixels: its box, mask and visible fraction) is alpha >= ``alpha_min``. When thin borders
    still fade out so that the opaque extent no longer reaches every edge of the box, the source
    is cropped to the part that produced the extent and resized again, so the pasted object
    fills its box: the box is its opaque extent. Resizing works on the cut-out's premultiplied
    pixels, as Pillow's resize of an RGBA image does (same bytes, one conversion fewer).
    """
    x0, y0 = 0, 0
    sh, sw = cut.rgba.shape[:2]
    out = opaque = None
    for _ in range(passes):
        method = Image.Resampling.BOX if (sw >= w and sh >= h) else Image.Resampling.BILINEAR
        if (sw, sh) == (w, h):
            out = Image.fromarray(cut.rgba[y0:y0 + sh, x0:x0 + sw], "RGBA")
        else:
            src = cut.premultiplied
            if (x0, y0, sw, sh) != (0, 0, src.width, src.height):
                src = src.crop((x0, y0, x0 + sw, y0 + sh))
            out = src.resize((w, h), method).convert("RGBA")
        opaque = np.asarray(out.getchannel("A")) >= alpha_min
        cols, rows = np.flatnonzero(opaque.any(0)), np.flatnonzero(opaque.any(1))
        if not len(cols):
            break
        x1, y1, x2, y2 = int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
        if (x1, y1, x2, y2) == (0, 0, w, h):
            break
        fx, fy = sw / w, sh / h
        c = (int(np.floor(x1 * fx)), int(np.floor(y1 * fy)),
             min(sw, int(np.ceil(x2 * fx))), min(sh, int(np.ceil(y2 * fy))))
        if c == (0, 0, sw, sh):
            break
        x0, y0, sw, sh = x0 + c[0], y0 + c[1], c[2] - c[0], c[3] - c[1]
    return out, opaque


@dataclass
class SceneStats:
    """Per-shard counters of what was dropped or skipped, and why."""

    dropped_objects: dict[str, int] = field(default_factory=dict)
    skipped_backgrounds: dict[str, dict[str, str]] = field(default_factory=dict)  # reason -> {name: detail}
    skipped_objects: dict[str, dict[str, str]] = field(default_factory=dict)
    scene_resamples: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped_objects[reason] = self.dropped_objects.get(reason, 0) + n

    def resample(self, reason: str) -> None:
        self.scene_resamples[reason] = self.scene_resamples.get(reason, 0) + 1

    def skip(self, kind: str, name: str, skip: Skip) -> None:
        table = self.skipped_backgrounds if kind == "background" else self.skipped_objects
        table.setdefault(skip.reason, {})[name] = skip.detail


@dataclass
class Scene:
    key: str
    canvas: Image.Image          # the scene, RGB, size x size
    mask: np.ndarray | None      # (size, size) uint8: 0 background, i+1 visible pixels of object i
    record: SceneRecord

    @property
    def image(self) -> np.ndarray:
        """The scene as a (size, size, 3) uint8 array."""
        return np.array(self.canvas)

    def encode(self, jpeg_quality: int) -> dict[str, bytes]:
        out = {"jpg": encode_jpeg(self.canvas, jpeg_quality), "json": self.record.to_json()}
        if self.mask is not None:
            out["mask.png"] = encode_png(self.mask)
        return out


def _point(owner: np.ndarray, box: list[int], k: int) -> tuple[int, int] | None:
    """A pixel deep inside object ``k``'s visible pixels (canvas coordinates)."""
    xy = interior_point(owner[box[1]:box[3], box[0]:box[2]] == k + 1)
    return None if xy is None else (xy[0] + box[0], xy[1] + box[1])


def sample_seed(seed: int, index: int) -> int:
    """The 63-bit seed of sample ``index``: a pure function of the run seed and the index."""
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 32 | int(state[1])) & ((1 << 63) - 1))


class Composer:
    """Makes scenes from an object bank and a background listing (one instance per worker)."""

    def __init__(self, params: ComposeParams, bank: ObjectBank, backgrounds: list[str]):
        params.validate()
        self.p = params
        self.bank = bank
        self.backgrounds = backgrounds
        self._bad_backgrounds: dict[int, Skip] = {}
        self._category_index = {c: k for k, c in enumerate(bank.categories)}
        self._vocabulary = [(c, params.text_name(c)) for c in bank.categories]

    # -- inputs ----------------------------------------------------------------------------
    def _background(self, rng: np.random.Generator, stats: SceneStats) -> tuple[Image.Image, str]:
        """A freshly decoded background fitted to the canvas (the scene paints on it)."""
        for _ in range(MAX_INPUT_DRAWS):
            i = int(rng.integers(len(self.backgrounds)))
            item = self.backgrounds[i]
            bad = self._bad_backgrounds.get(i)
            if bad is None:
                img = decode(read_background(item), draft_to=self.p.size,
                             min_side=self.p.min_background_side)
                if isinstance(img, Skip):
                    self._bad_backgrounds[i] = bad = img
                else:
                    crop_rng = np.random.default_rng(rng.integers(1 << 62))
                    return fit_square(img, self.p.size, self.p.background_fit, crop_rng), display_name(item)
            stats.skip("background", display_name(item), bad)
        raise UserError(f"no usable background after {MAX_INPUT_DRAWS} draws "
                        f"({len(self._bad_backgrounds)} of {len(self.backgrounds)} are unusable)")

    def _object(self, rng: np.random.Generator, cat: int, stats: SceneStats) -> tuple[int, CutOut]:
        """A usable object of category ``cat`` (index -1 when it has none)."""
        members = self.bank.by_category[cat]
        for _ in range(MAX_INPUT_DRAWS):
            i = members[int(rng.integers(len(members)))]
            item = self.bank.load(i)
            if isinstance(item, CutOut):
                return i, item
            stats.skip("object", self.bank.entries[i].id, item)
            if all(isinstance(self.bank.load(j), Skip) for j in members):
                break
        return -1, None  # type: ignore[return-value]

    def _any_object(self, rng: np.random.Generator, stats: SceneStats) -> tuple[int, CutOut]:
        """One draw uniform over every object of the bank (index -1 when it is unusable)."""
        i = int(rng.integers(len(self.bank.entries)))
        item = self.bank.load(i)
        if isinstance(item, CutOut):
            return i, item
        stats.skip("object", self.bank.entries[i].id, item)
        return -1, None  # type: ignore[return-value]

    def _repeat(self, rng: np.random.Generator, cats: list[int]) -> int | None:
        """The category to repeat for the next object, or None (a new draw). With probability
        ``same_category_p``: rule ``previous`` repeats the previous object's category unless it
        repeats already (pairs, never triples: the authors'); rule ``any`` any earlier one."""
        same = rng.random() < self.p.same_category_p
        if not (same and cats):
            return None
        if self.p.repeat_rule == "any":
            return cats[int(rng.integers(len(cats)))]
        return cats[-1] if cats[:-1].count(cats[-1]) == 0 else None

    def _pick_objects(self, rng: np.random.Generator, n: int, stats: SceneStats) -> list[tuple[int, CutOut]]:
        chosen: list[tuple[int, CutOut]] = []
        cats: list[int] = []
        for _attempt in range(MAX_INPUT_DRAWS):
            if len(chosen) == n:
                break
            cat = self._repeat(rng, cats)
            if cat is not None:
                idx, cut = self._object(rng, cat, stats)
            elif self.p.object_sampling == "pairs":
                idx, cut = self._any_object(rng, stats)
            else:
                idx, cut = self._object(rng, int(rng.integers(len(self.bank.categories))), stats)
            if idx < 0:
                continue
            k = self._category_index[self.bank.entries[idx].category]
            if self.p.repeat_rule == "previous" and cats.count(k) >= 2:
                continue  # pairs, never triples (a fresh draw may hit a category twice present)
            if (cat is None and k in cats and self.p.same_category_p == 0
                    and len(self.bank.categories) > len(set(cats))):
                continue  # no repeats asked for: a fresh draw of a present category is redrawn
                # (the authors keep it, and then ask for it by an ambiguous name)
            chosen.append((idx, cut))
            cats.append(k)
        if not chosen:
            raise UserError(f"object bank {self.bank.source}: no usable cut-out found after "
                            f"{MAX_INPUT_DRAWS} draws (see skipped objects in the shard stats)")
        return chosen

    # -- one scene ---------------------------------------------------------------------------
    def scene(self, index: int, stats: SceneStats | None = None) -> Scene:
        stats = stats if stats is not None else SceneStats()
        p, cell = self.p, self.p.cell
        seed = sample_seed(p.seed, index)
        rng = np.random.default_rng(seed)
        bg, bg_name = self._background(rng, stats)

        n = draw_count(rng, p.layout)
        for attempt in range(MAX_SCENE_ATTEMPTS):
            picks = self._pick_objects(rng, n, stats)
            if attempt == MAX_SCENE_ATTEMPTS - 1 and len(picks) > 1:
                picks = picks[:1]  # a single object always has a unique referral
                stats.resample("single_object_fallback")
            layout = place_objects(rng, [c.aspect for _, c in picks], p.layout)
            drops = [reason for _, reason in layout.dropped]
            objs, boxes, cboxes, fitted = [], [], [], []
            for i, cbox in zip(layout.placed, layout.boxes):
                box = cells_to_pixels(cbox, cell)
                rgba, opaque = fit_cutout(picks[i][1], box[2] - box[0], box[3] - box[1],
                                          alpha_min=p.paste_alpha)
                if not opaque.any():
                    drops.append(DROP_EMPTY)  # nothing of it would be drawn: never label it
                    continue
                objs.append(picks[i])
                boxes.append(box)
                cboxes.append(cbox)
                fitted.append((rgba, opaque))
            names = [p.text_name(self.bank.entries[i].category) for i, _ in objs]
            refs = [make_referral(rng, t, names, boxes, width=p.size, height=p.size, margin=cell,
                                  absolute_p=p.absolute_referral_p, depth_overlap=p.depth_overlap,
                                  grammar=p.referral_grammar)
                    for t in range(len(objs))]
            if objs and all(r is not None for r in refs):
                break
            stats.resample("ambiguous_referral" if objs else "no_visible_object")
        else:
            raise UserError(f"could not compose scene {index}: its cut-outs vanish when resized to "
                            "their boxes (see dropped objects)")
        for reason in drops:
            stats.drop(reason)

        canvas, owner, visible = self._paint(bg, fitted, boxes)
        objects = []
        asks = p.records_questions
        for k, ((bi, _), box, cbox, ref) in enumerate(zip(objs, boxes, cboxes, refs)):
            e = self.bank.entries[bi]
            objects.append(SceneObject(category=e.category, category_id=e.category_id,
                                       object_id=e.id, box=tuple(box), cells=tuple(cbox),
                                       visible=visible[k], referral=ref.text,
                                       name=p.text_name(e.category),
                                       colors=tuple(object_colors(np.asarray(fitted[k][0]), fitted[k][1]).items())
                                       if asks else None,
                                       point=_point(owner, box, k) if asks else None))
        target = int(rng.integers(len(objects)))
        key = f"{index:09d}"
        record = SceneRecord(
            key=key, seed=seed, width=p.size, height=p.size, grid=p.layout.grid,
            background={"source": bg_name, "fit": p.background_fit}, objects=tuple(objects),
            target=target, prompt=query_prompt(objects[target].referral),
            answer=format_box(objects[target].box))
        if asks:  # its own random stream: the scene is the same with and without questions
            negs = hard_negatives(np.random.default_rng([seed, 0x4E47]),
                                  [(o.category, o.name) for o in objects], self._vocabulary)
            record = dataclasses.replace(record, negatives=tuple(negs))
            record = dataclasses.replace(record, questions=tuple(scene_questions(record, p.tasks)))
        return Scene(key, canvas, owner if p.masks else None, record)

    def _paint(self, bg: Image.Image, fitted: list[tuple[Image.Image, np.ndarray]], boxes: list[list[int]]
               ) -> tuple[Image.Image, np.ndarray, list[float]]:
        """Paste in order (later objects occlude earlier ones) onto ``bg``: ``(canvas, owner
        map, visible fraction per object)``. ``soft`` blends with the cut-out's alpha (the
        authors' paste: ``round((rgb * a + bg * (255 - a)) / 255)``, Pillow's masked paste),
        ``hard`` copies the pixels with alpha >= ``paste_alpha``; either way a pixel belongs to
        an object (mask, visibility) when its alpha is >= ``paste_alpha``."""
        owner = np.zeros((bg.height, bg.width), dtype=np.uint8)
        opaque_counts = []
        for k, ((rgba, opaque), box) in enumerate(zip(fitted, boxes)):
            if self.p.paste == "soft":
                bg.paste(rgba, (box[0], box[1]), rgba)
            else:
                bg.paste(rgba, (box[0], box[1]), Image.fromarray(opaque))
            np.copyto(owner[box[1]:box[3], box[0]:box[2]], k + 1, where=opaque)
            opaque_counts.append(np.count_nonzero(opaque))
        visible = []
        for k, (box, n) in enumerate(zip(boxes, opaque_counts)):
            v = np.count_nonzero(owner[box[1]:box[3], box[0]:box[2]] == k + 1)
            visible.append(round(float(v) / n, 4) if n else 0.0)
        return bg, owner, visible
