"""Language models for OpenFlamingo without ``trust_remote_code``; MosaicML MPT in transformers' classes.

MosaicML published MPT in two layouts, both ALiBi, no biases, tied input/output embedding:

- ``mosaic_gpt`` (``config.json`` ``model_type: mosaic_gpt``; MPT-1B-RedPajama-200b and its -dolly
  tune, the LMs of OpenFlamingo-3B). Keys ``transformer.wte``, ``transformer.blocks.{i}.ln_1``,
  ``.attn.Wqkv``, ``.attn.q_ln``, ``.attn.k_ln`` (QK-LayerNorm over the full width, before the heads
  are split), ``.attn.out_proj``, ``.ln_2``, ``.mlp.mlp_up``, ``.mlp.mlp_down``, ``transformer.ln_f``;
  config fields ``d_model, n_heads, n_layers, mlp_ratio, attn_qk_ln, attn_clip_qkv, alibi, ...``.
- ``mpt`` (``model_type: mpt``; MPT-7B and later, the LM of OpenFlamingo-9B). Keys ``norm_1``,
  ``attn.Wqkv``, ``attn.out_proj``, ``norm_2``, ``ffn.up_proj``, ``ffn.down_proj``, ``norm_f``: the
  layout of transformers' ``MptForCausalLM``, config ``attn_config`` / ``expansion_ratio``.

Both load into ``MptForCausalLM``: ``mosaic_gpt`` keys are renamed (:func:`mosaic_to_hf_key`), and
QK-LayerNorm, which transformers' ``MptAttention`` lacks, is added by swapping in
:class:`QKLayerNormMptAttention` (keys ``attn.q_ln.weight`` / ``attn.k_ln.weight``). What
``MptForCausalLM`` cannot express is refused with a one-line error: biases, learned positions
(no ALiBi), ``logit_scale``, an MLP ratio other than 4, ALiBi other than transformers' (``alibi_bias_max``
8; for ``mosaic_gpt`` a power-of-two head count, where both slope formulas agree). Any other LM
loads with ``AutoModelForCausalLM`` (``trust_remote_code=False``).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
from torch import nn

from synthgen.errors import ModelLoadError, UserError

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")

_MOSAIC_TO_HF = ((".ln_1.", ".norm_1."), (".ln_2.", ".norm_2."), (".mlp.mlp_up.", ".ffn.up_proj."),
                 (".mlp.mlp_down.", ".ffn.down_proj."), ("transformer.ln_f.", "transformer.norm_f."))
_HF_KEY = re.compile(r"^(transformer\.wte\.weight|transformer\.norm_f\.weight|lm_head\.weight|"
                     r"transformer\.blocks\.\d+\.(norm_1|norm_2|attn\.Wqkv|attn\.out_proj|attn\.q_ln|attn\.k_ln|"
                     r"ffn\.up_proj|ffn\.down_proj)\.weight)$")


def mosaic_to_hf_key(key: str) -> str:
    """A ``mosaic_gpt`` state-dict key -> the ``MptForCausalLM`` key of the same weight."""
    for old, new in _MOSAIC_TO_HF:
        key = key.replace(old, new)
    return key


def hf_to_mosaic_key(key: str) -> str:
    """The inverse of :func:`mosaic_to_hf_key`."""
    for old, new in _MOSAIC_TO_HF:
        key = key.replace(new, old)
    return key


class QKLayerNormMptAttention(nn.Module):
    """MPT self-attention with MosaicML's QK-LayerNorm: LayerNorm (no bias) over the full width of
    the queries and keys before they are split into heads; otherwise transformers' MptAttention."""

    def __init__(self, config, layer_idx: int | None = None) -> None:
        super().__init__()
        self.hidden_size, self.n_heads = config.hidden_size, config.n_heads
        self.head_dim = self.hidden_size // self.n_heads
        self.softmax_scale = config.attn_config.softmax_scale or 1 / math.sqrt(self.head_dim)
        self.attn_dropout_p = config.attn_config.attn_pdrop
        self.clip_qkv = config.attn_config.clip_qkv
        self.layer_idx = layer_idx
        self.Wqkv = nn.Linear(self.hidden_size, 3 * self.hidden_size, bias=False)
        self.q_ln = nn.LayerNorm(self.hidden_size, eps=config.layer_norm_epsilon, bias=False)
        self.k_ln = nn.LayerNorm(self.hidden_size, eps=config.layer_norm_epsilon, bias=False)
        self.out_proj = nn.Linear(self.hidden_size, self.hidden_size, bias=False)

    def forward(self, hidden_states, position_bias, cache=None, attention_mask=None, **kwargs):
        b, n = hidden_states.shape[:2]
        qkv = self.Wqkv(hidden_states)
        if self.clip_qkv:
            qkv = qkv.clamp(min=-self.clip_qkv, max=self.clip_qkv)
        q, k, v = qkv.chunk(3, dim=2)
        q, k = self.q_ln(q).to(v.dtype), self.k_ln(k).to(v.dtype)
        q, k, v = (t.reshape(b, n, self.n_heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        scores = (q @ k.transpose(-1, -2)) * self.softmax_scale
        if position_bias is not None:  # ALiBi [heads, 1, max_seq_len]: its last key-length columns
            rows = max(0, position_bias.shape[1] - scores.shape[2])
            scores = scores + position_bias[:, rows:, max(0, position_bias.shape[2] - k.shape[-2]):]
        if attention_mask is not None:
            scores = scores.masked_fill(attention_mask, torch.finfo(q.dtype).min)
        weights = nn.functional.softmax(scores.float(), dim=-1).to(v.dtype)
        weights = nn.functional.dropout(weights, p=self.attn_dropout_p, training=self.training)
        out = (weights @ v).transpose(1, 2).reshape(b, n, -1)
        return self.out_proj(out), weights


# --- configs ----------------------------------------------------------------------------------

def _refuse(lm: str, what: str) -> UserError:
    return UserError(f"{lm}: {what}, which transformers' MptForCausalLM cannot express; synthgen loads "
                     "MPT without remote code")


def mpt_config(raw: dict, lm: str = "the language model"):
    """``config.json`` of either MPT layout -> ``(MptConfig, qk_ln)``, refusing what Mpt cannot do."""
    from transformers import MptConfig

    if raw.get("model_type") == "mosaic_gpt":
        attn = {"qk_ln": bool(raw.get("attn_qk_ln", False)), "clip_qkv": raw.get("attn_clip_qkv"),
                "softmax_scale": raw.get("softmax_scale"), "alibi": bool(raw.get("alibi", False)),
                "alibi_bias_max": raw.get("alibi_bias_max", 8), "attn_pdrop": 0.0}
        ratio = raw.get("mlp_ratio", 4)
        n_heads = int(raw["n_heads"])
        if n_heads & (n_heads - 1):
            raise _refuse(lm, f"{n_heads} attention heads (mosaic_gpt's ALiBi slopes differ from transformers' "
                              "unless the head count is a power of two)")
        fields = dict(d_model=raw["d_model"], n_heads=n_heads, n_layers=raw["n_layers"],
                      max_seq_len=raw.get("max_seq_len", 2048), vocab_size=raw["vocab_size"])
        no_bias, logit_scale = raw.get("no_bias", False), raw.get("logit_scale")
    else:
        attn = dict(raw.get("attn_config") or {})
        ratio = raw.get("expansion_ratio", 4)
        fields = {k: raw[k] for k in ("d_model", "n_heads", "n_layers", "max_seq_len", "vocab_size") if k in raw}
        no_bias, logit_scale = raw.get("no_bias", True), raw.get("logit_scale")
    if not no_bias:
        raise _refuse(lm, "biases (no_bias false)")
    if not attn.get("alibi", False):
        raise _refuse(lm, "no ALiBi")
    if ratio != 4 or logit_scale is not None or attn.get("alibi_bias_max", 8) != 8:
        raise _refuse(lm, f"mlp ratio {ratio}, logit_scale {logit_scale}, alibi_bias_max {attn.get('alibi_bias_max')}")
    # transformers' strict MptAttentionConfig: only its fields, in its types (attn_pdrop is typed
    # int there; dropout plays no part in a frozen model)
    attn = {"qk_ln": bool(attn.get("qk_ln", False)), "alibi": True, "alibi_bias_max": 8, "attn_pdrop": 0,
            "clip_qkv": None if attn.get("clip_qkv") is None else float(attn["clip_qkv"]),
            "softmax_scale": None if attn.get("softmax_scale") is None else float(attn["softmax_scale"])}
    config = MptConfig(**{k: int(v) for k, v in fields.items()}, expansion_ratio=4, no_bias=True, attn_config=attn,
                       tie_word_embeddings=raw.get("tie_word_embeddings", True), use_cache=True)
    return config, bool(attn.get("qk_ln", False))


# --- files ------------------------------------------------------------------------------------

def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def fetch(repo_or_dir: str, filename: str, what: str) -> Path | None:
    """``filename`` of a local directory or hub repository (downloaded); None when it has none."""
    local = Path(repo_or_dir).expanduser()
    if local.is_dir():
        return local / filename if (local / filename).is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_or_dir, filename))
    except LocalEntryNotFoundError:  # (a subclass of EntryNotFoundError): no network and not cached
        raise ModelLoadError(f"cannot fetch {filename} of {what} {repo_or_dir!r}: the hub is unreachable and it "
                             "is not in the local cache; pass a local directory instead") from None
    except EntryNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - gated, wrong id, ...: all one message
        raise ModelLoadError(f"cannot fetch {filename} of {what} {repo_or_dir!r}: {_first_line(exc)}; "
                             "pass a local directory instead") from None


