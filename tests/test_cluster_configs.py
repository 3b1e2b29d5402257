"""Every file in cluster/ is checked here, without starting Ray or touching a cloud.

- Launcher configs (aws.yaml, gcp.yaml): valid against the cluster-launcher JSON schema that
  ships with Ray, and through the same preparation ``ray up`` does before it calls the cloud;
  the image is the installed Ray version's GPU image; GPU worker types with sane bounds; the
  dashboard on loopback and token auth in the start commands, whose flags ``ray start`` knows.
- KubeRay manifests: structure (ray.io/v1 kinds, head ``num-cpus: "0"``, ``nvidia.com/gpu``
  limits, memory-backed /dev/shm, token auth, ClusterIP), ``rayVersion``, and a RayJob
  entrypoint that ``tune.py`` parses, with a search space that exists and loads.
- runtime_env.yaml: only keys Ray's runtime env knows, accepted by ``RuntimeEnv``, and the
  dependencies of pyproject.toml.
- README.md: every command in its shell blocks parses with the real parsers (``road-ray``,
  ``tune.py``, the ``ray`` CLI) and every file it names exists.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
LAUNCHER_CONFIGS = ["aws.yaml", "gcp.yaml"]
KUBERAY = ["kuberay-raycluster.yaml", "kuberay-rayjob.yaml"]
CHECKED = {*LAUNCHER_CONFIGS, *KUBERAY, "runtime_env.yaml", "README.md"}
IMAGE = re.compile(r"^rayproject/ray:(?P<version>\d+\.\d+\.\d+)-py(?P<py>\d{2,3})-(?P<flavor>gpu|cu\d+)$")
LOOPBACK = "--dashboard-host=127.0.0.1"


def _load(name: str) -> Any:
    return yaml.safe_load((CLUSTER / name).read_text())


def _ray_version() -> str:
    import ray  # importing starts nothing

    return ray.__version__


def test_every_file_in_cluster_is_checked():
    present = {p.name for p in CLUSTER.iterdir() if not p.name.startswith(".")}
    assert present == CHECKED, (
        f"unchecked files in cluster/: {sorted(present - CHECKED)}; missing: {sorted(CHECKED - present)}"
    )


# ---------------------------------------------------------------------------------------
# The ray CLI's own parsers (click), to check flags without running anything


@functools.cache
def _ray_cli():
    from ray.scripts.scripts import cli

    return cli


def _parse_ray(args: list[str]):
    """Parse ``ray ARGS`` with Ray's click commands; a click error names the bad option."""
    import click

    cli = _ray_cli()
    ctx = cli.make_context("ray", list(args))
    command = cli
    while isinstance(command, click.Group):
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        name, sub, rest = command.resolve_command(ctx, rest)
        ctx = sub.make_context(name, rest, parent=ctx)
        command = sub
    return ctx


def _ray_start_commands(commands: list[str]) -> list[list[str]]:
    """The argument lists of the ``ray start`` calls in launcher start commands."""
    found = []
    for command in commands:
        for part in command.split(";"):
            words = shlex.split(part)
            while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):  # VAR=value prefixes
                words = words[1:]
            if words[:2] == ["ray", "start"]:
                found.append(words[1:])
    return found


# ---------------------------------------------------------------------------------------
# Launcher configs


@pytest.fixture(scope="module")
def ray_schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_config_validates_against_rays_schema(name, ray_schema):
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _load(name)
    jsonschema.validate(config, ray_schema)
    # What `ray up` does before it talks to the cloud: fill in the provider's defaults, merge
    # the setup commands, check the docker section and the node types, validate again.
    validate_config(prepare_config(copy.deepcopy(config)))


