"""Category lists for ``synthgen render`` (pure: no model, no Ray).

Sources:

- ``lvis``: the LVIS v1 categories, read from the official LVIS v1 annotation json (its
  ``categories`` list) or from a list of LVIS-format category dicts (``id``, ``name``, ``synset``,
  ``synonyms``, ``def``, ``frequency``). The package does not ship the list: it is looked up in a
  cache directory (downloaded once from the official LVIS site when the network allows) or given
  explicitly with ``categories_file``.
- ``coco`` / ``voc``: the 80 / 20 class names (:mod:`synthgen.render.classes`).
- a FILE: ``.txt`` (one name a line, ``#`` comments) or ``.json`` (a list of names, a list of
  LVIS-format dicts, or an LVIS annotation json with ``categories``).

``exclude`` drops every category that is a COCO or VOC class (matched by WordNet synset when the
category has one, else by name) and/or categories named explicitly; ``only`` keeps named ones.
"""

from __future__ import annotations

import io
import json
import os
import re
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from synthgen.errors import UserError
from synthgen.render.classes import COCO_CLASSES, VOC_CLASSES
from synthgen.schema import clean_name, slugify

LVIS_V1_URL = "https://dl.fbaipublicfiles.com/LVIS/lvis_v1_val.json.zip"
LVIS_SITE = "https://www.lvisdataset.org/dataset"
LVIS_CACHE_NAMES = ("lvis_v1_categories.json", "lvis_v1_val.json", "lvis_v1_train.json",
                    "lvis_v1_val.json.zip", "lvis_v1_train.json.zip")


@dataclass(frozen=True)
class Category:
    """One category to render.

    ``name`` is the raw name (LVIS style, e.g. ``bow_(weapon)``): it keys seeds and X-Paste's
    ``LVIS_instance_pools.json``. ``display`` is the clean name used in prompts and in the bank.
    """

    name: str
    id: int | None = None
    synset: str | None = None
    synonyms: tuple[str, ...] = ()
    definition: str | None = None
    frequency: str | None = None

    @property
    def display(self) -> str:
        return clean_name(self.name)

    @property
    def slug(self) -> str:
        return slugify(self.name)


@dataclass
class Selection:
    categories: list[Category]
    source: str
    excluded: dict[str, int] = field(default_factory=dict)  # reason -> count
    excluded_names: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{len(self.categories)} categories from {self.source}"]
        for reason, n in self.excluded.items():
            parts.append(f"{n} excluded as {reason}")
        return "; ".join(parts)


