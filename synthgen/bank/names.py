"""Category names that come from file and folder names: what is said about them, and the map
that renames them (``compose --categories-map FILE``).

A ``<category>/*.png`` tree takes its categories from its folder names, a flat folder from its
file names (:mod:`.reader`); such names are often no category at all. When a tree is read:

* a folder of banks is refused (:func:`refuse_folder_of_banks`): a category folder that holds
  sub-folders of images, or a bank's own ``index.jsonl`` / ``LVIS_instance_pools.json``, means
  that the parent of banks was given (folders named ``.x`` or ``_x``, such as ``_rejected`` or
  ``__MACOSX``, do not count);
* category folders that each hold files named like several categories are warned about
  (:func:`flat_banks_warning`): flat banks side by side, perhaps;
* names that look like file names are warned about, with a few examples
  (:func:`file_like_warning`).

The file-name heuristic (:func:`file_like`) is simple, and only ever warns: a name looks like a
file name when it holds a digit (``bus1``, ``v0``, ``0b``), a word of file names (:data:`FILE_WORDS`:
sizes ``xs sm md lg xl``, edits ``final copy``, cameras and credits ``img dsc by``, formats
``png rgba clipart``, collections ``photos images``), an initial (a one-letter word:
``kitten gerald g.``), or four words or more outside parentheses (a credit or a caption:
``old car lumen design st r``).

The map (:func:`load_map`) is a YAML or JSON mapping ``{name: category}``, or a CSV of
``name,category`` rows. A name is what a category was read from: a file name
(``bus1_jarno_vasamaa_01.png``) or its stem, a folder name (``teddy_bear``), an X-Paste pools key,
or the category as the bank gives it (``sheep-md-v0``; ``teddy_bear`` and ``teddy bear`` are the
same). The most specific name wins (file name, stem, folder or key, category). Names not in the map
keep their category; a key that matches nothing is warned about, with the closest bank name. A
renamed object takes the ``category_id`` the bank gives its new name (merging into a category of
the bank), else keeps its own; in trees and flat folders it is null, as before.
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any, Iterable, Sequence

from synthgen.bank.format import INDEX_FILE, POOLS_FILE, BankEntry
from synthgen.errors import UserError
from synthgen.schema import clean_name

SHOWN = 8       # categories named in the bank line
EXAMPLES = 4    # examples in a warning

FILE_WORDS = frozenset(
    "xs sm md lg xl xxl small large thumb thumbnail hd hq lowres hires "     # sizes
    "final copy edited edit draft rev "                                       # versions, edits
    "img dsc dscn pxl screenshot by credit "                                  # cameras, credits
    "png jpg jpeg webp rgba alpha cutout transparent clipart "                # formats
    "photos images pictures pics objects cutouts".split())                    # collections


def shown(categories: Sequence[str], n: int = SHOWN) -> str:
    """``apple, banana, cup, +14 more``."""
    more = f", +{len(categories) - n} more" if len(categories) > n else ""
    return ", ".join(categories[:n]) + more


def file_like(name: str) -> str | None:
    """Why ``name`` looks like a file name rather than a category (see the module doc), or None."""
    if re.search(r"\d", name):
        return "digits"
    bare = re.sub(r"\([^)]*\)", " ", name.lower())
    if any(w in FILE_WORDS for w in re.split(r"[\s\-.,]+", bare)):
        return "file-name words"
    words = bare.split()
    if any(len(w.strip(".,'")) == 1 and w != "a" for w in words):
        return "initials"
    if len(words) >= 4:
        return "four words or more"
    return None


def file_like_warning(categories: Sequence[str], mapped: Iterable[str] = ()) -> str | None:
    """The warning about categories that look like file names, those a map gave aside (None when
    none does)."""
    from synthgen.grounding import query_prompt

    given = set(mapped)
    flagged = [(c, why) for c in categories if c not in given and (why := file_like(c))]
    if not flagged:
        return None
    ex = ", ".join(repr(c) for c, _ in flagged[:EXAMPLES]) + (", ..." if len(flagged) > EXAMPLES else "")
    why = ", ".join(sorted({w for _, w in flagged}))
    return (f"{len(flagged)} of {len(categories)} categories look like file names, not categories ({why}): "
            f"{ex}; the referrals say them as they are ('{query_prompt(flagged[0][0])}'): "
            "name them with --categories-map FILE")


def _hidden(parts: Iterable[str]) -> bool:
    return any(p[:1] in "._" for p in parts)


def refuse_folder_of_banks(root: Any, nested: list[PurePosixPath], marks: list[PurePosixPath]) -> None:
    """Refuse a tree whose category folders hold banks: images two folders down, or an
    ``index.jsonl`` / pools file (``marks``) directly inside one (see the module doc)."""
    held = {r.parts[0] for r in marks if len(r.parts) == 2 and r.name in (INDEX_FILE, POOLS_FILE)}
    held |= {r.parts[0] for r in nested if len(r.parts) > 2 and not _hidden(r.parts[:-1])}
    if held:
        names = sorted(held)
        listed = ", ".join(f"{n}/" for n in names[:EXAMPLES]) + (", ..." if len(names) > EXAMPLES else "")
        raise UserError(f"--objects {root} holds banks ({listed}): give one of them (a category folder holds "
                        "sub-folders of images or a bank's own index file)")


def _bare(stem: str) -> str:
    return " ".join(re.sub(r"[\d_\-.\s]+", " ", stem.lower()).split())


def flat_banks_warning(root: Any, nested: list[PurePosixPath]) -> str | None:
    """The warning when every category folder holds files named like several categories (three
    or more different names, digits aside, for at least half of its files): flat banks side by
    side, not categories, perhaps."""
    stems: dict[str, list[str]] = {}
    for r in nested:
        if len(r.parts) == 2:
            stems.setdefault(r.parts[0], []).append(r.stem)
    if not stems:
        return None
    names = {f: sorted({b for s in v if (b := _bare(s))}) for f, v in stems.items()}
    if not all(len(names[f]) >= 3 and 2 * len(names[f]) >= len(v) for f, v in stems.items()):
        return None
    folders = sorted(stems)
    listed = ", ".join(f"{f}/" for f in folders[:EXAMPLES]) + (", ..." if len(folders) > EXAMPLES else "")
    ex = ", ".join(repr(n) for n in names[folders[0]][:3])
    return (f"--objects {root}: its folders ({listed}) each hold files named like different categories "
            f"({folders[0]}/: {ex}, ...): if they are banks, give one of them; as given, each folder is "
            "one category")


# --- the map ---------------------------------------------------------------------------------

class CategoryMap(dict):
    """``{name: category}`` read from ``where`` (``--categories-map FILE``)."""

    def __init__(self, items: Mapping[str, str], where: str = "the map"):
        super().__init__(items)
        self.where = where


def load_map(spec: str | Any) -> CategoryMap:
    """The ``{name: category}`` of a ``--categories-map`` file (a path or a URL); a one-line
    UserError when it is missing or not such a mapping."""
    import yaml

    from synthgen import storage

    where = f"--categories-map {spec}"
    if not str(spec).strip():
        raise UserError("--categories-map is empty: give a YAML, JSON or CSV file")
    p = storage.path(spec)
    if not p.exists():
        raise UserError(f"{where}: not found")
    if p.is_dir():
        raise UserError(f"{where}: is a folder; expected a YAML, JSON or CSV file")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{where}: not UTF-8 text") from None
    if str(spec).lower().endswith(".csv"):
        data: Any = _read_csv(text, where)
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" (line {mark.line + 1})" if mark is not None else ""
            raise UserError(f"{where}: not valid YAML or JSON{at}") from None
    if not isinstance(data, dict) or not data:
        got = "an empty file" if data is None else f"a {type(data).__name__}" if data != {} else "an empty mapping"
        raise UserError(f"{where}: expected a mapping {{file or folder name: category}} (got {got})")
    out = {}
    for key, value in data.items():
        if isinstance(key, bool) or not isinstance(key, (str, int, float)) or not str(key).strip():
            raise UserError(f"{where}: {key!r} is not a file or folder name")
        if not isinstance(value, str) or not clean_name(value) or not _utf8(str(key) + value):
            raise UserError(f"{where}: {key!r} must map to a category name (got {value!r})")
        out[str(key).strip()] = clean_name(value)
    return CategoryMap(out, where)


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:  # (a lone surrogate, from a JSON escape)
        return False


def _read_csv(text: str, where: str) -> dict[str, str]:
    import csv

    out: dict[str, str] = {}
    for ln, row in enumerate(csv.reader(text.splitlines()), 1):
        if not row or not "".join(row).strip():
            continue
        if len(row) != 2:
            raise UserError(f"{where}:{ln}: expected two fields, name,category (got {len(row)})")
        if ln == 1 and [c.strip().lower() for c in row] == ["name", "category"]:
            continue  # the header
        out[row[0]] = row[1]
    return out


def map_identity(spec: str) -> dict[str, Any]:
    """What a run records of its map: the number of names and a digest of the mapping (not of
    the file: the same mapping in YAML or JSON is the same run)."""
    import hashlib
    import json

    from synthgen.bank.vocabulary import is_vocabulary, vocabulary_identity

    if is_vocabulary(spec):
        return vocabulary_identity(spec)
    mapping = load_map(spec)
    text = json.dumps(mapping, sort_keys=True, ensure_ascii=False)
    return {"names": len(mapping), "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}


def _sources(e: BankEntry, layout: str) -> list[str]:
    """The names a category was read from, most specific first (before the category itself)."""
    if layout == "tree":
        return [e.path.split("/", 1)[0]] if "/" in e.path else [e.path, PurePosixPath(e.path).stem]
    if layout == "xpaste-pools":
        return [e.id.rsplit("/", 1)[0]]
    return []


def rename(entries: list[BankEntry], layout: str,
           spec: str | Mapping[str, str]) -> tuple[list[BankEntry], set[str], str | None]:
    """``entries`` renamed by the map ``spec`` (a file, or a mapping); the categories the map
    gave, and the warning about keys that match no name of the bank (or None). A vocabulary
    (``lvis``, ``coco``, ``voc``) looks the categories up instead (:mod:`.vocabulary`)."""
    from synthgen.bank.vocabulary import is_vocabulary, rename_by_vocabulary

    if is_vocabulary(spec):
        return rename_by_vocabulary(entries, spec)
    if isinstance(spec, CategoryMap):
        mapping = spec
    elif isinstance(spec, Mapping):
        mapping = CategoryMap({str(k): clean_name(v) for k, v in spec.items()})
    else:
        mapping = load_map(spec)
    by_clean: dict[str, str] = {}
    for k in mapping:
        by_clean.setdefault(clean_name(k), k)
    ids: dict[str, int] = {}
    for e in entries:
        if e.category_id is not None:
            ids.setdefault(e.category, e.category_id)
    used: set[str] = set()
    out = []
    for e in entries:
        key = next((n for n in (*_sources(e, layout), e.category) if n in mapping), None)
        key = key if key is not None else by_clean.get(e.category)
        if key is None:
            out.append(e)
            continue
        used.add(key)
        new = mapping[key]
        out.append(e if new == e.category else
                   BankEntry(e.id, sys.intern(new), ids.get(new, e.category_id), e.path))
    unknown = [k for k in mapping if k not in used and by_clean.get(clean_name(k)) not in used]
    return out, set(mapping.values()), _unknown_warning(mapping, unknown, entries, layout) if unknown else None


def _unknown_warning(spec: CategoryMap, unknown: list[str], entries: list[BankEntry], layout: str) -> str:
    names = sorted({n for e in entries for n in (*_sources(e, layout), e.category)})
    parts = []
    for k in unknown[:EXAMPLES]:
        close = difflib.get_close_matches(k, names, n=1, cutoff=0.6)
        parts.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    more = ", ..." if len(unknown) > EXAMPLES else ""
    return (f"{spec.where}: {len(unknown)} name(s) match no file, folder or category of the bank (a typo?): "
            f"{', '.join(parts)}{more}")
