"""Category names looked up in a vocabulary: ``compose --categories-map lvis`` (or ``coco``, ``voc``).

A bank read from file and folder names (``teddybear_jarno_vasamaa.png``, ``Sheep-md-v0``) gets
categories no dataset knows. Given a vocabulary instead of a map file, each of the bank's
categories is looked up among the vocabulary's names and synonyms; a match renames it to the
vocabulary's name and takes its id (LVIS ids for ``lvis`` and ``coco``, as the paper's data has
them; VOC classes carry their COCO class's LVIS id).

The lookup compares names with everything but letters and digits dropped, case folded (``teddy
bear`` = ``teddy_bear`` = ``TeddyBear``). A name that does not match as a whole is tried without
trailing digits (``bus1`` -> ``bus``), then as its runs of fewer words, longest first and leftmost
first (``teddybear jarno vasamaa`` -> ``teddybear jarno``, ``jarno vasamaa``, ``teddybear``; ``-``,
``_`` and ``.`` separate words too; a lone word of under three letters is not tried); the first
match wins: so ``sheep-md-v0`` -> ``sheep``, ``green pear`` -> ``pear``, ``old car lumen design`` ->
``car (automobile)``. A category that matches nothing keeps
its name. One line says how many were found, with examples of the renamed and of those not found.

``lvis`` reads the LVIS v1 categories as ``render --categories lvis`` does (the cache, else one
download, else an error saying where to put the file); ``coco`` and ``voc`` ship with synthgen.
"""

from __future__ import annotations

import re
import sys
from typing import Sequence

from synthgen.bank.format import BankEntry
from synthgen.errors import UserError
from synthgen.schema import clean_name

VOCABULARIES = ("lvis", "coco", "voc")
EXAMPLES = 4


def is_vocabulary(spec) -> bool:
    return isinstance(spec, str) and spec.strip().lower() in VOCABULARIES


def _key(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "", clean_name(name).lower())


def _categories(spec: str):
    from synthgen.render.categories import coco_categories, load_lvis, voc_categories

    kind = spec.strip().lower()
    return load_lvis() if kind == "lvis" else coco_categories() if kind == "coco" else voc_categories()


def index(categories) -> dict[str, tuple[str, int | None]]:
    """``{lookup key: (category name, id)}`` of a vocabulary's names and synonyms (a name before
    any synonym, those before the forms without a parenthesised qualifier, the first category
    before later ones)."""
    out: dict[str, tuple[str, int | None]] = {}
    for c in categories:
        out.setdefault(_key(c.name), (clean_name(c.name), c.id))
    for c in categories:
        for s in c.synonyms:
            out.setdefault(_key(s), (clean_name(c.name), c.id))
    for c in categories:  # then names and synonyms without their qualifier: bus (vehicle) as bus
        for n in (c.name, *c.synonyms):
            out.setdefault(_key(re.sub(r"\s*\(.*\)\s*$", "", clean_name(n))), (clean_name(c.name), c.id))
    out.pop("", None)
    return out


def candidates(name: str) -> list[str]:
    """The forms of a bank category tried, in order (see the module doc)."""
    whole = clean_name(name)
    words = [w for w in re.split(r"[\s_\-.]+", whole) if w]
    forms = [whole, re.sub(r"[\s_\-.]*\d+$", "", whole)]
    for n in range(len(words) - 1, 0, -1):  # runs of n words, longest first, leftmost first
        forms += [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)
                  if n > 1 or len(re.sub(r"\d+$", "", words[i])) >= 3]
    return list(dict.fromkeys(f for form in forms if (f := re.sub(r"\d+$", "", form).strip() or form)))


def look_up(names: Sequence[str], vocabulary: dict[str, tuple[str, int | None]]) -> dict[str, tuple[str, int | None]]:
    """``{bank category: (vocabulary name, id)}`` for the names that match."""
    found = {}
    for name in names:
        hit = next((vocabulary[k] for k in map(_key, candidates(name)) if k in vocabulary), None)
        if hit is not None:
            found[name] = hit
    return found


def rename_by_vocabulary(entries: list[BankEntry], spec: str) -> tuple[list[BankEntry], set[str], str | None]:
    """``entries`` with their categories looked up in the vocabulary ``spec``; the categories it
    gave; the warning about the categories that matched nothing (or None)."""
    if not is_vocabulary(spec):
        raise UserError(f"--categories-map {spec}: not a vocabulary ({', '.join(VOCABULARIES)})")
    names = sorted({e.category for e in entries})
    found = look_up(names, index(_categories(spec)))
    out = [e if e.category not in found else
           BankEntry(e.id, sys.intern(found[e.category][0]), found[e.category][1], e.path) for e in entries]
    missing = [n for n in names if n not in found]
    renamed = [f"{n} -> {found[n][0]}" for n in names if n in found and found[n][0] != n]
    kind = spec.strip().upper()
    note = f"--categories-map {spec.strip().lower()}: {len(found)} of {len(names)} categories found in {kind}"
    if renamed:
        note += f", {len(renamed)} renamed ({_some(renamed)})"
    if missing:
        note += f"; {len(missing)} match no {kind} name or synonym and keep their names: {_some(missing, repr)}"
    return out, {v[0] for v in found.values()}, note


def _some(items: list[str], form=str) -> str:
    return ", ".join(form(x) for x in items[:EXAMPLES]) + (f", +{len(items) - EXAMPLES} more" if len(items) > EXAMPLES else "")


def vocabulary_identity(spec: str) -> dict:
    """What a run records of a vocabulary: its kind and a digest of its names and ids."""
    import hashlib
    import json

    voc = index(_categories(spec))
    text = json.dumps(sorted(voc.items()), ensure_ascii=False)
    return {"vocabulary": spec.strip().lower(), "names": len(voc),
            "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}
