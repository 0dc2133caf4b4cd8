"""The CLIP scorer is built with the activation its weights were trained with
(:mod:`synthgen.clip_models`): QuickGELU for the ``openai`` tag, as X-Paste's open_clip 2.x built
it, where open_clip 3.x builds GELU and only warns.

No network here: the ``openai`` tag's download is answered with a local checkpoint file saved from
a randomly initialised ViT-B-32 (the real pretrained registry entry, the real
``create_model_and_transforms`` and the real checkpoint loading run)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from synthgen.clip_models import quick_gelu_kwargs
from synthgen.errors import ModelLoadError, UserError

pytestmark = pytest.mark.slow


def _activations(module) -> set[str]:
    import torch
    from open_clip.transformer import QuickGELU

    return {type(m).__name__ for m in module.modules() if isinstance(m, (QuickGELU, torch.nn.GELU))}


def test_the_rule_reads_open_clips_pretrained_registry(tmp_path):
    import open_clip

    assert open_clip.get_pretrained_cfg("ViT-L-14", "openai")["quick_gelu"] is True  # (the premise)
    assert quick_gelu_kwargs("ViT-L-14", "openai") == {"force_quick_gelu": True}  # X-Paste's CLIP
    assert quick_gelu_kwargs("ViT-L/14", "openai") == {"force_quick_gelu": True}  # (open_clip's spelling too)
    assert quick_gelu_kwargs("ViT-B-32", "laion400m_e32") == {"force_quick_gelu": True}  # not only openai
    assert quick_gelu_kwargs("ViT-L-14", "laion2b_s32b_b82k") == {"force_quick_gelu": False}
    assert quick_gelu_kwargs("ViT-L-14-quickgelu", "openai") == {"force_quick_gelu": True}
    # a file or no weights: the name decides; hf-hub:/local-dir:: their open_clip_config.json decides
    ckpt = tmp_path / "weights.bin"
    ckpt.write_bytes(b"")
    assert quick_gelu_kwargs("ViT-L-14", str(ckpt)) == {}
    assert quick_gelu_kwargs("ViT-L-14", None) == quick_gelu_kwargs("ViT-L-14", "") == {}
    assert quick_gelu_kwargs("hf-hub:timm/vit_large_patch14_clip_224.openai", "openai") == {}
    assert quick_gelu_kwargs(f"local-dir:{tmp_path}", None) == {}
    with pytest.raises(UserError, match="unknown open_clip weights 'nope' for ViT-B-32; known: openai, "):
        quick_gelu_kwargs("ViT-B-32", "nope")
    with pytest.raises(UserError, match="or a file path"):
        quick_gelu_kwargs("ViT-B-32", str(tmp_path / "missing.bin"))


@pytest.fixture(scope="module")
def vit_b32_file(tmp_path_factory):
    """A ViT-B-32 checkpoint file (random weights, fp16 to halve the file; activations have no
    weights, so it fits the GELU and the QuickGELU model alike)."""
    import open_clip
    import torch

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32")
    path = tmp_path_factory.mktemp("clip") / "vit_b32.pt"
    torch.save({k: v.half() for k, v in model.state_dict().items()}, path)
    return str(path)


def _image() -> np.ndarray:
    rgba = np.zeros((64, 48, 4), np.uint8)
    rgba[..., 0] = np.linspace(0, 255, 48, dtype=np.uint8)
    rgba[8:56, 8:40, 1] = 200
    rgba[8:56, 8:40, 3] = 255
    return rgba


def test_the_openai_tag_builds_the_scorer_with_quick_gelu(vit_b32_file, monkeypatch):
    import open_clip.factory
    import torch

    from synthgen.render.score import Scorer

    asked = []

    def download_pretrained(cfg, cache_dir=None, **kw):  # no hub here: the tag's weights from a file
        asked.append(cfg)
        return vit_b32_file

    monkeypatch.setattr(open_clip.factory, "download_pretrained", download_pretrained)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tagged = Scorer("ViT-B-32", "openai", device="cpu")
    assert [c["url"].rsplit("/", 1)[-1] for c in asked] == ["ViT-B-32.pt"]  # the real openai entry
    assert _activations(tagged.model) == {"QuickGELU"}  # open_clip 3.x alone: {"GELU"}
    assert not [w for w in caught if "QuickGELU mismatch" in str(w.message)]
    saved = torch.load(vit_b32_file, weights_only=True)["visual.conv1.weight"]
    assert torch.equal(tagged.model.visual.conv1.weight, saved.float())  # the file's weights loaded

    # A checkpoint file takes the name's activation: the -quickgelu name scores as the tag does,
    # the plain name (GELU) scores differently from the same weights.
    quick = Scorer("ViT-B-32-quickgelu", vit_b32_file, device="cpu")
    plain = Scorer("ViT-B-32", vit_b32_file, device="cpu")
    assert _activations(quick.model) == {"QuickGELU"} and _activations(plain.model) == {"GELU"}
    images, names = [_image(), _image()[::-1].copy()], ["cat", "a red bicycle"]
    s_tag, s_quick, s_plain = tagged(images, names), quick(images, names), plain(images, names)
    np.testing.assert_allclose(s_tag, s_quick, atol=1e-4)
    assert np.abs(s_tag - s_plain).max() > 1e-3


def test_an_unknown_tag_is_a_model_load_error_naming_the_model():
    from synthgen.render.score import Scorer

    with pytest.raises(ModelLoadError, match=r"ViT-B-32 \(pretrained 'nope'\).*unknown open_clip weights"):
        Scorer("ViT-B-32", "nope", device="cpu")
