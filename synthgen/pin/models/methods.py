"""The methods ``train-pin --method`` trains instead of PIN (the paper's Table 1 rows), each a
small module that puts its trainable tensors into a frozen VLM through its adapter
(which families have each place: :data:`~synthgen.pin.models.registry.METHOD_FAMILIES`):

- ``coop``: ``tokens`` (16) vectors of the LLM's width at the start of its input embeddings;
- ``vpt-fusion``: ``tokens`` (100) vectors appended to the features the fusion network reads;
- ``vpt-vision``: ``tokens`` (100) vectors appended to the vision encoder's input tokens (after
  patch and position embedding), dropped at its output (VPT-shallow);
- ``lora-vision``: ``peft`` LoRA (r 16, alpha 16) on the vision encoder's attention projections;
- ``full``: every VLM weight (an upper bound for tiny models).

:meth:`Method.attach` puts a method in (hooks, or LoRA layers injected into the vision encoder),
:meth:`Method.detach` takes it out (the VLM exactly as it was); it is off while the adapter's PIN
switch is (``adapter.pin_disabled()``). ``state_dict()`` is its own trainable tensors (what a
run's ``pin.safetensors`` holds).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from synthgen.errors import UserError
from synthgen.pin.models.registry import METHOD_FAMILIES, method_options, method_refusal

# the VLM modules each place is in, per family (module paths in ``adapter.model``)
VISION = {"blip2": "vision_model", "openflamingo": "vision_encoder"}  # else the adapter's vision_module
VISION_INPUT = {  # the module (under the vision encoder) whose output is the token sequence entering its first block
    "blip2": "embeddings", "openflamingo": "ln_pre", "llava": "pre_layrnorm", "paligemma": "embeddings"}
assert set(VISION_INPUT) == set(METHOD_FAMILIES["vpt-vision"])
LORA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj", "qkv", "projection", "proj")


def _get(adapter, path: str) -> nn.Module:
    return adapter.model.get_submodule(path)


def vision_path(adapter) -> str:
    return VISION.get(adapter.name) or adapter.vision_module


def vision_input(adapter) -> nn.Module:
    """The module of ``adapter``'s vision encoder whose output enters its first block (the
    outermost one of that name)."""
    vision, last = _get(adapter, vision_path(adapter)), VISION_INPUT[adapter.name]
    names = [n for n, _ in vision.named_modules() if n == last or n.endswith("." + last)]
    if not names:
        raise UserError(f"--method vpt-vision: no {last} module in {adapter.name}'s vision encoder")
    return vision.get_submodule(min(names, key=len))


def lora_targets(vision: nn.Module) -> list[str]:
    """The attention projections of a vision encoder (names under it): the Linear layers named
    ``q_proj``/``k_proj``/``v_proj``/``out_proj`` (CLIP, SigLIP), ``qkv``/``projection`` (BLIP-2),
    ``qkv``/``proj`` (Qwen2.5-VL) inside an attention module, and open_clip's
    ``nn.MultiheadAttention`` blocks whole (OpenFlamingo; peft's LoRA on their in- and out-projection)."""
    out = []
    for name, module in vision.named_modules():
        parent, _, last = name.rpartition(".")
        if isinstance(module, nn.MultiheadAttention):
            out.append(name)
        elif (isinstance(module, nn.Linear) and last in LORA_PROJECTIONS and "attn" in parent.rpartition(".")[2]
              and not isinstance(vision.get_submodule(parent), nn.MultiheadAttention)):
            out.append(name)
    return out


class Method(nn.Module):
    """A trained method in a frozen VLM. ``state_dict()`` / ``load_state_dict()`` are its own
    trainable tensors; ``train()``/``eval()`` never touch the VLM (it stays in ``eval()``)."""

    name = ""

    def __init__(self, **options) -> None:
        super().__init__()
        self.options = dict(options)
        self.adapter = None
        self._handles: list = []
        object.__setattr__(self, "_fn", self)  # (plain attributes: never submodules)

    def build(self, adapter) -> None:
        """Create the trainable tensors for ``adapter``'s VLM (before :meth:`attach`)."""

    def attach(self, adapter, fn: Callable[[], torch.Tensor] | None = None) -> None:
        """Put the method into ``adapter``'s VLM; ``fn`` is what the hooks call for the method's
        tensors (itself, or its DDP wrapper)."""
        self.adapter = adapter
        object.__setattr__(self, "_fn", fn or self)
        adapter._method = self

    def use(self, fn: Callable[[], torch.Tensor]) -> None:
        object.__setattr__(self, "_fn", fn)

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        if self.adapter is not None:
            self.adapter._method = None
        self.adapter = None

    @property
    def active(self) -> bool:
        return self.adapter is not None and self.adapter._enabled

    def owned(self) -> list[nn.Parameter]:
        """The VLM parameters this method trains (LoRA's and full's live in the VLM)."""
        return []

    def trainable(self) -> dict[str, nn.Parameter]:
        return dict(self.named_parameters())

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.trainable().values())

    def state_dict(self, *args, **kwargs) -> dict:  # noqa: D102 - the trainable tensors only
        return {k: p.detach() for k, p in self.trainable().items()}

    def load_state_dict(self, weights: dict, strict: bool = True, assign: bool = False):  # noqa: D102
        mine = self.trainable()
        if set(weights) != set(mine):
            missing, extra = sorted(set(mine) - set(weights)), sorted(set(weights) - set(mine))
            raise UserError(f"the checkpoint's {self.name} tensors do not fit this VLM (missing {missing[:3]}, "
                            f"unexpected {extra[:3]})")
        with torch.no_grad():
            for k, p in mine.items():
                if p.shape != weights[k].shape:
                    raise UserError(f"{self.name} tensor {k} is {tuple(weights[k].shape)} in the checkpoint, "
                                    f"{tuple(p.shape)} in this VLM")
                p.copy_(weights[k])
        return None

    def train(self, mode: bool = True):
        self.training = mode
        return self

    def forward(self) -> torch.Tensor:
        return self.tokens


