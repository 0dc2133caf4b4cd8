"""A small local compose, as a user's first run is: wall time against compute time.

``synthgen compose`` of 400 scenes (one shard) from prepared backgrounds with ``--workers 1``,
run as a user runs it (a fresh ``python -m synthgen`` process), with ``--executor ray`` (a local
Ray started for it, the default before issue 19) and ``--executor auto`` (in the process, since
Ray cannot help one shard). Compute time is what the shard's ``_stats.json`` records; the rest of
the wall time is start-up. Runs alternate; the median of ``--repeats`` is printed.

    python benchmarks/small_run.py [--scenes 400] [--repeats 3]

Inputs are drawn here (a bank of solid-colour RGBA shapes, 12 backgrounds of 1200 x 900).
Measured (2 CPU cores): ray 7.6 s wall for 1.5 s of compute (5.1x), auto 2.1 s (1.4x).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _inputs(root: Path) -> tuple[Path, Path]:
    from tests.helpers import make_backgrounds, make_index_bank

    bank = make_index_bank(root / "bank", per_category=4)
    raw = make_backgrounds(root / "bg-raw", n=12, size=(1200, 900))
    prepared = root / "bg"
    subprocess.run([sys.executable, "-m", "synthgen", "prepare-backgrounds", str(raw), "--out", str(prepared),
                    "--executor", "serial"], check=True, capture_output=True)
    return bank, prepared


def _once(bank: Path, bg: Path, out: Path, scenes: int, executor: str) -> tuple[float, float]:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "synthgen", "compose", "--objects", str(bank), "--backgrounds", str(bg),
                    "--out", str(out), "-n", str(scenes), "--workers", "1", "--executor", executor],
                   check=True, capture_output=True, env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
    wall = time.perf_counter() - t0
    compute = sum(json.loads(Path(f).read_text())["seconds"] for f in glob.glob(str(out / "*_stats.json")))
    return wall, compute


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bank, bg = _inputs(root)
        runs: dict[str, list[tuple[float, float]]] = {"ray": [], "auto": []}
        for _ in range(args.repeats):
            for executor in runs:
                runs[executor].append(_once(bank, bg, root / "out", args.scenes, executor))
    print(f"compose {args.scenes} scenes, prepared backgrounds, --workers 1 (median of {args.repeats}):")
    for executor, rs in runs.items():
        wall, compute = statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs)
        print(f"  --executor {executor:5s} wall {wall:5.2f} s  compute {compute:5.2f} s  wall/compute {wall / compute:.2f}")


if __name__ == "__main__":
    main()
