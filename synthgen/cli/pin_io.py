"""CLI to move PINs between synthgen and the PIN authors' format: ``import-pin`` and ``export-pin``.

Only typer and the light config are imported here; torch is imported inside the command bodies.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from synthgen.errors import UserError
from synthgen.pin.models.registry import VLM_OPTIONS, VLMS

_OPTION_HELP = ("VLM option KEY=VALUE, repeatable; openflamingo: "
                + ", ".join(VLM_OPTIONS["openflamingo"]) + " (imports default to vision_tokens=ln_post, "
                "the tokens the authors' PIN_OF.pt was trained on).")


def parse_vlm_options(items: List[str] | None, vlm: str) -> dict:
    """``["lm=DIR", "cross_attn_every=2"]`` -> ``{"lm": "DIR", "cross_attn_every": 2}`` (typed as
    :data:`synthgen.pin.models.registry.VLM_OPTIONS` says)."""
    out: dict = {}
    kinds = VLM_OPTIONS.get(vlm, {})
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise UserError(f"--vlm-option takes KEY=VALUE, got {item!r}")
        if kinds.get(key) is int:
            try:
                out[key] = int(value)
            except ValueError:
                raise UserError(f"--vlm-option {key} takes an integer, got {value!r}") from None
        else:
            out[key] = value
    return out


def register(app, user_errors) -> None:
    @app.command("import-pin", no_args_is_help=True)
    @user_errors
    def import_pin(
        file: Path = typer.Argument(..., metavar="FILE", help="A PIN in the authors' format (QUVA-Lab/PIN, e.g. PINs/PIN_OF.pt): "
                                              "{'mlp': Sequential state dict, 'pos_enc': [1, N, 64]}."),
        out: Path = typer.Option(..., "--out", "-o", help="New run directory (pin.safetensors + pin.json)."),
        vlm: str = typer.Option("openflamingo", help="VLM family the PIN was trained on: " + ", ".join(VLMS) + "."),
        model: Optional[str] = typer.Option(None, help="Hub id or local path of the VLM (default: the VLM's default, "
                                                       "for openflamingo the authors' OpenFlamingo-3B-langinstruct)."),
        vlm_option: Optional[List[str]] = typer.Option(None, "--vlm-option", help=_OPTION_HELP),
    ) -> None:
        """Turn a PIN saved by the authors' code into a run that eval-pin and predict use."""
        from synthgen.pin.training.portable import import_pin as run_import

        meta = run_import(file, out, vlm=vlm, model=model, vlm_options=parse_vlm_options(vlm_option, vlm))
        typer.echo(f"imported {file} -> {out}: {meta['vlm']} {meta['model']}, PIN {meta['num_positions']}x"
                   f"{meta['vision_width']} ({meta['pin_parameters']:,} parameters), canvas {meta['canvas']}")

    @app.command("export-pin", no_args_is_help=True)
    @user_errors
    def export_pin(
        run: Path = typer.Argument(..., metavar="RUN", help="Run directory of train-pin or import-pin."),
        out: Path = typer.Option(..., "--out", "-o", help="File to write in the authors' format (e.g. PIN_OF.pt)."),
    ) -> None:
        """Write a run's PIN in the authors' format ({'mlp': ..., 'pos_enc': ...}, torch.save)."""
        from synthgen.pin.training.portable import export_pin as run_export

        typer.echo(f"wrote {run_export(run, out)}")
