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
- Workers batch internally and the DataLoader returns worker batches round-robin; resuming at
  step ``s`` rotates the worker roles and skips the raw (undecoded) samples already used, so the
  batches after a resume are exactly those the uninterrupted run would have seen.

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
from synthgen.grounding import format_box
from synthgen.schema import SceneRecord
from synthgen.shards import iter_tar


def read_header(shards: Sequence[str]) -> dict:
    """The json of the first scene of the first shard (canvas size, grid, schema)."""
    for sample in iter_tar(shards[0], want=("json",)):
        if "json" in sample:
            rec = SceneRecord.from_json(sample["json"], f"{shards[0]}: scene {sample['__key__']}")
            return rec.to_dict()
    raise UserError(f"{shards[0]}: no scene json found")


def check_canvas(header: dict, shards_desc: str, input_size: int, model_desc: str) -> None:
    w, h = int(header["width"]), int(header["height"])
    if (w, h) != (input_size, input_size):
        raise UserError(f"shards {shards_desc} have a {w}x{h} canvas but {model_desc} takes "
                        f"{input_size}x{input_size} images; compose scenes with canvas {input_size}")


# --- decoding ------------------------------------------------------------------------------

def decode_image(data: bytes, size: int | None = None) -> torch.Tensor:
    """JPEG/PNG bytes -> uint8 ``[3,H,W]`` RGB."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB")
        if size is not None and im.size != (size, size):
            raise UserError(f"scene image is {im.size[0]}x{im.size[1]}, expected {size}x{size}")
        arr = np.asarray(im)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def _image_bytes(sample: dict) -> bytes:
    for ext in ("jpg", "jpeg", "png", "webp"):
        if ext in sample:
            return sample[ext]
    raise UserError(f"{sample.get('__url__')}: sample {sample['__key__']} has no image")


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
    name_loss: bool = False


def _rng(*words: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(w) & 0xFFFFFFFF for w in words]))


class SceneStream(IterableDataset):
    """Endless batches of ``{"pixels" uint8 [B,3,H,W], "input_ids", "attention_mask", "labels",
    "boxes" [B,4], "keys"}`` for one DDP rank; see the module docstring for the order."""

    def __init__(self, cfg: StreamConfig, codec, start_batch: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.codec = codec
        self.start_batch = int(start_batch)

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
                for pos, sample in enumerate(iter_tar(self.cfg.shards[shard_index])):
                    if by_sample and (pos + shard_index) % n_splits != split:
                        continue
                    yield sample

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
        """Endless decoded training samples of one split, after skipping ``skip`` raw samples."""
        epoch = 0
        epoch_len: int | None = None
        while True:
            if epoch_len and skip >= epoch_len:  # skip whole epochs without reading them
                epoch += skip // epoch_len
                skip %= epoch_len
            count = 0
            for pos, raw in enumerate(self.raw_epoch(split, n_splits, epoch)):
                count += 1
                if skip > 0:
                    skip -= 1
                    continue
                yield self._decode(raw, split, epoch, pos)
            if count == 0:
                raise UserError(f"data split {split} of {n_splits} has no samples; use fewer "
                                "workers/GPUs or more shards")
            epoch_len = count
            epoch += 1

    def _decode(self, raw: dict, split: int, epoch: int, pos: int) -> dict:
        rec = _record(raw)
        target = int(_rng(self.cfg.seed, epoch, split, pos, 2).integers(len(rec.objects)))
        referral, box = rec.query(target)
        ids, labels = self.codec.encode(referral, format_box(box), name_loss=self.cfg.name_loss)
        return {"pixels": decode_image(_image_bytes(raw), self.cfg.image_size),
                "ids": ids, "labels": labels, "box": box, "key": raw["__key__"]}

    def batches(self, split: int, n_splits: int, skip_batches: int = 0) -> Iterator[dict]:
        bs = self.cfg.batch_size
        chunk: list[dict] = []
        for s in self.samples(split, n_splits, skip=skip_batches * bs):
            chunk.append(s)
            if len(chunk) == bs:
                yield self.collate(chunk)
                chunk = []

    def collate(self, chunk: list[dict]) -> dict:
        out = self.codec.collate([(s["ids"], s["labels"]) for s in chunk])
        out["pixels"] = torch.stack([s["pixels"] for s in chunk])
        out["boxes"] = torch.tensor([s["box"] for s in chunk], dtype=torch.float32)
        out["keys"] = [s["key"] for s in chunk]
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
                pin_memory: bool = False) -> DataLoader:
    ds = SceneStream(cfg, codec, start_batch=start_batch)
    return SceneLoader(ds, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                       prefetch_factor=4 if workers > 0 else None, persistent_workers=False)


# --- evaluation on scene shards ------------------------------------------------------------

def _record(raw: dict) -> SceneRecord:
    where = f"{raw.get('__url__')}: scene {raw['__key__']}"
    if "json" not in raw:
        raise UserError(f"{where} has no json")
    return SceneRecord.from_json(raw["json"], where)


def iter_scene_queries(shards: Sequence[str], limit: int | None = None, image_size: int | None = None
                       ) -> Iterator[tuple[torch.Tensor, str, list[float], str]]:
    """``(image uint8 [3,H,W], referral, box, key)`` for every object of every scene, in order."""
    n = 0
    for url in shards:
        for raw in iter_tar(url):
            rec = _record(raw)
            img = decode_image(_image_bytes(raw), image_size)
            for i in range(len(rec.objects)):
                referral, box = rec.query(i)
                yield img, referral, box, raw["__key__"]
                n += 1
                if limit is not None and n >= limit:
                    return
