"""Ray resources that match what runs: the rembg cut-out actors ask for a GPU only when
onnxruntime offers CUDA (and their sessions then use it; without a GPU share, the CPU only), and
``--gpus-per-worker`` above 1 (GPUs a Stable Diffusion generator never uses) is refused."""

from __future__ import annotations

import subprocess
import sys

import pytest

from synthgen.errors import UserError
from synthgen.render.plan import LIGHT_GPU, cutout_on_gpu, plan_resources

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


@pytest.mark.parametrize("providers, on_gpu", [
    ([CPU], False),
    (["AzureExecutionProvider", CPU], False),            # onnxruntime 1.2x's CPU build
    ([CUDA, CPU], True),                                 # onnxruntime-gpu
    (["TensorrtExecutionProvider", CUDA, CPU], True),
    (["ROCMExecutionProvider", CPU], False),             # not a CUDA GPU Ray would hand out
    ([], False),
])
def test_cut_out_actors_ask_for_a_gpu_only_when_onnxruntime_offers_cuda(providers, on_gpu):
    assert cutout_on_gpu(providers) is on_gpu
    p = plan_resources(gpus=2, cpus=16, gpus_per_worker=1, onnx_providers=providers)
    assert p.light_gpus == LIGHT_GPU  # the CLIP scorer (torch) keeps its share either way
    assert p.cut_gpus == (LIGHT_GPU if on_gpu else 0.0)
    assert p.cut_providers == ([CUDA, CPU] if on_gpu else [CPU])
    assert (p.n_gen, p.n_light) == (2, 2)
    no_gpu = plan_resources(gpus=0, cpus=4, gpus_per_worker=1, onnx_providers=providers)
    assert no_gpu.cut_gpus == no_gpu.light_gpus == 0 and no_gpu.cut_providers == [CPU]


def test_this_machines_onnxruntime_decides_the_plan():
    """The driver asks the onnxruntime it has (the CPU build in the test environment)."""
    import onnxruntime

    from synthgen.render.pipeline import _onnx_providers

    assert _onnx_providers() == onnxruntime.get_available_providers()
    p = plan_resources(gpus=1, cpus=4, gpus_per_worker=1, onnx_providers=_onnx_providers())
    assert (p.cut_gpus > 0) is (CUDA in onnxruntime.get_available_providers())


def test_cut_out_sessions_run_on_the_planned_providers(tmp_path, monkeypatch):
    """A real rembg session (a tiny u2net-style ONNX net) built by the cut-out stage runs on what
    the plan gives it: the CPU only for an actor without a GPU share (rembg alone would pick CUDA
    whenever onnxruntime-gpu is installed, on a GPU the actor did not reserve)."""
    import numpy as np

    from synthgen.demo.tiny_render import build_tiny_u2net
    from synthgen.render.stages import CutoutStage

    monkeypatch.setenv("REMBG_HOME", str(tmp_path / "rembg"))
    monkeypatch.delenv("U2NET_HOME", raising=False)
    onnx_path = build_tiny_u2net()
    plan = plan_resources(gpus=1, cpus=4, gpus_per_worker=1, onnx_providers=[CPU])
    stage = CutoutStage([f"u2net_custom:{onnx_path}"], providers=plan.cut_providers)
    assert [s.inner_session.get_providers() for s in stage.cutter.sessions] == [[CPU]]
    image = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    out = stage({"seed": np.array([1]), "image": image[None], "gen_reason": np.array([""])})
    assert len(out["cand_png_0"][0]) > 0  # and it cuts out


def test_plan_refuses_more_than_one_gpu_per_generator():
    with pytest.raises(UserError, match=r"--gpus-per-worker must be <= 1 \(got 2\).*fraction <= 1 to share"):
        plan_resources(gpus=4, cpus=8, gpus_per_worker=2)


def test_gpus_per_worker_2_is_refused_on_the_command_line_in_one_line(tmp_path):
    out = tmp_path / "bank"
    r = subprocess.run([sys.executable, "-m", "synthgen", "render", "--categories", "coco", "--out", str(out),
                        "--gpus-per-worker", "2"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    msg = r.stderr.strip()
    assert "\n" not in msg and "Traceback" not in r.stderr + r.stdout, r.stderr
    assert "--gpus-per-worker must be <= 1 (got 2)" in msg and "use 1, or a fraction <= 1 to share a GPU" in msg
    assert not out.exists()
    ok = subprocess.run([sys.executable, "-m", "synthgen", "render", "--help"], capture_output=True, text=True,
                        timeout=120)
    assert "(at most 1: a generator uses one GPU)" in " ".join(ok.stdout.replace("│", " ").split())  # the help


def test_gpus_per_worker_2_is_refused_by_the_python_api(tmp_path):
    import synthgen.api

    with pytest.raises(UserError, match=r"--gpus-per-worker must be <= 1 \(got 2\)"):
        synthgen.api.render(out=str(tmp_path / "bank"), categories=["cat"], gpus_per_worker=2, progress=False)
    assert not (tmp_path / "bank").exists()
