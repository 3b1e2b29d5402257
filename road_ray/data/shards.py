"""Parquet shards and their manifest (docs/ARCHITECTURE.md, "Shards"), on local disk or object storage.

A *shard folder* is one split of one prepared dataset: ``OUT/{split}/part-NNNNN.parquet``.
``OUT/manifest.json`` describes every split. Paths may be local or any URI pyarrow's file
systems understand (``s3://``, ``gs://``, ``file://``), so a cluster reads the same shards.

Writes are atomic: a part is written under a temporary name and renamed when complete, the
manifest last; an interrupted prepare leaves no file that could be mistaken for a whole one.
"""

from __future__ import annotations

import io
import json
import posixpath
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from PIL import Image

from road_ray import jsonio
from road_ray.labels import NUM_CLASSES
from road_ray.storage import join, open_fs, with_scheme

SHARD_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("domain", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("image", pa.binary(), nullable=False),
        pa.field("label", pa.binary(), nullable=True),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
    ]
)
MANIFEST = "manifest.json"
PART_PREFIX = "part-"
DEFAULT_SHARD_BYTES = 256 * 1024 * 1024
# At most this many rows per part: Ray Data reads a split with one task per file (or group of
# files), so a split needs several parts to be read (and cropped, fused) on several CPUs.
DEFAULT_SHARD_ROWS = 128


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of an RGB (H, W, 3) or single-channel (H, W) uint8 array."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def encode_jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


class ShardWriter:
    """Writes rows of ``schema`` (default ``SHARD_SCHEMA``) into ``out_dir/part-NNNNN.parquet``
    files of about ``max_bytes`` and at most ``max_rows`` rows (row groups of ``rows_per_group``).

    Use as a context manager; on an exception, the temporary part being written is removed
    and the parts already completed are kept (they are whole). ``close()`` returns the parts.
    """

    def __init__(
        self,
        out_dir: str,
        max_bytes: int = DEFAULT_SHARD_BYTES,
        rows_per_group: int = 64,
        max_rows: int = DEFAULT_SHARD_ROWS,
        schema: pa.Schema = SHARD_SCHEMA,
    ):
        if min(max_bytes, rows_per_group, max_rows) < 1:
            raise ValueError(f"ShardWriter {out_dir}: expected max_bytes, rows_per_group and max_rows >= 1")
        self.out_dir = out_dir
        self.schema = schema
        self.max_bytes = max_bytes
        self.rows_per_group = min(rows_per_group, max_rows)
        self.max_rows = max_rows
        self.fs, self.path = open_fs(out_dir)
        self.fs.create_dir(self.path, recursive=True)
        self.parts: list[str] = []
        self._rows: list[dict[str, Any]] = []
        self._writer: pq.ParquetWriter | None = None
        self._tmp: str | None = None
        self._bytes = 0
        self._part_rows = 0
        self.num_rows = 0

    def _open(self) -> None:
        self._tmp = join(self.path, f".tmp-{uuid.uuid4().hex}.parquet")
        self._writer = pq.ParquetWriter(self._tmp, self.schema, filesystem=self.fs, compression="none")

    def _flush_group(self) -> None:
        if not self._rows:
            return
        if self._writer is None:
            self._open()
        table = pa.Table.from_pylist(self._rows, schema=self.schema)
        self._writer.write_table(table)
        self._bytes += table.nbytes
        self._part_rows += len(self._rows)
        self._rows = []
        if self._bytes >= self.max_bytes or self._part_rows >= self.max_rows:
            self._finish_part()

    def _finish_part(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        final = join(self.path, f"{PART_PREFIX}{len(self.parts):05d}.parquet")
        self.fs.move(self._tmp, final)
        self.parts.append(final)
        self._writer, self._tmp = None, None
        self._bytes = self._part_rows = 0

    def write(self, row: dict[str, Any]) -> None:
        missing = [f.name for f in self.schema if f.name not in row or (row[f.name] is None and not f.nullable)]
        if missing:
            raise ValueError(f"shard row {row.get('id')!r}: missing required columns {missing}")
        self._rows.append(row)
        self.num_rows += 1
        if len(self._rows) >= min(self.rows_per_group, self.max_rows - self._part_rows):
            self._flush_group()

    def close(self) -> list[str]:
        self._flush_group()
        self._finish_part()
        return self.parts

    def abort(self) -> None:
        """Drop the part being written (the completed parts stay)."""
        if self._writer is not None:
            try:
                self._writer.close()
            finally:
                try:
                    self.fs.delete_file(self._tmp)
                except OSError:
                    pass
        self._writer, self._tmp, self._rows = None, None, []

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def split_shards(split: str, writer: ShardWriter) -> list[str]:
    """The parts ``writer`` wrote, as the manifest lists them: relative to the dataset folder."""
    return [posixpath.join(split, posixpath.basename(part)) for part in writer.parts]


def split_entry(
    split: str,
    writer: ShardWriter,
    domain: str,
    class_pixels: Any,
    ignore_pixels: int,
    labeled: bool = True,
) -> dict[str, Any]:
    """The manifest entry of one segmentation split ``writer`` wrote: rows, shards, label statistics.

    ``class_pixels`` (one count per class) and ``ignore_pixels`` are the labels' pixel counts; an
    unlabeled split (MiniCity's ``target_train``) records no labeled rows and zero counts.
    """
    return {
        "rows": writer.num_rows,
        "labeled_rows": writer.num_rows if labeled else 0,
        "domain": domain,
        "shards": split_shards(split, writer),
        "class_pixels": [int(c) for c in class_pixels] if labeled else [0] * NUM_CLASSES,
        "ignore_pixels": int(ignore_pixels) if labeled else 0,
    }


def write_manifest(out: str, manifest: dict[str, Any]) -> None:
    """Write ``out/manifest.json`` atomically (temporary file, then rename)."""
    fs, path = open_fs(out)
    fs.create_dir(path, recursive=True)
    tmp = join(path, f".tmp-{uuid.uuid4().hex}.json")
    with fs.open_output_stream(tmp) as f:
        f.write(jsonio.dumps(manifest, indent=2).encode())
    fs.move(tmp, join(path, MANIFEST))


def read_manifest(out: str) -> dict[str, Any]:
    fs, path = open_fs(out)
    target = join(path, MANIFEST)
    try:
        with fs.open_input_stream(target) as f:
            return json.loads(f.read().decode())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{join(out, MANIFEST)}: no manifest; expected a folder written by `road-ray prepare`"
        ) from None


