"""What a training step keeps in memory for backward, measured the way autograd sees it: every
tensor saved for backward passes through :func:`torch.autograd.graph.saved_tensors_hooks`, and
the bytes of their distinct storages (the frozen weights excepted: they are in memory anyway)
are what the step adds. Used by ``benchmarks/real_size.py`` and the memory tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch


@dataclass
class Saved:
    """Tensors autograd kept during a forward, but for the ``exclude``d (weights): ``bytes`` over
    their distinct storages, and their shapes."""

    bytes: int = 0
    shapes: list[tuple[tuple[int, ...], torch.dtype]] = field(default_factory=list)

    def largest(self, n: int = 5) -> list[tuple[tuple[int, ...], torch.dtype]]:
        return sorted(self.shapes, key=lambda s: -_numel(s[0]))[:n]


def _numel(shape: tuple[int, ...]) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


def saved_for_backward(fn: Callable[[], torch.Tensor], exclude: Iterable[torch.Tensor] = ()
                       ) -> tuple[torch.Tensor, Saved]:
    """``(fn(), what autograd saved while it ran)``."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: set[int] = set()
    out = Saved()

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr() if t.device.type != "meta" else None
        if ptr is not None and ptr in skip:
            return t
        out.shapes.append((tuple(t.shape), t.dtype))
        if ptr is not None and ptr not in seen:
            seen.add(ptr)
            out.bytes += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn()
    return result, out