def test_schema_validation_catches_a_misspelled_key(ray_schema):
    import jsonschema

    config = _load("aws.yaml")
    config["available_node_types"]["head_cpu"]["min_worker"] = 0
    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        jsonschema.validate(config, ray_schema)


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_images_are_the_installed_rays_gpu_image(name):
    config = _load(name)
    docker = config["docker"]
    images = [docker["image"], *(docker.get(k) for k in ("head_image", "worker_image") if docker.get(k))]
    images += [
        t["docker"]["worker_image"]
        for t in config["available_node_types"].values()
        if t.get("docker", {}).get("worker_image")
    ]
    for image in images:
        m = IMAGE.match(image)
        assert m, f"{name}: image {image!r} is not a rayproject/ray GPU image (rayproject/ray:X.Y.Z-pyNN-gpu)"
        assert m["version"] == _ray_version(), (
            f"{name}: image {image!r} does not match the installed ray {_ray_version()}"
        )


def _shm_gb(options: list[str]) -> float:
    sizes = [o.split("=", 1)[1] for o in options if o.startswith("--shm-size=")]
    if not sizes:
        return 0.0
    value = sizes[-1].lower()
    scale = {"g": 1.0, "m": 1 / 1024, "k": 1 / 1024**2}
    return float(value[:-1]) * scale[value[-1]] if value[-1] in scale else float(value) / 1024**3


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_node_types(name):
    config = _load(name)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head is a CPU node"
    assert head["resources"].get("CPU") == 0, "no trials on the head: it advertises no CPUs"
    docker = config["docker"]
    assert _shm_gb(docker.get("run_options", []) + docker.get("head_run_options", [])) >= 1, "head /dev/shm"

    gpu_types = {k: t for k, t in types.items() if k != config["head_node_type"] and t["resources"].get("GPU", 0) >= 1}
    assert gpu_types, f"{name}: no GPU worker type"
    for key, t in gpu_types.items():
        assert 0 <= t.get("min_workers", 0) <= t["max_workers"], f"{key}: min_workers/max_workers"
        assert t["max_workers"] >= 1, key
        assert t["resources"]["CPU"] >= 2 * t["resources"]["GPU"], f"{key}: CPUs for Ray Data beside each GPU"
        options = docker.get("run_options", []) + t.get("docker", {}).get(
            "worker_run_options", docker.get("worker_run_options", [])
        )
        assert _shm_gb(options) >= 4, f"{key}: --shm-size for the object store"
        node = t["node_config"]
        if config["provider"]["type"] == "aws":
            assert re.match(r"^(g4dn|g5|g6e?|p3|p4d|p5)\.", node["InstanceType"]), (
                f"{key}: {node['InstanceType']} is not a GPU type"
            )
        else:
            assert node.get("guestAccelerators") or re.match(r"^(a2|a3|g2)-", node["machineType"]), f"{key}: no GPU"
            assert node["scheduling"]["onHostMaintenance"] == "TERMINATE", f"{key}: GPU VMs cannot live-migrate"
    assert config["max_workers"] >= max(t["max_workers"] for t in gpu_types.values())


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_installs_the_project_on_every_node(name):
    config = _load(name)
    assert config["file_mounts"]["~/road-ray"] == ".", "the checkout goes to ~/road-ray on every node"
    assert any(re.search(r"\bpip install\b.*~/road-ray(\s|$)", c) for c in config["setup_commands"]), (
        "setup_commands (all nodes) must pip install ~/road-ray"
    )


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_security_defaults(name):
    config = _load(name)
    text = (CLUSTER / name).read_text()
    assert "0.0.0.0" not in text, f"{name}: nothing may listen on all interfaces by default"
    head = _ray_start_commands(config["head_start_ray_commands"])
    assert len(head) == 1 and "--head" in head[0]
    assert LOOPBACK in head[0], "the dashboard/job server must listen on loopback"
    assert all(
        re.search(r"\bRAY_AUTH_MODE=token\s+ray start\b", c)
        for k in ("head_start_ray_commands", "worker_start_ray_commands")
        for c in config[k]
        if "ray start" in c
    ), "every ray start runs with token auth"
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token", "the same token on every node"


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_start_commands_use_real_ray_start_flags(name):
    config = _load(name)
    calls = _ray_start_commands(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert len(calls) == 2
    for args in calls:
        _parse_ray(args)  # click raises NoSuchOption for a misspelled flag


# ---------------------------------------------------------------------------------------
# KubeRay


def _pod_specs(cluster_spec: dict) -> list[tuple[str, dict]]:
    out = [("head", cluster_spec["headGroupSpec"]["template"]["spec"])]
    out += [(g["groupName"], g["template"]["spec"]) for g in cluster_spec["workerGroupSpecs"]]
    return out


def check_ray_cluster_spec(spec: dict, where: str) -> None:
    """The checks shared by the RayCluster and the RayJob's rayClusterSpec."""
    assert spec["rayVersion"] == _ray_version(), f"{where}: rayVersion"
    assert spec.get("authOptions", {}).get("mode") == "token", f"{where}: token authentication"
    head = spec["headGroupSpec"]
    assert head["rayStartParams"].get("num-cpus") == "0", f'{where}: head num-cpus must be the string "0"'
    assert head.get("serviceType", "ClusterIP") == "ClusterIP", f"{where}: the head service stays inside the cluster"
    for group in [head, *spec["workerGroupSpecs"]]:
        params = [f"--{k}={v}" for k, v in group.get("rayStartParams", {}).items()]
        _parse_ray(["start", *params])

    gpu_groups = [
        g
        for g in spec["workerGroupSpecs"]
        if all(int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) >= 1 for c in g["template"]["spec"]["containers"])
    ]
    assert gpu_groups, f"{where}: no worker group with nvidia.com/gpu limits"
    for g in spec["workerGroupSpecs"]:
        assert 0 <= g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"], (
            f"{where}: {g['groupName']} replicas"
        )

    for group, pod in _pod_specs(spec):
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in pod["containers"]:
            m = IMAGE.match(c["image"])
            assert m and m["version"] == _ray_version(), f"{where}/{group}: image {c['image']}"
            shm = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/dev/shm"]
            assert shm, f"{where}/{group}: no /dev/shm mount"
            assert volumes[shm[0]["name"]].get("emptyDir", {}).get("medium") == "Memory", (
                f"{where}/{group}: /dev/shm must be a memory emptyDir"
            )


