"""OpenFlamingo-3B at its real size, built by synthgen on the meta device (no weights, no memory).

The two files synthgen must read for OpenFlamingo-3B (``openflamingo/OpenFlamingo-3B-vitl-mpt1b``
and ``-langinstruct``: ViT-L/14 ``openai``, MPT-1B, cross-attention before every decoder layer) are
written here as names and shapes, from their sources:

- ``checkpoint.pt`` of the hub repo: what open_flamingo 2.0.1 trains, as its training saves it
  (``open_flamingo/train/train_utils.py`` ``filter_state_dict_to_trainable``: the parameters that
  require grad, i.e. ``factory.py`` unfreezes the perceiver, ``gated_cross_attn_layers`` and
  ``get_input_embeddings()`` = ``transformer.wte`` for MPT-1B, plus anything named ``embed``,
  minus the ``old_decoder_blocks`` / ``gated_cross_attn_layers`` aliases and the vision encoder).
  MosaicGPT has no output embedding of its own (logits through ``wte``), so there is no
  ``lm_head`` key. The maintainers describe the same file in mlfoundations/open_flamingo issue
  #210 (keys ``perceiver.*``, ``lang_encoder.transformer.wte.weight``,
  ``lang_encoder.transformer.blocks.N.gated_cross_attn_layer.*``; the ``module.`` prefix of the
  first upload was removed). Its parameter count, 1,046,992,944, is what open_flamingo's factory
  prints for this model ("Flamingo model initialized with ... trainable parameters"; the same
  number is reported for OpenFlamingo with ViT-L-14 + MPT-1B in a public project README).
- ``pytorch_model.bin`` of ``anas-awadalla/mpt-1b-redpajama-200b`` (and ``-dolly``): MosaicML's
  ``mosaic_gpt`` code of April 2023 as copied into that repo (mosaic_gpt.py, gpt_blocks.py,
  attention.py; the same classes as mosaicml/examples ``examples/llm/src/models`` at commit
  cffc1ad1, before the ``ln_*`` -> ``norm_*`` rename of 5f750121): ``transformer.wte``,
  ``transformer.blocks[i].{ln_1, attn.{Wqkv, q_ln, k_ln, out_proj}, ln_2, mlp.{mlp_up, mlp_down}}``,
  ``transformer.ln_f``; ``no_bias: true`` removes every bias (LayerNorms' too) after
  construction. Sizes from that repo's config.json (d_model 2048, 24 layers, 16 heads,
  mlp_ratio 4, vocab 50432, attn_qk_ln true); 1,311,442,944 float32 parameters = the 5.25 GB
  of its pytorch_model.bin.
- The tokenizer: EleutherAI/gpt-neox-20b's (50277 tokens; ``tokenizer_class``
  ``GPTNeoXTokenizer``, no pad token in tokenizer_config.json / special_tokens_map.json), to
  which open_flamingo adds ``<|endofchunk|>``, ``<image>`` and, having no pad token under
  transformers 4, ``<PAD>``: 50280 embedding rows in checkpoint.pt.

With open_flamingo installed (``pip install --no-deps open-flamingo==2.0.1``) the checkpoint
layout is also derived from the package's own factory and save filter, at full size on meta.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from synthgen.errors import UserError

D_LM, N_LAYERS, MPT_VOCAB = 2048, 24, 50432
D_VIS = 1024                      # ViT-L/14 width (open_clip ViT-L-14 vision_cfg)
NEOX_TOKENS = 50277               # len(tokenizer) of EleutherAI/gpt-neox-20b, MPT-1B's tokenizer
EMBED_ROWS = NEOX_TOKENS + 3      # + <|endofchunk|>, <image>, <PAD>
INNER = 8 * 64                    # open_flamingo's attention: 8 heads of 64 (perceiver and cross-attention)
TRAINABLE_PARAMETERS = 1_046_992_944  # what open_flamingo's factory prints for OpenFlamingo-3B
VARIANTS_3B = ("openflamingo/OpenFlamingo-3B-vitl-mpt1b", "openflamingo/OpenFlamingo-3B-vitl-mpt1b-langinstruct")

# config.json of anas-awadalla/mpt-1b-redpajama-200b (the -dolly one differs only in
# _name_or_path and transformers_version)
MPT1B_CONFIG = {
    "_name_or_path": "mosaicml/mpt-1b-redpajama-200b", "alibi": True, "alibi_bias_max": 8,
    "architectures": ["MosaicGPT"], "attn_clip_qkv": None, "attn_impl": "torch", "attn_pdrop": 0,
    "attn_qk_ln": True, "attn_uses_sequence_id": False,
    "auto_map": {"AutoConfig": "configuration_mosaic_gpt.MosaicGPTConfig",
                 "AutoModelForCausalLM": "mosaic_gpt.MosaicGPT"},
    "d_model": 2048, "emb_init_std": None, "emb_init_uniform_lim": None, "emb_pdrop": 0,
    "embedding_fraction": 1.0, "fan_mode": "fan_in", "init_device": "cpu", "init_div_is_residual": True,
    "init_gain": 0, "init_nonlinearity": "relu", "init_std": 0.02, "logit_scale": None,
    "low_precision_layernorm": True, "max_seq_len": 2048, "mlp_ratio": 4, "model_type": "mosaic_gpt",
    "n_heads": 16, "n_layers": 24, "no_bias": True, "param_init_fn": "kaiming_normal_", "prefix_lm": False,
    "resid_pdrop": 0, "softmax_scale": None, "tokenizer_name": "EleutherAI/gpt-neox-20b",
    "torch_dtype": "float32", "transformers_version": "4.27.4", "use_cache": False, "verbose": 0,
    "vocab_size": 50432,
}
# tokenizer_config.json and special_tokens_map.json of the same repo (the -dolly one alike)
NEOX_TOKENIZER_CONFIG = {"add_prefix_space": False, "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
                         "model_max_length": 2048, "tokenizer_class": "GPTNeoXTokenizer",
                         "unk_token": "<|endoftext|>"}
NEOX_SPECIAL_TOKENS = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}


def mpt1b_weight_shapes() -> dict[str, tuple[int, ...]]:
    """Names and shapes of MPT-1B's pytorch_model.bin (mosaic_gpt layout, see the module doc)."""
    d, f = D_LM, 4 * D_LM
    out = {"transformer.wte.weight": (MPT_VOCAB, d)}
    for i in range(N_LAYERS):
        b = f"transformer.blocks.{i}."
        out.update({b + "ln_1.weight": (d,), b + "attn.Wqkv.weight": (3 * d, d), b + "attn.q_ln.weight": (d,),
                    b + "attn.k_ln.weight": (d,), b + "attn.out_proj.weight": (d, d), b + "ln_2.weight": (d,),
                    b + "mlp.mlp_up.weight": (f, d), b + "mlp.mlp_down.weight": (d, f)})
    out["transformer.ln_f.weight"] = (d,)
    return out


