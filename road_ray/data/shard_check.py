"""A damaged shard is named before the first step (issue #17): every part's Parquet footer is
read, and the folder is compared with its ``manifest.json`` when there is one.

Among thousands of parts on object storage a user must know *which* one is bad: pyarrow alone
says "Parquet magic bytes not found in footer" and no file. A footer is a few KB at the end
of each part, so reading them all is cheap; on object storage they are read by a thread pool.
Every error is one line naming the config key, the file and what was wrong, e.g.::

    data.source: /data/gta5/train/part-00003.parquet: not a Parquet file (footer unreadable: truncated?): ...

What a footer cannot show (a part damaged in the middle) is named when it is read: see
:func:`named_read_error`, used by the Ray Data streams' consumers and by ``road-ray eval``.
"""

from __future__ import annotations

import posixpath
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from road_ray.data.shards import MANIFEST, list_shard_files
from road_ray.failures import DamagedShard
from road_ray.storage import join, open_fs, read_text

REQUIRED_COLUMNS = ("id", "image", "label")  # what the train and validation streams read
MAX_THREADS = 32  # footers read at once (object storage: one small ranged GET each)
MAX_NAMED = 3  # damaged parts named in one line; the count says how many more
LOCATE_BUDGET_BYTES = 2 << 30  # after a read error: read whole parts up to this many bytes to find it


@dataclass(frozen=True)
class Footer:
    """One part's footer: its rows, or why it could not be used."""

    uri: str
    rows: int = 0
    problem: str | None = None


def check_shard_folder(shard_dir: str, key: str) -> list[str]:
    """The folder's parts, once every footer was read and the manifest (if any) agrees.

    Raises ValueError when the folder is missing or empty and :class:`DamagedShard` for an
    unreadable part, a part without the shard columns, or a folder that differs from its
    manifest (parts missing or extra, another row count); the message starts with ``key``.
    """
    try:
        files = list_shard_files(shard_dir)
    except ValueError as e:
        raise ValueError(f"{key}: {e}") from None
    footers = read_footers(files)
    damaged = [f for f in footers if f.problem]
    if damaged:
        named = "; ".join(f"{f.uri}: {f.problem}" for f in damaged[:MAX_NAMED])
        more = f" (and {len(damaged) - MAX_NAMED} more damaged parts)" if len(damaged) > MAX_NAMED else ""
        raise DamagedShard(f"{key}: {named}{more}; re-run `road-ray prepare` or restore the file")
    compare_with_manifest(shard_dir, key, footers)
    return files


def read_footers(files: list[str]) -> list[Footer]:
    """Every part's footer, in the order of ``files`` (a thread pool for many parts)."""
    if len(files) <= 1:
        return [read_footer(f) for f in files]
    with ThreadPoolExecutor(max_workers=min(MAX_THREADS, len(files))) as pool:
        return list(pool.map(read_footer, files))


def read_footer(uri: str) -> Footer:
    fs, path = open_fs(uri)
    try:
        meta = pq.read_metadata(path, filesystem=fs)
    except (pa.ArrowException, OSError) as e:
        return Footer(uri, problem=f"not a Parquet file (footer unreadable: truncated?): {_what(e)}")
    missing = [c for c in REQUIRED_COLUMNS if c not in meta.schema.names]
    if missing:
        return Footer(uri, problem=f"lacks the shard columns {missing} (docs/ARCHITECTURE.md, Shards)")
    return Footer(uri, rows=meta.num_rows)


def compare_with_manifest(shard_dir: str, key: str, footers: list[Footer]) -> None:
    """The folder ``OUT/SPLIT`` against ``OUT/manifest.json``'s entry for ``SPLIT``, if both exist."""
    dataset_dir, split = posixpath.split(shard_dir.rstrip("/"))
    manifest_uri = join(dataset_dir, MANIFEST)
    entry = _manifest_entry(manifest_uri, split, key)
    if entry is None:
        return
    listed = {posixpath.basename(p) for p in entry.get("shards", [])}
    present = {posixpath.basename(f.uri) for f in footers}
    if listed - present:
        missing = sorted(listed - present)
        raise DamagedShard(
            f"{key}: {join(shard_dir, missing[0])} is listed in {manifest_uri} but missing"
            + (f" ({len(missing)} parts missing)" if len(missing) > 1 else "")
        )
    if present - listed:
        extra = sorted(present - listed)
        raise DamagedShard(
            f"{key}: {join(shard_dir, extra[0])} is not listed in {manifest_uri}"
            + (f" ({len(extra)} such parts)" if len(extra) > 1 else "")
            + "; a part of another prepare run? re-run `road-ray prepare` or remove it"
        )
    rows = sum(f.rows for f in footers)
    if "rows" in entry and rows != int(entry["rows"]):
        raise DamagedShard(f"{key}: {shard_dir} holds {rows} rows, {manifest_uri} says {entry['rows']}")


