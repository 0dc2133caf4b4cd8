"""The real models of the VLM families synthgen supports, as their hub ``config.json`` say (the values
that decide activation and weight sizes: widths, heads, key/value heads, head_dim, MLP sizes,
vocabularies, depths, image geometry, softcapping, rope), for ``benchmarks/real_size.py``.

Each entry has

- ``model``: the hub id the values come from (synthgen's default for the family);
- ``geometry``: the arguments of synthgen's tiny builder (:mod:`synthgen.demo`) that give its
  processor the real image geometry, so prompts carry the real number of image tokens;
- ``config``: transformers config values that replace the tiny model's (special-token ids stay the
  tiny tokenizer's, which are below every real vocabulary size);
- ``text_layers`` / ``vision_layers``: where the depths sit (dotted paths in ``config``), reduced
  by the benchmark.

OpenFlamingo is no transformers model: its ``config`` holds the open_clip ``vision_cfg``, MosaicML's
``mosaic_gpt`` config of the language model, the tokenizer length and the Flamingo sizes.
"""

from __future__ import annotations

REAL: dict[str, dict] = {
    # llava-hf/llava-1.5-7b-hf: CLIP ViT-L/14 at 336 px (24 x 1024) + 2-layer GELU projector + Vicuna-7B (Llama)
    "llava": {
        "model": "llava-hf/llava-1.5-7b-hf",
        "geometry": {"image_size": 336, "patch_size": 14},
        "config": {
            "model_type": "llava",
            "projector_hidden_act": "gelu",
            "vision_feature_layer": -2,
            "vision_feature_select_strategy": "default",
            "multimodal_projector_bias": True,
            "tie_word_embeddings": False,
            "vision_config": {
                "model_type": "clip_vision_model", "hidden_size": 1024, "intermediate_size": 4096,
                "num_hidden_layers": 24, "num_attention_heads": 16, "image_size": 336, "patch_size": 14,
                "projection_dim": 768, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
            },
            "text_config": {
                "model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                "num_attention_heads": 32, "num_key_value_heads": 32, "head_dim": 128, "vocab_size": 32064,
                "rms_norm_eps": 1e-5, "max_position_embeddings": 4096, "hidden_act": "silu",
                "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}, "tie_word_embeddings": False,
            },
        },
        "text_layers": "text_config.num_hidden_layers",
        "vision_layers": "vision_config.num_hidden_layers",
    },
    # google/paligemma2-3b-pt-224: SigLIP so400m/14 at 224 px (27 x 1152) + linear projector + Gemma 2 2B
    "paligemma": {
        "model": "google/paligemma2-3b-pt-224",
        "geometry": {"image_size": 224, "patch_size": 14},
        "config": {
            "model_type": "paligemma",
            "projection_dim": 2304,
            "hidden_size": 2048,
            "vocab_size": 257152,
            "tie_word_embeddings": True,
            "vision_config": {
                "model_type": "siglip_vision_model", "hidden_size": 1152, "intermediate_size": 4304,
                "num_hidden_layers": 27, "num_attention_heads": 16, "image_size": 224, "patch_size": 14,
                "num_image_tokens": 256, "projection_dim": 2304, "hidden_act": "gelu_pytorch_tanh",
                "layer_norm_eps": 1e-6, "vision_use_head": False,
            },
            "text_config": {
                "model_type": "gemma2", "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
                "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "vocab_size": 257216,
                "query_pre_attn_scalar": 256, "sliding_window": 4096, "final_logit_softcapping": 30.0,
                "attn_logit_softcapping": 50.0, "hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6,
                "max_position_embeddings": 8192, "num_image_tokens": 256, "tie_word_embeddings": True,
                "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
            },
        },
        "text_layers": "text_config.num_hidden_layers",
        "vision_layers": "vision_config.num_hidden_layers",
    },
    # Qwen/Qwen2.5-VL-3B-Instruct: 32-block window-attention ViT (1280 wide) + 2x2 merger + Qwen2.5-3B;
    # at synthgen's default canvas of 224 px (the adapter's canvas option)
    "qwen2_5_vl": {
        "model": "Qwen/Qwen2.5-VL-3B-Instruct",
        "geometry": {"window_size": 112},
        "options": {"canvas": 224},
        "config": {
            "model_type": "qwen2_5_vl",
            "tie_word_embeddings": True,
            "vision_config": {
                "depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                "out_hidden_size": 2048, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
                "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31], "hidden_act": "silu",
                "in_channels": 3, "tokens_per_second": 2,
            },
            "text_config": {
                "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36, "num_attention_heads": 16,
                "num_key_value_heads": 2, "vocab_size": 151936, "rms_norm_eps": 1e-6, "hidden_act": "silu",
                "max_position_embeddings": 128000, "max_window_layers": 70, "use_sliding_window": False,
                "sliding_window": None, "tie_word_embeddings": True,
                "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
            },
        },
        "text_layers": "text_config.num_hidden_layers",
        "vision_layers": "vision_config.depth",
    },
    # HuggingFaceTB/SmolVLM2-2.2B-Instruct: SigLIP so400m/14 at 384 px (27 x 1152) + pixel shuffle 3 (729 -> 81
    # tokens) + SmolLM2-1.7B (Llama)
    "smolvlm": {
        "model": "HuggingFaceTB/SmolVLM2-2.2B-Instruct",
        "geometry": {"image_size": 384, "patch_size": 14, "scale_factor": 3},
        "config": {
            "model_type": "smolvlm",
            "scale_factor": 3,
            "tie_word_embeddings": False,
            "vision_config": {
                "model_type": "smolvlm_vision", "hidden_size": 1152, "intermediate_size": 4304,
                "num_hidden_layers": 27, "num_attention_heads": 16, "image_size": 384, "patch_size": 14,
                "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6,
            },
            "text_config": {
                "model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24,
                "num_attention_heads": 32, "num_key_value_heads": 32, "head_dim": 64, "vocab_size": 49280,
                "rms_norm_eps": 1e-5, "hidden_act": "silu", "max_position_embeddings": 8192,
                "tie_word_embeddings": False,
            },
        },
        "text_layers": "text_config.num_hidden_layers",
        "vision_layers": "vision_config.num_hidden_layers",
    },
    # Salesforce/blip2-opt-2.7b: EVA ViT-g/14 at 224 px (39 x 1408) + Q-Former (12 x 768, 32 queries) + OPT-2.7B
    "blip2": {
        "model": "Salesforce/blip2-opt-2.7b",
        "geometry": {"image_size": 224, "patch_size": 14, "num_query_tokens": 32},
        "config": {
            "model_type": "blip-2",
            "num_query_tokens": 32,
            "vision_config": {
                "hidden_size": 1408, "intermediate_size": 6144, "num_hidden_layers": 39, "num_attention_heads": 16,
                "image_size": 224, "patch_size": 14, "hidden_act": "gelu", "layer_norm_eps": 1e-6, "qkv_bias": True,
            },
            "qformer_config": {
                "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
                "cross_attention_frequency": 2, "encoder_hidden_size": 1408, "vocab_size": 30522,
                "max_position_embeddings": 512, "layer_norm_eps": 1e-12,
            },
            "text_config": {
                "model_type": "opt", "hidden_size": 2560, "ffn_dim": 10240, "num_hidden_layers": 32,
                "num_attention_heads": 32, "vocab_size": 50272, "word_embed_proj_dim": 2560,
                "max_position_embeddings": 2048, "do_layer_norm_before": True, "activation_function": "relu",
                "tie_word_embeddings": True,
            },
        },
        "text_layers": "text_config.num_hidden_layers",
        "vision_layers": "vision_config.num_hidden_layers",
    },
    # openflamingo/OpenFlamingo-3B-vitl-mpt1b: CLIP ViT-L/14 at 224 px (open_clip ViT-L-14, 24 x 1024, heads of
    # 64) + perceiver (6 deep, 8 heads of 64, 64 latents) + gated cross-attention before every layer of
    # MPT-1B (anas-awadalla/mpt-1b-redpajama-200b, mosaic_gpt: 24 x 2048, 16 heads, QK-LayerNorm, ALiBi,
    # vocabulary 50432, resized to the GPT-NeoX tokenizer's 50277 + OpenFlamingo's 3 tokens = 50280)
    "openflamingo": {
        "model": "openflamingo/OpenFlamingo-3B-vitl-mpt1b",
        "config": {
            "vision_cfg": {"image_size": 224, "layers": 24, "width": 1024, "head_width": 64, "mlp_ratio": 4.0,
                           "patch_size": 14},
            "embed_dim": 768,
            "lm": {"model_type": "mosaic_gpt", "architectures": ["MosaicGPT"], "d_model": 2048, "n_heads": 16,
                   "n_layers": 24, "mlp_ratio": 4, "max_seq_len": 2048, "vocab_size": 50432, "attn_impl": "torch",
                   "attn_qk_ln": True, "attn_clip_qkv": None, "softmax_scale": None, "alibi": True,
                   "alibi_bias_max": 8, "no_bias": True, "logit_scale": None, "low_precision_layernorm": True,
                   "emb_pdrop": 0.0, "resid_pdrop": 0.0, "attn_pdrop": 0.0, "embedding_fraction": 1.0},
            "tokenizer_length": 50277,
            "cross_attn_every": 1,
            "perceiver_depth": 6, "heads": 8, "num_latents": 64,
        },
        "text_layers": "lm.n_layers",
        "vision_layers": "vision_cfg.layers",
    },
}

FAMILIES = ("blip2", "openflamingo", "llava", "smolvlm", "qwen2_5_vl", "paligemma")


def get(cfg: dict, path: str):
    for part in path.split("."):
        cfg = cfg[part]
    return cfg


def put(cfg: dict, path: str, value) -> None:
    *head, last = path.split(".")
    for part in head:
        cfg = cfg.setdefault(part, {})
    cfg[last] = value
