"""Per-object seeds: one seed per (category, index), derived from the run's base seed.

The seed depends only on ``(base_seed, category name, index)``, never on the order or the number
of categories in a run, so any single object can be re-rendered exactly.
"""

from __future__ import annotations

import hashlib

SEED_BITS = 63


def object_seed(base_seed: int, category: str, index: int) -> int:
    """A 63-bit seed for object ``index`` of ``category`` (the raw category name)."""
    key = f"synthgen.render/{int(base_seed)}/{category}/{int(index)}".encode("utf-8")
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & ((1 << SEED_BITS) - 1)


def prompt_for(template: str, display_name: str) -> str:
    """Fill ``{name}`` in a prompt template (``a photo of a single {name}``)."""
    return template.replace("{name}", display_name)
