"""The PIN module: ``pi = psi(S)``, an input-agnostic tensor ``[M, D_v]`` added to the vision
features (paper eq. 1-3).

``S`` is a fixed 1-D sinusoid table over the flattened patch index (``table="sinusoid"``, the
authors' ``get_sinusoid_encoding_table(num_patches, 64)``) or a learned table (``"learned"``,
initialised from the sinusoid). ``psi`` is the authors' MLP
``Linear(64,512) act LayerNorm Linear(512,768) act LayerNorm Linear(768,D_v)`` with ``act`` SiLU
(default, what produced the released checkpoint) or SwiGLU (as the paper describes).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from synthgen.pin.models import ACTIVATIONS, TABLES


def sinusoid_table(num_positions: int, dim: int) -> torch.Tensor:
    """``S[i, 2k] = sin(i / 10000^(2k/d))``, ``S[i, 2k+1] = cos(i / 10000^(2k/d))``."""
    pos = torch.arange(num_positions, dtype=torch.float64)[:, None]
    j = torch.arange(dim, dtype=torch.float64)[None, :]
    angle = pos / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / dim)
    table = torch.where(j.long() % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.float()


class SwiGLU(nn.Module):
    """``silu(a) * b`` over the two halves of the last dimension."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=-1)
        return nn.functional.silu(a) * b


class PIN(nn.Module):
    """Positional Insert. ``forward()`` takes no input and returns ``[num_positions, out_dim]``."""

    def __init__(
        self,
        num_positions: int,
        out_dim: int,
        *,
        table: str = "sinusoid",
        table_dim: int = 64,
        hidden: Sequence[int] = (512, 768),
        activation: str = "silu",
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if table not in TABLES:
            raise ValueError(f"table must be one of {TABLES}, got {table!r}")
        if num_positions < 1 or out_dim < 1 or table_dim < 2 or any(h < 1 for h in hidden):
            raise ValueError("num_positions, out_dim, table_dim and hidden widths must be positive")
        self.num_positions = int(num_positions)
        self.out_dim = int(out_dim)
        self.table_type = table
        self.table_dim = int(table_dim)
        self.hidden = tuple(int(h) for h in hidden)
        self.activation = activation

        init = sinusoid_table(self.num_positions, self.table_dim)
        if table == "learned":
            self.table = nn.Parameter(init.clone())
        else:
            self.register_buffer("table", init, persistent=False)

        layers: list[nn.Module] = []
        width = self.table_dim
        for h in self.hidden:
            if activation == "swiglu":
                layers += [nn.Linear(width, 2 * h), SwiGLU(), nn.LayerNorm(h)]
            else:
                layers += [nn.Linear(width, h), nn.SiLU(), nn.LayerNorm(h)]
            width = h
        layers.append(nn.Linear(width, self.out_dim))
        self.mlp = nn.Sequential(*layers)

    def forward(self) -> torch.Tensor:
        return self.mlp(self.table)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def config(self) -> dict:
        return {
            "num_positions": self.num_positions,
            "out_dim": self.out_dim,
            "table": self.table_type,
            "table_dim": self.table_dim,
            "hidden": list(self.hidden),
            "activation": self.activation,
        }

    @classmethod
    def from_config(cls, cfg: dict) -> "PIN":
        return cls(
            cfg["num_positions"], cfg["out_dim"], table=cfg.get("table", "sinusoid"),
            table_dim=cfg.get("table_dim", 64), hidden=cfg.get("hidden", (512, 768)),
            activation=cfg.get("activation", "silu"),
        )

    def extra_repr(self) -> str:
        return (f"positions={self.num_positions}, out_dim={self.out_dim}, table={self.table_type}, "
                f"params={self.num_parameters():,}")


def describe(pin: PIN) -> str:
    """One line with the parameter count, printed at the start of training."""
    n = pin.num_parameters()
    return (f"PIN: {n:,} parameters ({n / 1e6:.2f}M), table={pin.table_type}[{pin.num_positions}x"
            f"{pin.table_dim}], MLP {pin.table_dim}->{'->'.join(map(str, pin.hidden))}->{pin.out_dim}, "
            f"act={pin.activation}")
