"""Only the Ray wiring (road_ray.on_ray) imports Ray."""

import subprocess
import sys

PLAIN_MODULES = [
    "road_ray",
    "road_ray.config",
    "road_ray.labels",
    "road_ray.cli",
    "road_ray.models",
    "road_ray.road",
    "road_ray.data.transforms",
    "road_ray.data.prepare",
    "road_ray.data.minicity",
    "road_ray.engine.loop",
    "road_ray.engine.evaluate_cli",
    "road_ray.engine.pretrain",
    "road_ray.sweeps.space",
    "road_ray.sweeps.report",
]


def test_road_ray_imports_no_ray():
    code = (
        "import importlib, sys\n"
        f"for m in {PLAIN_MODULES!r}: importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))\n"
        "assert not bad, bad[:5]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