class Tokens(Method):
    """Learnable tokens ``[n, width]`` (CoOp, VPT)."""

    def _make(self, n: int, width: int, std: float | None = None, bound: float | None = None) -> None:
        t = torch.empty(n, width)
        nn.init.normal_(t, std=std) if std is not None else nn.init.uniform_(t, -bound, bound)
        self.tokens = nn.Parameter(t)


def _appended(tokens: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
    """``tokens`` ``[B, n, D]`` with ``extra`` ``[m, D]`` after them."""
    return torch.cat([tokens, extra.to(tokens.dtype).unsqueeze(0).expand(tokens.shape[0], -1, -1)], dim=1)


def _vpt_bound(adapter, width: int) -> float:
    """VPT's initialisation: uniform in ``±sqrt(6 / (3 patch^2 + width))`` (Xavier over the patch embedding)."""
    patch = adapter.input_size // max(adapter.patch_grid, 1)
    return (6.0 / (3 * patch * patch + width)) ** 0.5


def on_fusion_input(adapter, fn: Callable[[torch.Tensor], torch.Tensor]):
    """Apply ``fn`` to the vision features ``[B, tokens, width]`` the fusion network reads (the
    place PIN is added); the hook's handle."""
    name = adapter.name
    if name == "blip2":
        def hook(module, args, output):
            output.last_hidden_state = fn(output.last_hidden_state)
            return output
        return _get(adapter, "vision_model").register_forward_hook(hook)
    if name == "openflamingo":
        def pre(module, args):
            x = args[0]  # [b, t, v, D]
            y = fn(x.flatten(0, 1))
            return (y.reshape(*x.shape[:2], *y.shape[1:]), *args[1:])
        return _get(adapter, "perceiver").register_forward_pre_hook(pre)
    return _get(adapter, adapter.fusion_module).register_forward_pre_hook(lambda m, a: (fn(a[0]), *a[1:]))


class CoOp(Tokens):
    """``tokens`` vectors at the start of the LLM's input embeddings: the text gets ``tokens``
    placeholder ids first (an id past the vocabulary, mapped to 0 before the lookup), whose
    embeddings are replaced by the learned vectors (CoOp's initialisation, N(0, 0.02))."""

    name = "coop"

    def _embedding(self, adapter) -> nn.Embedding:
        return getattr(adapter.model, "lang_encoder", adapter.model).get_input_embeddings()

    def build(self, adapter) -> None:
        self._make(self.options["tokens"], self._embedding(adapter).embedding_dim, std=0.02)

    def attach(self, adapter, fn=None) -> None:
        super().attach(adapter, fn)
        emb = self._embedding(adapter)
        self.token_id = int(emb.num_embeddings)
        self._inner, self._mask = adapter.codec, None
        adapter.codec = PromptCodec(adapter.codec, self.options["tokens"], self.token_id, adapter)

        def pre(module, args):
            ids = args[0]
            self._mask = ids == self.token_id
            return (ids.masked_fill(self._mask, 0), *args[1:]) if bool(self._mask.any()) else None

        def post(module, args, out):
            mask, self._mask = self._mask, None
            if mask is None or not bool(mask.any()):
                return out
            if not self.active:
                raise RuntimeError("coop is switched off but the text holds its placeholder tokens")
            out = out.clone()
            out[mask] = self._fn().to(out.dtype).repeat(int(mask.sum()) // self.tokens.shape[0], 1)
            return out
        self._handles += [emb.register_forward_pre_hook(pre), emb.register_forward_hook(post)]

    def detach(self) -> None:
        if self.adapter is not None:
            self.adapter.codec = self._inner
        super().detach()


@dataclass
class PromptCodec:
    """A codec with ``n`` placeholder ids (``token_id``) before every text (CoOp's tokens), labels
    -100 on them, but while ``switch`` (the adapter) has PIN's switch off; everything else is the
    wrapped codec's. Picklable without the adapter (DataLoader workers: always on)."""

    inner: object
    n: int
    token_id: int
    switch: object = None

    def encode(self, *args, **kwargs) -> tuple[list[int], list[int]]:
        ids, labels = self.inner.encode(*args, **kwargs)
        if self.switch is not None and not self.switch._enabled:
            return ids, labels
        return [self.token_id] * self.n + ids, [-100] * self.n + labels

    def __getstate__(self) -> dict:
        return {"inner": self.inner, "n": self.n, "token_id": self.token_id, "switch": None}

    def __getattr__(self, name):
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


class VPTFusion(Tokens):
    """``tokens`` vectors appended to the vision features the fusion network reads."""

    name = "vpt-fusion"

    def build(self, adapter) -> None:
        self._make(self.options["tokens"], adapter.vision_width, bound=_vpt_bound(adapter, adapter.vision_width))

    def attach(self, adapter, fn=None) -> None:
        super().attach(adapter, fn)
        self._handles.append(on_fusion_input(adapter, lambda x: _appended(x, self._fn()) if self.active else x))


class VPTVision(Tokens):
    """``tokens`` vectors appended to the vision encoder's input tokens (VPT-shallow), removed at
    its output (the fusion network reads the patch tokens, which attended to them)."""

    name = "vpt-vision"

    def build(self, adapter) -> None:
        place = vision_input(adapter)
        width = int(getattr(place, "normalized_shape", [0])[0] or getattr(place, "embed_dim", 0)
                    or adapter.model.config.vision_config.hidden_size)
        self._make(self.options["tokens"], width, bound=_vpt_bound(adapter, width))

    def attach(self, adapter, fn=None) -> None:
        super().attach(adapter, fn)
        n = self.options["tokens"]
        self._on = False  # whether this forward appended (PIN switch read once per forward)

        def append(module, args, out):
            self._on = self.active
            return _appended(out, self._fn()) if self._on else out

        def drop(x):
            return x[:, : x.shape[1] - n] if self._on else x
        self._handles += [vision_input(adapter).register_forward_hook(append),
                          on_fusion_input(adapter, drop)]
        _vision_grad(adapter, True)

    def detach(self) -> None:
        if self.adapter is not None:
            _vision_grad(self.adapter, False)
        super().detach()


def _vision_grad(adapter, on: bool) -> None:
    """OpenFlamingo runs its vision encoder without gradients unless told (PIN is after it)."""
    if hasattr(adapter.model, "vision_grad"):
        adapter.model.vision_grad = on


class InVLM(Method):
    """A method whose trainable tensors are parameters of the VLM (``_params``, by their names
    in the VLM), set when attached."""

    _params: dict[str, nn.Parameter] = {}

    def owned(self) -> list[nn.Parameter]:
        return list(self._params.values())

    def trainable(self) -> dict[str, nn.Parameter]:
        return dict(self._params)


class LoRAVision(InVLM):
    """LoRA on the vision encoder's attention projections through ``peft`` (injected in place:
    no wrapper model; the VLM's keys gain ``lora_A``/``lora_B``)."""

    name = "lora-vision"

    def attach(self, adapter, fn=None) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        super().attach(adapter, fn)
        vision = _get(adapter, vision_path(adapter))
        self.targets = lora_targets(vision)
        if not self.targets:
            raise UserError(f"--method lora-vision: no attention projections found in {adapter.name}'s vision encoder")
        cfg = LoraConfig(r=self.options["r"], lora_alpha=self.options["alpha"], lora_dropout=0.0,
                         target_modules=self.targets, bias="none")
        inject_adapter_in_model(cfg, vision, adapter_name="default")
        object.__setattr__(self, "_vision", vision)
        dev = adapter.device
        self._params = {f"{vision_path(adapter)}.{k}": p for k, p in vision.named_parameters() if "lora_" in k}
        for p in self._params.values():
            p.data = p.data.float().to(dev)  # (fp32 like PIN, under autocast)
            p.requires_grad_(True)
        self._handles += _switch_hooks(self)
        self._handles += _keep_mha_weights(vision)
        _vision_grad(adapter, True)

    def detach(self) -> None:
        if self.adapter is not None:
            for name, module in list(self._vision.named_modules()):
                if hasattr(module, "get_base_layer") and name in self.targets:
                    parent, _, last = name.rpartition(".")
                    base = module.get_base_layer()
                    if isinstance(base, nn.MultiheadAttention) and hasattr(base.out_proj, "get_base_layer"):
                        base.out_proj = base.out_proj.get_base_layer()
                    setattr(self._vision.get_submodule(parent) if parent else self._vision, last, base)
            _vision_grad(self.adapter, False)
        super().detach()


def _keep_mha_weights(vision: nn.Module) -> list:
    """peft's LoRA on an ``nn.MultiheadAttention`` adds its update into the frozen projection
    weights for each forward and subtracts it after, which leaves them off by rounding: these
    hooks put the original weight tensors back after every forward (bit-identical)."""
    from peft.tuners.lora.layer import MultiheadAttention as LoraMHA

    handles = []
    for module in vision.modules():
        if not isinstance(module, LoraMHA):
            continue
        base = module.get_base_layer()
        kept = {}

        def save(mod, args, base=base, kept=kept):
            kept["in"], kept["out"] = base.in_proj_weight, base.out_proj.base_layer.weight

        def restore(mod, args, out, base=base, kept=kept):
            del base.in_proj_weight
            base.register_parameter("in_proj_weight", kept["in"])
            del base.out_proj.base_layer.weight
            base.out_proj.base_layer.register_parameter("weight", kept["out"])
            return out
        handles += [module.register_forward_pre_hook(save), module.register_forward_hook(restore)]
    return handles


def _switch_hooks(method: LoRAVision) -> list:
    """Each LoRA layer on while the adapter's PIN switch is on (a pre-hook on every layer: the
    encoder's own ``forward`` may not run, open_clip's ``forward_intermediates`` does not); the
    trainable flags of the LoRA weights kept as they were (peft's switch sets them)."""
    from peft.tuners.lora import LoraLayer

    def pre(layer, args):
        on = method.active
        if layer.disable_adapters == on:
            flags = [(p, p.requires_grad) for p in method._params.values()]
            layer.enable_adapters(on)
            for p, flag in flags:
                p.requires_grad_(flag)
    return [m.register_forward_pre_hook(pre) for m in method._vision.modules() if isinstance(m, LoraLayer)]


class Full(InVLM):
    """Every VLM weight trainable (fp32). Detaching restores the weights the VLM had (kept on
    the CPU when attached): meant for tiny models. PIN's switch does not turn it off."""

    name = "full"

    def attach(self, adapter, fn=None) -> None:
        super().attach(adapter, fn)
        self._params = dict(adapter.model.named_parameters())  # (tied weights once)
        self._before = {k: p.detach().to("cpu", copy=True) for k, p in self._params.items()}
        for p in self._params.values():
            p.data = p.data.float()
            p.requires_grad_(True)
        _vision_grad(adapter, True)

    def detach(self) -> None:
        if self.adapter is not None:
            with torch.no_grad():
                for k, p in self._params.items():
                    p.requires_grad_(False)
                    p.data = self._before[k].to(p.device)
            _vision_grad(self.adapter, False)
        super().detach()


CLASSES = {c.name: c for c in (CoOp, VPTFusion, VPTVision, LoRAVision, Full)}


def make_method(method: str, adapter, options: dict | None = None) -> Method:
    """The ``method`` (not ``pin``) for ``adapter``'s VLM, with its trainable tensors made (seed
    them before) but not attached; a family without its place is refused in one line."""
    why = method_refusal(method, adapter.name)
    if why:
        raise UserError(why)
    m = CLASSES[method](**method_options(method, options))
    m.build(adapter)
    return m.to(adapter.device)


def describe(method: Method) -> str:
    n = method.num_parameters()
    opts = ", ".join(f"{k}={v}" for k, v in method.options.items())
    return f"{method.name}: {n:,} trainable parameters ({n / 1e6:.2f}M){', ' + opts if opts else ''}"
