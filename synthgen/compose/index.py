"""The scene index: one parquet file per shard (``scenes-NNNNNN_index.parquet``), one row per scene.

Written by the compose worker after its shard and before the shard's stats marker (the done
marker), atomically like every output (a local temporary renamed, or uploaded whole); the
columns are :data:`synthgen.schema.INDEX_COLUMNS`. :func:`read_index` reads the index of every
done shard of a compose folder (path or URL) as one ``pyarrow.Table``; shards composed by an
earlier synthgen, without an index file, are indexed from their tars on the fly.

pyarrow is imported on first use (it comes with ``ray[data]``).
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Sequence

from synthgen import storage
from synthgen.errors import UserError
from synthgen.schema import (
    INDEX_COLUMNS,
    INDEX_SCHEMA,
    SHARD_PREFIX,
    SceneRecord,
    SchemaError,
    index_name,
    index_row,
    shard_name,
)
from synthgen.storage import atomic_write_with

_STATS_RE = re.compile(rf"{SHARD_PREFIX}-([0-9]{{6,}})_stats\.json")


def _arrow_type(spec: str):
    import pyarrow as pa

    if spec.startswith("list<") and spec.endswith(">"):
        return pa.list_(_arrow_type(spec[5:-1]))
    return {"string": pa.string(), "int64": pa.int64(), "int32": pa.int32(), "float64": pa.float64(),
            "bool": pa.bool_()}[spec]


def arrow_schema():
    """The ``pyarrow.Schema`` of the index (:data:`~synthgen.schema.INDEX_COLUMNS`)."""
    import pyarrow as pa

    return pa.schema([pa.field(name, _arrow_type(kind)) for name, kind, _ in INDEX_COLUMNS],
                     metadata={"synthgen_schema": INDEX_SCHEMA})


def index_table(rows: Sequence[dict[str, Any]]):
    """The ``pyarrow.Table`` of index rows (:func:`~synthgen.schema.index_row`)."""
    import pyarrow as pa

    schema = arrow_schema()
    return pa.Table.from_pydict({f.name: [r[f.name] for r in rows] for f in schema}, schema=schema)


def write_index(path, rows: Sequence[dict[str, Any]]) -> None:
    """Write one shard's index atomically (same rows -> same bytes)."""
    import pyarrow.parquet as pq

    table = index_table(rows)
    atomic_write_with(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def rows_from_tar(url: str) -> list[dict[str, Any]]:
    """The index rows of a shard read from the tar itself (shards without an index file)."""
    from synthgen.shards import iter_tar

    name = storage.path(url).name
    rows = []
    for sample in iter_tar(url, want=("json", "mask.png")):
        where = f"{url}: sample {sample['__key__']}"
        if "json" not in sample:
            raise UserError(f"{where} has no json")
        rows.append(index_row(SceneRecord.from_json(sample["json"], where), name, "mask.png" in sample))
    return rows


def done_shards(folder: str) -> list[int]:
    """The shards of a compose folder that have their stats marker (done), in order."""
    out = storage.path(folder)
    if not out.is_dir():
        raise UserError(f"compose folder not found: {folder}")
    return sorted(int(m.group(1)) for p in out.iterdir() if (m := _STATS_RE.fullmatch(p.name)))


def _read(path, columns):
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = list(columns) if columns is not None else None
    try:
        table = pq.read_table(pa.BufferReader(path.read_bytes()), columns=cols)
    except (pa.ArrowException, OSError) as exc:
        raise UserError(f"cannot read the scene index {path}: {exc}") from None
    meta = table.schema.metadata or {}
    if meta.get(b"synthgen_schema") != INDEX_SCHEMA.encode():
        raise UserError(f"{path} is not a synthgen scene index ({INDEX_SCHEMA})")
    return table


def read_index(folder: str, columns: Iterable[str] | None = None):
    """The index of every done shard of the compose folder ``folder`` (a path or URL), in scene
    order, as one ``pyarrow.Table`` (``.to_pandas()`` for a DataFrame). ``columns``: only these."""
    import pyarrow as pa

    known = [name for name, _, _ in INDEX_COLUMNS]
    if columns is not None:
        columns = list(columns)
        unknown = [c for c in columns if c not in known]
        if unknown:
            raise UserError(f"unknown index column(s) {', '.join(unknown)}; the columns are {', '.join(known)}")
    out = storage.path(folder)
    shards = done_shards(folder)
    if not shards:
        raise UserError(f"no composed shards in {folder} (no {SHARD_PREFIX}-*_stats.json)")
    names = {p.name for p in out.iterdir()}
    tables = []
    for s in shards:
        if index_name(s) in names:
            tables.append(_read(out / index_name(s), columns))
            continue
        try:
            table = index_table(rows_from_tar(str(out / shard_name(s))))
        except SchemaError as exc:
            raise UserError(f"cannot index {out / shard_name(s)}: {exc}") from None
        tables.append(table.select(columns) if columns is not None else table)
    return pa.concat_tables(tables)