def _manifest_entry(manifest_uri: str, split: str, key: str) -> dict | None:
    import json

    text = read_text(manifest_uri)
    if text is None:
        return None
    try:
        manifest = json.loads(text)
    except ValueError as e:
        raise DamagedShard(f"{key}: {manifest_uri}: not valid JSON ({e})") from None
    entry = (manifest.get("splits") or {}).get(split) if isinstance(manifest, dict) else None
    return entry if isinstance(entry, dict) else None


def named_read_error(key: str, shard_dir: str, error: BaseException) -> DamagedShard:
    """A read error met after the footer check (Ray Data's reads name no file), as one line
    naming the key and the part :func:`locate_damaged_part` finds, else the folder."""
    message = _what(error)
    try:
        where = locate_damaged_part(shard_dir) or f"a part of {shard_dir} (not located)"
    except ValueError:  # the folder itself went away
        where = shard_dir
    return DamagedShard(f"{key}: {where}: {message}")


def locate_damaged_part(shard_dir: str, budget_bytes: int = LOCATE_BUDGET_BYTES) -> str | None:
    """``"URI: what"`` of the first part that cannot be read, or None: footers first, then each
    part's first row (what Ray samples when it plans a read), then whole parts while they fit
    in ``budget_bytes`` (a damaged page deep inside a large split may stay unlocated)."""
    files = list_shard_files(shard_dir)
    damaged = next((f for f in read_footers(files) if f.problem), None)
    if damaged:
        return f"{damaged.uri}: {damaged.problem}"
    for uri in files:
        problem = _read_problem(uri, first_row_only=True)
        if problem:
            return f"{uri}: {problem}"
    spent = 0
    for uri in files:
        fs, path = open_fs(uri)
        spent += fs.get_file_info(path).size or 0
        if spent > budget_bytes:
            return None
        problem = _read_problem(uri, first_row_only=False)
        if problem:
            return f"{uri}: {problem}"
    return None


def _read_problem(uri: str, *, first_row_only: bool) -> str | None:
    fs, path = open_fs(uri)
    try:
        pf = pq.ParquetFile(path, filesystem=fs)
        for _ in pf.iter_batches(batch_size=1 if first_row_only else 64, columns=list(REQUIRED_COLUMNS)):
            if first_row_only:
                break
    except (pa.ArrowException, OSError) as e:
        return f"unreadable ({_what(e)})"
    return None


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Invalid)\b")


def _what(error: BaseException) -> str:
    """What went wrong, in one line: from the last exception line of a (remote) traceback on."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    starts = [i for i, line in enumerate(lines) if _EXCEPTION_LINE.match(line)]
    if starts:
        return " ".join(lines[starts[-1] :])[:500]
    return lines[-1][:500] if lines else type(error).__name__


class NamedReadErrors:
    """A stream (a Ray ``DataIterator`` or ``Dataset``) whose read errors become one line naming
    ``key`` and the damaged part (:func:`named_read_error`); other errors pass unchanged."""

    def __init__(self, stream, key: str, shard_dir: str):
        self.stream, self.key, self.shard_dir = stream, key, shard_dir

    def iter_torch_batches(self, **options):
        return self._named(self.stream.iter_torch_batches(**options))

    def iter_batches(self, **options):
        return self._named(self.stream.iter_batches(**options))

    def _named(self, batches):
        try:
            yield from batches
        except DamagedShard:
            raise
        except Exception as e:
            if not is_read_error(e):
                raise
            raise named_read_error(self.key, self.shard_dir, e) from None


def is_read_error(error: BaseException) -> bool:
    """pyarrow's or the file system's error, raised here or inside a Ray task (its ``cause``)."""
    cause = getattr(error, "cause", None) or error
    if isinstance(cause, (pa.ArrowException, OSError)):
        return True
    text = str(error).lower()
    return "parquet" in text or "pyarrow" in text


def damaged_shard_in(error: BaseException) -> DamagedShard | None:
    """The DamagedShard a Ray Train run failed with (in one of its workers' failures), if any."""
    candidates = [error, *getattr(error, "worker_failures", {}).values()]
    for e in candidates:
        cause = getattr(e, "cause", None)
        for c in (cause, e):
            if isinstance(c, DamagedShard):
                return DamagedShard(c.args[0] if c.args else str(c))
    return None
