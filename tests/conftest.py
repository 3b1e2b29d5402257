"""Shared fixtures. Ray tests share ONE local Ray instance per test session (startup costs seconds)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray instance for the whole test session (2 CPUs, a small object store)."""
    import ray

    from road_ray.on_ray.train import init_ray

    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    # Leave CPUs for Ray Data: train workers use fractional CPUs in tests (docs/ray.md).
    init_ray(num_cpus=2, object_store_memory=300 * 1024 * 1024, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def road_ray_home(tmp_path_factory):
    """A session-wide ROAD_RAY_HOME: MiniCity 'small' and the pretrained small backbone, built once."""
    home = os.environ.get("ROAD_RAY_TEST_HOME") or str(tmp_path_factory.mktemp("road_ray_home"))
    os.environ["ROAD_RAY_HOME"] = home
    from road_ray.engine.resolve import ensure_minicity

    ensure_minicity("small", log=lambda s: None)
    return home
