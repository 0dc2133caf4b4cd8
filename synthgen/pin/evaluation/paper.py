"""The paper's Table 1 (PIN, CVPR 2024, "Comparison on object localisation on a subset of PVOC,
COCO and LVIS with up to 3 objects per image"): mIoU all / M / L, for the table ``synthgen table``
writes beside ours. Copied from the paper's table (``shared/seeds/pin-paper.txt``; also
``shared/SPEC.md`` section 3). Pure data.

Keys: the VLM family (``openflamingo``, ``blip2``), the row (``raw``, ``random``, ``K-context``
and the ``train-pin --method`` names), the paper's set (``PVOC``, ``COCO``, ``LVIS``); a figure is
``(mean, std)`` with std None where the paper gives none. The baselines block (raw, random,
in-context) is OpenFlamingo's; random does not depend on the VLM and applies to every one.
"""

from __future__ import annotations

SETS = ("PVOC", "COCO", "LVIS")
BUCKETS = ("all", "M", "L")

Figure = tuple[float, float | None]


def _row(text: str) -> dict[str, dict[str, Figure]]:
    """``"0.22±0.04 0.10±0.02 ..."`` (nine figures: all/M/L of PVOC, COCO, LVIS) as a mapping."""
    figs: list[Figure] = []
    for item in text.split():
        mean, _, std = item.partition("±")
        figs.append((float(mean), float(std) if std else None))
    return {s: dict(zip(BUCKETS, figs[3 * i:3 * i + 3])) for i, s in enumerate(SETS)}


TABLE1: dict[str, dict[str, dict[str, dict[str, Figure]]]] = {
    "openflamingo": {
        "raw": _row("0 0 0 0 0 0 0 0 0"),
        "random": _row("0.22±0.04 0.10±0.02 0.33±0.06 0.12±0.04 0.07±0.02 0.22±0.08 0.07±0.03 0.06±0.02 0.18±0.09"),
        "2-context": _row("0.19±0.11 0.08±0.05 0.30±0.18 0.10±0.08 0.06±0.04 0.18±0.16 0.04±0.06 0.03±0.04 "
                          "0.10±0.15"),
        "5-context": _row("0.19±0.09 0.07±0.04 0.31±0.15 0.10±0.08 0.06±0.04 0.20±0.16 0.06±0.05 0.04±0.03 "
                          "0.17±0.13"),
        "10-context": _row("0.20±0.11 0.06±0.03 0.32±0.18 0.09±0.07 0.05±0.04 0.17±0.14 0.05±0.05 0.03±0.03 "
                           "0.15±0.14"),
        "coop": _row("0.28 0.11 0.43 0.22 0.10 0.39 0.13 0.07 0.40"),
        "vpt-fusion": _row("0.34 0.16 0.51 0.26 0.15 0.47 0.19 0.14 0.48"),
        "vpt-vision": _row("0.42 0.21 0.61 0.33 0.22 0.57 0.23 0.19 0.56"),
        "lora-vision": _row("0.44 0.26 0.62 0.33 0.23 0.58 0.23 0.19 0.55"),
        "pin": _row("0.45 0.27 0.62 0.35 0.26 0.59 0.26 0.24 0.61"),
    },
    "blip2": {
        "vpt-fusion": _row("0.33 0.12 0.51 0.27 0.12 0.50 0.18 0.11 0.47"),
        "vpt-vision": _row("0.32 0.12 0.50 0.26 0.11 0.48 0.17 0.10 0.46"),
        "pin": _row("0.44 0.24 0.63 0.34 0.22 0.60 0.26 0.23 0.60"),
    },
}

# the paper's names of the rows
ROW_NAMES = {"raw": "raw", "random": "random", "coop": "CoOp on LLM", "vpt-fusion": "VPT on F",
             "vpt-vision": "VPT on phi_V", "lora-vision": "LoRA on phi_V", "pin": "PIN"}


def paper_set(name: str) -> str | None:
    """The paper's set a set of ours stands for, by its name (``voc-test``, ``instances_val2017``,
    ``lvis_v1_val``, ``coco``): PVOC, COCO, LVIS, or None."""
    low = name.lower()
    if "refcoco" in low:  # (RefCOCO is not in Table 1)
        return None
    if "lvis" in low:
        return "LVIS"
    if "voc" in low:
        return "PVOC"
    if "coco" in low or "instances_val" in low:
        return "COCO"
    return None


def figure(vlm: str | None, row: str, paper: str | None, bucket: str) -> Figure | None:
    """The paper's figure for a row of ours (the random row whatever the VLM), or None."""
    if paper is None:
        return None
    table = TABLE1["openflamingo"] if row == "random" else TABLE1.get(vlm or "", {})
    return table.get(row, {}).get(paper, {}).get(bucket)
