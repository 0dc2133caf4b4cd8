"""``synthgen export`` from s3:// shards to an s3:// folder (moto server on loopback): the same
files as a local export, resumed from the parts on the store."""

from __future__ import annotations

from synthgen.compose.config import ComposeParams
from synthgen.compose.run import ComposeJob, run_compose
from synthgen.export.run import export
from tests.helpers import make_backgrounds, make_index_bank


def test_export_reads_and_writes_s3_like_a_local_folder(s3, tmp_path):
    bank, bg = make_index_bank(tmp_path / "bank"), make_backgrounds(tmp_path / "bg", n=2)
    run_compose(ComposeJob(objects=str(bank), backgrounds=str(bg), out=str(tmp_path / "scenes"), num_samples=6,
                           samples_per_shard=3, params=ComposeParams(same_category_p=0.7)),
                executor="serial", progress=False)
    shards = s3.upload(tmp_path / "scenes", "scenes")
    for to in ("llama-factory", "hf"):
        local = export(str(tmp_path / "scenes"), str(tmp_path / to), to, "internvl", progress=False)
        remote = export(shards, f"{s3.url}/{to}", to, "internvl", progress=False)
        assert {k: v for k, v in remote.items() if k != "settings"} == {k: v for k, v in local.items() if k != "settings"}
        got = s3.objects(to)
        want = {str(p.relative_to(tmp_path / to)): p.read_bytes() for p in (tmp_path / to).rglob("*") if p.is_file()}
        assert set(got) == set(want)
        assert all(got[k] == want[k] for k in want if not k.endswith(("settings.json", "export.json")))
    # resumed: the finished export is returned, nothing written again
    assert export(shards, f"{s3.url}/hf", "hf", "internvl", progress=False) == remote
