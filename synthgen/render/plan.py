"""Actor counts and resources of the render pipeline (pure arithmetic, no Ray)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from synthgen.errors import UserError

LIGHT_GPU = 0.1  # GPU share of a scorer actor (and a cut-out one with onnxruntime-gpu) next to a generator
CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


@dataclass(frozen=True)
class Plan:
    n_gen: int
    gen_gpus: float
    gen_cpus: float
    n_light: int        # actors per light stage (cut-out, scorer)
    light_gpus: float   # GPU share of a scorer actor (torch)
    light_cpus: float
    threads: int | None  # torch threads of a generator (CPU only)
    light_threads: int = 1
    cut_gpus: float = 0.0  # GPU share of a cut-out actor: 0 unless onnxruntime offers CUDA

    @property
    def cut_providers(self) -> list[str]:
        """The onnxruntime providers of the cut-out actors' rembg sessions: CUDA where they hold a
        GPU share, else the CPU only (an actor without a GPU share must not use one it sees)."""
        return [CUDA_PROVIDER, CPU_PROVIDER] if self.cut_gpus > 0 else [CPU_PROVIDER]


def _down(x: float) -> float:
    """``x`` rounded down to Ray's resource unit (0.0001)."""
    return math.floor(x * 10_000 + 1e-6) / 10_000


def _cpu_shares(cpus: float, n_gen: int, n_light: int, light_on_gpu: bool) -> tuple[float, float]:
    """CPUs of a generator and of a light actor: at most half the CPUs for the generators (1
    each at most), the rest split over the 2 * ``n_light`` light actors (1 each at most when they
    run on a GPU; all of it when they run on the CPU), so the total never exceeds ``cpus``."""
    cpus = max(cpus, 0.0)
    gen = max(0.0001, min(1.0, _down(cpus / (2 * n_gen))))
    light = _down((cpus - n_gen * gen) / (2 * n_light))
    if light_on_gpu:
        light = min(1.0, light)
    elif light > 1:
        light = float(math.floor(light))  # whole CPUs, one torch/ONNX thread each
    return gen, max(0.0001, light)


def plan_resources(gpus: float, cpus: float, gpus_per_worker: float,
                   node_gpus: Sequence[float] | None = None, onnx_providers: Sequence[str] = ()) -> Plan:
    """Actor counts and resources, never more than the cluster has and always valid for Ray
    (fractions of 0.0001). ``node_gpus`` lists the GPUs of each node (default: all ``gpus`` on
    one node); ``onnx_providers`` is ``onnxruntime.get_available_providers()``.

    * ``gpus_per_worker`` <= 1 (one Stable Diffusion generator uses one GPU at most; more is
      refused): k = ``floor(1 / gpus_per_worker)`` generators per GPU, plus one cut-out and one
      scorer actor per GPU with ``LIGHT_GPU`` each (less when k is large); the generators' share
      is trimmed so that k of them and the two light actors fill one GPU and k + 1 generators
      never fit on one GPU (Ray packs fractions; the generator pool starts first, so every GPU
      gets exactly k generators and room for its light actors).
    * The cut-out actors (rembg on onnxruntime) take their GPU share only when onnxruntime offers
      CUDA (:func:`cutout_on_gpu`); with its CPU build they ask for none and run on the CPU.
    * No GPU: one actor per stage on the CPU.
    """
    if gpus_per_worker > 1:
        raise UserError(f"--gpus-per-worker must be <= 1 (got {gpus_per_worker:g}): one Stable Diffusion "
                        "generator uses one GPU, more would sit idle; use 1, or a fraction <= 1 to share a GPU")
    per_node = [int(math.floor(g + 1e-9)) for g in (node_gpus if node_gpus is not None else [gpus])]
    whole = sum(per_node)
    if whole < 1:
        cpus = max(1.0, cpus)
        light = 0.25 if cpus <= 2 else 1.0
        return Plan(1, 0.0, max(1.0, cpus - 2 * light) if cpus > 2 else 1.0, 1, 0.0, light,
                    threads=max(1, int(cpus)))
    k = max(1, int(math.floor(1.0 / gpus_per_worker + 1e-9)))
    gen_gpus = min(_down(gpus_per_worker), _down((1.0 - 2 * LIGHT_GPU) / k))
    if (k + 1) * gen_gpus <= 1.0 + 1e-9:
        # the smallest share with which k + 1 generators no longer fit on one GPU
        gen_gpus = (math.floor(10_000 / (k + 1)) + 1) / 10_000
    light_gpus = min(LIGHT_GPU, _down((1.0 - k * gen_gpus) / 2))
    n_gen, n_light = k * whole, whole
    gen_cpus, light_cpus = _cpu_shares(cpus, n_gen, n_light, light_gpus > 0)
    return Plan(n_gen, gen_gpus, gen_cpus, n_light, light_gpus, light_cpus, None,
                light_threads=1 if light_gpus > 0 else max(1, int(light_cpus)),
                cut_gpus=light_gpus if cutout_on_gpu(onnx_providers) else 0.0)


def cutout_on_gpu(onnx_providers: Sequence[str]) -> bool:
    """Whether rembg's sessions can run on a GPU: onnxruntime offers CUDA (``onnxruntime-gpu``).
    Its CPU build (``onnxruntime``) offers ``CPUExecutionProvider`` (and Azure) only."""
    return CUDA_PROVIDER in onnx_providers
