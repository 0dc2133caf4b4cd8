"""Which question a training sample asks (``train-pin --tasks name=1,relation=0.5``; pure, no torch).

Weights: ``task=weight`` pairs over the tasks of :mod:`synthgen.compose.questions`; a task
without ``=`` weighs 1. Each sample draws one task by weight among the tasks its scene can ask,
then one question of that task uniformly.

``name`` is PIN's question as the paper trains it: an object of the scene drawn uniformly, asked
for by its referral (:meth:`~synthgen.schema.SceneRecord.query`: its name when unique, with
position words when the name repeats), its box as the answer. So ``--tasks name=1``, the
default, is today's stream, byte for byte: the same draws (by ``(seed, epoch, split, position)``)
and the same tokens. ``referral`` asks only the objects whose referral has position words. The
other tasks' questions are the record's ``questions`` of that task where compose wrote them
(``compose --tasks``), else derived at training time by
:func:`~synthgen.compose.questions.scene_questions` from the record, phrased by a seed of the
draw (the set of questions does not depend on that seed, only their wording).

A mix draws by scene (:func:`mix_rng`: the run seed, the epoch and the scene's identity), not by
position in the stream, so the question a scene asks in an epoch does not depend on the number
of DataLoader workers or GPUs.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np

from synthgen.compose.questions import TASKS, scene_questions
from synthgen.errors import UserError
from synthgen.grounding import format_box
from synthgen.schema import SceneRecord

DEFAULT_TASKS = "name=1"
PROMPT_TASKS = ("name", "referral")   # asked with PIN's prompt, encoded through the referral


def parse_weights(value: str | Iterable[str] | Mapping[str, float] | None) -> dict[str, float]:
    """``"name=1,relation=0.5"`` (or a list of such items, or a mapping) -> ``{task: weight}`` in
    :data:`TASKS` order; one-line :class:`UserError` for an unknown task, a bad or negative weight,
    a task given twice, or no positive weight."""
    if value is None:
        value = DEFAULT_TASKS
    if isinstance(value, Mapping):
        items = [(str(k).strip(), v) for k, v in value.items()]
    else:
        parts = [p.strip() for p in (value.split(",") if isinstance(value, str) else
                                      [q for v in value for q in str(v).split(",")]) if p.strip()]
        items = [(p.partition("=")[0].strip(), p.partition("=")[2].strip() if "=" in p else 1) for p in parts]
    out: dict[str, float] = {}
    for task, w in items:
        if task not in TASKS:
            raise UserError(f"--tasks: unknown task {task!r} (the tasks: {', '.join(TASKS)})")
        if task in out:
            raise UserError(f"--tasks: {task} is given twice")
        try:
            weight = float(w)
        except (TypeError, ValueError):
            raise UserError(f"--tasks: the weight of {task} must be a number, got {w!r}") from None
        if not weight >= 0 or weight == float("inf"):
            raise UserError(f"--tasks: the weight of {task} must be a finite number >= 0, got {w!r}")
        out[task] = weight
    out = {t: out[t] for t in TASKS if out.get(t, 0) > 0}
    if not out:
        raise UserError(f"--tasks: no task with a weight above 0 (e.g. {DEFAULT_TASKS},relation=0.5)")
    return out


def format_weights(weights: Mapping[str, float]) -> str:
    return ",".join(f"{t}={w:g}" for t, w in weights.items())


def is_default(weights: Mapping[str, float]) -> bool:
    """Only ``name``: today's stream, drawn by position (:mod:`.data`)."""
    return set(weights) == {"name"}


def mix_rng(seed: int, epoch: int, scene: str) -> np.random.Generator:
    """The random stream of a mixed draw: the run seed, the epoch and the scene (its shard's file
    name and key, or the composed scene's index)."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch) & 0xFFFFFFFF,
                                  zlib.crc32(scene.encode()), 0x7A5C])


def task_questions(rec: SceneRecord, tasks: Iterable[str], seed: int) -> dict[str, list[dict]]:
    """The questions of ``rec`` for ``tasks`` other than ``name``: the record's own where it has
    questions of a task, the others derived with ``seed`` (their phrasing)."""
    wanted = [t for t in tasks if t != "name"]
    out: dict[str, list[dict]] = {t: [] for t in wanted}
    for q in rec.questions or ():
        if q["task"] in out:
            out[q["task"]].append(q)
    missing = [t for t in wanted if not out[t]]
    if missing:
        for q in scene_questions(rec, missing, seed=seed):
            out[q["task"]].append(q)
    return out


@dataclass(frozen=True)
class Ask:
    """One training question: ``referral`` (PIN's prompt is built from it: ``name`` and
    ``referral``) or ``prompt`` (the question's whole text), the answer text, a box for the
    batch's ``boxes`` (the first target's; zeros when the answer has none)."""

    task: str
    answer: str
    box: list[float]
    referral: str | None = None
    prompt: str | None = None

    def encode(self, codec, name_loss) -> tuple[list[int], list[int]]:
        if self.prompt is None:
            return codec.encode(self.referral, self.answer, name_loss=name_loss)
        return codec.encode(None, self.answer, name_loss=name_loss, prompt=self.prompt)


def name_ask(rec: SceneRecord, target: int) -> Ask:
    """PIN's question for object ``target`` (today's training sample)."""
    referral, box = rec.query(target)
    return Ask("name", format_box(box), box, referral=referral)


def question_ask(rec: SceneRecord, q: dict) -> Ask:
    box = [float(v) for v in rec.objects[q["targets"][0]].box] if q["targets"] else [0.0] * 4
    if q["task"] in PROMPT_TASKS:  # PIN's prompt: encoded as today's, through the referral
        o = rec.objects[q["targets"][0]]
        return Ask(q["task"], q["answer"], box, referral=o.referral or o.category)
    return Ask(q["task"], q["answer"], box, prompt=q["text"])


def draw(rec: SceneRecord, weights: Mapping[str, float], rng: np.random.Generator,
         name_target: int | None = None) -> Ask:
    """One question of ``rec``: a task by weight among those it can ask, one of its questions
    uniformly (``name``: an object uniformly, or ``name_target``), all from ``rng``."""
    qseed = int(rng.integers(1 << 62))
    qs = task_questions(rec, weights, qseed)
    askable = [t for t in weights if t == "name" or qs.get(t)]
    if not askable:  # (e.g. only absent asked of a scene without negatives): PIN's question
        return name_ask(rec, int(rng.integers(len(rec.objects))) if name_target is None else name_target)
    p = np.array([weights[t] for t in askable], dtype=np.float64)
    task = askable[int(rng.choice(len(askable), p=p / p.sum()))]
    if task == "name":
        return name_ask(rec, int(rng.integers(len(rec.objects))) if name_target is None else name_target)
    pool = qs[task]
    return question_ask(rec, pool[int(rng.integers(len(pool)))])
