"""Shared fixtures. Ray tests share ONE local Ray instance per test session (startup costs seconds)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray instance for the whole test session (2 CPUs, a small object store)."""
    import ray

    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    # Leave CPUs for Ray Data: train workers use fractional CPUs in tests (ray-notes).
    if not ray.is_initialized():
        ray.init(num_cpus=2, object_store_memory=300 * 1024 * 1024, include_dashboard=True, log_to_driver=False)
    yield ray
    ray.shutdown()
