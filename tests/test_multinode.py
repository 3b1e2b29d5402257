"""A sweep on a two-node Ray cluster, the way cluster/README.md runs one (slow; marker ``multinode``).

Two Ray nodes on this machine (a head and a second node with distinct ports and temp dirs;
Ray allows several nodes on one IP), token authentication on, the dashboard on loopback,
shards on a ``file://`` URI (the stand-in for S3/GCS) and results in a folder both nodes see. The sweep
is submitted with ``ray job submit --working-dir .`` and its one trial trains with two Train
workers that must land on different nodes; then ``road-ray eval --experiment ... --best``
evaluates what the sweep selected.

This test starts its own cluster, so it cannot share a process with the session Ray of
``conftest.ray_session``: it is excluded from the default run (``-m "not multinode"`` in
pyproject.toml) and runs in its own pytest invocation, ``pytest -m multinode``. Everything
Ray runs in subprocesses here; the processes are stopped by process group (and by their temp
dir), never with ``ray stop``, which would also stop every other Ray on the machine.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.multinode]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")
ROAD_RAY = str(BIN / "road-ray")
OBJECT_STORE_BYTES = 150 * 1024 * 1024
NODE_CPUS = 2  # logical CPUs per node (4 on this 2-core machine: the work is tiny)
# One Train worker per node: 2 x 1.2 CPUs do not fit on one node, so the placement group
# (PACK) must put one bundle on each; 0.8 CPU per node stays free for the trial function
# (0.1) and Ray Data's 0.5-CPU tasks.
CPUS_PER_WORKER = 1.2
START_ATTEMPTS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _agent_ports() -> list[str]:
    # Explicit agent ports: with port 0 the raylet waits only 15 s for the dashboard agent to
    # write its port files, and a busy machine misses that window (the raylet then aborts).
    return [
        f"--dashboard-agent-listen-port={_free_port()}",
        f"--dashboard-agent-grpc-port={_free_port()}",
        f"--metrics-export-port={_free_port()}",
        f"--runtime-env-agent-port={_free_port()}",
    ]


def _routable_ip() -> str | None:
    """This machine's non-loopback address (what Ray advertises), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
            ip = s.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


