"""The version floors in pyproject.toml are the versions CI's lowest-versions job installs
(.ci/lowest.txt) and tests, so a floor cannot claim a version nobody ran."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
# pinned in .ci/lowest.txt to the one build CI tests (the README names it); pyproject's floor is lower
TORCH = {"torch", "torchvision"}
# the extras that only carry tools for the tests (pytest, moto, ruff, ...), not libraries synthgen uses
TOOLS_ONLY = {"test"}


def _pins() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / ".ci" / "lowest.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f".ci/lowest.txt: {line!r} is not NAME==VERSION"
            pins[canonicalize_name(name)] = Version(version)
    return pins


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra, deps in project["optional-dependencies"].items():
        if extra not in TOOLS_ONLY:
            reqs += [Requirement(r) for r in deps]
    return [r for r in reqs if canonicalize_name(r.name) != "synthgen"]


def _floor(req: Requirement) -> Version | None:
    floors = [Version(s.version) for s in req.specifier if s.operator in (">=", "==")]
    return max(floors) if floors else None


def test_every_main_library_has_its_floor_pinned_in_the_lowest_constraints():
    pins = _pins()
    for req in _requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} (pyproject.toml) is not in .ci/lowest.txt"
        if name in TORCH:
            assert req.specifier.contains(pins[name]), f"{req}: .ci/lowest.txt's {pins[name]} is out of range"
        else:
            assert _floor(req) == pins[name], f"{req}: its floor is not .ci/lowest.txt's {pins[name]}"


def test_the_lowest_constraints_pin_nothing_pyproject_does_not_name():
    named = {canonicalize_name(r.name) for r in _requirements()}
    assert set(_pins()) <= named, set(_pins()) - named


def test_the_readme_names_the_tested_torch():
    pins = _pins()
    readme = re.sub(r"\s+", " ", (ROOT / "README.md").read_text())
    assert f"torch {pins['torch']}" in readme and f"torchvision {pins['torchvision']}" in readme


def test_diffusers_honours_dtype(tmp_path):
    """synthgen/render/generate.py loads Stable Diffusion with ``dtype=`` (fp16 on a GPU): diffusers
    before 0.40 ignores that keyword and loads fp32, so diffusers' floor is checked here."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as dlogging

    from synthgen.demo.tiny_render import build_tiny_sd

    dlogging.disable_progress_bar()
    pipe = DiffusionPipeline.from_pretrained(str(build_tiny_sd(tmp_path / "sd")), dtype=torch.float16)
    assert pipe.unet.dtype == torch.float16