def read_config(lm: str) -> dict:
    path = fetch(lm, "config.json", "the language model")
    if path is None:
        raise ModelLoadError(f"the language model {lm!r} has no config.json; pass lm=/path/to/local/dir")
    return json.loads(path.read_text())


def read_weights(lm: str) -> dict[str, torch.Tensor]:
    """All tensors of an LM checkpoint (safetensors or plain ``torch.save`` files, sharded or not),
    read with ``weights_only=True``."""
    from safetensors.torch import load_file

    for name in WEIGHT_FILES:
        path = fetch(lm, name, "the language model")
        if path is None:
            continue
        files = [path]
        if name.endswith(".index.json"):
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
            files = [fetch(lm, s, "the language model") for s in shards]
        out: dict[str, torch.Tensor] = {}
        for f in files:
            if f is None:
                raise ModelLoadError(f"{lm}: a shard listed in {name} is missing")
            out.update(load_file(str(f)) if f.suffix == ".safetensors"
                       else torch.load(f, map_location="cpu", weights_only=True))
        return out
    raise ModelLoadError(f"{lm} holds none of {', '.join(WEIGHT_FILES)}")


# --- loading ----------------------------------------------------------------------------------

def build_mpt(config, qk_ln: bool, device: str | torch.device = "cpu"):
    """An ``MptForCausalLM`` for ``config`` (on ``device``; "meta" to fill by assignment later),
    with QK-LayerNorm attention when ``qk_ln``."""
    from transformers import MptForCausalLM

    with torch.device(device):
        model = MptForCausalLM(config)
        if qk_ln:
            for i, block in enumerate(model.transformer.blocks):
                block.attn = QKLayerNormMptAttention(config, layer_idx=i)
    return model


