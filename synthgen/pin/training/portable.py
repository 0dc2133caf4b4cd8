"""The PIN authors' checkpoint format (QUVA-Lab/PIN, e.g. ``PINs/PIN_OF.pt``) <-> a synthgen run folder.

Their file is ``torch.save({"mlp": MLP.state_dict(), "pos_enc": table})`` with
``MLP = Sequential(Linear(64,512), SiLU, LayerNorm(512), Linear(512,768), SiLU, LayerNorm(768),
Linear(768,D_v))`` (keys ``0.*, 2.*, 3.*, 5.*, 6.*``; the SiLUs have none) and ``table`` their
``get_sinusoid_encoding_table(num_patches, 64)`` of shape ``[1, num_patches, 64]``, saved from
CUDA. synthgen's :class:`~synthgen.pin.models.module.PIN` with ``activation="silu"`` and
``table="sinusoid"`` holds the same Sequential as ``pin.mlp`` (same indices), so the keys map as
``mlp.{key}`` and its fixed table equals theirs (checked to float32 precision on import).

An imported run has ``pin.safetensors`` + ``pin.json`` (step 0, no ``train_state.pt``: it cannot
be resumed) and is what eval-pin and predict read. For OpenFlamingo it records
``vision_tokens="ln_post"`` unless told otherwise: the authors' environment (open-clip-torch
2.23.0) gave the perceiver the ViT's tokens after its final LayerNorm, and ``PIN_OF.pt`` was
trained on those (OpenFlamingo itself was trained on the tokens before it; see
:mod:`synthgen.pin.models.flamingo.model`).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from synthgen.errors import UserError

AUTHORS_VISION_TOKENS = "ln_post"  # QUVA-Lab/PIN environment.yml: open-clip-torch==2.23.0
_KEY = re.compile(r"^(\d+)\.(weight|bias)$")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_authors_file(path: str | os.PathLike) -> tuple[dict, object]:
    """``(mlp state dict, pos_enc)`` of a file in the authors' format, read with
    ``torch.load(weights_only=True)`` (a pickle that needs code is refused) onto the CPU."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise UserError(f"no such file: {p}")
    try:
        data = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - refused pickle, corrupt zip, not a torch file
        raise UserError(f"{p}: refused or unreadable as a plain tensor file (weights_only): {_first_line(exc)}") from None
    if not isinstance(data, dict) or set(data) != {"mlp", "pos_enc"}:
        found = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise UserError(f"{p}: expected the PIN authors' layout {{'mlp': state dict, 'pos_enc': tensor}}, found {found}")
    mlp, pos = data["mlp"], data["pos_enc"]
    if not isinstance(mlp, dict) or not all(isinstance(v, torch.Tensor) for v in mlp.values()):
        raise UserError(f"{p}: 'mlp' is not a state dict of tensors")
    if not isinstance(pos, torch.Tensor):
        raise UserError(f"{p}: 'pos_enc' is a {type(pos).__name__}, not a tensor")
    return mlp, pos


def _mlp_layout(mlp: dict, where: str) -> tuple[int, tuple[int, ...], int]:
    """``(table_dim, hidden, out_dim)`` of the authors' Linear/SiLU/LayerNorm Sequential."""
    bad = sorted(k for k in mlp if not _KEY.match(k))
    idx = sorted({int(_KEY.match(k).group(1)) for k in mlp if _KEY.match(k)})
    n_hidden = idx[-1] // 3 if idx else 0
    want = {f"{3 * i}.{w}" for i in range(n_hidden + 1) for w in ("weight", "bias")}
    want |= {f"{3 * i + 2}.{w}" for i in range(n_hidden) for w in ("weight", "bias")}
    if bad or not idx or idx[-1] % 3 or set(mlp) != want:
        raise UserError(f"{where}: 'mlp' keys {sorted(mlp)[:12]} are not the authors' Sequential of Linear, SiLU, "
                        "LayerNorm layers (keys 0.*, 2.*, 3.*, 5.*, 6.* for two hidden layers)")
    width, hidden = None, []
    for i in range(n_hidden + 1):
        w, b = mlp[f"{3 * i}.weight"], mlp[f"{3 * i}.bias"]
        if w.ndim != 2 or tuple(b.shape) != (w.shape[0],) or (width is not None and w.shape[1] != width):
            raise UserError(f"{where}: Linear {3 * i} is {tuple(w.shape)} (+ bias {tuple(b.shape)}) after width "
                            f"{width}: not a chain of layers")
        if i == 0:
            table_dim = int(w.shape[1])
        width = int(w.shape[0])
        if i < n_hidden:
            for name in ("weight", "bias"):
                if tuple(mlp[f"{3 * i + 2}.{name}"].shape) != (width,):
                    raise UserError(f"{where}: LayerNorm {3 * i + 2}.{name} is {tuple(mlp[f'{3 * i + 2}.{name}'].shape)},"
                                    f" expected ({width},)")
            hidden.append(width)
    return table_dim, tuple(hidden), width


