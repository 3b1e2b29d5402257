"""Errors a run ends with that the command line shows as one line (no Ray needed to import them)."""

from __future__ import annotations


class RunStalled(RuntimeError):
    """A run made no progress for ``run.stall_timeout_s`` seconds (``road_ray/on_ray/watchdog.py``);
    the message is one line: what it waited for and how to fix it."""


class DamagedShard(ValueError):
    """A shard folder's part is unreadable, missing or not what its manifest says
    (``road_ray/data/shard_check.py``); the message names the config key and the file."""
