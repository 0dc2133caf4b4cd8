"""A tiny random-weight OpenFlamingo written to a directory, for tests, benchmarks and demos.

The directory has the layout of a local OpenFlamingo model that :mod:`synthgen.pin.models.flamingo`
reads, exactly what a user makes for an offline machine::

    DIR/checkpoint.pt   perceiver, gated cross-attention and token embeddings, keyed like the
                        released OpenFlamingo checkpoint.pt files (plain tensors)
    DIR/flamingo.json   {"lm": "lm", "vision": "local-dir:vision", "cross_attn_every": K, "vision_tokens": "raw"}
    DIR/lm/             an MPT language model in MosaicML's ``mosaic_gpt`` layout (config.json +
                        pytorch_model.bin, QK-LayerNorm, ALiBi, no biases, a vocabulary padded past
                        the tokenizer like MPT-1B's) or in transformers' ``mpt`` layout, and its
                        tokenizer (byte-level BPE trained here, GPT-NeoX conventions: no pad token)
    DIR/vision/         an open_clip ``local-dir:`` ViT (open_clip_config.json + safetensors)

It is built and loaded through the same code as real weights (``load_adapter("openflamingo", DIR)``):
nothing in the product code knows it is tiny. The LM is first fitted for ``lm_steps`` Adam steps on
the text corpus of :mod:`synthgen.demo.tiny_blip2` (captions, ``located at the left``, bracketed number
lists, never a box after ``located at``), like a caption-trained LM that knows the format but, without
PIN, does not answer with a box.
"""

from __future__ import annotations

import json
from pathlib import Path

