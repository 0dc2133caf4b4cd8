"""Tiny random-weight LLaVA, SmolVLM (Idefics3), Qwen2.5-VL and PaliGemma 2 folders, for tests,
benchmarks and offline demos.

Each is built from its real transformers config class with the hidden sizes shrunk, saved with
``save_pretrained`` together with its real processor class, and loaded back by path exactly like a
hub checkpoint (``AutoModelForImageTextToText`` / ``AutoProcessor``): nothing in the product code
knows it is tiny. Tokenizers are the models' own tokenizer classes (``LlamaTokenizer``,
``GPT2Tokenizer``, ``Qwen2Tokenizer``, ``GemmaTokenizer``) over a vocabulary trained offline with
``tokenizers`` (SentencePiece-style ``▁`` words for Llama/Gemma, byte-level BPE for the others),
with the special tokens of the real checkpoints. The chat templates are written after the real
checkpoints' (SmolVLM's is the one transformers ships); the processors are saved with the hub's
settings (SmolVLM: image splitting on, Qwen2.5-VL: dynamic resolution), which the adapters must
override to fix the canvas.
"""

from __future__ import annotations

import json
from pathlib import Path

from synthgen.demo.tiny_blip2 import _WORDS

LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
    "{% endif %}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

QWEN_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

MEAN_CLIP, STD_CLIP = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def _corpus(extra: list[str]) -> list[str]:
    lines = list(extra)
    for i, w in enumerate(_WORDS):
        for art in ("a", "an"):
            x = (i * 14) % 224
            lines.append(f"In the image is {art} {w} located at [{x},{(x * 3) % 224},{x + 14},224]")
            lines.append(f'detect {w} ```json [{{"bbox_2d": [{x}, {x + 14}, 56, 70], "label": "{w}"}}] ```')
    lines += [" ".join(str(v) for v in range(k, 1025, 7)) for k in range(7)]
    lines += ["[" + ",".join(str(v) for v in range(k, 225, 14)) + "]" for k in range(14)]
    return lines * 3


def _trained(cls, corpus: list[str], specials: list[str], byte_level: bool, vocab_size: int = 500, **kw):
    """``cls`` (a transformers tokenizer class) over a BPE vocabulary trained on ``corpus``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    if byte_level:  # the class's own pipeline (its pre-tokenizer splits words)
        trainee = cls(**kw).backend_tokenizer
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:  # SentencePiece-style: pieces within `▁word`s, as sentencepiece learns them
        trainee = Tokenizer(models.BPE(unk_token="<unk>" if "<unk>" in specials else None, byte_fallback=True))
        trainee.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
        alphabet = []
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet,
                                  show_progress=False)
    trainee.train_from_iterator(corpus, trainer)
    model = json.loads(trainee.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tok = cls(vocab=model["vocab"], merges=merges, **kw)
    tok.add_tokens([t for t in specials if t not in tok.get_vocab() or t not in tok.all_special_tokens],
                   special_tokens=True)
    return tok


def _expressive(model, skip: tuple[str, ...] = ()) -> None:
    """Fan-in scaled random weights (the libraries' inits are for training from scratch and make a
    tiny random VLM map every image to nearly the same output)."""
    import torch
    from torch import nn

    with torch.no_grad():
        for name, mod in model.named_modules():
            if any(name.startswith(s) for s in skip):
                continue
            if isinstance(mod, (nn.Linear, nn.Conv2d, nn.Conv3d)):
                mod.weight.normal_(0.0, mod.weight[0].numel() ** -0.5)
                if mod.bias is not None:
                    mod.bias.normal_(0.0, 0.02)
            elif isinstance(mod, nn.Embedding):
                mod.weight.normal_(0.0, 0.5)


def _save(model, processor, out: Path) -> Path:
    model.eval()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def _text(width: int, vocab: int, layers: int = 2, **kw) -> dict:
    return dict(vocab_size=vocab, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512, **kw)


# --- LLaVA-1.5 --------------------------------------------------------------------------------

def build_tiny_llava(out_dir, *, image_size: int = 112, patch_size: int = 14, vision_width: int = 32,
                     text_width: int = 64, seed: int = 0) -> Path:
    """A tiny ``LlavaForConditionalGeneration`` as LLaVA-1.5 (CLIP ViT, ``vision_feature_layer=-2``,
    strategy ``default``, a 2-layer GELU projector, a Llama LM), with ``LlavaProcessor`` +
    ``CLIPImageProcessor`` + ``LlamaTokenizer`` and the llava-hf chat template."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        LlamaTokenizer,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    out = Path(out_dir)
    tok = _trained(LlamaTokenizer, _corpus(["USER: <image>\nIn the image is a cat ASSISTANT: [0,14,28,42] "]),
                   ["<unk>", "<s>", "</s>"], byte_level=False)
    tok.add_tokens(["<image>"], special_tokens=True)
    tok.add_special_tokens({"pad_token": "<pad>"})
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=vision_width, intermediate_size=2 * vision_width,
                           num_hidden_layers=3, num_attention_heads=2, image_size=image_size, patch_size=patch_size,
                           projection_dim=vision_width),
        text_config=dict(model_type="llama", **_text(text_width, len(tok), bos_token_id=tok.bos_token_id,
                                                     eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)),
        image_token_id=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-2,
        vision_feature_select_strategy="default", projector_hidden_act="gelu")
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    _expressive(model)
    ip = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
                            image_mean=MEAN_CLIP, image_std=STD_CLIP)
    processor = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=patch_size,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=LLAVA_TEMPLATE)
    return _save(model, processor, out)