class TwoNodeCluster:
    """``ray start --block`` head + second node, each in its own process group."""

    def __init__(self, base: Path):
        base.mkdir(parents=True)
        self.base = base
        self.port, self.dashboard_port = _free_port(), _free_port()
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        token = base / "auth_token"
        token.write_text(secrets.token_hex(32))
        env = dict(os.environ)
        for var in ("RAY_ADDRESS", "RAY_AUTH_TOKEN"):
            env.pop(var, None)
        env.update(
            RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), RAY_TRAIN_V2_ENABLED="1",
            PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # the job's `python` is this venv's
            ROAD_RAY_HOME=str(base / "home"), PYTHONUNBUFFERED="1",
        )  # fmt: skip
        self.env = env
        self.procs: list[subprocess.Popen] = []

    def _start_node(self, args: list[str], log: str) -> None:
        out = open(self.base / log, "w")
        self.procs.append(
            subprocess.Popen([RAY, "start", "--block", *args], env=self.env, stdout=out,
                             stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        )

    def start_head(self) -> None:
        self._start_node([
            "--head", f"--port={self.port}", f"--num-cpus={NODE_CPUS}", '--resources={"node_head": 1}',
            "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
            f"--ray-client-server-port={_free_port()}", *_agent_ports(),
            f"--temp-dir={self.base / 'head'}", f"--object-store-memory={OBJECT_STORE_BYTES}",
        ], "head.log")  # fmt: skip

    def start_worker(self) -> None:
        self._start_node([
            f"--address=127.0.0.1:{self.port}", f"--num-cpus={NODE_CPUS}", '--resources={"node_worker": 1}',
            *_agent_ports(), f"--temp-dir={self.base / 'worker'}", f"--object-store-memory={OBJECT_STORE_BYTES}",
        ], "worker.log")  # fmt: skip

    def wait_for(self, resource: str, timeout: float = 150.0) -> None:
        """Until ``ray status`` shows ``resource`` (a node's custom resource).

        Raises NodeStartError when a raylet aborted during startup (see ``_raylet_aborted``).
        """
        deadline = time.monotonic() + timeout
        while True:
            aborted = _raylet_aborted(self.base)
            if aborted:
                raise NodeStartError(aborted)
            for p, log in zip(self.procs, ("head.log", "worker.log")):
                if p.poll() is not None:
                    raise NodeStartError(f"ray start exited ({p.returncode}):\n{self.tail(log)}")
            r = self.run([RAY, "status", f"--address=127.0.0.1:{self.port}"], timeout=60, check=False)
            if r.returncode == 0 and resource in r.stdout:
                return
            if time.monotonic() > deadline:
                raise NodeStartError(f"no {resource} after {timeout:.0f} s:\n{r.stdout}{r.stderr}\n{self.tail('head.log')}")
            time.sleep(1.0)

    def run(self, cmd: list[str], timeout: float, check: bool = True, **kw) -> subprocess.CompletedProcess:
        r = subprocess.run(cmd, env=kw.pop("env", self.env), cwd=kw.pop("cwd", REPO), capture_output=True,
                           text=True, timeout=timeout, **kw)  # fmt: skip
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} -> {r.returncode}\n{r.stdout[-6000:]}\n{r.stderr[-6000:]}")
        return r

    def state(self, what: str, *filters: str) -> list[dict]:
        """``ray list WHAT --detail`` through the State API (dead actors included)."""
        args = [RAY, "list", what, "--address", self.dashboard, "--format", "json", "--detail", "--limit", "1000"]
        for f in filters:
            args += ["--filter", f]
        return json.loads(self.run(args, timeout=60).stdout)

    def tail(self, log: str, n: int = 3000) -> str:
        path = self.base / log
        return path.read_text(errors="replace")[-n:] if path.exists() else ""

    def stop(self) -> None:
        """Stop exactly this cluster: its process groups, then any process naming its temp dir."""
        for p in reversed(self.procs):  # the second node first, then the head
            _signal_group(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                _signal_group(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
        for pid in _pids_mentioning(str(self.base)):  # workers that left the group, if any
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class NodeStartError(AssertionError):
    """A node did not come up."""


def _raylet_aborted(base: Path) -> str | None:
    """The fatal line of a raylet that aborted during startup, if one did.

    Ray 2.60's raylet gives its dashboard agent 15 s to write its port files and aborts if
    the agent is late; on a loaded 2-core machine it sometimes is.
    """
    for err in base.glob("*/session_*/logs/raylet.err"):
        text = err.read_text(errors="replace")
        if "Check failed" in text:
            return next(line for line in text.splitlines() if "Check failed" in line)
    return None


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _pids_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


@pytest.fixture(scope="module")
def cluster():
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        pytest.skip("a Ray instance runs in this process: run the multinode tests alone (pytest -m multinode)")
    # Short and private: Ray's socket paths live under the temp dir (107-byte limit).
    root = Path(tempfile.mkdtemp(prefix="rrmn-", dir="/tmp"))
    failures = []
    try:
        for attempt in range(START_ATTEMPTS):
            c = TwoNodeCluster(root / f"a{attempt}")
            try:
                c.start_head()
                c.wait_for("node_head")
                c.start_worker()
                c.wait_for("node_worker")
            except NodeStartError as e:
                failures.append(str(e))
                c.stop()
                continue
            try:
                yield c
            finally:
                c.stop()
            return
        pytest.fail(f"the two-node cluster did not start in {START_ATTEMPTS} attempts:\n" + "\n".join(failures))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _space(shards: str) -> str:
    """One smoke-sized ROAD trial with two Train workers, reading the shards from ``shards``.

    ``smoke: true`` gives the smoke sizes, and ``fixed`` wins over them (``tune.py --smoke``
    would apply the smoke sizes last, one worker included).
    """
    return f"""\
description: two-node placement (tests/test_multinode.py)
smoke: true
metric: miou
num_samples: 1
max_concurrent: 1
seed: 0
scheduler: {{type: fifo}}
fixed:
  data.source: {shards}/source_train
  data.target: {shards}/target_train
  data.target_val: {shards}/target_val
  model.pretrained: none               # the pretraining cache is not what this test is about
  model.allow_untrained_teacher: true
  optim.max_iters: 2                   # placement is the point, not learning
  run.eval_every: 2
  data.max_val_images: 2
  run.num_workers: 2
  run.cpus_per_worker: {CPUS_PER_WORKER}
  run.max_failures: 0
params:
  road.lambda_dist: {{loguniform: {{low: 0.05, high: 0.2}}}}
"""


def test_sweep_on_two_nodes(cluster: TwoNodeCluster):
    from road_ray.data.minicity import write_minicity
    from road_ray.data.shards import count_rows, list_shard_files

    timings = {}
    # Shards go to a file:// URI through pyarrow's file systems, as they would go to s3://.
    t0 = time.monotonic()
    shards = f"file://{cluster.base}/bucket/minicity"
    write_minicity(shards, size="small", num_workers=1)
    files = list_shard_files(f"{shards}/source_train")
    assert files and all(f.startswith(f"{shards}/source_train/part-") for f in files)
    assert count_rows(f"{shards}/target_val") > 0
    timings["shards"] = time.monotonic() - t0

    # Security defaults: the job server answers on loopback only, and only with the token.
    ip = _routable_ip()
    if ip is not None:
        with pytest.raises(OSError):
            socket.create_connection((ip, cluster.dashboard_port), timeout=3).close()
    no_token = dict(cluster.env, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(cluster.base / "missing"))
    r = cluster.run([RAY, "job", "list", "--address", cluster.dashboard], timeout=60, check=False, env=no_token)
    assert r.returncode != 0, "the job server accepted a client without the token"

    space = cluster.base / "two_nodes.yaml"
    space.write_text(_space(shards))
    # Results on a folder both nodes see, as on a cluster with NFS. (Sweep results on an
    # object-storage URI are covered by tests/test_object_storage.py.)
    storage = str(cluster.base / "shared" / "sweeps")
    t1 = time.monotonic()
    job = cluster.run(
        [RAY, "job", "submit", "--address", cluster.dashboard, "--working-dir", ".", "--",
         "python", "tune.py", "--space", str(space), "--storage", storage, "--name", "two-nodes"],
        timeout=480,
    )  # fmt: skip
    timings["sweep job"] = time.monotonic() - t1
    assert "Best trial:" in job.stdout, job.stdout[-4000:]

    # Both nodes ran a Train worker of the trial (the State API keeps dead actors).
    nodes = {n["node_id"]: n for n in cluster.state("nodes")}
    assert len(nodes) == 2
    head = next(i for i, n in nodes.items() if "node_head" in n["resources_total"])
    workers = cluster.state("actors", "class_name=RayTrainWorker")
    assert len(workers) == 2, workers
    assert {w["node_id"] for w in workers} == set(nodes), f"Train workers on {[w['node_id'] for w in workers]}"
    assert head in {w["node_id"] for w in workers}

    # The checkpoint the sweep selected, from the shared storage, evaluated without Ray.
    out = cluster.base / "eval.json"
    t2 = time.monotonic()
    cluster.run(
        [ROAD_RAY, "eval", "--experiment", f"{storage}/two-nodes", "--best",
         "--shards", f"{shards}/target_val", "--max-images", "2", "--json", str(out)],
        timeout=180,
    )  # fmt: skip
    timings["eval"] = time.monotonic() - t2
    scores = json.loads(out.read_text())
    assert 0.0 <= scores["miou"] <= 100.0 and "road" in scores["iou"]
    print("timings (s):", {k: round(v, 1) for k, v in timings.items()})