MAX_NAME_CHARS = 100  # a category's folder and file names must fit every file system (255 bytes)


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a category (too long, control characters, not UTF-8), or None."""
    import unicodedata

    if len(name) > MAX_NAME_CHARS:
        return f"the name is {len(name)} characters long (at most {MAX_NAME_CHARS})"
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in name):
        return "the name holds control characters or is not valid UTF-8"
    if not clean_name(name):
        return "the name is empty"
    return None


def check_names(cats: Sequence[Category], source: str = "the list") -> None:
    """Refuse (one line, before any model loads) names that cannot become folders: too long,
    control characters, empty, or two names that map to the same folder."""
    slugs: dict[str, str] = {}
    for c in cats:
        problem = name_problem(c.name)
        if problem:
            raise UserError(f"category {c.name[:60]!r}{'...' if len(c.name) > 60 else ''} in {source}: "
                            f"{problem}; rename it (nothing was rendered)")
        if c.slug in slugs and slugs[c.slug] != c.name:
            raise UserError(f"categories {slugs[c.slug]!r} and {c.name!r} map to the same folder "
                            f"name {c.slug!r}; rename one")
        slugs[c.slug] = c.name


def _norm(name: str) -> str:
    return clean_name(name).lower()


def _base(name: str) -> str:
    """Name without its parenthesised qualifier: ``bow (weapon)`` -> ``bow``."""
    return re.sub(r"\s*\(.*\)\s*$", "", _norm(name)).strip()


# ----------------------------------------------------------------------------------------------
# loading


def default_cache_dir() -> Path:
    env = os.environ.get("SYNTHGEN_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "synthgen"


def _offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes")
               for k in ("SYNTHGEN_OFFLINE", "HF_HUB_OFFLINE"))


def categories_from_json(data) -> list[Category]:
    """LVIS annotation json (``categories``), list of LVIS dicts, or list of names."""
    if isinstance(data, dict):
        if "categories" not in data:
            raise UserError("json category file: expected a list or an LVIS json with 'categories'")
        data = data["categories"]
    if not isinstance(data, list):
        raise UserError("json category file: expected a list of names or of category dicts")
    out = []
    for item in data:
        if isinstance(item, str):
            out.append(Category(name=item.strip()))
        elif isinstance(item, dict) and "name" in item:
            out.append(Category(
                name=str(item["name"]).strip(),
                id=int(item["id"]) if item.get("id") is not None else None,
                synset=item.get("synset"),
                synonyms=tuple(item.get("synonyms") or ()),
                definition=item.get("def"),
                frequency=item.get("frequency"),
            ))
        else:
            raise UserError(f"json category file: cannot read entry {item!r:.60} (need a name)")
    return [c for c in out if c.name]


def read_category_file(path: str | Path) -> list[Category]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"category file not found: {p}")
    try:
        if p.suffix == ".zip":
            with zipfile.ZipFile(p) as zf:
                member = next((n for n in zf.namelist() if n.endswith(".json")), None)
                if member is None:
                    raise UserError(f"{p}: no .json inside the zip")
                return categories_from_json(json.loads(zf.read(member)))
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"category file {p} is not UTF-8 text: {exc}") from None
    if p.suffix.lower() == ".json" or text.lstrip().startswith(("[", "{")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"category file {p} is not valid json: {exc}") from None
        cats = categories_from_json(data)
    else:
        cats = [Category(name=line.split("#", 1)[0].strip()) for line in text.splitlines()]
        cats = [c for c in cats if c.name]
    if not cats:
        raise UserError(f"category file {p} lists no categories")
    return cats


def _download_lvis(cache: Path, url: str = LVIS_V1_URL, timeout: float = 30.0) -> Path:
    """Fetch the official LVIS v1 val annotation zip and keep only its categories."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (fixed https URL)
        payload = resp.read()
    with zipfile.ZipFile(io.BytesIO(payload)) as zf:
        member = next(n for n in zf.namelist() if n.endswith(".json"))
        cats = json.loads(zf.read(member))["categories"]
    cache.mkdir(parents=True, exist_ok=True)
    out = cache / "lvis_v1_categories.json"
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(cats), encoding="utf-8")
    os.replace(tmp, out)
    return out


def load_lvis(categories_file: str | Path | None = None, cache_dir: str | Path | None = None,
              download: bool | None = None) -> list[Category]:
    """The LVIS v1 categories: from ``categories_file``, else the cache, else a download."""
    if categories_file is not None:
        return read_category_file(categories_file)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    for name in LVIS_CACHE_NAMES:
        if (cache / name).is_file():
            return read_category_file(cache / name)
    if download is None:
        download = not _offline()
    why = ("we are offline (SYNTHGEN_OFFLINE/HF_HUB_OFFLINE set)" if _offline()
           else "downloading is disabled")
    if download:
        try:
            return read_category_file(_download_lvis(cache))
        except Exception as exc:  # network errors of every kind
            why = f"download from {LVIS_V1_URL} failed: {type(exc).__name__}: {exc}"
    raise UserError(
        f"LVIS v1 categories not found in {cache} and {why}. Download lvis_v1_val.json.zip "
        f"(official LVIS v1 annotations, {LVIS_SITE}) and put it, or the unzipped "
        f"lvis_v1_val.json, in {cache} (or set SYNTHGEN_CACHE), or pass --categories-file PATH")


def coco_categories() -> list[Category]:
    return [Category(name=n, id=lid, synset=s) for n, s, lid in COCO_CLASSES]


def voc_categories() -> list[Category]:
    lvis_by_coco = {n: lid for n, _, lid in COCO_CLASSES}
    return [Category(name=readable, id=lvis_by_coco.get(coco), synset=s, synonyms=(voc,))
            for voc, readable, coco, s in VOC_CLASSES]


