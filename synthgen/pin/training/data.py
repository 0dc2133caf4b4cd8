"""Streaming scene shards (schema ``synthgen.scene/1``) for PIN training.

The stream is a deterministic function of ``(seed, rank, worker, position)``:

- Shards are split over the ``world_size * num_workers`` data splits, fixed for the run: whole
  shards dealt round-robin as far as they divide evenly, the remaining ``len % splits`` shards
  (all of them when there are fewer shards than splits) split by sample, so that with
  equal-sized shards every split's epoch has the same length and every scene is read equally
  often.
- Every epoch a split reads its shards in a fresh random order (shard shuffle) through a seeded
  shuffle buffer (sample shuffle), both seeded by ``(seed, epoch, split)``; the stream is
  endless, so every DDP rank always has data and training runs by steps.
- Each time a scene is read one of its objects is drawn as the target (seeded by
  ``(seed, epoch, split, position)``), so one scene teaches every object over epochs.
- ``--tasks`` other than ``name`` alone (:mod:`.tasks`): each scene read asks one question of a
  task drawn by weight, drawn by ``(seed, epoch, shard file, key)`` instead, so the same
  whatever the number of workers and ranks; the default keeps the draw above exactly.
- Workers batch internally and the DataLoader returns worker batches round-robin; resuming at
  step ``s`` rotates the worker roles and skips the samples already used (checked like the
  others, not tokenised), so the batches after a resume are exactly those the uninterrupted run
  would have seen.
- A bad sample (json that is not a scene record, a missing or undecodable image, a canvas other
  than the model's, a damaged shard) is skipped and counted by reason; the counts travel with
  each batch (``batch["bad"]``) to ``log.jsonl``. A split stops with a one-line error naming the
  shard and key once more than ``max(10, max_bad_samples x samples read)`` are bad.

Workers yield uint8 images (normalisation happens on the device) plus token ids and labels.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from synthgen.errors import CarriedError, UserError, recover
from synthgen.pin.training import tasks as T
from synthgen.schema import SceneRecord, SchemaError
from synthgen.shards import iter_tar
from synthgen.storage import StorageError

BAD_FLOOR = 10  # bad samples always tolerated before --max-bad-samples applies


class BadSample(Exception):
    """A sample that cannot be used; ``reason`` is a short word, the message names it."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def read_header(shards: Sequence[str], look: int = 100) -> dict:
    """The json of the first valid scene record among the first ``look`` samples (canvas size,
    grid, schema): what the shards were composed for. Bad samples before it are passed over (the
    stream skips and counts them); none valid is a one-line error naming the first fault."""
    first_error = None
    seen = 0
    for url in shards:
        try:
            for sample in iter_tar(url, want=("json",)):
                seen += 1
                try:
                    return _record(sample).to_dict()
                except BadSample as exc:
                    first_error = first_error or str(exc)
                if seen >= look:
                    break
        except UserError as exc:  # a damaged shard
            first_error = first_error or str(exc)
        if seen >= look:
            break
    raise UserError(f"no valid scene record in the first {seen} samples of {shards[0]}"
                    + (f"...: {first_error}" if first_error else ""))


def check_canvas(header: dict, shards_desc: str, input_size: int, model_desc: str) -> None:
    w, h = int(header["width"]), int(header["height"])
    if (w, h) != (input_size, input_size):
        raise UserError(f"shards {shards_desc} have a {w}x{h} canvas but {model_desc} takes "
                        f"{input_size}x{input_size} images; compose scenes with canvas {input_size}")


# --- decoding ------------------------------------------------------------------------------

