"""Every module of road_ray imports, and only the Ray wiring (road_ray.on_ray) imports Ray.

The modules are found by walking the package, so a new module is covered the day it lands.
Imports run in fresh interpreters, not in pytest's (which may hold Ray already): the modules
outside on_ray in one, on_ray's in another, side by side.
"""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path
from subprocess import PIPE

import road_ray

RAY_WIRING = "road_ray.on_ray"

# Imports `modules` (argv[1], JSON) one by one and prints one JSON line per module: whether it
# imported and whether Ray was loaded after it. It stops after the first module that loads
# Ray: from then on Ray is in sys.modules whoever imports it, so later modules could not be
# told apart; the test runs a fresh interpreter for the rest.
PROBE = r"""
import importlib, json, sys

def ray_loaded():
    return any(m == "ray" or m.startswith("ray.") for m in sys.modules)

for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
        error = None
    except BaseException as e:
        error = f"{type(e).__name__}: {e}"
    print(json.dumps({"module": name, "error": error, "ray": ray_loaded()}), flush=True)
    if ray_loaded():
        break
"""


def package_modules() -> list[str]:
    """Every module and package of road_ray, walked with ``pkgutil`` over the source folders
    (``iter_modules`` level by level rather than ``walk_packages``, which imports every package
    to look inside it: torch and all in pytest's process, before the probe)."""
    found = ["road_ray"]

    def walk(folder: Path, prefix: str) -> None:
        for info in pkgutil.iter_modules([str(folder)], prefix):
            found.append(info.name)
            if info.ispkg:
                walk(folder / info.name.rsplit(".", 1)[1], info.name + ".")

    walk(Path(road_ray.__file__).parent, "road_ray.")
    return sorted(found)


def in_ray_wiring(name: str) -> bool:
    return name == RAY_WIRING or name.startswith(RAY_WIRING + ".")


def probe(*groups: list[str]) -> list[dict]:
    """Import every group of modules in fresh interpreters, the groups side by side; one result
    per module, Ray attributed to the module whose import loaded it (a fresh interpreter takes
    over after each one that did)."""
    results: list[dict] = []
    pending = [list(group) for group in groups if group]
    while pending:
        runs = [
            (
                rest,
                subprocess.Popen([sys.executable, "-c", PROBE, json.dumps(rest)], stdout=PIPE, stderr=PIPE, text=True),
            )
            for rest in pending
        ]
        pending = []
        for rest, proc in runs:
            stdout, stderr = proc.communicate(timeout=180)
            lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
            assert lines, f"the import probe failed before its first module: {stderr[-2000:]}"
            results += lines
            if len(lines) < len(rest):
                pending.append(rest[len(lines) :])
    return results


def test_the_walk_finds_every_part_of_the_package():
    modules = package_modules()
    for name in ("road_ray.cli", "road_ray.bench.step", "road_ray.bench.data", "road_ray.on_ray.train"):
        assert name in modules
    files = {p for p in Path(road_ray.__file__).parent.rglob("*.py")}
    assert len(modules) == len(files), "a module the walk did not reach (a folder without __init__.py?)"


def test_every_module_imports_and_only_on_ray_loads_ray():
    modules = package_modules()
    plain = [m for m in modules if not in_ray_wiring(m)]
    wiring = [m for m in modules if in_ray_wiring(m)]
    results = probe(plain, wiring)
    failed = {r["module"]: r["error"] for r in results if r["error"]}
    assert not failed, f"modules that do not import: {failed}"
    loads_ray = [r["module"] for r in results if r["ray"] and not in_ray_wiring(r["module"])]
    assert not loads_ray, f"importing these loads Ray (only {RAY_WIRING} may): {loads_ray}"
    assert len(results) == len(modules)


def test_no_module_outside_on_ray_imports_ray_even_lazily():
    """Not even inside a function: a module outside on_ray reaches Ray through road_ray.on_ray."""
    root = Path(road_ray.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        if path.relative_to(root).parts[0] == "on_ray":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            if any(n == "ray" or n.startswith("ray.") for n in names):
                offenders.append(f"{path.relative_to(root.parent)}:{node.lineno}")
    assert not offenders, f"Ray imported outside road_ray/on_ray/: {offenders}"
