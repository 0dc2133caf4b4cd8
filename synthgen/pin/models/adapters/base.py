"""The adapter interface: everything PIN training and evaluation need to know about a VLM.

An adapter says what the VLM takes (``input_size``, ``patch_grid``, ``num_positions`` vision
tokens of width ``vision_width``), adds PIN to its vision features before the fusion network
(:meth:`VLMAdapter.attach_pin` / :meth:`~VLMAdapter.pin_disabled` / :meth:`~VLMAdapter.detach_pin`),
turns prompts/answers into token ids and loss labels (a light, picklable :class:`TextCodec` that
DataLoader workers use), computes the training loss and generates answers.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch

from synthgen.errors import UserError
from synthgen.grounding import prompt_parts
from synthgen.pin.models import ATTENTION

PinFn = Callable[[], torch.Tensor]

LOSS_SPANS = ("box", "name", "name_prompt")


def loss_span(name_loss: bool | str) -> tuple[bool, bool]:
    """Whether the loss covers the name, and the prompt after it (`` located at``), beyond the
    answer: ``False``/``"box"`` neither, ``True``/``"name"`` the name, ``"name_prompt"`` both
    (the authors' first 40 epochs: ``{name} located at [box]``)."""
    span = "name" if name_loss is True else "box" if not name_loss else str(name_loss)
    if span not in LOSS_SPANS:
        raise ValueError(f"loss span must be one of {LOSS_SPANS}, got {name_loss!r}")
    return span in ("name", "name_prompt"), span == "name_prompt"


def text_parts(referral: str | None, art: str | None = None, prompt: str | None = None) -> list[str]:
    """PIN's prompt for ``referral`` in its three parts (:func:`~synthgen.grounding.prompt_parts`),
    or a question's whole text ``prompt`` (``train-pin --tasks``) as the first part, the others
    empty (no name in it: the name loss has nothing to cover)."""
    return prompt_parts(referral, art) if prompt is None else [prompt, "", ""]


def labelled_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(keep, targets)`` for a causal LM's loss: ``keep`` ``[B, T]`` marks the positions whose
    next token is labelled (the only logits the loss needs), ``targets`` ``[N]`` those tokens in
    the same (row-major) order."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != -100
    return keep, labels[:, 1:][keep[:, :-1]]


def labelled_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The mean cross-entropy over the labelled tokens (what transformers' causal-LM loss is),
    from the logits ``[N, vocab]`` at :func:`labelled_positions` only, in fp32."""
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


def loss_tokens(labels: torch.Tensor) -> int:
    """How many tokens a batch's loss averages over (micro-batches are weighted by it)."""
    return int((labels[:, 1:] != -100).sum())


def pretrained_placement(device: torch.device, dtype: torch.dtype, attn_implementation: str = "auto") -> dict:
    """``from_pretrained`` arguments that load the frozen VLM straight in its compute ``dtype`` onto
    ``device`` (no full-precision copy in host RAM first) with the attention kernels asked for."""
    if attn_implementation not in ATTENTION:
        raise UserError(f"--attn-implementation must be one of {', '.join(ATTENTION)}, got {attn_implementation!r}")
    if attn_implementation == "flash_attention_2":
        import importlib.util

        if importlib.util.find_spec("flash_attn") is None:
            raise UserError("--attn-implementation flash_attention_2 needs the flash-attn package "
                            "(pip install flash-attn); or use sdpa")
    out = {"dtype": dtype, "device_map": str(device)}
    if attn_implementation != "auto":  # (auto: transformers' default, sdpa where the model supports it)
        out["attn_implementation"] = attn_implementation
    return out


def _checkpointed(forward: Callable) -> Callable:
    """``forward`` recomputed in backward instead of keeping its activations (non-reentrant
    ``torch.utils.checkpoint``); run as is where no gradient is being recorded."""
    import functools

    from torch.utils.checkpoint import checkpoint

    @functools.wraps(forward)
    def run(*args, **kwargs):
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    run.synthgen_checkpointed = True
    return run


def outermost_layers(root: torch.nn.Module, kinds: tuple[type, ...], skip: Sequence[str] = ()) -> list[str]:
    """Names of the modules under ``root`` that are instances of ``kinds``, not inside another
    such module nor under a ``skip`` prefix (the frozen towers before PIN, which keep nothing for
    backward)."""
    out: list[str] = []
    for name, module in root.named_modules():
        if not isinstance(module, kinds) or any(name == s or name.startswith(s + ".") for s in skip):
            continue
        if any(name.startswith(o + ".") for o in out):
            continue
        out.append(name)
    return out


class Batcher:
    """Padding and decoding shared by the codecs: they hold a ``tokenizer``."""

    tokenizer: object

    @property
    def pad_id(self) -> int:
        pid = self.tokenizer.pad_token_id
        return int(pid if pid is not None else self.tokenizer.eos_token_id)

    def collate(self, seqs: Sequence[tuple[list[int], list[int]]], left_pad: bool = False
                ) -> dict[str, torch.Tensor]:
        """Pad to the longest sequence (right for training, left for generation)."""
        n = max(len(s[0]) for s in seqs)
        ids = torch.full((len(seqs), n), self.pad_id, dtype=torch.long)
        lab = torch.full((len(seqs), n), -100, dtype=torch.long)
        att = torch.zeros((len(seqs), n), dtype=torch.long)
        for i, (x, y) in enumerate(seqs):
            sl = slice(n - len(x), n) if left_pad else slice(0, len(x))
            ids[i, sl] = torch.tensor(x)
            lab[i, sl] = torch.tensor(y)
            att[i, sl] = 1
        return {"input_ids": ids, "attention_mask": att, "labels": lab}

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)


@dataclass
class TextCodec(Batcher):
    """Prompt/answer -> token ids and labels for one VLM. Picklable (used in DataLoader workers)."""

    tokenizer: object
    num_query_tokens: int
    image_token_id: int
    add_eos: bool = True

    def _ids(self, text: str, special: bool = False) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    def encode(self, referral: str | None, answer: str | None = None, name_loss: bool | str = False,
               art: str | None = None, prompt: str | None = None) -> tuple[list[int], list[int]]:
        """``(input_ids, labels)``: image tokens + BOS + prompt (+ `` answer`` + EOS when given);
        ``prompt``: a question's whole text instead of PIN's prompt for ``referral``.

        Labels are -100 on the image tokens and the prompt, so the loss covers only the answer
        (the box text and EOS), and also the parts of the prompt ``name_loss`` names
        (:func:`loss_span`). ``art`` forces the article (default a/an by the first letter).
        """
        on_name, on_post = loss_span(name_loss)
        pre, name, post = text_parts(referral, art, prompt)
        ids = [self.image_token_id] * self.num_query_tokens
        labels = [-100] * self.num_query_tokens
        head = self._ids(pre, special=True)  # BOS + prefix (the tokenizer adds BOS if it does)
        ids += head
        labels += [-100] * len(head)
        n = self._ids(name) if name else []
        ids += n
        labels += n if on_name else [-100] * len(n)
        p = self._ids(post) if post else []
        ids += p
        labels += p if on_post else [-100] * len(p)
        if answer is not None:
            a = self._ids(" " + answer)
            if self.add_eos and self.tokenizer.eos_token_id is not None:
                a.append(int(self.tokenizer.eos_token_id))
            ids += a
            labels += a
        return ids, labels


class VLMAdapter:
    """What a VLM must provide for PIN. Subclasses set the attributes and implement the methods."""

    name: str = ""
    model_id: str = ""
    input_size: int = 0       # square input side in pixels = the scene canvas it accepts
    patch_grid: int = 0       # vision patches per side
    num_positions: int = 0    # vision tokens PIN is added to (patches, + CLS where present)
    vision_width: int = 0     # D_v
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    codec: TextCodec

    @property
    def vlm_options(self) -> dict:
        """Extra options that rebuild this VLM with :func:`~synthgen.pin.models.adapters.load_adapter`
        (recorded in a run's ``pin.json``); none by default."""
        return {}

    # --- PIN: ``_pin`` is the attached PIN (called for its tensor), ``_enabled`` its switch; an
    # adapter's insertion hook adds ``self._pin()`` while both are set ----------------------------
    _pin: PinFn | None = None
    _enabled: bool = True
    _method = None  # a method trained instead of PIN (synthgen.pin.models.methods), set by its attach

    def attach_pin(self, pin: PinFn) -> None:
        self._pin = pin
        self._enabled = True

    def detach_pin(self) -> None:
        """The VLM as it was: PIN (and a method trained instead of it) taken out."""
        self._pin = None
        if self._method is not None:
            self._method.detach()

    @property
    def pin_enabled(self) -> bool:
        return self._pin is not None and self._enabled

    def _add_pin_to(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens`` ``[B, positions, width]`` plus PIN (unchanged while PIN is off)."""
        if not self.pin_enabled:
            return tokens
        pin = self._pin()
        if pin.shape != tokens.shape[1:]:
            raise RuntimeError(f"PIN shape {tuple(pin.shape)} does not match vision features "
                               f"{tuple(tokens.shape[1:])}")
        return tokens + pin.to(tokens.dtype).unsqueeze(0)

    @contextlib.contextmanager
    def pin_disabled(self) -> Iterator[None]:
        before = self._enabled
        self._enabled = False
        try:
            yield
        finally:
            self._enabled = before

    # --- frozen VLM ----------------------------------------------------------------------
    def vlm_parameters(self) -> Iterator[tuple[str, torch.nn.Parameter]]:
        """The VLM's parameters (all frozen): ``self.model``'s by default."""
        return self.model.named_parameters()

    def assert_frozen(self, allowed: Sequence[torch.nn.Parameter] = ()) -> None:
        """Every VLM weight frozen but ``allowed`` (those a LoRA or full method trains)."""
        ok = {id(p) for p in allowed}
        trainable = [n for n, p in self.vlm_parameters() if p.requires_grad and id(p) not in ok]
        if trainable:
            raise AssertionError(f"VLM weights must stay frozen; trainable: {trainable[:5]}")

    # --- memory --------------------------------------------------------------------------
    def checkpoint_layers(self) -> list[str]:
        """Names (in ``self.model``) of the layers on the gradient path (from PIN to the loss)
        that :meth:`enable_grad_checkpointing` recomputes in backward: by default transformers'
        checkpointable layers outside the vision tower."""
        from transformers.modeling_layers import GradientCheckpointingLayer

        return outermost_layers(self.model, (GradientCheckpointingLayer,), self.frozen_towers())

    def frozen_towers(self) -> tuple[str, ...]:
        """Module names (in ``self.model``) before PIN: no gradient flows through them."""
        return ()

    def enable_grad_checkpointing(self) -> int:
        """Recompute each :meth:`checkpoint_layers` layer in backward rather than keep its
        activations: only the layers' inputs are kept. Works on the frozen model in ``eval()``
        (transformers' own switch acts only in training mode, which would turn dropout on).
        Returns the number of layers wrapped."""
        names = self.checkpoint_layers()
        for name in names:
            layer = self.model.get_submodule(name)
            method = getattr(layer, "checkpointed_method", "forward")  # (a layer may name a narrower one)
            if not getattr(getattr(layer, method), "synthgen_checkpointed", False):
                setattr(layer, method, _checkpointed(getattr(layer, method)))
        return len(names)

    # --- data ----------------------------------------------------------------------------
    def set_pixel_normalisation(self, mean: Sequence[float], std: Sequence[float],
                                rescale: float | None = None) -> None:
        """How :meth:`preprocess` maps uint8 to the VLM's pixels: ``(x * rescale - mean) / std``
        as transformers' image processors do, or with ``rescale`` None ``(x / 255 - mean) / std``
        as torchvision's ``ToTensor`` does (the two differ in the last bit)."""
        self._mean = torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1).to(self.device)
        self._std = torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1).to(self.device)
        self._scale = rescale

    def preprocess(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B,3,H,W]`` (already ``input_size``) -> the VLM's normalised pixel values."""
        if pixels.shape[-1] != self.input_size or pixels.shape[-2] != self.input_size:
            raise UserError(f"images are {pixels.shape[-1]}x{pixels.shape[-2]} but {self.model_id} "
                            f"takes {self.input_size}x{self.input_size}")
        x = pixels.to(self.device, non_blocking=True).float()
        x = x / 255.0 if self._scale is None else x * self._scale
        return ((x - self._mean) / self._std).to(self.dtype)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def generate(self, pixels: torch.Tensor, referrals: Sequence[str], *, num_beams: int = 3,
                 max_new_tokens: int = 12, art: str | None = None, prompts: bool = False) -> list[str]:
        """Answer text after ``In the image is {a|an} {referral} located at`` for each image: the
        decoded continuation as generated, not stripped (a trained answer starts with the space
        before ``[``, which the authors' strict parser requires); special tokens left out.
        ``prompts``: ``referrals`` are questions' whole texts (``eval-pin --tasks``)."""
        raise NotImplementedError


class PixelsTextAdapter(VLMAdapter):
    """A VLM called as ``model(pixels, input_ids, attention_mask=..., labels=...)`` and
    ``model.generate(pixels, input_ids, attention_mask=..., ...)`` (BLIP-2, OpenFlamingo): the loss,
    the logits and beam search, written once. ``generate_options`` adds what a model needs."""

    def generate_options(self) -> dict:
        return {}

    def _forward(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kw):
        return self.model(self.preprocess(pixels), input_ids.to(self.device),
                          attention_mask=attention_mask.to(self.device), **kw)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean cross-entropy over the labelled tokens, with logits at those positions only."""
        keep, targets = labelled_positions(batch["labels"].to(self.device))
        logits = self._forward(batch["pixels"], batch["input_ids"], batch["attention_mask"],
                               logits_to_keep=keep, use_cache=False).logits
        return labelled_loss(logits, targets)

    def logits(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self._forward(pixels, input_ids, attention_mask).logits

    @torch.no_grad()
    def generate(self, pixels: torch.Tensor, referrals: Sequence[str], *, num_beams: int = 3,
                 max_new_tokens: int = 12, art: str | None = None, prompts: bool = False) -> list[str]:
        enc = self.codec.collate([self.codec.encode(None, prompt=r) if prompts else self.codec.encode(r, art=art)
                                  for r in referrals], left_pad=True)
        ids = enc["input_ids"].to(self.device)
        out = self.model.generate(self.preprocess(pixels), ids, attention_mask=enc["attention_mask"].to(self.device),
                                  num_beams=num_beams, max_new_tokens=max_new_tokens, do_sample=False,
                                  pad_token_id=self.codec.pad_id, **self.generate_options())
        if out.shape[1] >= ids.shape[1] and torch.equal(out[:, : ids.shape[1]], ids):
            out = out[:, ids.shape[1]:]  # (a model that returns the prompt with the answer)
        # the continuation as generated: the answer's leading space stays (the authors' strict
        # parser wants ` [x1,y1,x2,y2]`); strip it only to show it
        return [self.codec.decode(o) for o in out]
