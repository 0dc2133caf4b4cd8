"""Scenes composed in the DataLoader workers for train-pin (``--objects`` / ``--backgrounds``).

The authors compose every training scene on the fly, so a run of 160 epochs x 60,000 scenes sees
~9.6M distinct scenes; shards re-read a fixed set. Here each worker makes its scenes with the same
:class:`~synthgen.compose.scene.Composer` as ``synthgen compose`` (same layout, referrals, paste),
from the bank and background listing read once in the main process.

Deterministic in ``(seed, phase, split, position)``: sample ``k`` of data split ``s`` (of ``n``)
is scene ``k * n + s`` of a composer seeded by the run seed and the phase, so every split makes
distinct scenes, the stream does not depend on timing, and ``--resume`` starts at ``k = skip``
without composing the skipped scenes (the batches are those of the uninterrupted run). The
scene's own target object is the one asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from synthgen.compose.config import ComposeParams
from synthgen.grounding import format_box
from synthgen.pin.training.data import BatchStream, StreamConfig


@dataclass(frozen=True)
class ComposeSource:
    """What the workers compose from: the bank, the background listing, the scene settings."""

    objects: str
    backgrounds: list[str] = field(repr=False)
    params: ComposeParams = ComposeParams()
    extra_object_roots: tuple[str, ...] = ()


def phase_seed(seed: int, phase: int) -> int:
    """The composer seed of a phase (0: the warm-up, 1: the main phase) of a run seeded ``seed``."""
    state = np.random.SeedSequence([int(seed), 0x5CE7E, int(phase)]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 32 | int(state[1])) & ((1 << 63) - 1))


@dataclass
class ComposedConfig(StreamConfig):
    source: ComposeSource | None = None


class ComposedStream(BatchStream):
    """Endless batches of freshly composed scenes for one DDP rank (see the module doc)."""

    cfg: ComposedConfig

    def _composer(self):
        from synthgen.bank.reader import ObjectBank
        from synthgen.compose.scene import Composer

        src = self.cfg.source
        bank = ObjectBank.open(src.objects, extra_roots=src.extra_object_roots, max_side=src.params.size)
        return Composer(src.params, bank, src.backgrounds)

    def batches(self, split: int, n_splits: int, skip_batches: int = 0) -> Iterator[dict]:
        composer = self._composer()
        bs = self.cfg.batch_size
        k = skip_batches * bs
        chunk: list[dict] = []
        while True:
            scene = composer.scene(k * n_splits + split)
            k += 1
            self.read += 1
            rec = scene.record
            referral, box = rec.query(rec.target)
            ids, labels = self.codec.encode(referral, format_box(box), name_loss=self.cfg.name_loss)
            chunk.append({"pixels": torch.from_numpy(scene.image).permute(2, 0, 1).contiguous(),
                          "ids": ids, "labels": labels, "box": box, "key": rec.key,
                          "n_objects": len(rec.objects)})
            if len(chunk) == bs:
                yield self.collate(chunk)
                chunk = []