def test_kuberay_raycluster():
    docs = [d for d in yaml.safe_load_all((CLUSTER / "kuberay-raycluster.yaml").read_text()) if d]
    assert [(d["apiVersion"], d["kind"]) for d in docs] == [("ray.io/v1", "RayCluster")]
    check_ray_cluster_spec(docs[0]["spec"], "kuberay-raycluster.yaml")


@functools.cache
def _tune_parser():
    spec = importlib.util.spec_from_file_location("road_ray_tune_script", REPO / "tune.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines build_parser(); main() only runs under __main__
    return module.build_parser()


def check_tune_command(words: list[str], where: str) -> None:
    """``python tune.py ...``: the options parse and the search space exists and loads."""
    from road_ray.sweeps.space import load_space

    assert words[:2] == ["python", "tune.py"], f"{where}: {shlex.join(words)}"
    try:
        args = _tune_parser().parse_args(words[2:])
    except SystemExit:
        raise AssertionError(f"{where}: tune.py rejects {shlex.join(words[2:])}") from None
    if args.space:
        if "/" in args.space or args.space.endswith(".yaml"):
            assert (REPO / args.space).is_file(), f"{where}: search space {args.space} does not exist"
            assert args.space.startswith("search_spaces/"), f"{where}: {args.space}"
            load_space(str(REPO / args.space))
        else:
            load_space(args.space)  # a shipped space's name


def test_kuberay_rayjob():
    docs = [d for d in yaml.safe_load_all((CLUSTER / "kuberay-rayjob.yaml").read_text()) if d]
    assert [(d["apiVersion"], d["kind"]) for d in docs] == [("ray.io/v1", "RayJob")]
    spec = docs[0]["spec"]
    words = shlex.split(spec["entrypoint"])
    check_tune_command(words, "kuberay-rayjob.yaml entrypoint")
    args = _tune_parser().parse_args(words[2:])
    assert args.space and args.storage and re.match(r"^(s3|gs)://", args.storage), "the sweep writes to object storage"
    assert spec["shutdownAfterJobFinishes"] is True
    check_ray_cluster_spec(spec["rayClusterSpec"], "kuberay-rayjob.yaml rayClusterSpec")

    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    check_runtime_env(runtime_env, "kuberay-rayjob.yaml runtimeEnvYAML")
    assert re.match(r"^(s3|gs|https)://.+\.zip$", runtime_env["working_dir"]), "pods need the code as a remote zip"
    shared = _load("runtime_env.yaml")
    assert runtime_env["pip"] == shared["pip"] and runtime_env["env_vars"] == shared["env_vars"], (
        "runtimeEnvYAML drifted from cluster/runtime_env.yaml (pip, env_vars)"
    )


# ---------------------------------------------------------------------------------------
# runtime_env.yaml


def check_runtime_env(env: dict, where: str) -> None:
    from ray.runtime_env import RuntimeEnv

    public = {k for k in RuntimeEnv.known_fields if not k.startswith("_")}
    unknown = set(env) - public
    assert not unknown, f"{where}: keys Ray's runtime_env does not know: {sorted(unknown)} (known: {sorted(public)})"
    RuntimeEnv(**env)  # Ray's own type checks (env_vars values are strings, pip's shape, ...)
    assert env["env_vars"].get("RAY_TRAIN_V2_ENABLED") == "1", where
    assert env["env_vars"].get("ROAD_RAY_HOME"), where


def _pyproject_dependencies() -> list[str]:
    try:
        import tomllib  # Python >= 3.11
    except ImportError:  # the installed metadata says the same (without the extras' lines)
        from importlib.metadata import requires

        return [r for r in requires("road-ray") or [] if "extra ==" not in r]
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]