_MEAN, _STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def build_lm_tokenizer(vocab_size: int = 400):
    """A byte-level BPE tokenizer with GPT-NeoX's conventions: ``<|endoftext|>`` as BOS/EOS/UNK, no
    BOS added, no pad token (the Flamingo loader adds ``<|endofchunk|>``, ``<image>`` and ``<PAD>``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from synthgen.demo.tiny_blip2 import _corpus

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus() + [f"{line}." for line in _corpus()], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>")


def _write_vision(out: Path, image_size: int, patch_size: int, width: int, layers: int, seed: int) -> None:
    """An open_clip ``local-dir:`` CLIP whose ViT is ``layers`` x ``width`` (heads of 16)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    model_cfg = {"embed_dim": 16,
                 "vision_cfg": {"image_size": image_size, "layers": layers, "width": width,
                                "patch_size": patch_size, "head_width": 16},
                 "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 1, "layers": 1}}
    (out / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": model_cfg, "preprocess_cfg": {"mean": _MEAN, "std": _STD}}, indent=2))
    torch.manual_seed(seed)
    clip = open_clip.CLIP(**model_cfg)
    with torch.no_grad():
        for name, p in clip.visual.named_parameters():
            if p.ndim >= 2:
                p.normal_(0.0, p[0].numel() ** -0.5)
            elif name in ("class_embedding",):
                p.normal_(0.0, 0.5)
        clip.visual.positional_embedding.normal_(0.0, 0.5)
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(out / "open_clip_model.safetensors"))


def _fit_lm(lm, tokenizer, steps: int, seed: int) -> None:
    """Next-token Adam steps on :func:`synthgen.demo.tiny_blip2._lm_corpus` texts ending in ``.`` and EOS."""
    import numpy as np
    import torch

    from synthgen.demo.tiny_blip2 import _lm_corpus

    rng = np.random.default_rng(seed)
    lm.train()
    opt = torch.optim.Adam(lm.parameters(), lr=3e-3)
    eos = tokenizer.eos_token_id
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(steps):
            # sentences end with "." (as in OpenFlamingo's answers "[x1,y1,x2,y2].", where "]." is one token)
            texts = [t if t.endswith(".") else t + "." for t in (_lm_corpus(rng) for _ in range(32))]
            seqs = [tokenizer(t)["input_ids"] + [eos] for t in texts]
            n = max(map(len, seqs))
            ids = torch.tensor([s + [eos] * (n - len(s)) for s in seqs])
            mask = torch.tensor([[1] * len(s) + [0] * (n - len(s)) for s in seqs])
            loss = lm(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    lm.eval()


def _write_lm(out: Path, tokenizer, *, width: int, layers: int, heads: int, qk_ln: bool, lm_format: str,
              seed: int, lm_steps: int, max_seq_len: int = 128) -> None:
    import torch

    from synthgen.pin.models.flamingo.mpt import build_mpt, hf_to_mosaic_key, mpt_config

    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out)
    vocab = -(-len(tokenizer) // 64) * 64  # padded past the tokenizer, as MPT-1B's 50432 > 50277
    raw = {"model_type": "mosaic_gpt", "architectures": ["MosaicGPT"], "d_model": width, "n_heads": heads,
           "n_layers": layers, "mlp_ratio": 4, "max_seq_len": max_seq_len, "vocab_size": vocab, "attn_impl": "torch",
           "attn_qk_ln": qk_ln, "attn_clip_qkv": None, "softmax_scale": None, "alibi": True,
           "alibi_bias_max": 8, "no_bias": True, "logit_scale": None, "low_precision_layernorm": True,
           "emb_pdrop": 0.0, "resid_pdrop": 0.0, "attn_pdrop": 0.0, "embedding_fraction": 1.0}
    config, _ = mpt_config(raw)
    torch.manual_seed(seed)
    lm = build_mpt(config, qk_ln)
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if name.endswith("wte.weight"):
                p.normal_(0.0, 0.3)
            elif p.ndim == 2:
                p.normal_(0.0, p.shape[1] ** -0.5)
    if lm_steps > 0:
        _fit_lm(lm, tokenizer, lm_steps, seed)
    if lm_format == "hf":
        lm.save_pretrained(out)
        return
    sd = {hf_to_mosaic_key(k): v.contiguous() for k, v in lm.state_dict().items() if k != "lm_head.weight"}
    torch.save(sd, out / "pytorch_model.bin")
    (out / "config.json").write_text(json.dumps(raw, indent=2))


def _init_flamingo(model, gate: float) -> None:
    """Fan-in scaled random weights for the perceiver and cross-attention, unit latents, the new
    tokens' embeddings like the others, and open gates (OpenFlamingo starts them at 0, i.e. off)."""
    import torch
    from torch import nn

    with torch.no_grad():
        for module in (model.perceiver, model.lang_encoder.gated_cross_attn_layers):
            for name, p in module.named_parameters():
                if name.endswith("_gate"):
                    p.fill_(gate)
                elif p.ndim == 2 and not name.endswith("latents"):
                    p.normal_(0.0, p.shape[1] ** -0.5)
        model.perceiver.latents.normal_(0.0, 1.0)
        emb: nn.Embedding = model.lang_encoder.get_input_embeddings()
        n_new = 3
        emb.weight[-n_new:].normal_(0.0, 0.3)


def build_tiny_openflamingo(out_dir: str | Path, *, image_size: int = 224, patch_size: int = 14,
                            vision_width: int = 32, vision_layers: int = 2, lm_width: int = 64, lm_layers: int = 2,
                            lm_heads: int = 2, cross_attn_every: int = 1, qk_ln: bool = True,
                            lm_format: str = "mosaic", gate: float = 0.5, perceiver_depth: int = 6, heads: int = 8,
                            num_latents: int = 64, seed: int = 0, lm_steps: int = 150, max_seq_len: int = 128) -> Path:
    """Write a random-weight OpenFlamingo to ``out_dir`` (layout in the module docstring) and
    return the path.

    ``image_size``/``patch_size`` are the vision encoder's (the real ViT-L/14: 224/14, 16x16 = 256
    patch tokens of width 1024); ``lm_format`` ``"mosaic"`` writes MosaicML's ``mosaic_gpt`` files
    (as MPT-1B), ``"hf"`` transformers' ``mpt`` ones (as MPT-7B; with ``qk_ln=False`` what
    ``AutoModelForCausalLM`` and open_flamingo 2.0.1 load natively). ``perceiver_depth``,
    ``heads`` (of the perceiver and the cross-attention, 64 wide) and ``num_latents`` default to
    OpenFlamingo's sizes, the only ones open_flamingo 2.0.1 builds; smaller ones train faster
    (the loader reads them off ``checkpoint.pt``). ``gate`` sets the cross-attention gates
    (``tanh(gate)`` scales the image's contribution; OpenFlamingo starts them at 0, i.e. images
    ignored, and training opens them). ``max_seq_len``: the LM's context in tokens (in-context
    prompts with many images need more than the default).
    """
    import torch

    from synthgen.pin.models.flamingo.loading import build_flamingo
    from synthgen.pin.models.flamingo.model import Architecture
    from synthgen.pin.models.flamingo.variants import CHECKPOINT_FILE, MANIFEST_FILE, FlamingoParts

    if lm_format not in ("mosaic", "hf"):
        raise ValueError(f"lm_format must be 'mosaic' or 'hf', got {lm_format!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_vision(out / "vision", image_size, patch_size, vision_width, vision_layers, seed)
    _write_lm(out / "lm", build_lm_tokenizer(), width=lm_width, layers=lm_layers, heads=lm_heads, qk_ln=qk_ln,
              lm_format=lm_format, seed=seed, lm_steps=lm_steps, max_seq_len=max_seq_len)
    # the tiny stand-in names its token choice: its random ViT's raw tokens carry more of the
    # image than LayerNorm-ed ones, so a few CPU steps visibly teach PIN the answer format
    manifest = {"lm": "lm", "vision": "local-dir:vision", "cross_attn_every": cross_attn_every,
                "vision_tokens": "raw"}
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    parts = FlamingoParts(model_id=str(out), checkpoint=str(out / CHECKPOINT_FILE), lm=str(out / "lm"),
                          tokenizer=str(out / "lm"), vision=f"local-dir:{out / 'vision'}", vision_pretrained=None,
                          cross_attn_every=cross_attn_every, vision_tokens="raw")
    arch = Architecture(perceiver_depth=perceiver_depth, perceiver_heads=heads, num_latents=num_latents,
                        xattn_heads=heads)
    model, _, _, _ = build_flamingo(parts, arch=arch)
    torch.manual_seed(seed + 1)
    _init_flamingo(model, gate)
    # what OpenFlamingo saves: the trained parts (under the FlamingoLayer names) and the embeddings
    emb = model.lang_encoder.get_input_embeddings()
    emb_key = next(f"lang_encoder.{n}.weight" for n, m in model.lang_encoder.named_modules() if m is emb)
    keep = {k: v.contiguous() for k, v in model.state_dict().items()
            if k.startswith("perceiver.") or ".gated_cross_attn_layer." in k or k == emb_key}
    torch.save(keep, out / CHECKPOINT_FILE)
    return out
