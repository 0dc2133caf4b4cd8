"""``stats`` and ``preview`` of scene shards on s3:// (moto server on loopback): the same numbers,
and the shards' stats files read beside them."""

from __future__ import annotations

from synthgen.compose.config import ComposeParams
from synthgen.compose.inspection import contact_sheet
from synthgen.compose.run import ComposeJob, run_compose
from synthgen.compose.stats import collect_stats
from tests.helpers import make_backgrounds, make_index_bank


def test_stats_of_shards_on_s3_read_their_stats_files(s3, tmp_path):
    bank, bg = make_index_bank(tmp_path / "bank"), make_backgrounds(tmp_path / "bg")
    local = tmp_path / "local"
    run_compose(ComposeJob(objects=str(bank), backgrounds=str(bg), out=str(local), num_samples=12, samples_per_shard=6,
                           params=ComposeParams(same_category_p=0.7)), executor="serial", progress=False)
    remote = s3.upload(local, "shards")
    here, there = collect_stats(str(local)), collect_stats(remote)
    assert there["shard_stats"]["found"] == here["shard_stats"]["found"] == 2
    for key in ("scenes", "centres", "long_side_cells", "referrals", "relations", "shard_stats"):
        assert there[key] == here[key], key
    assert contact_sheet(remote, tmp_path / "p.png", n=3) == 3