# --- SmolVLM / Idefics3 -------------------------------------------------------------------------

def build_tiny_smolvlm(out_dir, *, image_size: int = 112, patch_size: int = 14, scale_factor: int = 2,
                       vision_width: int = 32, text_width: int = 64, idefics3: bool = False, seed: int = 0) -> Path:
    """A tiny SmolVLM2 (``SmolVLMForConditionalGeneration``; ``idefics3=True``: the
    ``Idefics3ForConditionalGeneration`` of SmolVLM v1) with its processor as the hub ships it
    (image splitting on, ``longest_edge`` 4x the encoder's side) and a ``GPT2Tokenizer``."""
    import torch
    from transformers import GPT2Tokenizer

    if idefics3:
        from transformers import Idefics3Config as Config
        from transformers import Idefics3ForConditionalGeneration as Model
        from transformers import Idefics3ImageProcessor as ImageProcessor
        from transformers import Idefics3Processor as Processor
        from transformers.models.smolvlm.processing_smolvlm import DEFAULT_CHAT_TEMPLATE as template
        vision_type = "idefics3_vision"
    else:
        from transformers import SmolVLMConfig as Config
        from transformers import SmolVLMForConditionalGeneration as Model
        from transformers import SmolVLMImageProcessor as ImageProcessor
        from transformers import SmolVLMProcessor as Processor
        from transformers import SmolVLMVideoProcessor
        from transformers.models.smolvlm.processing_smolvlm import DEFAULT_CHAT_TEMPLATE as template
        vision_type = "smolvlm_vision"

    out = Path(out_dir)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = _trained(GPT2Tokenizer, _corpus(["<|im_start|>User:<image>In the image is a cat<end_of_utterance>\n"
                                           "Assistant: [0,14,28,42]<end_of_utterance>\n"]), specials, byte_level=True,
                   unk_token="<|endoftext|>", bos_token="<|im_start|>", eos_token="<|im_end|>",
                   pad_token="<|im_end|>")
    extra = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]
    extra += [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
    tok.add_tokens(extra, special_tokens=True)
    seq = (image_size // patch_size) ** 2 // scale_factor ** 2
    config = Config(
        vision_config=dict(model_type=vision_type, hidden_size=vision_width, intermediate_size=2 * vision_width,
                           num_hidden_layers=2, num_attention_heads=2, image_size=image_size, patch_size=patch_size),
        text_config=dict(model_type="llama", **_text(text_width, len(tok), bos_token_id=tok.bos_token_id,
                                                     eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)),
        scale_factor=scale_factor, image_token_id=tok.convert_tokens_to_ids("<image>"))
    torch.manual_seed(seed)
    model = Model(config)
    _expressive(model)
    ip = ImageProcessor(do_image_splitting=True, size={"longest_edge": 4 * image_size},
                        max_image_size={"longest_edge": image_size}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    kw = {} if idefics3 else {"video_processor": SmolVLMVideoProcessor(max_image_size={"longest_edge": image_size},
                                                                        size={"longest_edge": 4 * image_size})}
    processor = Processor(image_processor=ip, tokenizer=tok, image_seq_len=seq, chat_template=template, **kw)
    return _save(model, processor, out)


# --- Qwen2.5-VL -------------------------------------------------------------------------------

def build_tiny_qwen2_5_vl(out_dir, *, vision_width: int = 32, text_width: int = 64, window_size: int = 56,
                          seed: int = 0) -> Path:
    """A tiny ``Qwen2_5_VLForConditionalGeneration`` (14-px patches, 2x2 merger, window attention
    over ``window_size`` px with one full-attention block, M-RoPE) with ``Qwen2_5_VLProcessor``
    saved with dynamic resolution (the hub's min/max pixels) and a ``Qwen2Tokenizer``.
    ``window_size`` 56 makes 2x2-merged-token windows, so the tower's order is not row order."""
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2Tokenizer,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    out = Path(out_dir)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = _trained(Qwen2Tokenizer, _corpus(["<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                                            "<|im_start|>user\nIn the image is a cat<|im_end|>\n<|im_start|>assistant\n"
                                            "[0,14,28,42]<|im_end|>\n"]), specials, byte_level=True,
                   unk_token=None, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.add_tokens(["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"], special_tokens=True)
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")}
    config = Qwen2_5_VLConfig(
        vision_config=dict(depth=2, hidden_size=vision_width, intermediate_size=2 * vision_width, num_heads=2,
                           out_hidden_size=text_width, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                           window_size=window_size, fullatt_block_indexes=[1]),
        text_config=dict(**_text(text_width, len(tok), bos_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id),
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 6, 6]}),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    _expressive(model)
    ip = Qwen2VLImageProcessor(min_pixels=3136, max_pixels=12845056, image_mean=MEAN_CLIP, image_std=STD_CLIP)
    processor = Qwen2_5_VLProcessor(image_processor=ip, tokenizer=tok, video_processor=Qwen2VLVideoProcessor(),
                                    chat_template=QWEN_TEMPLATE)
    return _save(model, processor, out)


# --- PaliGemma 2 ------------------------------------------------------------------------------

def build_tiny_paligemma(out_dir, *, image_size: int = 112, patch_size: int = 14, vision_width: int = 32,
                         text_width: int = 64, seed: int = 0) -> Path:
    """A tiny PaliGemma 2 (``PaliGemmaForConditionalGeneration``: SigLIP + linear projector + Gemma 2)
    with ``PaliGemmaProcessor`` (which adds ``<image>``, ``<loc0000>``..``<loc1023>`` and
    ``<seg000>``..``<seg127>``) + ``SiglipImageProcessor`` + ``GemmaTokenizer``."""
    import torch
    from transformers import (
        GemmaTokenizer,
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessor,
    )

    out = Path(out_dir)
    tok = _trained(GemmaTokenizer, _corpus(["In the image is a cat located at\n[0,14,28,42]"]),
                   ["<pad>", "<eos>", "<bos>", "<unk>"], byte_level=False)
    seq = (image_size // patch_size) ** 2
    ip = SiglipImageProcessor(size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3,
                              image_std=[0.5] * 3)
    ip.image_seq_length = seq
    processor = PaliGemmaProcessor(image_processor=ip, tokenizer=tok)  # adds <image>, <locXXXX>, <segXXX>
    vocab = len(tok)
    config = PaliGemmaConfig(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=vision_width,
                           intermediate_size=2 * vision_width, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=patch_size, num_image_tokens=seq,
                           projection_dim=text_width, vision_use_head=False),
        text_config=dict(model_type="gemma2", **_text(text_width, vocab, head_dim=32, bos_token_id=tok.bos_token_id,
                                                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
                         sliding_window=64, query_pre_attn_scalar=32),
        image_token_id=processor.image_token_id, projection_dim=text_width)
    torch.manual_seed(seed)
    model = PaliGemmaForConditionalGeneration(config)
    _expressive(model)
    return _save(model, processor, out)


BUILDERS = {"llava": build_tiny_llava, "smolvlm": build_tiny_smolvlm, "qwen2_5_vl": build_tiny_qwen2_5_vl,
            "paligemma": build_tiny_paligemma}
