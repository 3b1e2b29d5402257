"""Where road-ray keeps what it generates (MiniCity shards, the pretrained small backbone, runs).

``ROAD_RAY_HOME`` (default ``~/.cache/road-ray``) holds prepared MiniCity shards and the
pretrained small backbone, both keyed by content so they are built once; runs go to
``--storage`` (default ``~/road-ray-results``). On a cluster, point both at shared storage.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


def home() -> Path:
    return Path(os.environ.get("ROAD_RAY_HOME", Path.home() / ".cache" / "road-ray")).expanduser()


def default_storage() -> str:
    return os.environ.get("ROAD_RAY_STORAGE", str(Path.home() / "road-ray-results"))


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive inter-process lock (two trials must not build the same cache at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
