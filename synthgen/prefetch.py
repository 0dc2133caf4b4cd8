"""``synthgen prefetch``: download the models a stage will load, once, into the caches the
stages read (the Hugging Face hub cache, open_clip's, rembg's model root) — for a Docker image
(``docker build --build-arg PREFETCH="render openflamingo"``) or a cluster node before a run.

Only files are fetched, nothing is built or loaded (a 7B VLM would not fit a build machine's
memory). What is fetched is read from the stages' own defaults (:mod:`synthgen.render.config`,
:data:`synthgen.pin.models.registry.DEFAULT_MODELS`, the OpenFlamingo variants), so it cannot drift from
what ``render`` and ``train-pin`` load.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from typing import Callable, Sequence

from synthgen.errors import ModelLoadError, UserError

# the files of a diffusers Stable Diffusion repository that render loads (no safety checker,
# the fp32 safetensors only: not the .ckpt, .bin, fp16 or flax copies)
SD_FILES = ("model_index.json", "scheduler/*", "tokenizer/*", "feature_extractor/*", "text_encoder/config.json",
            "text_encoder/model.safetensors", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
            "vae/config.json", "vae/diffusion_pytorch_model.safetensors")
# a transformers repository: configs, tokenizer/processor files, safetensors weights
HF_FILES = ("*.json", "*.txt", "*.model", "*.jinja", "*.safetensors", "*.tiktoken")
# an older language model repository may hold only PyTorch .bin weights
LM_FILES = (*HF_FILES, "*.bin")


@dataclass(frozen=True)
class Fetch:
    kind: str                      # hub | hub-file | open_clip | rembg
    name: str                      # repo id, open_clip model, rembg session
    detail: tuple[str, ...] = ()   # hub: allow patterns; hub-file: the file; open_clip: the tag
    why: str = ""

    def describe(self) -> str:
        what = {"hub": "hub repository", "hub-file": "hub file", "open_clip": "open_clip weights",
                "rembg": "rembg model"}[self.kind]
        extra = f" {self.detail[0]}" if self.kind in ("hub-file", "open_clip") else ""
        return f"{what} {self.name}{extra} ({self.why})"


def plan(render: bool = False, vlms: Sequence[str] = (), models: dict[str, str] | None = None) -> list[Fetch]:
    """What to download for ``render`` (its default models) and each VLM family of ``vlms``
    (its default checkpoint, or ``models[family]``). Light: imports no model library."""
    from synthgen.pin.models.registry import DEFAULT_MODELS
    from synthgen.render.config import RenderConfig

    models = dict(models or {})
    unknown = [v for v in vlms if v not in DEFAULT_MODELS]
    if unknown:
        raise UserError(f"unknown VLM {unknown[0]!r} (known: {', '.join(DEFAULT_MODELS)})")
    out: list[Fetch] = []
    if render:
        cfg = RenderConfig(out="prefetch")
        out.append(Fetch("hub", cfg.sd_model, SD_FILES, "render: Stable Diffusion"))
        if cfg.clip_pretrained:
            out.append(Fetch("open_clip", cfg.clip_model, (cfg.clip_pretrained,), "render: CLIP filter"))
        out += [Fetch("rembg", name, (), "render: cut-out") for name in cfg.cutout]
    for vlm in vlms:
        model = models.get(vlm, DEFAULT_MODELS[vlm])
        if vlm == "openflamingo":
            from synthgen.pin.models.flamingo.variants import resolve_parts

            parts = resolve_parts(model)
            out.append(Fetch("hub-file", parts.checkpoint, ("checkpoint.pt",), "OpenFlamingo: its weights"))
            out.append(Fetch("hub", parts.lm, LM_FILES, "OpenFlamingo: its language model"))
            if parts.tokenizer != parts.lm:
                out.append(Fetch("hub", parts.tokenizer, HF_FILES, "OpenFlamingo: its tokenizer"))
            if parts.vision_pretrained:
                out.append(Fetch("open_clip", parts.vision, (parts.vision_pretrained,), "OpenFlamingo: vision encoder"))
        else:
            out.append(Fetch("hub", model, HF_FILES, f"train-pin --vlm {vlm}"))
    seen: set[tuple] = set()  # e.g. CLIP ViT-L/14 for render and for OpenFlamingo: once
    return [f for f in out if not ((f.kind, f.name, f.detail) in seen or seen.add((f.kind, f.name, f.detail)))]


def _short(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def fetch(item: Fetch) -> str:
    """Download ``item`` into its cache; the local path. A :class:`ModelLoadError` when it
    cannot be fetched (offline, a gated repository without a token, a typo)."""
    try:
        if item.kind == "hub":
            from huggingface_hub import snapshot_download

            return snapshot_download(item.name, allow_patterns=list(item.detail))
        if item.kind == "hub-file":
            from huggingface_hub import hf_hub_download

            return hf_hub_download(item.name, item.detail[0])
        if item.kind == "open_clip":
            from open_clip.pretrained import download_pretrained, get_pretrained_cfg

            cfg = get_pretrained_cfg(item.name, item.detail[0])
            if not cfg:
                raise ValueError(f"open_clip has no pretrained tag {item.detail[0]!r} for {item.name}")
            return str(download_pretrained(cfg))
        if item.kind == "rembg":
            from synthgen.render.cutout import fetch_cutout, parse_cutout

            spec = parse_cutout([item.name])[0]
            fetch_cutout(spec)
            return spec.label
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - hub, network and library errors, each one line
        hint = (" (the hub is unreachable or HF_HUB_OFFLINE is set)" if "offline" in str(exc).lower()
                or "connect" in str(exc).lower() else "")
        raise ModelLoadError(f"cannot fetch the {item.describe()}: {_short(exc)}{hint}") from None
    raise ValueError(f"unknown fetch kind {item.kind!r}")


def prefetch(items: Sequence[Fetch], say: Callable[[str], None] = print) -> list[str]:
    """Fetch every item in order (stops at the first that fails); the local paths."""
    paths = []
    for i, item in enumerate(items, 1):
        say(f"[{i}/{len(items)}] {item.describe()}")
        paths.append(fetch(item))
    return paths


def run(what: Sequence[str], models: dict[str, str] | None = None, dry_run: bool = False,
        say: Callable[[str], None] = print) -> list[str]:
    """``synthgen prefetch WHAT``: ``render`` and/or VLM families, ``models`` their checkpoints
    (default: each family's); lists the items with ``dry_run``. The local paths (none on a dry run)."""
    models = dict(models or {})
    vlms = [w for w in what if w != "render"]
    if set(models) - set(vlms):
        raise UserError(f"--model {sorted(set(models) - set(vlms))[0]}=...: that VLM is not among WHAT")
    items = plan(render="render" in what, vlms=vlms, models=models)
    if dry_run:
        for item in items:
            say(item.describe())
        return []
    paths = prefetch(items, say=say)
    say(f"fetched {len(paths)} item(s)")
    return paths


# --- a model id that cannot be loaded here: one line at once --------------------------------

@functools.lru_cache(maxsize=None)
def _reachable(host: str, port: int, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` (the name lookup
    included: a thread, so that a lookup without a network cannot hang); once per process."""
    import socket
    import threading

    ok: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=connect, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return bool(ok)


def _hub_address() -> tuple[str, int]:
    """``host, port`` the hub is reached through: ``HF_ENDPOINT`` (default huggingface.co:443),
    or the HTTPS proxy that the environment sets for it."""
    from urllib.parse import urlsplit
    from urllib.request import getproxies, proxy_bypass

    from huggingface_hub import constants

    url = urlsplit(os.environ.get("HF_ENDPOINT") or constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    proxy = getproxies().get(url.scheme or "https")
    if proxy and not proxy_bypass(host):
        p = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = p.hostname or host, p.port or (443 if p.scheme == "https" else 80)
    return host, port


def _cached(repo_id: str) -> bool:
    from huggingface_hub import constants

    snapshots = os.path.join(constants.HF_HUB_CACHE, "models--" + repo_id.replace("/", "--"), "snapshots")
    return os.path.isdir(snapshots) and any(os.scandir(snapshots))


def hub_problem(model: str) -> str | None:
    """Why ``model`` cannot be loaded here, at once (no half minute of the hub client's retries):
    a Hugging Face hub id that is not in the local hub cache and cannot be fetched
    (``HF_HUB_OFFLINE`` set, or the hub unreachable: one TCP connection of at most ~3 s, once per
    process). None for a local path, a cached id, a reachable hub."""
    model = str(model)
    if os.path.exists(os.path.expanduser(model)) or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", model):
        return None  # a path (or no hub id): the loader's own message
    from huggingface_hub import constants

    if _cached(model):
        return None
    where = constants.HF_HUB_CACHE.replace(os.path.expanduser("~"), "~", 1)
    if constants.HF_HUB_OFFLINE:
        why = "HF_HUB_OFFLINE is set"
    elif not _reachable(*_hub_address()):
        why = f"the hub is unreachable ({':'.join(map(str, _hub_address()))})"
    else:
        return None
    return (f"not in the Hugging Face cache ({where}) and {why}; download it with `synthgen prefetch` on a "
            "machine with network")


def check_hub(model: str, what: str) -> None:
    """Before a loader reads ``model``: a :class:`ModelLoadError` at once when :func:`hub_problem`
    finds it cannot be loaded here: ``cannot load {what}: ...``."""
    why = hub_problem(model)
    if why is not None:
        raise ModelLoadError(f"cannot load {what}: {why}, or give a local folder")
