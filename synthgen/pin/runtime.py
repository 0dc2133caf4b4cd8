"""Where and in what precision the frozen VLM runs: the device of this process (one GPU per
torchrun rank) and the dtypes a ``--precision`` means, for training and for eval-pin / predict.

=============  ==========================  ================  ===========
--precision    frozen VLM weights           autocast          grad scaler
=============  ==========================  ================  ===========
auto           bf16 where the GPU has it, else as fp16
bf16           bf16                         bf16              no
fp16           fp16                         fp16              yes
fp16-mixed     fp32 (the authors': Lightning ``precision=16``)  fp16  yes
fp32           fp32                         off               no
=============  ==========================  ================  ===========

PIN and Adam's state are fp32 whatever the precision; the CPU always runs fp32.
"""

from __future__ import annotations

import torch

from synthgen.errors import UserError
from synthgen.pin.models import PRECISIONS

WEIGHTS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp16-mixed": torch.float32, "fp32": torch.float32}
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp16-mixed": torch.float16, "fp32": torch.float32}
SCALED = ("fp16", "fp16-mixed")  # fp16 autocast: a GradScaler keeps PIN's small gradients


def pick_device(requested: str | None, local_rank: int, world: int, cuda: bool) -> torch.device:
    """The device of this process. ``--device cuda`` (no index) and no ``--device`` on a GPU
    machine mean this rank's GPU, ``cuda:LOCAL_RANK``: under torchrun every rank gets its own.
    An explicit ``cuda:N`` is taken as given on one process and refused under torchrun (all ranks
    would share one GPU)."""
    if not requested:
        return torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise UserError(f"--device {requested!r} is not a device: give cpu, cuda or cuda:N") from None
    if device.type != "cuda":
        return device
    if not cuda:
        raise UserError(f"--device {requested}: this machine has no CUDA GPU that torch can use")
    if device.index is None:
        return torch.device(f"cuda:{local_rank}")
    if world > 1:
        raise UserError(f"--device {requested} under torchrun would put all {world} ranks on one GPU: give "
                        "--device cuda (each rank takes the GPU of its LOCAL_RANK)")
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision training runs in: ``auto`` resolved for the GPU; fp32 on the CPU."""
    if precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if device.type != "cuda":
        return "fp32"
    if precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise UserError("--precision bf16: this GPU has no bf16; use --precision auto (fp16 here) or fp16")
    return precision


def inference_dtype(run_precision: str | None, device: torch.device) -> torch.dtype:
    """The dtype eval-pin and predict load the frozen VLM in: fp32 on the CPU; on a GPU the
    weights' dtype the run trained with (``fp16-mixed`` -> fp16, runs without a record -> bf16),
    bf16 falling back to fp16 where the GPU has no bf16."""
    if device.type != "cuda":
        return torch.float32
    want = {"fp32": torch.float32, "fp16": torch.float16, "fp16-mixed": torch.float16}.get(
        run_precision or "", torch.bfloat16)
    if want is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        return torch.float16
    return want