# ----------------------------------------------------------------------------------------------
# selection


def _class_keys(kind: str) -> tuple[set[str], set[str]]:
    """(synsets, normalised names) of the COCO or VOC classes."""
    if kind == "coco":
        return {s for _, s, _ in COCO_CLASSES}, {_norm(n) for n, _, _ in COCO_CLASSES}
    syn = {s for *_, s in VOC_CLASSES}
    names = set()
    for voc, readable, coco, _ in VOC_CLASSES:
        names |= {_norm(voc), _norm(readable), _norm(coco)}
    return syn, names


def is_class_of(cat: Category, kind: str) -> bool:
    """Whether ``cat`` is a COCO/VOC class: by synset when it has one, else by name/synonym."""
    synsets, names = _class_keys(kind)
    if cat.synset:
        return cat.synset in synsets
    return _norm(cat.name) in names or any(_norm(s) in names for s in cat.synonyms)


def match_names(cats: Sequence[Category], wanted: Iterable[str]) -> tuple[list[Category], list[str]]:
    """Categories matching ``wanted`` names (exact name/synonym first, else the unqualified base
    name, so ``projectile`` finds ``projectile_(weapon)``); returns (matches, unknown names)."""
    matches: dict[str, Category] = {}
    unknown = []
    for w in wanted:
        key = _norm(w)
        found = [c for c in cats
                 if key == _norm(c.name) or any(key == _norm(s) for s in c.synonyms)]
        if not found:
            found = [c for c in cats if key == _base(c.name)]
        if not found:
            unknown.append(w)
        for c in found:
            matches[c.name] = c
    return list(matches.values()), unknown


def _split(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return [i.strip() for i in items if i and i.strip()]


def select_categories(source: str = "lvis", *, categories_file: str | Path | None = None,
                      exclude: str | Sequence[str] | None = None,
                      only: str | Sequence[str] | None = None,
                      cache_dir: str | Path | None = None,
                      download: bool | None = None) -> Selection:
    """Resolve ``--categories``/``--categories-file``/``--exclude``/``--only`` to a list."""
    src = source.strip()
    if src.lower() == "lvis":
        cats = load_lvis(categories_file, cache_dir=cache_dir, download=download)
        label = "LVIS v1" + (f" ({categories_file})" if categories_file else "")
    elif src.lower() == "coco":
        cats, label = coco_categories(), "COCO"
    elif src.lower() == "voc":
        cats, label = voc_categories(), "PASCAL VOC"
    else:
        if categories_file is not None:
            raise UserError("--categories-file is only for --categories lvis; pass the file "
                            "itself as --categories FILE")
        if not Path(src).exists():
            raise UserError(f"--categories must be lvis, coco, voc or an existing file: {src!r}")
        cats, label = read_category_file(src), src

    seen: dict[str, Category] = {}
    for c in cats:
        seen.setdefault(c.name, c)
    cats = list(seen.values())
    check_names(cats, label)

    sel = Selection(categories=cats, source=label)
    if only:
        keep, unknown = match_names(cats, _split(only))
        if unknown:
            raise UserError(f"--only: unknown categories in {label}: {', '.join(unknown)}")
        names = {c.name for c in keep}
        sel.excluded["not in --only"] = sum(c.name not in names for c in cats)
        cats = [c for c in cats if c.name in names]

    for item in _split(exclude):
        kind = item.lower()
        if kind in ("coco", "voc"):
            drop = [c for c in cats if is_class_of(c, kind)]
            sel.excluded[f"{kind.upper()} classes"] = len(drop)
        else:
            drop, unknown = match_names(cats, [item])
            if unknown:
                raise UserError(f"--exclude: {item!r} is neither coco, voc nor a category of {label}")
            sel.excluded[f"named ({item})"] = len(drop)
        dropped = {c.name for c in drop}
        sel.excluded_names.extend(sorted(dropped))
        cats = [c for c in cats if c.name not in dropped]

    if not cats:
        raise UserError(f"no categories left to render ({sel.summary()})")
    sel.categories = cats
    return sel
