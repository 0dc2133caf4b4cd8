"""The commands that only look: ``preview`` (a contact sheet of scenes or of an object bank) and
``stats`` (the distributions of scene shards). Each returns what it found; the command line prints it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SHEET_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")  # what a scene contact sheet may be written as


def preview(source: str, out: str | Path | None = None, n: int = 16, per_category: int = 16, scale: int = 2,
            category: str = "", thumb: int = 96, questions: bool = False) -> dict[str, Any]:
    """Draw the contact sheet of ``source``: an object bank (kept and rejected cut-outs) or scene
    shards (boxes, referrals, the target's prompt and answer), into ``out`` (default
    ``preview.png`` in the current folder: never into the input, where compose would take it for
    a cut-out). ``{"path", "shown", "what"}``."""
    from synthgen import storage
    from synthgen.bank.format import is_bank

    bank = is_bank(source)
    path = storage.output_file(out if out is not None else "preview.png", "--out",
                               (".png",) if bank else SHEET_SUFFIXES)
    if bank:
        from synthgen.bank.preview import preview_bank

        path, shown = preview_bank(source, path, categories=category, per_category=per_category, thumb=thumb)
        return {"path": path, "shown": shown, "what": f"objects of the bank {source}"}
    from synthgen.compose.inspection import contact_sheet

    return {"path": path, "shown": contact_sheet(source, path, n=n, scale=scale, questions=questions),
            "what": "scenes"}


def stats(shards: str, out: str | Path | None = None, top: int = 15) -> dict[str, Any]:
    """The statistics of scene shards (:func:`synthgen.compose.stats.collect_stats`), drawn
    into the PNG ``out`` when given."""
    from synthgen import storage
    from synthgen.compose.stats import collect_stats, plot_stats
    from synthgen.errors import UserError

    if top < 1:
        raise UserError(f"--top must be >= 1 (got {top})")
    path = storage.output_file(out, "--out", (".png",)) if out is not None else None
    st = collect_stats(shards)
    if path is not None:
        plot_stats(st, Path(path))
    return st