def list_shard_files(shard_dir: str) -> list[str]:
    """The complete parts of a shard folder, sorted; ValueError if there are none."""
    fs, path = open_fs(shard_dir)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.Directory:
        raise ValueError(f"shard folder {shard_dir!r} does not exist; expected a folder of part-*.parquet files")
    files = sorted(
        i.path
        for i in fs.get_file_info(pafs.FileSelector(path))
        if i.type == pafs.FileType.File and i.base_name.startswith(PART_PREFIX) and i.base_name.endswith(".parquet")
    )
    if not files:
        raise ValueError(f"shard folder {shard_dir!r} holds no part-*.parquet files")
    return [with_scheme(shard_dir, f) for f in files]


def iter_rows(shard_dir: str, columns: list[str] | None = None, batch_rows: int = 16) -> Iterator[dict[str, Any]]:
    """Stream the rows of a shard folder as dicts (no Ray; bounded memory). A part that cannot
    be read is a ValueError naming it (pyarrow's own message names no file)."""
    for uri in list_shard_files(shard_dir):
        fs, path = open_fs(uri)
        try:
            pf = pq.ParquetFile(path, filesystem=fs)
            for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
                yield from batch.to_pylist()
        except (pa.ArrowException, OSError) as e:
            raise ValueError(f"{uri}: cannot be read: {str(e).strip().splitlines()[-1]}") from None


def count_rows(shard_dir: str) -> int:
    total = 0
    for uri in list_shard_files(shard_dir):
        fs, path = open_fs(uri)
        total += pq.ParquetFile(path, filesystem=fs).metadata.num_rows
    return total
