"""VLM adapters: everything PIN training and evaluation need to know about one VLM family.

An adapter says what the VLM takes (``input_size``, ``patch_grid``, ``num_positions`` vision
tokens of width ``vision_width``), adds PIN to its vision features before the fusion network
(:meth:`attach_pin` / :meth:`pin_disabled` / :meth:`detach_pin`), turns prompts/answers into
token ids and loss labels (a light, picklable :class:`TextCodec` that DataLoader workers use),
computes the training loss and generates answers.

BLIP-2 (transformers ``Blip2ForConditionalGeneration``, default ``Salesforce/blip2-opt-2.7b``)
is the first adapter: PIN is added to ``vision_model``'s output (``last_hidden_state``, which
already ends with the vision post-layernorm), i.e. right before the Q-Former, through a forward
hook that both ``forward`` and ``generate`` go through.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from pathlib import Path

import torch

from synthgen.boxes import article
from synthgen.errors import UserError

DEFAULT_MODELS = {"blip2": "Salesforce/blip2-opt-2.7b"}
VLMS = tuple(DEFAULT_MODELS)

PinFn = Callable[[], torch.Tensor]


def prompt_parts(referral: str, art: str | None = None) -> list[str]:
    """``boxes.query_prompt(referral)`` cut at word boundaries: prefix, `` {referral}``, suffix.

    Tokenising the parts separately gives the same tokens as the whole string with byte-level
    BPE (words carry their leading space) and tells where the name is, for the optional name loss.
    """
    return [f"In the image is {art or article(referral)}", f" {referral}", " located at"]


@dataclass
class TextCodec:
    """Prompt/answer -> token ids and labels for one VLM. Picklable (used in DataLoader workers)."""

    tokenizer: object
    num_query_tokens: int
    image_token_id: int
    add_eos: bool = True

    @property
    def pad_id(self) -> int:
        pid = self.tokenizer.pad_token_id
        return int(pid if pid is not None else self.tokenizer.eos_token_id)

    def _ids(self, text: str, special: bool = False) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    def encode(self, referral: str, answer: str | None = None, name_loss: bool = False,
               art: str | None = None) -> tuple[list[int], list[int]]:
        """``(input_ids, labels)``: image tokens + BOS + prompt (+ `` answer`` + EOS when given).

        Labels are -100 on the image tokens and the prompt, so the loss covers only the answer
        (the box text and EOS), and also the object name when ``name_loss``. ``art`` forces the
        article (default a/an by the first letter).
        """
        pre, name, post = prompt_parts(referral, art)
        ids = [self.image_token_id] * self.num_query_tokens
        labels = [-100] * self.num_query_tokens
        head = self._ids(pre, special=True)  # BOS + prefix (the tokenizer adds BOS if it does)
        ids += head
        labels += [-100] * len(head)
        n = self._ids(name)
        ids += n
        labels += n if name_loss else [-100] * len(n)
        p = self._ids(post)
        ids += p
        labels += [-100] * len(p)
        if answer is not None:
            a = self._ids(" " + answer)
            if self.add_eos and self.tokenizer.eos_token_id is not None:
                a.append(int(self.tokenizer.eos_token_id))
            ids += a
            labels += a
        return ids, labels

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

    # --- PIN -----------------------------------------------------------------------------
    def attach_pin(self, pin: PinFn) -> None:
        raise NotImplementedError

    def detach_pin(self) -> None:
        raise NotImplementedError

    @property
    def pin_enabled(self) -> bool:
        raise NotImplementedError

    @contextlib.contextmanager
    def pin_disabled(self) -> Iterator[None]:
        raise NotImplementedError
        yield

    # --- frozen VLM ----------------------------------------------------------------------
    def vlm_parameters(self) -> Iterator[tuple[str, torch.nn.Parameter]]:
        raise NotImplementedError

    def assert_frozen(self) -> None:
        trainable = [n for n, p in self.vlm_parameters() if p.requires_grad]
        if trainable:
            raise AssertionError(f"VLM weights must stay frozen; trainable: {trainable[:5]}")

    # --- data ----------------------------------------------------------------------------
    def preprocess(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B,3,H,W]`` (already ``input_size``) -> the VLM's normalised pixel values."""
        raise NotImplementedError

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def generate(self, pixels: torch.Tensor, referrals: Sequence[str], *, num_beams: int = 3,
                 max_new_tokens: int = 12, art: str | None = None) -> list[str]:
        """Answer text after ``In the image is {a|an} {referral} located at`` for each image."""
        raise NotImplementedError