def pin_from_authors(mlp: dict, pos_enc, where: str):
    """The :class:`~synthgen.pin.models.module.PIN` holding the authors' weights; refuses another layout,
    shapes that do not chain, or a ``pos_enc`` that is not the sinusoid table."""
    import torch

    from synthgen.pin.models.module import PIN, sinusoid_table

    table_dim, hidden, out_dim = _mlp_layout(mlp, where)
    table = pos_enc[0] if pos_enc.ndim == 3 and pos_enc.shape[0] == 1 else pos_enc
    if table.ndim != 2 or table.shape[1] != table_dim:
        raise UserError(f"{where}: pos_enc is {tuple(pos_enc.shape)}, expected [1, num_patches, {table_dim}]")
    expected = sinusoid_table(table.shape[0], table_dim)
    diff = float((table.float() - expected).abs().max())
    if diff > 1e-6:
        raise UserError(f"{where}: pos_enc differs from the sinusoid table by up to {diff:.3g}: not the authors' "
                        "fixed table (a learned one is not supported)")
    pin = PIN(table.shape[0], out_dim, table="sinusoid", table_dim=table_dim, hidden=hidden, activation="silu")
    with torch.no_grad():
        pin.load_state_dict({f"mlp.{k}": v.float() for k, v in mlp.items()})
    return pin


def vlm_geometry(vlm: str, model: str | None, options: dict) -> tuple[str, dict, dict]:
    """``(model id, options to record, geometry)`` of a VLM from its configs alone (no weights)."""
    from synthgen.pin.models.registry import DEFAULT_MODELS, VLMS, vlm_option_problems

    if vlm not in DEFAULT_MODELS:
        raise UserError(f"unknown --vlm {vlm!r}; choose one of: {', '.join(VLMS)}")
    if vlm not in ("openflamingo", "blip2"):  # the authors released PINs for these two only
        raise UserError(f"import-pin: the authors released PINs for openflamingo and blip2, not {vlm}; "
                        "train-pin writes runs of the other VLMs directly")
    problems = vlm_option_problems(vlm, options)
    if problems:
        raise UserError("; ".join(problems))
    if vlm == "openflamingo":
        from synthgen.pin.models.flamingo.loading import geometry
        from synthgen.pin.models.flamingo.variants import resolve_parts

        parts = resolve_parts(model, **{"vision_tokens": AUTHORS_VISION_TOKENS, **options})
        return parts.model_id, parts.options(), geometry(parts.vision)
    from transformers import Blip2Config

    model_id = model or DEFAULT_MODELS[vlm]
    model_id = str(Path(model_id).resolve()) if Path(model_id).exists() else model_id
    try:
        vc = Blip2Config.from_pretrained(model_id).vision_config
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the BLIP-2 config of {model_id!r}: {_first_line(exc)}") from None
    grid = int(vc.image_size) // int(vc.patch_size)
    return model_id, {}, {"input_size": int(vc.image_size), "patch_grid": grid, "num_positions": grid * grid + 1,
                          "vision_width": int(vc.hidden_size)}


def import_pin(path: str | os.PathLike, out: str | os.PathLike, *, vlm: str = "openflamingo",
               model: str | None = None, vlm_options: dict | None = None) -> dict:
    """Turn an authors'-format file into a run folder ``out`` for ``vlm``/``model``; return its ``pin.json``."""
    from synthgen._version import __version__
    from synthgen.pin.training.checkpoint import write_run_files
    from synthgen.schema import PIN_FORMAT, PIN_META_FILE, TRAIN_STATE_FILE

    out = Path(out)
    if (out / PIN_META_FILE).exists() or (out / TRAIN_STATE_FILE).exists():
        raise UserError(f"{out} already holds a PIN run; choose another --out")
    where = str(path)
    pin = pin_from_authors(*read_authors_file(path), where)
    model_id, options, geo = vlm_geometry(vlm, model, dict(vlm_options or {}))
    if (pin.num_positions, pin.out_dim) != (geo["num_positions"], geo["vision_width"]):
        raise UserError(f"{where} is a PIN of {pin.num_positions}x{pin.out_dim} but {vlm} {model_id} has "
                        f"{geo['num_positions']}x{geo['vision_width']} vision tokens")
    meta = {"format": PIN_FORMAT, "synthgen_version": __version__, "vlm": vlm, "model": model_id,
            "vlm_options": options, "canvas": geo["input_size"], "grid": geo["patch_grid"],
            "patch_grid": geo["patch_grid"], "vision_width": geo["vision_width"],
            "num_positions": geo["num_positions"], "pin": pin.config(), "pin_parameters": pin.num_parameters(),
            "step": 0, "imported_from": str(Path(path).resolve()),
            "imported_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    out.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().float().cpu().contiguous() for k, v in pin.state_dict().items()}
    write_run_files(out, weights, meta)
    return meta


def export_pin(run_dir: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write a run's PIN in the authors' format (``{"mlp": ..., "pos_enc": [1, N, d]}``) to ``out``."""
    import torch
    from safetensors.torch import load_file

    from synthgen.pin.models.module import sinusoid_table
    from synthgen.pin.training.checkpoint import read_run
    from synthgen.schema import PIN_WEIGHTS_FILE
    from synthgen.storage import atomic_write_with

    run = read_run(run_dir)
    if run.meta.get("method", "pin") != "pin":
        raise UserError(f"{run.dir} trained --method {run.meta['method']}, not PIN: the authors' format holds a PIN only")
    cfg = run.meta["pin"]
    if cfg.get("activation", "silu") != "silu" or cfg.get("table", "sinusoid") != "sinusoid":
        raise UserError(f"{run.dir}: a PIN with activation={cfg.get('activation')} and table={cfg.get('table')} has "
                        "no place in the authors' format (SiLU MLP over the fixed sinusoid table)")
    weights = load_file(str(run.dir / PIN_WEIGHTS_FILE))
    mlp = {k[len("mlp."):]: v.contiguous() for k, v in weights.items() if k.startswith("mlp.")}
    pos_enc = sinusoid_table(int(cfg["num_positions"]), int(cfg.get("table_dim", 64)))[None].contiguous()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_with(out, lambda p: torch.save({"mlp": mlp, "pos_enc": pos_enc}, p))
    return out
