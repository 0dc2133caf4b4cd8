"""prepare-objects with s3:// banks and outputs (moto server on loopback): the same pixels and
index as a local folder, and compose from the prepared bank on s3 (one ranged GET a cut-out)
writes the scenes it writes from the local bank."""

from __future__ import annotations

import json

from synthgen.bank.reader import ObjectBank
from synthgen.compose.config import ComposeParams
from synthgen.compose.prepare_objects import ObjectsJob, prepare_objects
from synthgen.compose.run import ComposeJob, run_compose
from tests.compose.test_prepare_objects import make_textured_bank
from tests.helpers import make_backgrounds


def _compose(objects, bg, out, **kw):
    job = ComposeJob(objects=str(objects), backgrounds=str(bg), out=str(out), num_samples=12, samples_per_shard=6,
                     params=ComposeParams(masks=True, seed=5), min_usable=0, **kw)
    return run_compose(job, executor="serial", progress=False)


def test_prepare_objects_from_and_to_s3_and_compose_from_it(s3, tmp_path):
    bank = make_textured_bank(tmp_path / "bank", sides=(120, 300), categories=("cup", "chair"))
    bg = make_backgrounds(tmp_path / "bg", n=2)
    rbank = s3.upload(bank, "objects")
    m = prepare_objects(ObjectsJob(source=rbank, out=f"{s3.url}/prep", per_shard=2), executor="serial",
                        progress=False)
    local = prepare_objects(ObjectsJob(source=str(bank), out=str(tmp_path / "prep"), per_shard=2),
                            executor="serial", progress=False)
    assert (m["usable"], m["unusable"], m["shards"]) == (local["usable"], local["unusable"], local["shards"])
    got = s3.objects("prep")
    for f in (tmp_path / "prep").glob("*.rgba"):
        assert got[f.name] == f.read_bytes(), f.name
    # (a skip's detail names the file locally, its bytes on a store: the rest of the index is the same)
    rows = [{k: v for k, v in json.loads(line).items() if k != "detail"} for line in got["objects.jsonl"].splitlines()]
    assert rows == [{k: v for k, v in json.loads(line).items() if k != "detail"}
                    for line in (tmp_path / "prep" / "objects.jsonl").read_text().splitlines()]
    assert ObjectBank.open(f"{s3.url}/prep").survey().unusable == ObjectBank.open(bank).survey().unusable
    _compose(bank, bg, tmp_path / "want")
    _compose(f"{s3.url}/prep", bg, tmp_path / "from-s3")
    _compose(rbank, bg, f"{s3.url}/scenes", prepare_objects=True)  # implicit, into s3://.../scenes/objects-224
    want = {p.name: p.read_bytes() for p in sorted((tmp_path / "want").glob("*.tar"))}
    assert {p.name: p.read_bytes() for p in sorted((tmp_path / "from-s3").glob("*.tar"))} == want
    scenes = s3.objects("scenes")
    assert {k: v for k, v in scenes.items() if k.endswith(".tar")} == want
    assert "objects-224/manifest.json" in scenes
