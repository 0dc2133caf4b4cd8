"""compose --extend and the scene index on s3:// (moto server on loopback): the bytes of a local
fresh run, the index read back from the bucket."""

from __future__ import annotations

import pytest

from synthgen.compose.config import ComposeParams
from synthgen.compose.index import read_index
from synthgen.compose.run import ComposeJob, run_compose
from synthgen.errors import UserError
from tests.helpers import make_backgrounds, make_index_bank


def _compose(objects, backgrounds, out, n, extend=False):
    job = ComposeJob(objects=str(objects), backgrounds=str(backgrounds), out=str(out), num_samples=n,
                     samples_per_shard=4, params=ComposeParams(masks=True))
    return run_compose(job, executor="serial", progress=False, extend=extend)


def test_extend_on_s3_gives_the_bytes_of_a_fresh_local_run_and_its_index(s3, tmp_path):
    bank, bg = make_index_bank(tmp_path / "bank"), make_backgrounds(tmp_path / "bg")
    local = tmp_path / "local"
    _compose(bank, bg, local, 10)
    url = f"{s3.url}/shards"
    _compose(bank, bg, url, 6)   # shard 1 holds 2 of 4 scenes
    before = {o["Key"]: o["ETag"] for o in s3.client.list_objects_v2(Bucket=s3.bucket)["Contents"]}
    with pytest.raises(UserError, match="--extend"):
        _compose(bank, bg, url, 10)
    m = _compose(bank, bg, url, 10, extend=True)
    assert m["growth"] == [{"num_samples": 6}, {"num_samples": 10, "rewritten": ["scenes-000001.tar"]}]
    got = s3.objects("shards")
    data = [n for n in got if n.endswith(".tar") or n.endswith("_index.parquet")]
    assert sorted(data) == sorted(p.name for p in local.iterdir() if p.suffix in (".tar", ".parquet"))
    assert all(got[n] == (local / n).read_bytes() for n in data)
    after = {o["Key"]: o["ETag"] for o in s3.client.list_objects_v2(Bucket=s3.bucket)["Contents"]}
    assert after["shards/scenes-000000.tar"] == before["shards/scenes-000000.tar"]
    assert after["shards/scenes-000001.tar"] != before["shards/scenes-000001.tar"]
    remote = read_index(url)
    assert remote.num_rows == 10 and remote.equals(read_index(str(local)))