def test_runtime_env():
    from packaging.requirements import Requirement

    env = _load("runtime_env.yaml")
    check_runtime_env(env, "runtime_env.yaml")
    assert (REPO / env["working_dir"] / "tune.py").is_file(), "working_dir is the repository root (run from there)"
    wanted = {Requirement(r).name: str(Requirement(r).specifier) for r in _pyproject_dependencies()}
    wanted.pop("ray")  # the image provides Ray
    packages = env["pip"]["packages"] if isinstance(env["pip"], dict) else env["pip"]
    listed = {Requirement(r).name: str(Requirement(r).specifier) for r in packages}
    assert listed == wanted, "runtime_env.yaml pip must list pyproject.toml's dependencies (without ray)"


# ---------------------------------------------------------------------------------------
# The guide


def _shell_commands(markdown: str) -> list[list[str]]:
    """The commands in the ```bash blocks: continuations joined, comments dropped, split at
    ``&&``/``||``/``;``/``|``, leading ``VAR=value`` assignments removed. ``export`` lines are
    skipped (their values are shell expansions)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if not line.strip() or line.lstrip().startswith(("#", "export ")):
                continue
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            lexer.commenters = "#"
            current: list[str] = []
            for token in lexer:
                if token in ("&&", "||", ";", "|", "&"):
                    commands.append(current)
                    current = []
                else:
                    current.append(token)
            commands.append(current)
    out = []
    for words in commands:
        while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
            words = words[1:]
        if words:
            out.append(words)
    return out


@pytest.fixture(scope="module")
def guide_commands() -> list[list[str]]:
    return _shell_commands((CLUSTER / "README.md").read_text())


def _road_ray_subcommands() -> set[str]:
    from road_ray.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return set(sub.choices)


def check_road_ray_command(words: list[str], where: str) -> None:
    from road_ray.cli import build_parser

    assert words[1] in _road_ray_subcommands(), f"{where}: road-ray has no subcommand {words[1]!r}"
    try:
        build_parser().parse_args(words[1:])
    except SystemExit:
        raise AssertionError(f"{where}: road-ray rejects {shlex.join(words[1:])}") from None


def check_ray_command(words: list[str], where: str) -> None:
    import click

    try:
        ctx = _parse_ray(words[1:])
    except click.ClickException as e:
        raise AssertionError(f"{where}: {shlex.join(words)}: {e.format_message()}") from None
    params = ctx.params
    if params.get("cluster_config_file"):
        assert (REPO / params["cluster_config_file"]).is_file(), (
            f"{where}: {params['cluster_config_file']} does not exist"
        )
    if params.get("runtime_env"):
        assert (REPO / params["runtime_env"]).is_file(), f"{where}: {params['runtime_env']} does not exist"
    if ctx.info_name == "submit":
        entrypoint = list(params["entrypoint"])
        if entrypoint[:2] == ["python", "tune.py"]:
            check_tune_command(entrypoint, where)
        if params.get("address"):
            assert params["address"].startswith("http://127.0.0.1:"), f"{where}: submit through the local tunnel"


def test_guide_commands_parse(guide_commands):
    seen = set()
    for words in guide_commands:
        where = f"cluster/README.md: {shlex.join(words)[:80]}"
        if words[0] == "road-ray":
            check_road_ray_command(words, where)
            seen.add(f"road-ray {words[1]}")
        elif words[:2] == ["python", "tune.py"]:
            check_tune_command(words, where)
            seen.add("tune.py")
        elif words[0] == "ray":
            check_ray_command(words, where)
            seen.add(" ".join(w for w in words[:3] if not w.startswith("-") and "/" not in w))
        elif words[:2] == ["kubectl", "apply"]:
            path = words[words.index("-f") + 1]
            assert (REPO / path).is_file(), f"{where}: {path} does not exist"
            seen.add(f"kubectl apply {path}")
    # The guide goes all the way: cluster up, submit, follow, report, evaluate, KubeRay.
    for step in [
        "road-ray prepare",
        "ray up",
        "ray dashboard",
        "ray job submit",
        "ray job logs",
        "road-ray report",
        "road-ray eval",
        "ray down",
        "kubectl apply cluster/kuberay-rayjob.yaml",
    ]:
        assert any(s.startswith(step) for s in seen), f"cluster/README.md has no `{step}` command"


def test_guide_mentions_only_existing_files(guide_commands):
    text = (CLUSTER / "README.md").read_text()
    named = set(re.findall(r"\b((?:cluster|search_spaces|tests|road_ray)/[\w./-]+\w)", text))
    named |= {w for words in guide_commands for w in words if re.match(r"^(cluster|search_spaces)/", w)}
    missing = sorted(p for p in named if not (REPO / p).exists())
    assert not missing, f"cluster/README.md names files that do not exist: {missing}"


def test_guide_covers_the_security_defaults():
    text = (CLUSTER / "README.md").read_text()
    for needle in [
        "RAY_AUTH_MODE=token",
        "ray get-auth-token --generate",
        LOOPBACK,
        "port-forward",
        "--max-concurrent",
    ]:
        assert needle in text, f"cluster/README.md does not mention {needle}"


def test_road_ray_subcommands_in_the_guide_have_help(guide_commands):
    """The installed ``road-ray`` entry point documents every subcommand the guide uses."""
    subcommands = sorted({w[1] for w in guide_commands if w[0] == "road-ray"})
    exe = Path(sys.executable).parent / "road-ray"
    for sub in subcommands:
        r = subprocess.run([str(exe), sub, "--help"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "usage: road-ray" in r.stdout, f"road-ray {sub} --help: {r.stderr[-500:]}"