def checkpoint_shapes() -> dict[str, tuple[int, ...]]:
    """Names and shapes of OpenFlamingo-3B's checkpoint.pt (see the module doc)."""
    v, d = D_VIS, D_LM
    out = {"perceiver.latents": (64, v)}
    for i in range(6):
        p = f"perceiver.layers.{i}."
        out.update({p + "0.norm_media.weight": (v,), p + "0.norm_media.bias": (v,),
                    p + "0.norm_latents.weight": (v,), p + "0.norm_latents.bias": (v,),
                    p + "0.to_q.weight": (INNER, v), p + "0.to_kv.weight": (2 * INNER, v),
                    p + "0.to_out.weight": (v, INNER), p + "1.0.weight": (v,), p + "1.0.bias": (v,),
                    p + "1.1.weight": (4 * v, v), p + "1.3.weight": (v, 4 * v)})
    out.update({"perceiver.norm.weight": (v,), "perceiver.norm.bias": (v,),
                "lang_encoder.transformer.wte.weight": (EMBED_ROWS, d)})
    for i in range(N_LAYERS):
        x = f"lang_encoder.transformer.blocks.{i}.gated_cross_attn_layer."
        out.update({x + "attn_gate": (1,), x + "ff_gate": (1,), x + "attn.norm.weight": (d,),
                    x + "attn.norm.bias": (d,), x + "attn.to_q.weight": (INNER, d),
                    x + "attn.to_kv.weight": (2 * INNER, v), x + "attn.to_out.weight": (d, INNER),
                    x + "ff.0.weight": (d,), x + "ff.0.bias": (d,), x + "ff.1.weight": (4 * d, d),
                    x + "ff.3.weight": (d, 4 * d)})
    return out


