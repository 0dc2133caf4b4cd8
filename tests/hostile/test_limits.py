"""Resource limits: a full disk, names too long for a folder, images too large to decode."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import time
import zlib
from pathlib import Path

import pytest

from tests.helpers import make_backgrounds
from tests.hostile.conftest import CANVAS, GRID, one_line_error, run_cli
from tests.pin.fixtures import write_shards


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of 1 MiB mounted for the test (skipped where mounting is not allowed)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _grow(mnt: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mnt)], check=True)


@pytest.mark.slow
def test_compose_on_a_full_disk_is_one_line_not_retried_and_resumes(small_disk, tmp_path, cli_env, bank):
    bg = make_backgrounds(tmp_path / "bg", n=3)
    out = small_disk / "out"
    args = ["compose", "--objects", bank, "--backgrounds", bg, "--out", out, "-n", 200,
            "--samples-per-shard", 20, "--workers", 1, "--seed", 4]
    t0 = time.monotonic()
    r = run_cli(args, cli_env)
    line = one_line_error(r, f"no space left on {small_disk}", "scenes-0000")
    assert "shard(s) failed" in line and time.monotonic() - t0 < 120
    done = sorted(p.name for p in out.glob("scenes-*_stats.json"))
    assert done and len(done) < 10 and not list(out.glob(".*synthgen-tmp"))  # no half-written shard
    assert not (out / "manifest.json").exists()
    _grow(small_disk, "20m")
    r = run_cli(args, cli_env)
    assert r.returncode == 0, r.stderr
    ref = tmp_path / "ref"
    r = run_cli([a if a != out else ref for a in args], cli_env)
    assert r.returncode == 0, r.stderr
    for p in sorted(ref.glob("scenes-*.tar")):
        assert (out / p.name).read_bytes() == p.read_bytes()


@pytest.mark.slow
def test_train_pin_checkpoint_on_a_full_disk_is_one_line(small_disk, tmp_path, cli_env, tiny_vlm):
    write_shards(tmp_path / "s", 8, canvas=CANVAS, grid=GRID, per_shard=4)
    (small_disk / "filler").write_bytes(b"\0" * (1024 * 1024 - 64 * 1024))  # leave ~64 KiB
    run = small_disk / "run"
    r = run_cli(["train-pin", tmp_path / "s", "--model", tiny_vlm, "--out", run, "--steps", 2, "--batch-size", 4,
                 "--loader-workers", 0, "--hidden", "64,64", "--no-progress"], cli_env)
    one_line_error(r, f"no space left on {small_disk}", "writing")
    assert not list(run.glob(".*synthgen-tmp"))


def test_a_manifest_write_on_a_full_disk_leaves_the_previous_one(small_disk):
    from synthgen.errors import UserError
    from synthgen.storage import atomic_write_json

    atomic_write_json(small_disk / "manifest.json", {"v": 1})
    (small_disk / "filler").write_bytes(b"\0" * (1024 * 1024 - 8 * 1024))
    with pytest.raises(UserError, match=f"no space left on {small_disk} writing"):
        atomic_write_json(small_disk / "manifest.json", {"v": 2, "pad": "x" * 200_000})
    assert json.loads((small_disk / "manifest.json").read_text()) == {"v": 1}
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "manifest.json"]


def test_prepare_objects_on_a_full_disk_is_one_line_and_leaves_no_temporary(small_disk, cli_env, bank):
    # the cut-outs' raw pixels (224 px RGBA, ~200 KB each) fill the ~100 KiB left in the first shard
    (small_disk / "filler").write_bytes(b"\0" * (1024 * 1024 - 100 * 1024))
    out = small_disk / "prep"
    r = run_cli(["prepare-objects", bank, "--out", out, "--executor", "serial"], cli_env)
    line = one_line_error(r, "1 of 1 shard(s) failed", f"no space left on {small_disk}", "writing", "re-run")
    assert "the others" not in line  # (there are none)
    assert not [p.name for p in out.rglob("*") if "synthgen-tmp" in p.name]


def test_a_category_name_too_long_for_a_folder_fails_before_any_model_work(tmp_path, cli_env):
    names = tmp_path / "names.txt"
    names.write_text("cat\n" + "x" * 300 + "\n")
    t0 = time.monotonic()
    r = run_cli(["render", "--categories", names, "--out", tmp_path / "bank", "--sd-model", "nobody/none"], cli_env)
    one_line_error(r, "300 characters long", "nothing was rendered")
    assert time.monotonic() - t0 < 30 and not (tmp_path / "bank").exists()
    names.write_text("cat\nca\x07t\n")
    one_line_error(run_cli(["render", "--categories", names, "--out", tmp_path / "bank"], cli_env),
                   "control characters")
    names.write_text("Bow (weapon)\nbow_weapon\n")
    one_line_error(run_cli(["render", "--categories", names, "--out", tmp_path / "bank"], cli_env),
                   "same folder name")


def _big_png(path: Path, side: int) -> Path:
    """A real ``side`` x ``side`` RGB PNG (all black), written row by row."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    comp = zlib.compressobj(9)
    row = b"\0" * (1 + 3 * side)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_a_png_just_under_the_bomb_limit_is_not_decoded_at_every_draw(tmp_path, cli_env, bank):
    bg = make_backgrounds(tmp_path / "bg", n=1)
    _big_png(bg / "huge.png", 12000)  # 144 MP: above Pillow's warning, below its bomb error
    out = tmp_path / "out"
    t0 = time.monotonic()
    r = run_cli(["compose", "--objects", bank, "--backgrounds", bg, "--out", out, "-n", 12,
                 "--executor", "serial"], cli_env)
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t0 < 60
    skipped = json.loads((out / "manifest.json").read_text())["totals"]["skipped_backgrounds"]
    assert skipped["too_large"]["examples"] == [str(bg / "huge.png")]
    assert os.path.getsize(bg / "huge.png") < 2_000_000
