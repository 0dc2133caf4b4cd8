"""The commands that only look: ``preview`` (a contact sheet of scenes or of an object bank) and
``stats`` (the distributions of scene shards). Each returns what it found; the command line prints it."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def preview(source: str, out: str | Path | None = None, n: int = 16, per_category: int = 16, scale: int = 2,
            category: str = "", thumb: int = 96) -> dict[str, Any]:
    """Draw the contact sheet of ``source``: an object bank (kept and rejected cut-outs) or scene
    shards (boxes, referrals, the target's prompt and answer). ``{"path", "shown", "what"}``."""
    from synthgen.bank.format import is_bank

    if is_bank(source):
        from synthgen.bank.preview import preview_bank

        path, shown = preview_bank(source, out, categories=category, per_category=per_category, thumb=thumb)
        return {"path": path, "shown": shown, "what": f"objects of the bank {source}"}
    from synthgen.compose.inspection import contact_sheet

    path = Path(out) if out is not None else Path("preview.png")
    return {"path": path, "shown": contact_sheet(source, path, n=n, scale=scale), "what": "scenes"}


def stats(shards: str, out: str | Path | None = None, top: int = 15) -> dict[str, Any]:
    """The statistics of scene shards (:func:`synthgen.compose.inspection.collect_stats`), drawn
    into the PNG ``out`` when given."""
    from synthgen.compose.inspection import collect_stats, plot_stats

    st = collect_stats(shards)
    if out is not None:
        plot_stats(st, Path(out))
    return st