def _numel(shapes: dict) -> int:
    return sum(torch.Size(s).numel() for s in shapes.values())


def _meta(shapes: dict, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    return {k: torch.empty(s, dtype=dtype, device="meta") for k, s in shapes.items()}


def _shapes(sd: dict) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in sd.items()}


def _in_flamingo(key: str) -> str:
    """An ``MptForCausalLM`` key -> the key of the same weight in synthgen's Flamingo."""
    return "lang_encoder." + re.sub(r"^transformer\.blocks\.(\d+)\.", r"transformer.blocks.\1.decoder_layer.", key)


def write_neox_tokenizer(out: Path) -> Path:
    """A tokenizer with the files of MPT-1B's (GPT-NeoX-20B: 50277 tokens, ``<|endoftext|>`` 0,
    ``<|padding|>`` 1, same tokenizer_config.json / special_tokens_map.json); its merges are not
    the real ones, which no test here needs."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {"<|endoftext|>": 0, "<|padding|>": 1}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    vocab.update({f"t{i}": i for i in range(len(vocab), NEOX_TOKENS)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True), AddedToken("<|padding|>", special=True)])
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(NEOX_TOKENIZER_CONFIG))
    (out / "special_tokens_map.json").write_text(json.dumps(NEOX_SPECIAL_TOKENS))
    return out


@pytest.fixture(scope="module")
def mpt1b_dir(tmp_path_factory) -> Path:
    """MPT-1B's config.json and tokenizer files (its weights come as meta tensors, ``fake_weights``)."""
    d = write_neox_tokenizer(tmp_path_factory.mktemp("mpt") / "mpt-1b-redpajama-200b")
    (d / "config.json").write_text(json.dumps(MPT1B_CONFIG))
    return d


@pytest.fixture
def fake_weights(monkeypatch):
    """synthgen's MPT reader hands out MPT-1B's pytorch_model.bin as float32 meta tensors."""
    from synthgen.pin.models.flamingo import mpt

    monkeypatch.setattr(mpt, "read_weights", lambda lm: _meta(mpt1b_weight_shapes()))


@pytest.fixture
def meta_open_clip(monkeypatch):
    """open_clip builds on the meta device and without its weights (only their shapes are used)."""
    import open_clip

    create = open_clip.create_model
    monkeypatch.setattr(open_clip, "create_model",
                        lambda name, pretrained=None, **kw: create(name, pretrained=None, **{**kw, "device": "meta"}))


# --- the sources agree with each other --------------------------------------------------------

def test_released_layouts_add_up():
    ckpt, mpt = checkpoint_shapes(), mpt1b_weight_shapes()
    assert len(ckpt) == 1 + 6 * 11 + 2 + 1 + N_LAYERS * 11 and len(mpt) == 2 + N_LAYERS * 8
    assert _numel(ckpt) == TRAINABLE_PARAMETERS
    assert _numel(mpt) == 1_311_442_944  # "1.3 billion parameters" (model card)
    assert 5.24e9 < 4 * _numel(mpt) < 5.26e9  # float32: the 5.25 GB pytorch_model.bin


# --- MPT-1B's weight files -> synthgen's MptForCausalLM -----------------------------------------

def test_mpt1b_weight_files_load_into_synthgens_mpt(mpt1b_dir, fake_weights):
    from synthgen.pin.models.flamingo.mpt import hf_to_mosaic_key, load_language_model, mosaic_to_hf_key

    lm = load_language_model(str(mpt1b_dir), torch.bfloat16)
    cfg = lm.config
    assert type(lm).__name__ == "MptForCausalLM"
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.vocab_size, cfg.expansion_ratio) == (2048, 24, 16, 50432, 4)
    assert cfg.attn_config.qk_ln and cfg.attn_config.alibi and cfg.tie_word_embeddings
    own = _shapes(lm.state_dict())
    files = mpt1b_weight_shapes()
    mapped = {mosaic_to_hf_key(k): s for k, s in files.items()}
    assert own == {**mapped, "lm_head.weight": (MPT_VOCAB, D_LM)}  # every name, every shape, nothing else
    assert all(hf_to_mosaic_key(mosaic_to_hf_key(k)) == k for k in files)
    # every parameter was assigned from the file (float32 there, asked for bfloat16; built float32)
    assert {p.dtype for p in lm.parameters()} == {torch.bfloat16}
    assert lm.lm_head.weight is lm.transformer.wte.weight  # logits through wte, as MosaicGPT's


