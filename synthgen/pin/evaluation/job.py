"""One evaluation as ``eval-pin`` runs it: the run, the set (COCO-format json, VOC, RefCOCO or scene shards),
the protocol and where the results go; :func:`run_eval` sends it to the set's scorer. Light: the
scorers (torch) are imported when it runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from synthgen.errors import UserError
from synthgen.pin.evaluation.protocol import EvalProtocol


@dataclass(frozen=True)
class EvalJob:
    run: str
    coco_json: str | None = None
    voc: str | None = None
    refcoco: str | None = None
    scenes: str | None = None     # synthetic validation shards, scored per question task
    tasks: str = "name"           # with scenes: the tasks scored
    images: str | None = None
    split: str | None = None      # RefCOCO split (testA) or VOC image set (test)
    protocol: EvalProtocol = field(default_factory=EvalProtocol)
    out: str | None = None
    model: str | None = None
    batch_size: int = 16
    limit: int | None = None
    vlm_options: dict = field(default_factory=dict)
    overwrite: bool = False
    device: str | None = None

    @property
    def kind(self) -> str:
        if self.scenes is not None:
            return "scenes"
        return "voc" if self.voc is not None else "refcoco" if self.refcoco is not None else "coco-json"

    def __post_init__(self) -> None:
        """One line for every mistake in the choice of set and options, before any work."""
        problems = self.protocol.problems()
        if self.batch_size < 1 or (self.limit is not None and self.limit < 1):
            problems.append("--batch-size and --limit must be >= 1")
        if self.protocol.baseline != "in-context" and (self.protocol.shots, self.protocol.repeats) != (2, 10):
            problems.append("--shots and --repeats apply to --baseline in-context only")
        if problems:
            raise UserError("; ".join(problems))
        sets = [flag for flag, v in (("--coco-json", self.coco_json), ("--voc", self.voc),
                                     ("--refcoco", self.refcoco), ("--scenes", self.scenes)) if v is not None]
        if len(sets) != 1:
            raise UserError("give one of --coco-json FILE, --voc DIR, --refcoco DIR or --scenes SHARDS"
                            + (f" (got {' and '.join(sets)})" if sets else ""))
        if self.scenes is not None:
            self._scene_checks()
            return
        if str(self.tasks).replace(" ", "") != "name":
            raise UserError("--tasks applies to --scenes (synthetic shards, whose scenes know every answer)")
        if self.split is not None and self.coco_json is not None:
            raise UserError("--split applies to --voc and --refcoco only")
        if self.voc is not None and self.images is not None:
            raise UserError("--images does not apply to --voc: its images are read from VOC/JPEGImages")
        if self.voc is None and self.images is None:
            raise UserError("--images DIR is required (the images of the set)")

    def _scene_checks(self) -> None:
        from synthgen.compose.questions import parse_tasks

        try:
            parse_tasks(self.tasks)
        except ValueError as exc:
            raise UserError(f"--tasks: {exc}") from None
        if self.protocol.baseline not in (None, "raw"):
            raise UserError(f"--baseline {self.protocol.baseline} does not apply to --scenes (raw does: the VLM "
                            "without PIN)")
        if self.images is not None or self.split is not None:
            raise UserError("--images and --split do not apply to --scenes (the shards hold the images)")

    def title(self) -> str:
        """What the printed table is titled: the set, its split, and the baseline scored."""
        from synthgen.storage import path

        what = f" ({self.protocol.baseline} baseline)" if self.protocol.baseline else ""
        if self.scenes is not None:
            return f"scenes {self.scenes}{what}"
        if self.voc is not None:
            return f"VOC {path(self.voc).name} {self.split or 'test'}{what}"
        if self.refcoco is not None:
            return f"RefCOCO {self.split or 'testA'}{what}"
        return f"{path(self.coco_json).name}{what}"


def run_eval(job: EvalJob) -> dict[str, Any]:
    """Score the job's run on its set; writes ``preds.jsonl`` + ``metrics.json``, returns the metrics."""
    from synthgen.pin.evaluation import evaluate as ev

    if job.protocol.baseline == "in-context":  # (before the set is read or the VLM loaded)
        from synthgen.pin.training.checkpoint import read_run

        vlm = read_run(job.run).meta.get("vlm")
        if vlm != "openflamingo":
            raise UserError(f"--baseline in-context: {job.run} is a {vlm} run; in-context learning is "
                            "OpenFlamingo's (interleaved image-text pre-training; BLIP-2 cannot, the paper)")
    kw = dict(out=job.out, model=job.model, batch_size=job.batch_size, limit=job.limit, protocol=job.protocol,
              vlm_options=job.vlm_options or None, overwrite=job.overwrite, device=job.device)
    if job.scenes is not None:
        from synthgen.pin.evaluation.scenetasks import evaluate_scene_tasks

        return evaluate_scene_tasks(job.run, job.scenes, tasks=job.tasks, **kw)
    if job.voc is not None:
        return ev.evaluate_voc(job.run, job.voc, split=job.split or "test", **kw)
    if job.refcoco is not None:
        return ev.evaluate_refcoco(job.run, job.refcoco, job.images, split=job.split or "testA", **kw)
    return ev.evaluate_coco(job.run, job.coco_json, job.images, **kw)
