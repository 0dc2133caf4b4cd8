"""The shared machinery of the transformers ``AutoModelForImageTextToText`` VLMs (LLaVA, SmolVLM /
Idefics3, Qwen2.5-VL, PaliGemma 2): written once here, each model's adapter in :mod:`.vlms` holds
only what differs (where PIN goes, the canvas and the processor options that fix it, the pixel
inputs, the prompt layout, generation).

- **PIN** is added to the *input* of the model's fusion module (``fusion_module``, a dotted path
  from the ``...ForConditionalGeneration``) by a forward pre-hook, which ``forward`` and
  ``generate`` both go through; the module's input is exactly the vision features the fusion
  network reads. :meth:`~HFVisionLanguageAdapter.place_pin` lays PIN out as that tensor is laid out
  (default ``[B, positions, width]``; Qwen2.5-VL reorders it). PIN off (disabled or detached) makes
  the hook return nothing, so the model runs exactly as without it.
- **Text**: :class:`ChatCodec` builds the token ids the model's own processor builds: the chat
  template (or the processor's prompt layout) rendered once with sentinels and cut into pieces,
  the image placeholder expanded as the processor expands it at the fixed canvas. The PIN prompt
  ``In the image is {a|an} {name} located at`` is the user turn, the box ``[x1,y1,x2,y2]`` the
  assistant's answer; the loss covers the answer and the end-of-turn marker after it.
- **Pixels**: uint8 canvases are rescaled and normalised on the device with the image processor's
  own ``rescale_factor`` / ``image_mean`` / ``image_std`` (at the canvas the processors' resizes
  are identities: the tests compare with the processors' output), then packed per model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from synthgen.errors import UserError
from synthgen.pin.models.adapters.base import (
    Batcher,
    PinFn,
    VLMAdapter,
    labelled_loss,
    labelled_positions,
    loss_span,
    pretrained_placement,
    text_parts,
)
from synthgen.prefetch import check_hub

_PROMPT, _ANSWER = "\x00PINPROMPT\x00", "\x00PINANSWER\x00"  # sentinels rendered through the template


@dataclass
class ChatCodec(Batcher):
    """Prompt/answer -> ``(input_ids, labels)`` in a VLM's own layout. Picklable (DataLoader workers).

    The text is ``head + prompt + between + answer + end + after`` for training and
    ``head + prompt + gen_tail`` for generation (``head`` holds the image tokens as the processor
    expands them). With ``pair`` (PaliGemma) ``answer + end`` is tokenised as the second sequence
    of a pair, as its processor tokenises the suffix. Token labels are set by character spans
    (offset mapping), so the ids are those of the whole string whatever the tokenizer merges.
    """

    tokenizer: object
    head: str
    between: str
    gen_tail: str
    end: str
    after: str = ""
    pair: bool = False
    add_special_tokens: bool = True
    image_token_id: int = -1
    end_token_id: int | None = None

    def _tokens(self, text: str, spans: Sequence[tuple[int, int]], special: bool) -> tuple[list[int], list[int]]:
        enc = self.tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        labels = [-100] * len(ids)
        for i, (a, b) in enumerate(enc["offset_mapping"]):
            if b > a and any(a < e and b > s for s, e in spans):
                labels[i] = ids[i]
        return ids, labels

    def encode(self, referral: str | None, answer: str | None = None, name_loss: bool | str = False,
               art: str | None = None, prompt: str | None = None) -> tuple[list[int], list[int]]:
        """``(input_ids, labels)``; labels are -100 but on the answer and the end-of-turn marker
        after it, and on the name (and `` located at``) inside the user turn when ``name_loss``
        says so (:func:`~synthgen.pin.models.adapters.base.loss_span`). ``art`` forces the article."""
        on_name, on_post = loss_span(name_loss)
        pre, name, post = text_parts(referral, art, prompt)
        start = len(self.head) + len(pre)
        spans = [(start, start + len(name))] if on_name else []
        if on_post:
            spans.append((start + len(name), start + len(name) + len(post)))
        text = self.head + pre + name + post
        if answer is None:
            return self._tokens(text + self.gen_tail, spans, self.add_special_tokens)
        text += self.between
        if self.pair:
            ids, labels = self._tokens(text, spans, self.add_special_tokens)
            second = answer + self.end + self.after
            a_ids, a_labels = self._tokens(second, [(0, len(answer) + len(self.end))], False)
            return ids + a_ids, labels + a_labels
        spans.append((len(text), len(text) + len(answer) + len(self.end)))
        ids, labels = self._tokens(text + answer + self.end + self.after, spans, self.add_special_tokens)
        # the answer starts where the ids part from those of the text before it: offsets of some
        # tokenizers drift (a Metaspace ``▁`` credited to the character before), and a one-character
        # first token (``3`` of ``3 apples``) would fall outside the loss
        before = self._tokens(text, [], self.add_special_tokens)[0]
        first = next((k for k, (x, y) in enumerate(zip(before, ids)) if x != y), min(len(before), len(ids)))
        last = max(k for k, y in enumerate(labels) if y != -100)
        for k in range(first, last + 1):
            labels[k] = ids[k]
        return ids, labels


def _first(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class HFVisionLanguageAdapter(VLMAdapter):
    """A transformers image-text-to-text VLM with PIN before its fusion module.

    Subclasses set ``name`` (their row in :mod:`synthgen.pin.models.registry` gives the title and
    the config ``model_type`` values they take), ``fusion_module`` and ``vision_module`` (dotted paths), and implement :meth:`geometry`
    (canvas, patch grid, positions, width), :meth:`processor_options` (what fixes the canvas) and
    :meth:`pixel_inputs`; they may override :meth:`place_pin`, :meth:`text_inputs`,
    :meth:`layout` and the generation settings.
    """

    fusion_module = ""              # PIN is added to this module's input
    vision_module = ""              # the vision tower (the tests check what it hands the fusion module)
    native_prompt: str | None = None  # the model's own grounding prompt, for --baseline native
    native_max_new_tokens = 32

    def __init__(self, model_id: str, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 attn_implementation: str = "auto", **options) -> None:
        from synthgen.pin.models.registry import FAMILIES

        self.title, self.model_types = FAMILIES[self.name].title, FAMILIES[self.name].model_types
        # a local checkpoint is recorded by absolute path so a run can be evaluated from anywhere
        self.model_id = str(Path(model_id).resolve()) if Path(model_id).exists() else str(model_id)
        check_hub(self.model_id, f"{self.title} from {self.model_id!r}")  # (offline: one line at once)
        from transformers import AutoModelForImageTextToText, AutoProcessor, PreTrainedConfig
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.device, self.dtype = torch.device(device), dtype
        try:
            raw = PreTrainedConfig.get_config_dict(self.model_id)[0]
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot load {self.title} from {self.model_id!r}: {_first(exc)}") from None
        kind = raw.get("model_type")
        if kind not in self.model_types:  # before any weights are read
            raise UserError(f"{self.model_id} is a {kind!r} model, not {self.title} "
                            f"({'/'.join(self.model_types)}); use --vlm auto or the --vlm of its family")
        try:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(self.model_id)
            self.options = self.resolve_options(config, options)
            self.processor = AutoProcessor.from_pretrained(self.model_id, **self.processor_options(config))
            model = AutoModelForImageTextToText.from_pretrained(
                self.model_id, config=config, **pretrained_placement(self.device, dtype, attn_implementation))
        except (OSError, ValueError, ImportError) as exc:
            raise UserError(f"cannot load {self.title} from {self.model_id!r}: {_first(exc)}") from None
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.config = self.model.config
        self.input_size, self.patch_grid, self.num_positions, self.vision_width = self.geometry(self.config)
        ip = self.processor.image_processor
        self.set_pixel_normalisation(ip.image_mean, ip.image_std, float(getattr(ip, "rescale_factor", None) or 1 / 255))
        self.image_text = self._expanded_image_text()
        self.codec = self.layout()
        self._pin: PinFn | None = None
        self._enabled = True
        self._hook = self.model.get_submodule(self.fusion_module).register_forward_pre_hook(self._add_pin)

    # what differs per model ------------------------------------------------------------------
    def resolve_options(self, config, options: dict) -> dict:
        """The adapter's VLM options, resolved (recorded in ``pin.json``)."""
        if options:
            raise UserError(f"--vlm {self.name} takes no VLM options, got {', '.join(options)}")
        return {}

    def geometry(self, config) -> tuple[int, int, int, int]:
        """``(canvas, patch grid, PIN positions, PIN width)``."""
        raise NotImplementedError

    def processor_options(self, config) -> dict:
        """``AutoProcessor.from_pretrained`` options that fix the square canvas."""
        return {}

    def pixel_inputs(self, x: torch.Tensor) -> dict:
        """Normalised ``[B,3,canvas,canvas]`` -> the model's image inputs."""
        return {"pixel_values": x}

    def text_inputs(self, input_ids: torch.Tensor, labels: torch.Tensor | None) -> dict:
        """Inputs the model needs besides ids and mask, built from the ids (and the labels when
        training); none by default."""
        return {}

    def place_pin(self, pin: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """PIN ``[positions, width]`` laid out as the fusion module's input ``features``."""
        if pin.shape != features.shape[1:]:
            raise RuntimeError(f"PIN shape {tuple(pin.shape)} does not match vision features "
                               f"{tuple(features.shape[1:])}")
        return pin.to(features.dtype).unsqueeze(0)

    def layout(self) -> ChatCodec:
        """The codec from the processor's chat template: user turn = image + PIN prompt, assistant
        turn = the box. The end marker is the special token the template closes the answer with
        (``<|im_end|>``, ``<end_of_utterance>``), or EOS where it closes it with none (LLaVA-1.5's
        template ends the answer with a space: EOS replaces it, as in LLaVA's training text)."""
        proc, tok = self.processor, self.processor.tokenizer
        image = {"type": "image"}
        msgs = [{"role": "user", "content": [image, {"type": "text", "text": _PROMPT}]},
                {"role": "assistant", "content": [{"type": "text", "text": _ANSWER}]}]
        full = proc.apply_chat_template(msgs, tokenize=False)
        gen = proc.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
        full, gen = (s.replace(proc.image_token, self.image_text, 1) for s in (full, gen))
        head, rest = full.split(_PROMPT)
        between, tail = rest.split(_ANSWER)
        gen_head, gen_tail = gen.split(_PROMPT)
        if gen_head != head:
            raise UserError(f"{self.model_id}: its chat template renders the user turn differently with "
                            "and without the answer; PIN cannot lay out its text")
        stripped = tail.lstrip()
        specials = {t.content for t in tok.added_tokens_decoder.values() if t.special} | set(tok.all_special_tokens)
        end = max((t for t in specials if stripped.startswith(t) and t != tok.pad_token), key=len, default=None)
        if end is not None:
            end, after = tail[: len(tail) - len(stripped)] + end, stripped[len(end):]
        else:
            end, after = tok.eos_token, ""
        bos = tok.bos_token
        return ChatCodec(tok, head, between, gen_tail, end, after,
                         add_special_tokens=not (bos and head.startswith(bos)),
                         image_token_id=int(self.config.image_token_id),
                         end_token_id=tok.convert_tokens_to_ids(end.strip()))

    def _expanded_image_text(self) -> str:
        """What the processor puts in the text for one image at the canvas."""
        import numpy as np
        from PIL import Image

        dummy = Image.fromarray(np.zeros((self.input_size, self.input_size, 3), np.uint8))
        out = self.processor(text=[self.processor.image_token], images=[dummy], return_text_replacement_offsets=True)
        return out["text_replacement_offsets"][0][0]["replacement"]

    # PIN -------------------------------------------------------------------------------------
    def _add_pin(self, module, args):
        if self._pin is None or not self._enabled:
            return None
        features = args[0]
        return (features + self.place_pin(self._pin(), features), *args[1:])

    @property
    def vlm_options(self) -> dict:
        return dict(self.options)

    # data / forward --------------------------------------------------------------------------
    def inputs(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               labels: torch.Tensor | None = None) -> dict:
        """Everything the model's ``forward`` / ``generate`` takes for these images and texts."""
        ids = input_ids.to(self.device)
        out = {"input_ids": ids, "attention_mask": attention_mask.to(self.device),
               **self.pixel_inputs(self.preprocess(pixels)),
               **self.text_inputs(ids, None if labels is None else labels.to(self.device))}
        if labels is not None:
            out["labels"] = labels.to(self.device)
        return out

    def image_features(self, pixels: torch.Tensor):
        """The vision tower's features for ``pixels`` (what PIN is added to, after the fusion
        module too): ``model.get_image_features``."""
        return self.model.get_image_features(**self.pixel_inputs(self.preprocess(pixels)))

    def frozen_towers(self) -> tuple[str, ...]:
        return (self.vision_module,)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean cross-entropy over the labelled tokens (the model's own loss), with the LM head
        applied at those positions only: never the ``[B, T, vocab]`` logits."""
        kw = self.inputs(batch["pixels"], batch["input_ids"], batch["attention_mask"], batch["labels"])
        keep, targets = labelled_positions(kw.pop("labels"))
        return labelled_loss(self.model(**kw, logits_to_keep=keep, use_cache=False).logits, targets)

    def logits(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
               ) -> torch.Tensor:
        return self.model(**self.inputs(pixels, input_ids, attention_mask)).logits

    def _generate(self, pixels: torch.Tensor, seqs: list, *, num_beams: int, max_new_tokens: int,
                  eos: list[int]) -> list[list[int]]:
        enc = self.codec.collate(seqs, left_pad=True)
        kw = self.inputs(pixels, enc["input_ids"], enc["attention_mask"])
        out = self.model.generate(**kw, num_beams=num_beams, max_new_tokens=max_new_tokens, do_sample=False,
                                  pad_token_id=self.codec.pad_id, eos_token_id=eos)
        return [o.tolist() for o in out[:, enc["input_ids"].shape[1]:]]

    def _stop_ids(self) -> list[int]:
        ids = {self.codec.end_token_id, self.codec.tokenizer.eos_token_id}
        return sorted(int(i) for i in ids if i is not None and i >= 0)

    @torch.no_grad()
    def generate(self, pixels: torch.Tensor, referrals: Sequence[str], *, num_beams: int = 3,
                 max_new_tokens: int = 12, art: str | None = None, prompts: bool = False) -> list[str]:
        """The assistant's answer to ``In the image is {a|an} {referral} located at``, special
        tokens left out, joined to the prompt with one space (the box follows ``located at`` in
        PIN's sentence; the authors' strict parser wants `` [``): a leading space is added when
        the answer does not start with one, nothing generated is removed."""
        seqs = [self.codec.encode(None, prompt=r) if prompts else self.codec.encode(r, art=art) for r in referrals]
        out = self._generate(pixels, seqs, num_beams=num_beams,
                             max_new_tokens=max_new_tokens, eos=self._stop_ids())
        texts = [self.codec.decode(o) for o in out]
        return [t if t.startswith(" ") else " " + t for t in texts]

    # --baseline native -----------------------------------------------------------------------
    def native_encode(self, name: str) -> tuple[list[int], list[int]]:
        """The model's own grounding prompt (``native_prompt``) for ``name`` in place of PIN's
        prompt, as generation input."""
        if self.native_prompt is None:
            raise UserError(f"--baseline native: {self.name} has no native detector (paligemma and qwen2_5_vl do)")
        c = self.codec
        return c._tokens(c.head + self.native_prompt.format(name=name) + c.gen_tail, [], c.add_special_tokens)

    def native_decode(self, text: str) -> list[float] | None:
        """The box on the canvas in the model's own grounding answer, or None."""
        raise NotImplementedError

    @torch.no_grad()
    def native_boxes(self, pixels: torch.Tensor, names: Sequence[str]) -> list[tuple[str, list[float] | None]]:
        """``(raw answer, box on the canvas or None)`` for each image, asked with the model's own
        grounding prompt (greedy, ``native_max_new_tokens``) with PIN off."""
        with self.pin_disabled():
            out = self._generate(pixels, [self.native_encode(n) for n in names], num_beams=1,
                                 max_new_tokens=self.native_max_new_tokens, eos=self._stop_ids())
        texts = [self.codec.tokenizer.decode(o, skip_special_tokens=True) for o in out]
        return [(t, self.native_decode(t)) for t in texts]

    @property
    def native_settings(self) -> dict:
        """How --baseline native asked the model (recorded in metrics.json)."""
        return {"prompt": self.native_prompt, "num_beams": 1, "max_new_tokens": self.native_max_new_tokens}