@pytest.mark.parametrize("change, message", [
    ("drop", "lacks 1 MPT weights"),
    ("bias", "unexpected MPT weight 'transformer.blocks.0.ln_1.bias'"),
    ("shape", "do not fit its config.json"),
])
def test_mpt1b_files_that_differ_are_refused(mpt1b_dir, monkeypatch, change, message):
    from synthgen.pin.models.flamingo import mpt

    shapes = mpt1b_weight_shapes()
    if change == "drop":
        del shapes["transformer.blocks.7.attn.k_ln.weight"]
    elif change == "bias":
        shapes["transformer.blocks.0.ln_1.bias"] = (D_LM,)
    else:
        shapes["transformer.blocks.3.mlp.mlp_up.weight"] = (3 * D_LM, D_LM)
    monkeypatch.setattr(mpt, "read_weights", lambda lm: _meta(shapes))
    with pytest.raises(UserError, match=message):
        mpt.load_language_model(str(mpt1b_dir))


# --- the tokenizer: the special tokens give checkpoint.pt's embedding rows ---------------------

def test_tokenizer_gets_openflamingos_three_tokens(mpt1b_dir, tmp_path):
    from transformers import AutoTokenizer

    from synthgen.pin.models.flamingo.loading import EOC_TOKEN, MEDIA_TOKEN, PAD_TOKEN, load_tokenizer

    plain = AutoTokenizer.from_pretrained(str(mpt1b_dir))
    assert len(plain) == NEOX_TOKENS
    tok = load_tokenizer(str(mpt1b_dir))
    assert len(tok) == EMBED_ROWS
    # in open_flamingo's order, after the 50277 tokens; <PAD> is the pad token although transformers
    # 5 gives GPTNeoXTokenizer <|padding|> when the files name none (transformers 4 gave none)
    assert tok.convert_tokens_to_ids([EOC_TOKEN, MEDIA_TOKEN, PAD_TOKEN]) == [50277, 50278, 50279]
    assert (tok.pad_token, tok.pad_token_id) == (PAD_TOKEN, 50279)
    assert tok.encode("<image>x<|endofchunk|>")[0] == 50278 and tok.encode("x<|endofchunk|>")[-1] == 50277
    # a tokenizer whose own files name a pad token keeps it: no <PAD>
    mine = Path(shutil.copytree(mpt1b_dir, tmp_path / "padded"))
    (mine / "special_tokens_map.json").write_text(json.dumps({**NEOX_SPECIAL_TOKENS, "pad_token": "<|padding|>"}))
    tok = load_tokenizer(str(mine))
    assert (len(tok), tok.pad_token, tok.pad_token_id) == (NEOX_TOKENS + 2, "<|padding|>", 1)


# --- the whole OpenFlamingo-3B, built and loaded by synthgen ------------------------------------