def decode_image(data: bytes, size: int | None = None, where: str = "scene") -> torch.Tensor:
    """JPEG/PNG bytes -> uint8 ``[3,H,W]`` RGB; :class:`BadSample` when they are not an image of
    ``size`` x ``size``."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert("RGB")
            arr = np.asarray(im)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad sample
        raise BadSample(f"{where}: the image cannot be decoded ({type(exc).__name__})", "bad_image") from None
    if size is not None and arr.shape[:2] != (size, size):
        raise BadSample(f"{where}: the image is {arr.shape[1]}x{arr.shape[0]}, the model takes "
                        f"{size}x{size}", "wrong_canvas")
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def _where(raw: dict) -> str:
    return f"{raw.get('__url__')}: scene {raw.get('__key__')!s:.60}"


def _image_bytes(sample: dict) -> bytes:
    for ext in ("jpg", "jpeg", "png", "webp"):
        if ext in sample:
            return sample[ext]
    raise BadSample(f"{_where(sample)} has no image", "no_image")


# --- training stream -----------------------------------------------------------------------

@dataclass
class StreamConfig:
    shards: list[str]
    batch_size: int
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    shuffle_buffer: int = 1000
    image_size: int | None = None
    name_loss: bool | str = False   # the loss span beyond the box: False, "name", "name_prompt"
    max_bad_samples: float = 0.01   # fraction of the samples read (beyond BAD_FLOOR)
    tasks: dict | None = None       # --tasks weights (synthgen.pin.training.tasks); None: name=1


def _rng(*words: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(w) & 0xFFFFFFFF for w in words]))


class BatchStream(IterableDataset):
    """Endless batches of ``{"pixels" uint8 [B,3,H,W], "input_ids", "attention_mask", "labels",
    "boxes" [B,4], "n_objects" [B], "keys", "bad"}`` for one DDP rank, split over the DataLoader
    workers; subclasses say where the samples come from (:meth:`batches`)."""

    def __init__(self, cfg: StreamConfig, codec, start_batch: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.codec = codec
        self.start_batch = int(start_batch)
        self.read = 0                       # samples read by this split, good and bad
        self.bad: dict[str, int] = {}       # reason -> count, since the start
        self.bad_since: dict[str, int] = {}  # reason -> count, since the last batch
        self.bad_examples: dict[str, str] = {}  # reason -> the first one seen

    def _count_bad(self, exc: BadSample) -> None:
        for table in (self.bad, self.bad_since):
            table[exc.reason] = table.get(exc.reason, 0) + 1
        self.bad_examples.setdefault(exc.reason, str(exc))
        total = sum(self.bad.values())
        if total > max(BAD_FLOOR, self.cfg.max_bad_samples * self.read):
            counts = ", ".join(f"{k} {v}" for k, v in sorted(self.bad.items()))
            raise UserError(f"{exc} — {total} of {self.read} samples read are bad ({counts}), more "
                            f"than --max-bad-samples {self.cfg.max_bad_samples:g} allows; fix or remove "
                            "those shards, or raise --max-bad-samples")

    def batches(self, split: int, n_splits: int, skip_batches: int = 0) -> Iterator[dict]:
        raise NotImplementedError

    def collate(self, chunk: list[dict]) -> dict:
        out = self.codec.collate([(s["ids"], s["labels"]) for s in chunk])
        out["pixels"] = torch.stack([s["pixels"] for s in chunk])
        out["boxes"] = torch.tensor([s["box"] for s in chunk], dtype=torch.float32)
        out["n_objects"] = torch.tensor([s["n_objects"] for s in chunk])
        out["keys"] = [s["key"] for s in chunk]
        out["tasks"] = [s.get("task", "name") for s in chunk]
        out["bad"] = {"counts": self.bad_since, "examples": dict(self.bad_examples)}
        self.bad_since = {}
        return out

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        n_workers = info.num_workers if info is not None else 1
        physical = info.id if info is not None else 0
        # after s batches the DataLoader starts again at worker 0: rotate roles so that the
        # batch order is the one of the uninterrupted run
        logical = (physical + self.start_batch) % n_workers
        done = max(0, -(-(self.start_batch - logical) // n_workers))  # batches b<s with b%W==l
        split = self.cfg.rank * n_workers + logical
        n_splits = self.cfg.world_size * n_workers
        try:
            yield from self.batches(split, n_splits, skip_batches=done)
        except UserError as exc:
            if info is None:
                raise
            yield CarriedError.of(exc)  # to the main process as a value: no worker traceback


class SceneStream(BatchStream):
    """Batches from scene shards; see the module docstring for the order."""

    # which samples a split reads
    def _split_plan(self, split: int, n_splits: int) -> list[tuple[int, bool]]:
        """``(shard index, by_sample)`` pairs: the shards this split reads and whether it reads
        only its share of the samples of that shard.

        The first ``n_splits * (len(shards) // n_splits)`` shards are dealt whole, round-robin;
        the remaining ``len(shards) % n_splits`` (all of them when there are fewer shards than
        splits) are read by every split, which keeps the samples at positions with
        ``(position + shard index) % n_splits == split``. So with equal-sized shards every split
        has an epoch of the same length and every scene is read equally often (dealing all shards
        round-robin gave some splits one more shard than others, and their scenes were read less
        often), a short last shard is spread over all splits whenever the count does not divide,
        and each split still opens only about ``len(shards) / n_splits + n_splits`` shards.
        """
        n = len(self.cfg.shards)
        whole = n - n % n_splits
        return ([(i, False) for i in range(split, whole, n_splits)]
                + [(i, True) for i in range(whole, n)])

    def raw_epoch(self, split: int, n_splits: int, epoch: int) -> Iterator[dict]:
        """One epoch of this split's raw samples, shard-shuffled and buffer-shuffled."""
        plan = self._split_plan(split, n_splits)
        rng = _rng(self.cfg.seed, epoch, split, 1)
        order = rng.permutation(len(plan))
        buf: list[dict] = []
        size = max(1, self.cfg.shuffle_buffer)

        def source():
            for pi in order:
                shard_index, by_sample = plan[pi]
                url = self.cfg.shards[shard_index]
                try:
                    for pos, sample in enumerate(iter_tar(url)):
                        if by_sample and (pos + shard_index) % n_splits != split:
                            continue
                        yield sample
                except StorageError:  # the store itself (credentials, endpoint): not a damaged shard
                    raise
                except UserError as exc:  # a damaged tar: its samples before the damage are used
                    self.read += 1
                    self._count_bad(BadSample(str(exc), "damaged_shard"))

        for sample in source():
            if len(buf) < size:
                buf.append(sample)
                continue
            i = int(rng.integers(len(buf)))
            buf[i], sample = sample, buf[i]
            yield sample
        while buf:
            i = int(rng.integers(len(buf)))
            buf[i], buf[-1] = buf[-1], buf[i]
            yield buf.pop()

    def samples(self, split: int, n_splits: int, skip: int = 0) -> Iterator[dict]:
        """Endless decoded training samples of one split, after skipping ``skip`` good ones (bad
        samples are skipped and counted; they do not count towards ``skip``)."""
        epoch = 0
        epoch_good: int | None = None
        while True:
            if epoch_good and skip >= epoch_good:  # skip whole epochs without reading them
                epoch += skip // epoch_good
                skip %= epoch_good
            count = good = 0
            for pos, raw in enumerate(self.raw_epoch(split, n_splits, epoch)):
                count += 1
                self.read += 1
                try:
                    sample = self._decode(raw, split, epoch, pos, tokenize=skip == 0)
                except BadSample as exc:
                    self._count_bad(exc)
                    continue
                good += 1
                if skip > 0:
                    skip -= 1
                    continue
                yield sample
            if count == 0:
                raise UserError(f"data split {split} of {n_splits} has no samples; use fewer "
                                "workers/GPUs or more shards")
            if good == 0:
                example = next(iter(self.bad_examples.values()), "")
                raise UserError(f"data split {split} of {n_splits} has no usable sample: all {count} "
                                f"are bad ({', '.join(f'{k} {v}' for k, v in sorted(self.bad.items()))}), "
                                f"e.g. {example}")
            epoch_good = good
            epoch += 1

    def _decode(self, raw: dict, split: int, epoch: int, pos: int, tokenize: bool = True) -> dict:
        rec = _record(raw)
        if self.cfg.image_size is not None and (rec.width, rec.height) != (self.cfg.image_size,) * 2:
            raise BadSample(f"{_where(raw)}: canvas {rec.width}x{rec.height}, the model takes "
                            f"{self.cfg.image_size}x{self.cfg.image_size}", "wrong_canvas")
        pixels = decode_image(_image_bytes(raw), self.cfg.image_size, _where(raw))
        if self.cfg.tasks is None or T.is_default(self.cfg.tasks):  # today's stream, by position
            target = int(_rng(self.cfg.seed, epoch, split, pos, 2).integers(len(rec.objects)))
            ask = T.name_ask(rec, target)
        else:  # a task mix: drawn by scene (the same whatever the workers)
            scene = f"{str(raw.get('__url__', '')).rstrip('/').rsplit('/', 1)[-1]}/{raw['__key__']}"
            ask = T.draw(rec, self.cfg.tasks, T.mix_rng(self.cfg.seed, epoch, scene))
        ids, labels = ask.encode(self.codec, self.cfg.name_loss) if tokenize else ([], [])
        return {"pixels": pixels, "ids": ids, "labels": labels, "box": ask.box, "key": raw["__key__"],
                "n_objects": len(rec.objects), "task": ask.task, "prompt": ask.prompt or ask.referral,
                "answer": ask.answer}

    def batches(self, split: int, n_splits: int, skip_batches: int = 0) -> Iterator[dict]:
        bs = self.cfg.batch_size
        chunk: list[dict] = []
        for s in self.samples(split, n_splits, skip=skip_batches * bs):
            chunk.append(s)
            if len(chunk) == bs:
                yield self.collate(chunk)
                chunk = []


class SceneLoader(DataLoader):
    """The DataLoader of a :class:`SceneStream`; a :class:`UserError` in a worker process comes
    out as the one-line UserError it was (the worker sends it as a :class:`CarriedError`)."""

    def __iter__(self):
        it = super().__iter__()
        try:
            for batch in it:
                if isinstance(batch, CarriedError):
                    raise recover(batch)
                yield batch
        finally:
            # stop the workers now: after a worker error torch's iterator is left in a reference
            # cycle, and shutting it down later from the garbage collector waits 5 s per worker
            stop = getattr(it, "_shutdown_workers", None)
            if stop is not None:
                stop()


def make_loader(cfg: StreamConfig, codec, *, workers: int = 0, start_batch: int = 0,
                pin_memory: bool = False, stream: type[BatchStream] | None = None) -> DataLoader:
    """The DataLoader of a stream (default: :class:`SceneStream` over ``cfg.shards``)."""
    ds = (stream or SceneStream)(cfg, codec, start_batch=start_batch)
    return SceneLoader(ds, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                       prefetch_factor=4 if workers > 0 else None, persistent_workers=False)


# --- evaluation on scene shards ------------------------------------------------------------

def _record(raw: dict) -> SceneRecord:
    if "json" not in raw:
        raise BadSample(f"{_where(raw)} has no json", "no_json")
    try:
        return SceneRecord.from_json(raw["json"], _where(raw))
    except SchemaError as exc:
        raise BadSample(str(exc), exc.reason) from None


def iter_scenes(shards: Sequence[str], image_size: int | None = None, bad: dict[str, int] | None = None
                ) -> Iterator[tuple[str, dict, SceneRecord, torch.Tensor]]:
    """``(shard url, raw sample, record, image uint8 [3,H,W])`` for every scene of ``shards``, in
    order; bad scenes are skipped and counted in ``bad`` (reason -> count)."""
    for url in shards:
        for raw in iter_tar(url):
            try:
                rec = _record(raw)
                img = decode_image(_image_bytes(raw), image_size, _where(raw))
            except BadSample as exc:
                if bad is not None:
                    bad[exc.reason] = bad.get(exc.reason, 0) + 1
                continue
            yield url, raw, rec, img


def iter_scene_queries(shards: Sequence[str], limit: int | None = None, image_size: int | None = None,
                       bad: dict[str, int] | None = None
                       ) -> Iterator[tuple[torch.Tensor, str, list[float], str]]:
    """``(image uint8 [3,H,W], referral, box, key)`` for every object of every scene, in order
    (:func:`iter_scenes`; at most ``limit``)."""
    n = 0
    for _, raw, rec, img in iter_scenes(shards, image_size, bad):
        for i in range(len(rec.objects)):
            referral, box = rec.query(i)
            yield img, referral, box, raw["__key__"]
            n += 1
            if limit is not None and n >= limit:
                return