class Blip2Adapter(VLMAdapter):
    """BLIP-2 from transformers; PIN added to ``vision_model`` output, before the Q-Former."""

    name = "blip2"

    def __init__(self, model_id: str = DEFAULT_MODELS["blip2"], *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        # a local checkpoint is recorded by absolute path so a run can be evaluated from anywhere
        self.model_id = str(Path(model_id).resolve()) if Path(model_id).exists() else str(model_id)
        self.device = torch.device(device)
        self.dtype = dtype
        try:
            config = Blip2Config.from_pretrained(self.model_id)
            # before the weights: the prompt/label layout (image tokens + prompt + answer in one
            # sequence, -100 on the prompt) is that of a decoder-only LM (OPT); the Flan-T5
            # checkpoints put the prompt in an encoder and the answer in a decoder
            if not getattr(config, "use_decoder_only_language_model", True):
                raise UserError(
                    f"{self.model_id} is a BLIP-2 with an encoder-decoder language model "
                    f"({config.text_config.model_type}); PIN needs a decoder-only BLIP-2 such as "
                    f"{DEFAULT_MODELS['blip2']}")
            self.processor = Blip2Processor.from_pretrained(self.model_id)
            model = Blip2ForConditionalGeneration.from_pretrained(self.model_id, config=config, dtype=dtype)
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"cannot load BLIP-2 from {self.model_id!r}: {first}") from None
        self.model = model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        cfg = self.model.config
        if cfg.image_token_index is None:
            raise UserError(f"{self.model_id}: config has no image_token_index; transformers 5 needs "
                            "a BLIP-2 checkpoint whose input_ids carry the image tokens")
        vc = cfg.vision_config
        self.input_size = int(vc.image_size)
        self.patch_grid = int(vc.image_size) // int(vc.patch_size)
        self.num_positions = self.patch_grid ** 2 + 1  # + CLS
        self.vision_width = int(vc.hidden_size)
        ip = self.processor.image_processor
        self._mean = torch.tensor(ip.image_mean, dtype=torch.float32).view(1, 3, 1, 1).to(self.device)
        self._std = torch.tensor(ip.image_std, dtype=torch.float32).view(1, 3, 1, 1).to(self.device)
        self._scale = float(getattr(ip, "rescale_factor", 1 / 255))
        self.codec = TextCodec(self.processor.tokenizer, int(cfg.num_query_tokens),
                               int(cfg.image_token_index))
        self._pin: PinFn | None = None
        self._enabled = True
        self._hook = self.model.vision_model.register_forward_hook(self._add_pin)

    # PIN ---------------------------------------------------------------------------------
    def _add_pin(self, module, args, output):
        if self._pin is None or not self._enabled:
            return output
        hidden = output.last_hidden_state
        pin = self._pin()
        if pin.shape != hidden.shape[1:]:
            raise RuntimeError(f"PIN shape {tuple(pin.shape)} does not match vision features "
                               f"{tuple(hidden.shape[1:])}")
        output.last_hidden_state = hidden + pin.to(hidden.dtype).unsqueeze(0)
        return output

    def attach_pin(self, pin: PinFn) -> None:
        self._pin = pin
        self._enabled = True

    def detach_pin(self) -> None:
        self._pin = None

    @property
    def pin_enabled(self) -> bool:
        return self._pin is not None and self._enabled

    @contextlib.contextmanager
    def pin_disabled(self) -> Iterator[None]:
        before = self._enabled
        self._enabled = False
        try:
            yield
        finally:
            self._enabled = before

    def vlm_parameters(self):
        return self.model.named_parameters()

    # data / forward ----------------------------------------------------------------------
    def preprocess(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.shape[-1] != self.input_size or pixels.shape[-2] != self.input_size:
            raise UserError(f"images are {pixels.shape[-1]}x{pixels.shape[-2]} but {self.model_id} "
                            f"takes {self.input_size}x{self.input_size}")
        x = pixels.to(self.device, non_blocking=True).float() * self._scale
        return ((x - self._mean) / self._std).to(self.dtype)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.model(
            pixel_values=self.preprocess(batch["pixels"]),
            input_ids=batch["input_ids"].to(self.device),
            attention_mask=batch["attention_mask"].to(self.device),
            labels=batch["labels"].to(self.device),
        )
        return out.loss

    def logits(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
               ) -> torch.Tensor:
        out = self.model(pixel_values=self.preprocess(pixels), input_ids=input_ids.to(self.device),
                         attention_mask=attention_mask.to(self.device))
        return out.logits

    @torch.no_grad()
    def generate(self, pixels: torch.Tensor, referrals: Sequence[str], *, num_beams: int = 3,
                 max_new_tokens: int = 12, art: str | None = None) -> list[str]:
        enc = self.codec.collate([self.codec.encode(r, art=art) for r in referrals], left_pad=True)
        ids = enc["input_ids"].to(self.device)
        out = self.model.generate(
            pixel_values=self.preprocess(pixels), input_ids=ids,
            attention_mask=enc["attention_mask"].to(self.device), num_beams=num_beams,
            max_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=self.codec.pad_id, eos_token_id=self.codec.tokenizer.eos_token_id,
        )
        if out.shape[1] >= ids.shape[1] and torch.equal(out[:, : ids.shape[1]], ids):
            out = out[:, ids.shape[1]:]
        return [self.codec.decode(o).strip() for o in out]


def load_adapter(vlm: str = "blip2", model: str | None = None, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> VLMAdapter:
    """The adapter for ``vlm`` with weights from ``model`` (hub id or local dir; default per VLM)."""
    if vlm not in DEFAULT_MODELS:
        raise UserError(f"unknown --vlm {vlm!r}; choose one of: {', '.join(VLMS)}")
    model_id = model or DEFAULT_MODELS[vlm]
    if vlm == "blip2":
        return Blip2Adapter(model_id, device=device, dtype=dtype)
    raise AssertionError(vlm)