@pytest.mark.parametrize("variant", VARIANTS_3B)
def test_openflamingo_3b_loads_its_checkpoint_at_real_size(variant, mpt1b_dir, fake_weights, meta_open_clip,
                                                            tmp_path):
    from synthgen.pin.models.flamingo.loading import load_flamingo
    from synthgen.pin.models.flamingo.model import Architecture
    from synthgen.pin.models.flamingo.mpt import mosaic_to_hf_key
    from synthgen.pin.models.flamingo.variants import VARIANTS, resolve_parts

    # checkpoint.pt with OpenFlamingo-3B's names and shapes (meta tensors: a file of a few kB), in a
    # folder named like the hub cache's, with the LM given as a local copy
    folder = tmp_path / f"models--{variant.replace('/', '--')}"
    folder.mkdir()
    torch.save(_meta(checkpoint_shapes()), folder / "checkpoint.pt")
    parts = resolve_parts(str(folder), lm=str(mpt1b_dir))
    assert (parts.vision, parts.vision_pretrained, parts.cross_attn_every) == ("ViT-L-14", "openai", None)
    assert VARIANTS[variant].cross_attn_every == 1 and VARIANTS[variant].lm.startswith(
        "anas-awadalla/mpt-1b-redpajama-200b")

    with torch.device("meta"):  # (perceiver and cross-attention too: nothing is allocated)
        model, tok, mean, std, parts = load_flamingo(parts)  # unknown or missing keys, other shapes: raise

    assert parts.cross_attn_every == 1 and model.cross_attn_every == 1  # read off the checkpoint
    assert model.arch == Architecture()  # 6 perceiver layers, 8 heads of 64, 64 latents, ff x4 (read off it)
    assert model.decoder_layers == "transformer.blocks" and len(model.layers) == N_LAYERS
    assert all(layer.gated_cross_attn_layer is not None for layer in model.layers)
    assert (model.vis_dim, model.media_token_id, model.eoc_token_id) == (D_VIS, 50278, 50277)
    own = _shapes(model.state_dict())
    assert {k: own.get(k) for k in checkpoint_shapes()} == checkpoint_shapes()
    for k, shape in checkpoint_shapes().items():  # and under open_flamingo's alias names
        alias = re.sub(r"^lang_encoder\.transformer\.blocks\.(\d+)\.gated_cross_attn_layer\.",
                       r"lang_encoder.gated_cross_attn_layers.\1.", k)
        assert own[alias] == shape
    lm = model.lang_encoder
    assert lm.get_input_embeddings().weight.shape == (EMBED_ROWS, D_LM) == (len(tok), D_LM)
    assert lm.lm_head.weight is lm.transformer.wte.weight  # the resized embedding, still tied
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    # the rest of the LM is MPT-1B's files, each weight under its decoder layer
    from_files = {_in_flamingo(mosaic_to_hf_key(k)): shape for k, shape in mpt1b_weight_shapes().items()}
    from_files.update({"lang_encoder.transformer.wte.weight": (EMBED_ROWS, D_LM),  # resized to the tokenizer
                       "lang_encoder.lm_head.weight": (EMBED_ROWS, D_LM)})
    aliases = ("lang_encoder.old_decoder_blocks.", "lang_encoder.gated_cross_attn_layers.")
    assert {k: s for k, s in own.items() if k.startswith("lang_encoder.") and not k.startswith(aliases)
            and ".gated_cross_attn_layer." not in k} == from_files
    # vision: ViT-L/14 (QuickGELU, as the openai weights) at 224 px -> 16x16 patch tokens of 1024,
    # whichever tokens are taken
    vit = model.vision_encoder
    assert vit.conv1.weight.shape == (D_VIS, 3, 14, 14) and len(vit.transformer.resblocks) == 24
    assert type(vit.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU" and len(mean) == len(std) == 3
    for tokens in ("raw", "ln_post"):
        model.vision_tokens = tokens
        assert model.patch_tokens(torch.empty(2, 3, 224, 224, device="meta")).shape == (2, 256, D_VIS)
    assert model.encode_vision(torch.empty(2, 3, 224, 224, device="meta")).shape == (2, 1, 64, D_VIS)


# --- the checkpoint layout from open_flamingo's own code ----------------------------------------

def _mosaic_gpt_classes():
    """``(MosaicGPTConfig, MosaicGPT)``: MPT-1B's module tree (names, sizes, no biases) as a
    transformers PreTrainedModel, written from the sources in the module doc (no forward)."""
    from transformers import PretrainedConfig, PreTrainedModel

    class MosaicGPTConfig(PretrainedConfig):
        model_type = "mosaic_gpt"

        def __init__(self, d_model=2048, n_heads=16, n_layers=24, mlp_ratio=4, vocab_size=50432,
                     attn_qk_ln=True, no_bias=True, **kwargs):
            self.d_model, self.n_heads, self.n_layers, self.mlp_ratio = d_model, n_heads, n_layers, mlp_ratio
            self.vocab_size, self.attn_qk_ln, self.no_bias = vocab_size, attn_qk_ln, no_bias
            super().__init__(**kwargs)

    class Attention(nn.Module):
        def __init__(self, d: int, qk_ln: bool) -> None:
            super().__init__()
            self.Wqkv = nn.Linear(d, 3 * d)
            if qk_ln:
                self.q_ln, self.k_ln = nn.LayerNorm(d), nn.LayerNorm(d)
            self.out_proj = nn.Linear(d, d)

    class MLP(nn.Module):
        def __init__(self, d: int, ratio: int) -> None:
            super().__init__()
            self.mlp_up, self.mlp_act, self.mlp_down = nn.Linear(d, ratio * d), nn.GELU(), nn.Linear(ratio * d, d)

    class Block(nn.Module):
        def __init__(self, c) -> None:
            super().__init__()
            self.ln_1, self.attn = nn.LayerNorm(c.d_model), Attention(c.d_model, c.attn_qk_ln)
            self.ln_2, self.mlp = nn.LayerNorm(c.d_model), MLP(c.d_model, c.mlp_ratio)
            self.resid_attn_dropout, self.resid_mlp_dropout = nn.Dropout(0.0), nn.Dropout(0.0)

    class MosaicGPT(PreTrainedModel):
        config_class = MosaicGPTConfig
        base_model_prefix = "model"

        def __init__(self, config) -> None:
            super().__init__(config)
            self.transformer = nn.ModuleDict({"wte": nn.Embedding(config.vocab_size, config.d_model)})
            self.transformer.update({"emb_drop": nn.Dropout(0.0)})
            self.transformer.update({"blocks": nn.ModuleList(Block(config) for _ in range(config.n_layers))})
            self.transformer.update({"ln_f": nn.LayerNorm(config.d_model)})
            if config.no_bias:
                for module in self.modules():
                    if isinstance(getattr(module, "bias", None), nn.Parameter):
                        module.register_parameter("bias", None)

        def _init_weights(self, module) -> None:  # (meta tensors: nothing to initialise)
            pass

    return MosaicGPTConfig, MosaicGPT


def test_mosaic_gpt_stand_in_has_the_weight_files_layout():
    config_cls, model_cls = _mosaic_gpt_classes()
    with torch.device("meta"):
        lm = model_cls(config_cls())
    assert _shapes(lm.state_dict()) == mpt1b_weight_shapes()


def test_checkpoint_layout_is_what_open_flamingo_saves(mpt1b_dir, monkeypatch):
    """open_flamingo 2.0.1's create_model_and_transforms at full size on meta (MPT-1B's module
    tree, the real ViT-L-14 config, a tokenizer as transformers 4 loaded MPT-1B's: no pad token),
    then its training's save filter: exactly the names and shapes above."""
    pytest.importorskip("open_flamingo", reason="pip install --no-deps open-flamingo==2.0.1")
    import open_clip
    from transformers import AutoTokenizer

    monkeypatch.setitem(sys.modules, "wandb", sys.modules.get("wandb") or types.ModuleType("wandb"))
    import open_flamingo.src.factory as factory
    from open_flamingo.train.train_utils import filter_state_dict_to_trainable

    config_cls, model_cls = _mosaic_gpt_classes()
    with torch.device("meta"):
        lm = model_cls(config_cls())

    class LMs:
        @staticmethod
        def from_pretrained(path, **kwargs):
            assert path == "anas-awadalla/mpt-1b-redpajama-200b"  # (the factory's MPT-1B embedding hack)
            return lm

    class Tokenizers:
        @staticmethod
        def from_pretrained(path, **kwargs):  # transformers 4's GPTNeoXTokenizerFast had no pad default
            return AutoTokenizer.from_pretrained(path, pad_token=None)

    create = open_clip.create_model_and_transforms
    monkeypatch.setattr(factory, "AutoModelForCausalLM", LMs)
    monkeypatch.setattr(factory, "AutoTokenizer", Tokenizers)
    monkeypatch.setattr(factory.open_clip, "create_model_and_transforms",
                        lambda name, pretrained=None, **kw: create(name, pretrained=None, device="meta", **kw))
    with torch.device("meta"):
        model, _, tok = factory.create_model_and_transforms(
            "ViT-L-14", "openai", "anas-awadalla/mpt-1b-redpajama-200b", str(mpt1b_dir),
            cross_attn_every_n_layers=1)
    assert len(tok) == EMBED_ROWS and tok.encode("<image>")[-1] == model.media_token_id == 50278
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == TRAINABLE_PARAMETERS
    saved = filter_state_dict_to_trainable(model, model.state_dict())
    assert _shapes(saved) == checkpoint_shapes()
