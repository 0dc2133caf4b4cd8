"""A train-pin run folder: checkpoints, resume, and loading a trained run.

A run folder holds ``pin.safetensors`` (PIN weights), ``pin.json`` (what the run is),
``train_state.pt`` (optimiser, step, RNG, and a copy of the weights and the run description) and
``log.jsonl``. ``train_state.pt`` is the one commit point of a checkpoint: it holds everything
and is written first, atomically; ``pin.safetensors`` and ``pin.json`` (what users and eval-pin
read) follow, and a kill between the files is repaired by ``--resume`` from ``train_state.pt``.
It is read with ``torch.load(weights_only=True)``: no arbitrary pickles.

The run folder may be an object-store URL (``s3://bucket/runs/pin``, :mod:`synthgen.storage`):
each file is uploaded whole, in the same order, so the commit point is the same.
"""

from __future__ import annotations

import io
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from synthgen import storage
from synthgen.errors import UserError
from synthgen.schema import PIN_META_FILE, PIN_WEIGHTS_FILE, TRAIN_STATE_FILE
from synthgen.storage import atomic_write_with

# --- RNG -----------------------------------------------------------------------------------

def rng_state(device: torch.device | None = None) -> dict:
    """CPU and Python RNG states, and the CUDA generator of ``device`` when it is a GPU (only
    that one: a run must resume on a machine with fewer GPUs)."""
    st = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state(device)
    return st


def set_rng_state(st: dict, device: torch.device | None = None) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate(_tuplify(st["python"]))
    cuda = st.get("cuda")
    if cuda is None or device is None or device.type != "cuda" or not torch.cuda.is_available():
        return
    if isinstance(cuda, (list, tuple)):  # earlier checkpoints: every GPU of the saving machine
        index = device.index or 0
        if index >= len(cuda):
            return
        cuda = cuda[index]
    torch.cuda.set_rng_state(cuda, device)


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, (list, tuple)) else x


