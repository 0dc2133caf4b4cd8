"""A tiny random-weight BLIP-2 written to a directory, for tests and the offline README demo.

It is saved with ``save_pretrained`` and loaded back through the ordinary
``Blip2ForConditionalGeneration.from_pretrained(path)`` / ``Blip2Processor.from_pretrained(path)``
path, exactly like a hub checkpoint: nothing in the product code knows it is tiny. The tokenizer is
a byte-level BPE trained locally with ``tokenizers`` (no download), wrapped as a transformers fast
tokenizer with OPT's conventions (``</s>`` as BOS/EOS, ``<pad>``, and the ``<image>`` token that
transformers 5 needs ``num_query_tokens`` times at the start of ``input_ids``).
"""

from __future__ import annotations

from pathlib import Path

_WORDS = (
    "teddy bear cat dog person car chair bottle cup bird horse sheep cow apple banana zebra giraffe "
    "umbrella boat train truck bus bicycle airplane motorcycle bench kite pizza donut cake bowl "
    "left right above below top middle center front behind on the at of red green blue object thing"
).split()


def _corpus() -> list[str]:
    lines = []
    for i, w in enumerate(_WORDS):
        for art in ("a", "an"):
            x = (i * 14) % 224
            lines.append(f"In the image is {art} {w} located at [{x},{(x * 3) % 224},{x + 14},224]")
    lines += [" ".join(str(v) for v in range(k, 225, 7)) for k in range(7)]
    lines += ["[" + ",".join(str(v) for v in range(k, 225, 14)) + "]" for k in range(14)]
    return lines


def build_tokenizer(vocab_size: int = 400):
    """A byte-level BPE fast tokenizer with OPT-style special tokens and an ``<image>`` token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer)
    bos = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="</s> $A", pair="</s> $A </s> $B", special_tokens=[("</s>", bos)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="</s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
    )
    fast.add_tokens(["<image>"], special_tokens=True)
    return fast


def _init_expressive(model) -> None:
    """Re-draw the random weights so the tiny network passes information through.

    The library's default init is meant for training from scratch (BLIP-2's vision tower even
    uses std 1e-10, making every image look the same, and query tokens start at zero). A stand-in
    for a pretrained VLM must instead map different images and prompts to different outputs, so
    linear/conv weights get a fan-in scaled normal init, embeddings a moderate one, and the
    Q-Former query tokens and vision position/CLS embeddings unit-scale values.
    """
    import torch
    from torch import nn

    with torch.no_grad():
        for _name, mod in model.named_modules():
            if isinstance(mod, (nn.Linear, nn.Conv2d)):
                fan_in = mod.weight[0].numel()
                mod.weight.normal_(0.0, fan_in ** -0.5)
                if mod.bias is not None:
                    mod.bias.normal_(0.0, 0.02)
            elif isinstance(mod, nn.Embedding):
                mod.weight.normal_(0.0, 0.3)
        model.query_tokens.normal_(0.0, 1.0)
        emb = model.vision_model.embeddings
        emb.position_embedding.normal_(0.0, 0.5)
        emb.class_embedding.normal_(0.0, 0.5)


def _lm_corpus(rng) -> str:
    words = _WORDS[:30]
    w = words[int(rng.integers(len(words)))]
    kind = int(rng.integers(4))
    if kind == 0:
        return f"In the image is a {w} located at the {['left', 'right', 'top', 'middle'][int(rng.integers(4))]}."
    if kind == 1:
        return f"a photo of a {w} on the {words[int(rng.integers(len(words)))]}."
    x1, y1 = (int(v) * 14 for v in rng.integers(0, 12, size=2))
    x2, y2 = x1 + 14 * int(rng.integers(1, 5)), y1 + 14 * int(rng.integers(1, 5))
    return f"the {w} list is [{x1},{y1},{x2},{y2}]"


def _fit_language_model(lm, tokenizer, steps: int, seed: int) -> None:
    """A few Adam steps of next-token training of the language model on :func:`_lm_corpus`."""
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    lm.train()
    opt = torch.optim.Adam(lm.parameters(), lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest, and much faster on busy machines
    try:
        _fit_steps(lm, tokenizer, opt, rng, steps)
    finally:
        torch.set_num_threads(threads)
    lm.eval()


def _fit_steps(lm, tokenizer, opt, rng, steps: int) -> None:
    import torch

    for _ in range(steps):
        texts = [_lm_corpus(rng) for _ in range(32)]
        enc = tokenizer(texts, padding=True, return_tensors="pt")
        enc["input_ids"] = torch.cat([enc["input_ids"], torch.full((32, 1), tokenizer.pad_token_id)], 1)
        enc["attention_mask"] = torch.cat([enc["attention_mask"], torch.zeros(32, 1, dtype=torch.long)], 1)
        # end each text with EOS (at its first padding position)
        first_pad = enc["attention_mask"].sum(1)
        enc["input_ids"][torch.arange(32), first_pad] = tokenizer.eos_token_id
        enc["attention_mask"][torch.arange(32), first_pad] = 1
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        loss = lm(**enc, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()


def build_tiny_blip2(out_dir: str | Path, *, image_size: int = 224, patch_size: int = 14, vision_width: int = 32,
                     qformer_width: int = 32, text_width: int = 64, num_query_tokens: int = 8, seed: int = 0,
                     lm_steps: int = 150) -> Path:
    """Save a random-weight BLIP-2 (model + processor) to ``out_dir`` and return the path.

    ``image_size`` is the VLM's input size (the scene canvas it accepts) and ``patch_size`` its
    ViT patch; the real BLIP-2 OPT-2.7B has 224 and 14 (16x16 patches + CLS = 257 tokens, width
    1408). The defaults build a small model that runs a training step in milliseconds.

    A caption-trained VLM's language model already knows how text and bracketed number lists
    go on; a random one does not. So the language model alone is first fitted for ``lm_steps``
    Adam steps on a small text corpus (captions, ``located at the left`` phrases and number lists
    like ``[28,42,126,154]``, never a box after ``located at``), like the real LM it knows the
    format but, without PIN, does not answer "located at" with a box. Vision tower and Q-Former
    stay random. ``lm_steps=0`` skips it.
    """
    import torch
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessor

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    vocab = len(tokenizer)

    config = Blip2Config(
        vision_config=dict(
            hidden_size=vision_width, intermediate_size=2 * vision_width, num_hidden_layers=1,
            num_attention_heads=2, image_size=image_size, patch_size=patch_size,
        ),
        qformer_config=dict(
            hidden_size=qformer_width, intermediate_size=2 * qformer_width, num_hidden_layers=1,
            num_attention_heads=2, encoder_hidden_size=vision_width, cross_attention_frequency=1,
            vocab_size=vocab, max_position_embeddings=64,
        ),
        text_config=dict(
            model_type="opt", vocab_size=vocab, hidden_size=text_width, ffn_dim=2 * text_width,
            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=128,
            word_embed_proj_dim=text_width, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        ),
        num_query_tokens=num_query_tokens,
        image_token_index=image_token_id,
    )
    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration(config).eval()
    _init_expressive(model)
    if lm_steps > 0:
        _fit_language_model(model.language_model, tokenizer, lm_steps, seed)
    model.eval()
    model.save_pretrained(out)

    image_processor = BlipImageProcessor(
        size={"height": image_size, "width": image_size},
        image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
        do_convert_rgb=True,
    )
    processor = Blip2Processor(image_processor=image_processor, tokenizer=tokenizer,
                               num_query_tokens=num_query_tokens)
    processor.save_pretrained(out)
    return out
