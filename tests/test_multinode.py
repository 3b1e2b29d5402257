"""A sweep on a two-node Ray cluster, the way cluster/README.md runs one (slow; marker ``multinode``).

Two Ray nodes on this machine (a head and a second node with distinct ports and temp dirs;
Ray allows several nodes on one IP), token authentication on, the dashboard on loopback,
shards and results on a ``file://`` URI both nodes see (the stand-in for S3/GCS). The sweep
is submitted with ``ray job submit --working-dir .`` and its one trial trains with two Train
workers that must land on different nodes; then ``road-ray report`` and ``road-ray eval
--experiment ... --best`` read the experiment from its URI.

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
from dataclasses import dataclass
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
STOP_GRACE_S = 5.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _agent_ports() -> list[str]:
    """Free ports for a node's agents. Two nodes on one machine cannot both take the fixed
    defaults (the dashboard agent's 52365), and a given port spares the raylet from waiting
    for the agent to publish it (see ``_raylet_aborted``)."""
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
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN_PATH=str(token),
            RAY_TRAIN_V2_ENABLED="1",
            PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # the job's `python` is this venv's
            ROAD_RAY_HOME=str(base / "home"),
            PYTHONUNBUFFERED="1",
        )
        self.env = env
        self.procs: list[subprocess.Popen] = []
        self.logs: list = []

    def _start_node(self, args: list[str], log: str) -> None:
        out = open(self.base / log, "w")
        self.logs.append(out)
        self.procs.append(
            subprocess.Popen(
                [RAY, "start", "--block", *args],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )

    def start_head(self) -> None:
        self._start_node(
            [
                "--head",
                f"--port={self.port}",
                f"--num-cpus={NODE_CPUS}",
                '--resources={"node_head": 1}',
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}",
                f"--ray-client-server-port={_free_port()}",
                *_agent_ports(),
                f"--temp-dir={self.base / 'head'}",
                f"--object-store-memory={OBJECT_STORE_BYTES}",
            ],
            "head.log",
        )

    def start_worker(self) -> None:
        self._start_node(
            [
                f"--address=127.0.0.1:{self.port}",
                f"--num-cpus={NODE_CPUS}",
                '--resources={"node_worker": 1}',
                *_agent_ports(),
                f"--temp-dir={self.base / 'worker'}",
                f"--object-store-memory={OBJECT_STORE_BYTES}",
            ],
            "worker.log",
        )

    def wait_for(self, resource: str, log: str, timeout: float = 150.0) -> None:
        """Until the node logging to ``log`` started and ``ray status`` shows its ``resource``.

        Raises NodeStartError when a raylet aborted during startup (see ``_raylet_aborted``).
        The log is polled first: a ``ray status`` is a Python process that would compete with
        the starting node for the two cores.
        """
        deadline = time.monotonic() + timeout
        started = False
        while True:
            aborted = _raylet_aborted(self.base)
            if aborted:
                raise NodeStartError(aborted)
            for p, name in zip(self.procs, ("head.log", "worker.log")):
                if p.poll() is not None:
                    raise NodeStartError(f"ray start exited ({p.returncode}):\n{self.tail(name)}")
            started = started or "Ray runtime started." in self.tail(log, 100_000)
            if started:
                r = self.run([RAY, "status", f"--address=127.0.0.1:{self.port}"], timeout=60, check=False)
                if r.returncode == 0 and resource in r.stdout:
                    return
            if time.monotonic() > deadline:
                raise NodeStartError(f"no {resource} after {timeout:.0f} s:\n{self.tail(log)}")
            time.sleep(1.0 if started else 0.5)

    def run(self, cmd: list[str], timeout: float, check: bool = True, **kw) -> subprocess.CompletedProcess:
        r = subprocess.run(
            cmd,
            env=kw.pop("env", self.env),
            cwd=kw.pop("cwd", REPO),
            capture_output=True,
            text=True,
            timeout=timeout,
            **kw,
        )
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
        """Stop exactly this cluster: its process groups, then any process naming its temp dir.

        SIGTERM first (Ray's processes shut down), SIGKILL after a few seconds: a graceful
        stop of both nodes takes ~30 s here and nothing of this cluster needs to survive it.
        """
        for p in reversed(self.procs):  # the second node first, then the head
            _signal_group(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for p in self.procs:
            _signal_group(p.pid, signal.SIGKILL)
            p.wait(timeout=30)
        for pid in _pids_mentioning(str(self.base)):  # anything that left the groups
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for f in self.logs:
            f.close()


class NodeStartError(AssertionError):
    """A node did not come up."""


def _raylet_aborted(base: Path) -> str | None:
    """The fatal line of a raylet that aborted during startup, if one did.

    Ray 2.60's raylet gives its dashboard agent 15 s to publish its ports (a file per port in
    the session dir) and aborts if the agent is late; on a loaded 2-core machine it sometimes
    is (its imports take that long). The fixture then starts the cluster again.
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
    """Processes whose command line contains ``text`` (Linux; elsewhere none are found)."""
    pids = []
    proc = Path("/proc")
    for entry in proc.iterdir() if proc.is_dir() else []:
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
                c.wait_for("node_head", "head.log")
                c.start_worker()
                c.wait_for("node_worker", "worker.log")
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


@dataclass
class Sweep:
    shards: str  # file:// URI of the MiniCity shards
    experiment: str  # file:// URI of the finished sweep
    output: str  # the job's output


@pytest.fixture(scope="module")
def sweep(cluster: TwoNodeCluster) -> Sweep:
    """The shards on a URI, then one sweep submitted as a job; both as cluster/README.md does them."""
    from road_ray.data.minicity import write_minicity
    from road_ray.data.shards import count_rows, list_shard_files

    # Shards go to a file:// URI through pyarrow's file systems, as they would go to s3://.
    shards = f"file://{cluster.base}/bucket/minicity"
    write_minicity(shards, size="small", num_workers=1)
    files = list_shard_files(f"{shards}/source_train")
    assert files and all(f.startswith(f"{shards}/source_train/part-") for f in files)
    assert count_rows(f"{shards}/target_val") > 0

    space = cluster.base / "two_nodes.yaml"
    space.write_text(_space(shards))
    # Results on a URI too (Tune's state, the reports, the Train checkpoints), as on s3://.
    storage = f"file://{cluster.base}/bucket/sweeps"
    job = cluster.run(
        [
            RAY,
            "job",
            "submit",
            "--address",
            cluster.dashboard,
            "--working-dir",
            ".",
            "--",
            "python",
            "tune.py",
            "--space",
            str(space),
            "--storage",
            storage,
            "--name",
            "two-nodes",
        ],
        timeout=480,
    )
    assert "Best trial:" in job.stdout, job.stdout[-4000:]
    return Sweep(shards, f"{storage}/two-nodes", job.stdout)


def test_job_server_is_on_loopback_and_needs_the_token(cluster: TwoNodeCluster):
    ip = _routable_ip()
    if ip is not None:  # Ray's other ports listen on it; the dashboard/job server must not
        with pytest.raises(OSError):
            socket.create_connection((ip, cluster.dashboard_port), timeout=3).close()
    no_token = dict(cluster.env, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(cluster.base / "missing"))
    r = cluster.run([RAY, "job", "list", "--address", cluster.dashboard], timeout=60, check=False, env=no_token)
    assert r.returncode != 0, "the job server accepted a client without the token"
    cluster.run([RAY, "job", "list", "--address", cluster.dashboard], timeout=60)  # with it: fine


def test_the_trial_trains_on_both_nodes(cluster: TwoNodeCluster, sweep: Sweep):
    # The State API keeps dead actors: the trial's two Train workers and the nodes they ran on.
    nodes = {n["node_id"]: n for n in cluster.state("nodes")}
    assert len(nodes) == 2
    head = next(i for i, n in nodes.items() if "node_head" in n["resources_total"])
    workers = cluster.state("actors", "class_name=RayTrainWorker")
    assert len(workers) == 2, workers
    assert {w["node_id"] for w in workers} == set(nodes), f"Train workers on {[w['node_id'] for w in workers]}"
    assert head in {w["node_id"] for w in workers}


def _eval(cluster: TwoNodeCluster, experiment: str, shards: str) -> dict:
    out = cluster.base / f"eval-{time.monotonic_ns()}.json"
    cluster.run(
        [
            ROAD_RAY,
            "eval",
            "--experiment",
            experiment,
            "--best",
            "--shards",
            f"{shards}/target_val",
            "--max-images",
            "2",
            "--json",
            str(out),
        ],
        timeout=180,
    )
    return json.loads(out.read_text())


def test_report_and_eval_best_of_the_sweep(cluster: TwoNodeCluster, sweep: Sweep):
    """What cluster/README.md runs after a sweep, on the experiment's URI (without Ray)."""
    report = cluster.base / "report"
    cluster.run([ROAD_RAY, "report", "--experiment", sweep.experiment, "--out", str(report)], timeout=180)
    assert (report / "report.md").is_file()
    scores = _eval(cluster, sweep.experiment, sweep.shards)
    assert 0.0 <= scores["miou"] <= 100.0 and "road" in scores["iou"]


def test_smoke_sweep_submitted_as_a_job_then_eval_best(cluster: TwoNodeCluster):
    """The README's cluster path verbatim: ``ray job submit --working-dir . -- python tune.py --smoke``
    (MiniCity and the small backbone prepared by the job's driver), then ``eval --best``: the final
    checkpoint of the trial the sweep's metric selects."""
    from road_ray.sweeps.results import select_checkpoint

    storage = cluster.base / "smoke-results"
    job = cluster.run(
        [
            RAY,
            "job",
            "submit",
            "--address",
            cluster.dashboard,
            "--working-dir",
            ".",
            "--",
            "python",
            "tune.py",
            "--smoke",
            "--storage",
            str(storage),
            "--name",
            "smoke",
        ],
        timeout=600,
    )
    assert "Best trial:" in job.stdout and f"road-ray eval --experiment {storage / 'smoke'} --best" in job.stdout
    out = cluster.base / "smoke-eval.json"
    cluster.run(
        [ROAD_RAY, "eval", "--experiment", str(storage / "smoke"), "--best", "--max-images", "4", "--json", str(out)],
        timeout=180,
    )
    scores = json.loads(out.read_text())
    assert scores["checkpoint"] == select_checkpoint(storage / "smoke") and 0.0 <= scores["miou"] <= 100.0
