"""Tiny random-weight models for tests and the offline demo.

They are built from configs, saved to disk in the same layouts as real checkpoints, and loaded by
the product code through exactly the same paths (``DiffusionPipeline.from_pretrained(dir)``,
open_clip ``local-dir:``, rembg ``u2net_custom`` with an ONNX file). Nothing here is imported by
the render pipeline itself.

    paths = build_tiny_models("tiny-models")
    render(..., RenderConfig(sd_model=paths.sd_model, clip_model=paths.clip_model,
                             clip_pretrained=None, cutout=paths.cutout, size=paths.size, ...))
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path

TINY_SIZE = 64  # image side the tiny SD pipeline renders at


@dataclass(frozen=True)
class TinyModels:
    sd_model: str       # --sd-model: a diffusers pipeline directory
    clip_model: str     # --clip-model: an open_clip "local-dir:" directory
    cutout: str         # --cutout: "u2net_custom:<onnx path under REMBG_HOME>"
    size: int = TINY_SIZE
    steps: int = 4

    def as_cli_args(self) -> list[str]:
        return ["--sd-model", self.sd_model, "--clip-model", self.clip_model,
                "--clip-pretrained", "", "--cutout", self.cutout,
                "--size", str(self.size), "--steps", str(self.steps)]


def rembg_home() -> Path:
    """rembg's model root, resolved as rembg does (U2NET_HOME, REMBG_HOME, XDG_DATA_HOME, ~)."""
    if os.environ.get("U2NET_HOME"):
        return Path(os.environ["U2NET_HOME"]).expanduser()
    if os.environ.get("REMBG_HOME"):
        return Path(os.environ["REMBG_HOME"]).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    return Path(xdg).expanduser() / "rembg" if xdg else Path.home() / ".rembg"


def clip_tokenizer_files(out_dir: str | Path) -> Path:
    """Write ``vocab.json``/``merges.txt`` of the OpenAI CLIP BPE (49408 tokens) from open_clip's
    bundled ``bpe_simple_vocab_16e6.txt.gz``, the vocabulary SD v1's tokenizer uses."""
    import open_clip.tokenizer as oct

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with gzip.open(oct.default_bpe(), "rt", encoding="utf-8") as f:
        merges = f.read().split("\n")[1:49152 - 256 - 2 + 1]
    pairs = [tuple(m.split()) for m in merges]
    vocab = list(oct.bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(p) for p in pairs]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(p) for p in pairs) + "\n",
                                    encoding="utf-8")
    return out


def build_tiny_sd(out_dir: str | Path, seed: int = 0) -> Path:
    """A real ``StableDiffusionPipeline`` with tiny random UNet/VAE/text encoder, saved with
    ``save_pretrained`` (no safety checker)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    out = Path(out_dir)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=TINY_SIZE // 2, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=8,
        sample_size=TINY_SIZE)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, bos_token_id=49406,
        eos_token_id=49407, pad_token_id=49407, projection_dim=32))
    tok_dir = clip_tokenizer_files(out / "_tokenizer_src")
    tokenizer = CLIPTokenizer(vocab_file=str(tok_dir / "vocab.json"),
                              merges_file=str(tok_dir / "merges.txt"), model_max_length=77)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   unet=unet, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(out)
    for f in tok_dir.iterdir():
        f.unlink()
    tok_dir.rmdir()
    return out


def add_tiny_safety_checker(sd_dir: str | Path, out_dir: str | Path, flag_all: bool = True) -> Path:
    """A copy of the tiny pipeline in ``sd_dir`` with a tiny SD-v1-style NSFW safety checker and
    feature extractor, laid out like the real SD v1.5 checkpoint. With ``flag_all`` the checker
    flags (and blacks out) every image."""
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    cfg = CLIPConfig(
        text_config={"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 37,
                     "num_hidden_layers": 1, "num_attention_heads": 4},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1,
                       "num_attention_heads": 4, "image_size": 32, "patch_size": 8},
        projection_dim=32)
    checker = StableDiffusionSafetyChecker(cfg).eval()
    if flag_all:  # score = cosine - weight > 0 for any image
        with torch.no_grad():
            checker.concept_embeds_weights.fill_(-2.0)
    extractor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    pipe = StableDiffusionPipeline.from_pretrained(str(sd_dir), safety_checker=checker,
                                                   feature_extractor=extractor,
                                                   requires_safety_checker=True)
    out = Path(out_dir)
    pipe.save_pretrained(out)
    return out


TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def build_tiny_clip(out_dir: str | Path, seed: int = 0, model_cfg: dict | None = None) -> Path:
    """An open_clip model directory (``open_clip_config.json`` + ``open_clip_model.safetensors``)
    loadable as ``local-dir:<dir>``, the layout of open_clip checkpoints on the HF hub."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model_cfg = model_cfg or TINY_CLIP_CFG
    model = open_clip.CLIP(**model_cfg)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "open_clip_model.safetensors"))
    cfg = {"model_cfg": model_cfg,
           "preprocess_cfg": {"mean": list(open_clip.OPENAI_DATASET_MEAN),
                              "std": list(open_clip.OPENAI_DATASET_STD)}}
    (out / "open_clip_config.json").write_text(json.dumps(cfg, indent=1), encoding="utf-8")
    return out


def build_tiny_u2net(path: str | Path | None = None, seed: int = 0) -> Path:
    """A tiny u2net-like ONNX saliency net: input ``[1,3,320,320]`` float32, output
    ``[1,1,320,320]``. Random 5x5 conv features, a wide blur and a centre prior give blob-shaped,
    image-dependent (never constant) masks. Saved under rembg's model root unless ``path`` is given
    (rembg only loads custom models from there)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    p = Path(path) if path is not None else rembg_home() / "models" / "u2net_custom" / "tiny_u2net.onnx"
    p.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.3, size=(4, 3, 5, 5)).astype(np.float32)
    b1 = rng.normal(0, 0.1, size=(4,)).astype(np.float32)
    k = 31
    g = np.exp(-0.5 * ((np.arange(k) - k // 2) / 6.0) ** 2)
    blur = np.outer(g, g)
    blur = blur / blur.sum()
    w2 = np.stack([blur * s for s in rng.normal(0, 1.0, size=4)])[None].astype(np.float32)
    yy, xx = np.mgrid[0:320, 0:320]
    prior = 3.0 * np.exp(-(((yy - 160) / 90.0) ** 2 + ((xx - 160) / 90.0) ** 2)) - 1.5
    prior = prior[None, None].astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[2, 2, 2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[k // 2] * 4),
        helper.make_node("Add", ["c2", "prior"], ["a2"]),
        helper.make_node("Sigmoid", ["a2"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_u2net",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 320, 320])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, 320, 320])],
        initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"),
                     numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(prior, "prior")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    tmp = p.with_suffix(".onnx.tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, p)
    return p


def build_tiny_models(out_dir: str | Path, seed: int = 0) -> TinyModels:
    """Build all three tiny models under ``out_dir`` (the ONNX net under rembg's model root)."""
    out = Path(out_dir)
    sd = build_tiny_sd(out / "tiny-sd", seed=seed)
    clip = build_tiny_clip(out / "tiny-clip", seed=seed)
    onnx_path = build_tiny_u2net(seed=seed)
    return TinyModels(sd_model=str(sd), clip_model=f"local-dir:{clip}",
                      cutout=f"u2net_custom:{onnx_path}")
