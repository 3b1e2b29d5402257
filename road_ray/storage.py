"""Where road-ray reads and writes: a local path or a URI, through pyarrow's file systems.

Shards, checkpoints, Tune experiments and reports can live on local disk or on object storage
(``s3://bucket/...``, ``gs://...``, ``file:///...``), so every machine of a cluster sees the same
files. This module is the one place that knows the difference; everything else passes strings.
"""

from __future__ import annotations

import posixpath
import shutil
import tempfile
from pathlib import Path

import pyarrow.fs as pafs

SCHEME_SEP = "://"


def is_uri(location: str | Path) -> bool:
    """True for ``scheme://...`` (object storage or ``file://``), False for a plain path."""
    return SCHEME_SEP in str(location)


def scheme(location: str) -> str:
    """``"s3"`` for ``s3://bucket/x``; ``""`` for a plain path."""
    return location.split(SCHEME_SEP, 1)[0] if is_uri(location) else ""


def open_fs(location: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow file system and the path inside it, for a local path or a URI."""
    if is_uri(location):
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), str(location)


def join(base: str, *parts: str) -> str:
    """Join path parts of a local path or a URI (always with '/')."""
    return posixpath.join(str(base).rstrip("/"), *parts)


def absolute(location: str) -> str:
    """A URI as it is; a local path expanded (``~``) and made absolute (Ray wants absolute paths)."""
    return location if is_uri(location) else str(Path(location).expanduser().resolve())


def with_scheme(storage: str, path: str) -> str:
    """Give a file-system path (what pyarrow and Ray report: ``bucket/run/checkpoint_...``) back
    the scheme of the storage it lives on, so that it can be opened again from anywhere."""
    if is_uri(storage) and not is_uri(path):
        return f"{scheme(storage)}{SCHEME_SEP}{path}"
    return path


def exists(location: str) -> bool:
    fs, path = open_fs(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(location: str) -> bool:
    fs, path = open_fs(location)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def read_text(location: str) -> str | None:
    """The file's text, or None when it does not exist (or cannot be read)."""
    fs, path = open_fs(location)
    try:
        with fs.open_input_stream(path) as f:
            return f.read().decode()
    except (FileNotFoundError, OSError):
        return None


def write_text(location: str, text: str) -> None:
    """Write a small text file, creating its folder; on object storage a PUT is atomic."""
    fs, path = open_fs(location)
    fs.create_dir(posixpath.dirname(path), recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(text.encode())


def copy_to_local(location: str, prefix: str = "road-ray-") -> str:
    """A local copy of a folder given by URI (in a new temporary folder); a plain path as it is."""
    if not is_uri(location):
        return location
    fs, path = open_fs(location)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        raise FileNotFoundError(f"{location}: no such folder")
    local = tempfile.mkdtemp(prefix=prefix)
    try:
        pafs.copy_files(path, local, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    except BaseException:
        shutil.rmtree(local, ignore_errors=True)
        raise
    return local