def read_log(path: Path) -> list[dict]:
    """The records of a run's ``log.jsonl``; a line a kill cut short (or any line that is not a
    JSON object) is dropped."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_bytes().decode("utf-8", "replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


# --- checkpoint ----------------------------------------------------------------------------
#
# ``train_state.pt`` is the one commit point of a checkpoint: it holds everything (step,
# optimiser, RNG, scaler, PIN weights and the run description) and is written first, atomically.
# ``pin.safetensors`` and ``pin.json`` (what users and eval-pin read) follow; a kill between the
# files leaves them at the previous checkpoint, and ``--resume`` rewrites them from
# ``train_state.pt``.

STATE_FORMAT = 2  # 1 (no "format" key): optimiser/RNG only, weights and meta in the other files


def write_run_files(out: Path, weights: dict, meta: dict) -> None:
    """``pin.safetensors`` then ``pin.json`` (each atomically) for the checkpoint ``meta["step"]``."""
    from safetensors.torch import save_file

    step = int(meta["step"])
    atomic_write_with(out / PIN_WEIGHTS_FILE,
                      lambda p: save_file(weights, p, metadata={"step": str(step)}))
    atomic_write_with(out / PIN_META_FILE, lambda p: Path(p).write_text(json.dumps(meta, indent=2) + "\n"))


def save_checkpoint(out: Path, pin, optimizer, scaler, step: int, meta: dict,
                    device: torch.device | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().float().cpu().contiguous() for k, v in pin.state_dict().items()}
    meta = dict(meta, step=step, saved_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
    state = {"format": STATE_FORMAT, "step": step, "optimizer": optimizer.state_dict(),
             "rng": rng_state(device), "scaler": scaler.state_dict() if scaler is not None else {},
             "pin": weights, "meta": json.dumps(meta)}
    atomic_write_with(out / TRAIN_STATE_FILE, lambda p: torch.save(state, p))  # the commit
    write_run_files(out, weights, meta)


def _load_weights(path) -> dict:
    """A safetensors file (read whole) as tensors."""
    from safetensors.torch import load

    return load(path.read_bytes())


def _safetensors_step(path) -> int:
    """The ``step`` in a safetensors file's metadata, from its header (two small reads); a file
    shorter than its header says is refused (ValueError), as safetensors does."""
    import struct

    path = storage.path(path)
    head = path.read_range(0, 8)
    if len(head) != 8:
        raise ValueError("not a safetensors file")
    (n,) = struct.unpack("<Q", head)
    if n > 100 << 20:
        raise ValueError("not a safetensors header")
    header = json.loads(path.read_range(8, n))
    if not isinstance(header, dict):
        raise ValueError("not a safetensors header")
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if path.size() != 8 + n + end:
        raise ValueError("the safetensors file is cut short")
    return int(header["__metadata__"]["step"])


def load_state(out: Path) -> dict:
    """The resume state, read with ``torch.load(weights_only=True)`` (no arbitrary pickles): a
    file holding anything else is refused with one line."""
    import pickle
    import warnings

    path = out / TRAIN_STATE_FILE
    try:
        with warnings.catch_warnings():  # (torch warns about pickle protocols it reads anyway)
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as exc:
        kind = "holds objects other than tensors and plain containers" if isinstance(
            exc, pickle.UnpicklingError) else "is damaged or not a torch file"
        raise UserError(f"{path} is not a synthgen checkpoint: it {kind}; it was not loaded (only "
                        "tensors and plain containers are ever unpickled). Start a new run with "
                        "another --out, or remove that file") from None
    if not isinstance(state, dict) or "step" not in state:
        raise UserError(f"{path} is not a synthgen checkpoint (no step); start a new run with another --out")
    return state


def saved_step(out: Path) -> tuple[int | None, int | None]:
    """The steps ``pin.json`` and ``pin.safetensors`` say they hold (None: missing/unreadable)."""
    js = st = None
    try:
        js = int(json.loads((out / PIN_META_FILE).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        st = _safetensors_step(out / PIN_WEIGHTS_FILE)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError):
        pass
    return js, st


def read_checkpoint(out: Path, repair: bool = True) -> tuple[dict, dict, dict] | None:
    """``(meta, state, weights)`` of the last committed checkpoint in ``out``, or None when there
    is none. With ``repair``, ``pin.safetensors``/``pin.json`` left behind by a kill between the
    checkpoint files are rewritten from ``train_state.pt``."""
    if not (out / TRAIN_STATE_FILE).is_file():
        if (out / PIN_META_FILE).is_file():
            raise UserError(f"{out} holds pin.json but no train_state.pt (optimiser, step, RNG): it "
                            "cannot be resumed; choose another --out")
        return None
    state = load_state(out)
    step = int(state["step"])
    if "meta" in state:  # self-contained: train_state.pt is the checkpoint
        meta, weights = json.loads(state["meta"]), state["pin"]
        if repair and saved_step(out) != (step, step):
            write_run_files(out, weights, meta)
        return meta, state, weights
    # written by an earlier synthgen: the three files must agree
    if not (out / PIN_META_FILE).is_file() or not (out / PIN_WEIGHTS_FILE).is_file():
        raise UserError(f"{out}: train_state.pt (step {step}) has no pin.json/pin.safetensors "
                        "beside it; the checkpoint is incomplete")
    meta = json.loads((out / PIN_META_FILE).read_text())
    if step != int(meta["step"]):
        raise UserError(f"{out}: train_state.pt (step {step}) and pin.json "
                        f"(step {meta['step']}) disagree; the checkpoint is incomplete")
    return meta, state, _load_weights(out / PIN_WEIGHTS_FILE)


# --- resume settings -----------------------------------------------------------------------

DATA_SPLIT = 2  # how shards are dealt to data splits (synthgen.pin.training.data.SceneStream._split_plan)

# what fixes the data order (the exact-continuation skip of --resume) and the curve, with the
# option that sets it; a resume must keep these
RESUME_SETTINGS = {"method": "--method", "method_options": "--method-option", "seed": "--seed", "batch_size": "--batch-size", "lr": "--lr",
                   "world_size": "world size", "workers": "--loader-workers",
                   "shuffle_buffer": "--shuffle-buffer", "name_loss": "--name-loss",
                   "epoch_size": "--epoch-size", "warmup_epochs": "--warmup-epochs",
                   "warmup_shards_sha256": "--warmup-shards", "train_source": "the scene source",
                   "train_objects": "--objects", "train_backgrounds": "--backgrounds",
                   "compose": "compose settings", "inputs": "the inputs", "categories_map": "--categories-map",
                   "tasks": "--tasks"}


def shard_list_digest(shards: Sequence[str]) -> str:
    """sha256 of the shard file names in order (the stream depends on them, not on where the
    directory lives)."""
    import hashlib

    names = "\n".join(os.path.basename(str(u).rstrip("/")) for u in shards)
    return hashlib.sha256(names.encode()).hexdigest()


def resume_conflicts(prev: dict, now: dict) -> list[str]:
    """``"option old -> new"`` for every setting of ``now`` that differs from the run's ``prev``
    (settings a run of an earlier synthgen did not record are not compared). 0 and 1
    ``--loader-workers`` are the same stream (one data split per rank)."""
    from synthgen.storage import identity_diff

    def differs(k: str) -> bool:
        old, new = prev[k], now.get(k)
        return max(old, 1) != max(new, 1) if k == "workers" else old != new

    prev = {"tasks": {"name": 1.0}, **prev}  # (a run from before --tasks trained PIN's question alone)
    now = json.loads(json.dumps({k: now.get(k) for k in set(now) | set(prev)}))  # tuples -> lists, as stored
    out = identity_diff(prev, now, RESUME_SETTINGS, [k for k in RESUME_SETTINGS if k in prev and differs(k)])
    if "train_shards_sha256" in prev and (prev["train_shards_sha256"], prev.get("train_shard_count")) != (
            now["train_shards_sha256"], now["train_shard_count"]):
        out.append(f"shards {prev.get('train_shards')} ({prev.get('train_shard_count')} shards) -> "
                   f"{now['train_shards']} ({now['train_shard_count']} shards)")
    return out


# --- trained runs ------------------------------------------------------------------------

@dataclass
class Run:
    dir: Path
    meta: dict

    @property
    def canvas(self) -> int:
        return int(self.meta["canvas"])

    @property
    def grid(self) -> int:
        return int(self.meta["grid"])


def read_run(run_dir: str | os.PathLike) -> Run:
    d = storage.path(str(run_dir))
    meta_path = d / PIN_META_FILE
    if not meta_path.is_file():
        raise UserError(f"{d} is not a PIN run: no pin.json")
    return Run(d, json.loads(meta_path.read_text()))


def load_run(run_dir: str | os.PathLike, model: str | None = None, device: str | None = None,
             vlm_options: dict | None = None):
    """``(run, adapter)``: the frozen VLM of the run (its ``pin.json``'s ``vlm``, ``model`` and
    ``vlm_options``, each overridable) with its trained PIN attached, on ``device`` (default: the
    GPU if any) in the dtype the run trained its VLM in, as far as the GPU supports it
    (:func:`synthgen.pin.runtime.inference_dtype`)."""
    from synthgen.pin.models.adapters import load_adapter
    from synthgen.pin.models.module import PIN
    from synthgen.pin.runtime import inference_dtype, pick_device

    run = read_run(run_dir)
    dev = pick_device(device, 0, 1, torch.cuda.is_available())
    dtype = inference_dtype(run.meta.get("precision"), dev)
    options = {**run.meta.get("vlm_options", {}), **(vlm_options or {})}
    adapter = load_adapter(run.meta["vlm"], model or run.meta["model"], device=dev, dtype=dtype, **options)
    if adapter.input_size != run.canvas:
        raise UserError(f"run canvas {run.canvas} != {adapter.model_id} input size {adapter.input_size}")
    if run.meta.get("method", "pin") != "pin":
        return run, _load_method(run, adapter)
    pin = PIN.from_config(run.meta["pin"])
    pin.load_state_dict(_load_weights(run.dir / PIN_WEIGHTS_FILE))
    pin.to(adapter.device).eval()
    if (pin.num_positions, pin.out_dim) != (adapter.num_positions, adapter.vision_width):
        raise UserError(f"PIN of {run.dir} is {pin.num_positions}x{pin.out_dim} but "
                        f"{adapter.model_id} has {adapter.num_positions}x{adapter.vision_width} vision tokens")
    for p in pin.parameters():
        p.requires_grad_(False)
    adapter.attach_pin(pin)
    return run, adapter


def _load_method(run: Run, adapter):
    """The run's --method put into ``adapter``'s VLM with its trained tensors, frozen (``full``:
    the VLM in the dtype it was loaded in again)."""
    from synthgen.pin.models.methods import make_method

    method = make_method(run.meta["method"], adapter, run.meta.get("method_options"))
    method.attach(adapter)
    method.load_state_dict(_load_weights(run.dir / PIN_WEIGHTS_FILE))
    method.eval()
    for p in method.trainable().values():
        p.requires_grad_(False)
    if run.meta["method"] == "full":
        adapter.model.to(adapter.dtype)
    return adapter