def mpt_state_dict(weights: dict[str, torch.Tensor], lm: str) -> dict[str, torch.Tensor]:
    """An MPT checkpoint's tensors (either layout) under ``MptForCausalLM``'s keys."""
    out = {}
    for key, value in weights.items():
        k = mosaic_to_hf_key(key.removeprefix("model."))
        if not _HF_KEY.match(k):
            raise UserError(f"{lm}: unexpected MPT weight {key!r} {tuple(value.shape)} (biases, learned "
                            "positions and other extras are not supported)")
        out[k] = value
    return out


def load_mpt(lm: str, raw: dict, dtype: torch.dtype):
    """An MPT checkpoint (either layout) as ``MptForCausalLM``."""
    config, qk_ln = mpt_config(raw, lm)
    sd = mpt_state_dict(read_weights(lm), lm)
    model = build_mpt(config, qk_ln, device="meta")
    want = {k for k in model.state_dict() if k != "lm_head.weight"}
    missing = sorted(want - set(sd))
    if missing:
        raise UserError(f"{lm}: the checkpoint lacks {len(missing)} MPT weights, e.g. {missing[:3]}")
    sd = {k: v.to(dtype) for k, v in sd.items()}
    if config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    try:
        model.load_state_dict(sd, strict=False, assign=True)
    except RuntimeError as exc:
        raise UserError(f"{lm}: weights do not fit its config.json: {_first_line(exc)}") from None
    if config.tie_word_embeddings:
        model.lm_head.weight = model.transformer.wte.weight
    return model.eval()


def load_language_model(lm: str, dtype: torch.dtype = torch.float32):
    """The causal LM ``lm`` (hub id or local directory), never with remote code."""
    raw = read_config(lm)
    kind = raw.get("model_type")
    if kind in ("mosaic_gpt", "mpt"):  # (MptForCausalLM.from_pretrained would drop q_ln/k_ln)
        return load_mpt(lm, raw, dtype)
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(lm, trust_remote_code=False, dtype=dtype)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"cannot load the language model {lm!r} (model_type {kind}) with transformers "
                             f"and no remote code: {_first_line(exc)}") from None
    return model.eval()
