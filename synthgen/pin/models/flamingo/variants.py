"""The released OpenFlamingo checkpoints and how the parts of a Flamingo are chosen. Light: no torch.

An OpenFlamingo ``checkpoint.pt`` holds only what OpenFlamingo trained (perceiver, gated
cross-attention, the LM's token embeddings); the frozen parts come from elsewhere and must be the
ones it was trained with. For the released checkpoints (OpenFlamingo README, v2) they are:

=====================================================  ================================================  =====
hub id (``--model``)                                   language model                                    xattn
=====================================================  ================================================  =====
openflamingo/OpenFlamingo-3B-vitl-mpt1b                anas-awadalla/mpt-1b-redpajama-200b               1
openflamingo/OpenFlamingo-3B-vitl-mpt1b-langinstruct   anas-awadalla/mpt-1b-redpajama-200b-dolly         1
openflamingo/OpenFlamingo-4B-vitl-rpj3b                togethercomputer/RedPajama-INCITE-Base-3B-v1      2
openflamingo/OpenFlamingo-4B-vitl-rpj3b-langinstruct   togethercomputer/RedPajama-INCITE-Instruct-3B-v1  2
openflamingo/OpenFlamingo-9B-vitl-mpt7b                anas-awadalla/mpt-7b                              4
=====================================================  ================================================  =====

all with the vision encoder CLIP ViT-L/14 (open_clip ``ViT-L-14``, pretrained ``openai``). The
``anas-awadalla`` MPT-1B repositories are MosaicML's ``mpt-1b-redpajama-200b(-dolly)`` weights
(``mosaic_gpt`` layout) with a tokenizer; the PIN authors also used the ``-dolly`` one.

Every part can be overridden (``load_adapter(..., lm=, tokenizer=, vision=, vision_pretrained=,
cross_attn_every=, vision_tokens=)``). A local model directory holds ``checkpoint.pt`` and may
hold ``flamingo.json`` naming its parts (paths relative to the directory), e.g. a copy made for
an offline machine::

    {"lm": "lm", "vision": "local-dir:vision", "cross_attn_every": 1}

Order: explicit options > ``flamingo.json`` > the variant's parts (by hub id, or by a known
variant name in the local path, such as a hub cache folder) > defaults (ViT-L-14/openai,
``vision_tokens="ln_post"``: the tokens the PIN authors trained on, with open_clip 2.23, which
produced the paper's numbers; ``raw`` gives the tokens OpenFlamingo itself was pretrained on).
``cross_attn_every`` left unset is read off the checkpoint's keys.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from synthgen.errors import UserError
from synthgen.pin.models.registry import DEFAULT_MODELS, vlm_option_problems

DEFAULT_VISION_TOKENS = "ln_post"   # what PIN_OF.pt and the paper's numbers were trained on

DEFAULT_MODEL = DEFAULT_MODELS["openflamingo"]
CHECKPOINT_FILE = "checkpoint.pt"
MANIFEST_FILE = "flamingo.json"
DEFAULT_VISION, DEFAULT_VISION_PRETRAINED = "ViT-L-14", "openai"


@dataclass(frozen=True)
class Variant:
    lm: str
    cross_attn_every: int
    vision: str = DEFAULT_VISION
    vision_pretrained: str | None = DEFAULT_VISION_PRETRAINED


VARIANTS = {
    "openflamingo/OpenFlamingo-3B-vitl-mpt1b": Variant("anas-awadalla/mpt-1b-redpajama-200b", 1),
    "openflamingo/OpenFlamingo-3B-vitl-mpt1b-langinstruct": Variant("anas-awadalla/mpt-1b-redpajama-200b-dolly", 1),
    "openflamingo/OpenFlamingo-4B-vitl-rpj3b": Variant("togethercomputer/RedPajama-INCITE-Base-3B-v1", 2),
    "openflamingo/OpenFlamingo-4B-vitl-rpj3b-langinstruct": Variant(
        "togethercomputer/RedPajama-INCITE-Instruct-3B-v1", 2),
    "openflamingo/OpenFlamingo-9B-vitl-mpt7b": Variant("anas-awadalla/mpt-7b", 4),
}


@dataclass(frozen=True)
class FlamingoParts:
    """Everything that decides which Flamingo is built. ``checkpoint``: a hub repo id holding
    ``checkpoint.pt`` or a local file; ``cross_attn_every`` None: read off the checkpoint."""

    model_id: str
    checkpoint: str
    lm: str
    tokenizer: str
    vision: str
    vision_pretrained: str | None
    cross_attn_every: int | None
    vision_tokens: str

    def options(self) -> dict:
        """The VLM options that rebuild this Flamingo (recorded in a run's ``pin.json``)."""
        d = asdict(self)
        del d["model_id"], d["checkpoint"]
        return d


def _absolute(value: str | None, base: Path | None) -> str | None:
    """A local path made absolute (relative ones against ``base``); hub ids and tags unchanged."""
    if value is None:
        return None
    if value.startswith("local-dir:"):
        return "local-dir:" + str(_absolute(value[len("local-dir:"):], base))
    p = Path(value).expanduser()
    if not p.is_absolute() and base is not None and (base / p).exists():
        p = base / p
    return str(p.resolve()) if p.exists() else value


def _variant_for(model: str) -> Variant | None:
    if model in VARIANTS:
        return VARIANTS[model]
    # a local copy named after its variant (e.g. huggingface's models--openflamingo--NAME cache folder)
    for hub_id, v in sorted(VARIANTS.items(), key=lambda kv: -len(kv[0])):
        if hub_id.split("/")[1] in Path(model).as_posix():
            return v
    return None


def check_options(options: dict) -> list[str]:
    """Problems with OpenFlamingo VLM options (names and value types)."""
    return vlm_option_problems("openflamingo", options)


def _local_checkpoint(model: str) -> tuple[str, Path]:
    """``(checkpoint file, folder)`` of a local model given as a directory or a file."""
    p = Path(model).expanduser().resolve()
    if p.is_dir():
        ckpt = p / CHECKPOINT_FILE
        if not ckpt.is_file():
            raise UserError(f"{p} has no {CHECKPOINT_FILE}: an OpenFlamingo model directory holds the "
                            f"{CHECKPOINT_FILE} of the hub repository (and optionally {MANIFEST_FILE})")
        return str(ckpt), p
    if p.is_file():
        return str(p), p.parent
    raise UserError(f"no OpenFlamingo checkpoint at {model}: give a hub id such as {DEFAULT_MODEL}, a "
                    f"directory holding {CHECKPOINT_FILE}, or the file itself")


def _manifest(folder: Path) -> dict:
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise UserError(f"{path} is not valid json: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a json object of OpenFlamingo options")
    problems = check_options(data)
    if problems:
        raise UserError(f"{path}: {'; '.join(problems)}")
    return {k: _absolute(v, folder) if isinstance(v, str) and k != "vision_tokens" else v
            for k, v in data.items()}


def resolve_parts(model: str | None = None, **options) -> FlamingoParts:
    """The parts of the Flamingo named by ``model`` (hub id, model directory or checkpoint file)
    and ``options``; local paths come back absolute so a run can be evaluated from anywhere."""
    model = model or DEFAULT_MODEL
    problems = check_options(options)
    if problems:
        raise UserError("; ".join(problems))
    local = os.path.exists(os.path.expanduser(model))
    if local:
        checkpoint, folder = _local_checkpoint(model)
        model_id, found = str(Path(model).expanduser().resolve()), _manifest(folder)
    elif model.count("/") == 1 and not model.startswith((".", "/", "~")):
        checkpoint, model_id, found = model, model, {}
    else:
        raise UserError(f"no OpenFlamingo checkpoint at {model}: give a hub id such as {DEFAULT_MODEL}, "
                        f"a directory holding {CHECKPOINT_FILE}, or the file itself")
    given = {k: _absolute(v, None) if isinstance(v, str) and k != "vision_tokens" else v
             for k, v in options.items() if v is not None}
    chosen = {**found, **given}
    variant = _variant_for(model_id)
    lm = chosen.get("lm") or (variant.lm if variant else None)
    if lm is None:
        raise UserError(f"{model_id} is not a known OpenFlamingo variant: say which language model it was "
                        f"trained with (option lm=HUB_ID_OR_DIR, or \"lm\" in {MANIFEST_FILE} beside "
                        f"{CHECKPOINT_FILE}); known variants: {', '.join(VARIANTS)}")
    own_vision = variant.vision if variant else DEFAULT_VISION
    vision = chosen.get("vision") or own_vision
    if chosen.get("vision_pretrained"):
        pretrained = chosen["vision_pretrained"]
    elif vision.startswith(("local-dir:", "hf-hub:")):
        pretrained = None  # the folder / hub repo carries its weights
    elif vision == own_vision:
        pretrained = variant.vision_pretrained if variant else DEFAULT_VISION_PRETRAINED
    else:  # an open_clip name alone would build random weights
        raise UserError(f"vision={vision} needs its weights: vision_pretrained=TAG (see "
                        f"open_clip.list_pretrained_tags_by_model({vision!r})) or a file, or use vision=local-dir:DIR")
    every = chosen.get("cross_attn_every", variant.cross_attn_every if variant and not local else None)
    return FlamingoParts(model_id=model_id, checkpoint=checkpoint, lm=lm, tokenizer=chosen.get("tokenizer") or lm,
                         vision=vision, vision_pretrained=pretrained, cross_attn_every=every,
                         vision_tokens=chosen.get("vision_tokens", DEFAULT_VISION_TOKENS))
