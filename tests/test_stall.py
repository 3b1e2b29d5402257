"""No silent hangs (issue #17): a run on a cluster whose CPUs are taken says so, then stops.

A one-node ``ray start --head --num-cpus 2`` cluster of this module's own (its own temp dir,
ports and ``RAY_TMPDIR``, so it is recorded where only this module's processes look, never
under /tmp/ray where other Ray users on the machine would find it), 0.8 of its CPUs held by a
detached actor: 1.2 free, enough for a Tune trial (0.1) and Ray Data's planning tasks (1 CPU),
not for a Train worker of 1.5 CPUs. The last test holds 0.5 more, so that the planning waits. Everything Ray runs in subprocesses, so the session's Ray instance
(``conftest.ray_session``) is not disturbed; the cluster is stopped by its process group.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# run.stall_timeout_s of the stalled runs (the waiting line comes after half of it): long enough
# for Ray Data's planning to pass on a loaded machine, when the Train workers are what waits
STALL_S = 60
PLANNING_STALL_S = 20  # when the planning itself waits
START_ATTEMPTS = 3
NODE_CPUS = 2
HELD_CPUS = 0.8  # leaves 1.2: a Tune trial (0.1) and Ray Data's planning start, a worker of 1.5 does not
WORKER_CPUS = 1.5

OCCUPY = """
import ray
ray.init()
@ray.remote(num_cpus={cpus})
class Occupier:
    def ready(self):
        return True
holder = Occupier.options(name="{name}", lifetime="detached").remote()
ray.get(holder.ready.remote())
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BusyCluster:
    """``ray start --head --block`` with 1 CPU, then :data:`HELD_CPUS` taken by a detached actor."""

    def __init__(self, base: Path, home: str):
        self.base, self.port = base, _free_port()
        self.address = f"127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
        env.update(
            RAY_TMPDIR=str(base),  # ray_current_cluster lands in base/ray, not /tmp/ray
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN_PATH=str(base / "auth_token"),
            RAY_TRAIN_V2_ENABLED="1",
            ROAD_RAY_HOME=home,
            PYTHONPATH=f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}",
            PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            PYTHONUNBUFFERED="1",
            # on a loaded machine the raylet's default 15 s for its dashboard agent is too short
            RAY_agent_register_timeout_ms="120000",
        )
        (base / "auth_token").write_text(os.urandom(32).hex())
        self.env = env
        self.log = open(base / "head.log", "w")
        self.proc = subprocess.Popen(
            [
                str(BIN / "ray"),
                "start",
                "--head",
                "--block",
                f"--port={self.port}",
                f"--num-cpus={NODE_CPUS}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={_free_port()}",
                f"--ray-client-server-port={_free_port()}",
                f"--dashboard-agent-listen-port={_free_port()}",
                f"--dashboard-agent-grpc-port={_free_port()}",
                f"--metrics-export-port={_free_port()}",
                f"--runtime-env-agent-port={_free_port()}",
                f"--temp-dir={base / 'ray'}",
                f"--object-store-memory={150 * 1024 * 1024}",
            ],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_started(self, timeout: float = 150.0) -> None:
        """Until ``ray start`` says it started; StartFailed when it exited (on a loaded machine the
        raylet sometimes aborts while its dashboard agent is late, see tests/test_multinode.py)."""
        deadline = time.monotonic() + timeout
        while "Ray runtime started." not in (self.base / "head.log").read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise StartFailed((self.base / "head.log").read_text(errors="replace")[-1500:])
            time.sleep(0.5)

    def occupy(self, cpus: float, name: str = "occupier") -> None:
        r = self.run([sys.executable, "-c", OCCUPY.format(cpus=cpus, name=name)], timeout=180, address=self.address)
        assert r.returncode == 0, r.stderr[-3000:]

    def run(self, cmd: list[str], timeout: float, address: str | None = None) -> subprocess.CompletedProcess:
        env = dict(self.env, **({"RAY_ADDRESS": address} if address else {}))
        return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                continue
        self.log.close()


class StartFailed(AssertionError):
    """The test cluster did not come up."""


@pytest.fixture(scope="module")
def busy_cluster(road_ray_home):
    root = Path(tempfile.mkdtemp(prefix="rrst-", dir="/tmp"))  # short: Ray's socket paths (107 bytes)
    failures = []
    try:
        for attempt in range(START_ATTEMPTS):
            (root / f"a{attempt}").mkdir()
            cluster = BusyCluster(root / f"a{attempt}", road_ray_home)
            try:
                cluster.wait_started()
            except StartFailed as e:
                failures.append(str(e))
                cluster.stop()
                continue
            try:
                cluster.occupy(HELD_CPUS)
                yield cluster
            finally:
                cluster.stop()
            return
        pytest.fail(f"the test cluster did not start in {START_ATTEMPTS} attempts:\n" + "\n".join(failures))
    finally:
        shutil.rmtree(root, ignore_errors=True)


QUICK = [
    "--set",
    "model.pretrained=none",  # the pretraining cache is not what these tests are about
    "--set",
    "model.allow_untrained_teacher=true",
    "--set",
    "run.max_failures=0",
]
BIG_WORKER = ["--set", f"run.cpus_per_worker={WORKER_CPUS}", "--set", f"run.stall_timeout_s={STALL_S}"]


def stalled_train(cluster: BusyCluster, storage: Path, name: str, *options: str) -> subprocess.CompletedProcess:
    """``road-ray train --smoke`` joining ``cluster`` (RAY_ADDRESS), with a short stall timeout."""
    return cluster.run(
        [str(BIN / "road-ray"), "train", "--smoke", "--storage", str(storage), "--name", name, *QUICK, *options],
        timeout=300,
        address=cluster.address,
    )


def waiting_lines(out: str, run: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(f"[watchdog] run {run}: no progress for")]


def test_train_on_a_busy_cluster_says_why_and_stops(busy_cluster, tmp_path):
    start = time.monotonic()
    r = stalled_train(busy_cluster, tmp_path, "busy", *BIG_WORKER)
    took = time.monotonic() - start
    out = r.stdout + r.stderr
    assert r.returncode == 1, out[-4000:]
    assert "[ray] joined the Ray cluster at " in out and f"(RAY_ADDRESS={busy_cluster.address})" in out, out[-4000:]
    waiting = waiting_lines(out, "busy")
    assert waiting, out[-4000:]
    error = next(line for line in r.stderr.splitlines() if line.startswith("road-ray train: error:"))
    print("\n".join([*waiting, error]))  # shown with -rP
    assert f"waiting for the Train workers to start (1 x {{CPU: {WORKER_CPUS:g}}})" in waiting[-1], waiting
    # Who holds the CPUs comes from Ray's State API, which can miss the first waiting line on a
    # loaded machine; the stop line asks again.
    held = rf"has [\d.]+ of {NODE_CPUS} CPUs free \(held by .*1 x Occupier: {HELD_CPUS:g} CPU"
    assert re.search(held, waiting[-1]) or re.search(held, error), (waiting, error)
    assert "unset RAY_ADDRESS" in waiting[-1], waiting
    assert error.startswith("road-ray train: error: run busy stopped: no progress for"), r.stderr[-3000:]
    assert f"run.stall_timeout_s={STALL_S}" in error and "waiting for the Train workers" in error
    assert took < STALL_S + 150, f"took {took:.0f} s"


def test_a_run_without_address_does_not_join_the_recorded_cluster(busy_cluster):
    script = (
        "import sys, ray\n"
        "from road_ray.on_ray.cluster import init_ray\n"
        "init_ray(num_cpus=1, address=sys.argv[1] or None)\n"
        "print('GCS', ray.get_runtime_context().gcs_address)\n"
        "ray.shutdown()\n"
    )
    recorded = (busy_cluster.base / "ray" / "ray_current_cluster").read_text().strip()
    own = busy_cluster.run([sys.executable, "-c", script, ""], timeout=180)
    assert own.returncode == 0, own.stderr[-3000:]
    assert "[ray] a local Ray instance of its own (1 CPUs" in own.stderr
    gcs = own.stdout.split("GCS ")[-1].strip()
    assert gcs and gcs != recorded, (gcs, recorded)
    # the control: `auto` does join it (so the first run really had a recorded cluster to join)
    joined = busy_cluster.run([sys.executable, "-c", script, "auto"], timeout=180)
    assert joined.returncode == 0, joined.stderr[-3000:]
    assert joined.stdout.split("GCS ")[-1].strip() == recorded


def test_a_stalled_trial_is_an_error_and_the_sweep_ends(busy_cluster, tmp_path):
    r = busy_cluster.run(
        [
            sys.executable,
            "tune.py",
            "--smoke",
            "--num-samples",
            "1",
            "--storage",
            str(tmp_path),
            "--name",
            "busy-sweep",
            "--address",
            busy_cluster.address,
            *QUICK,
            *BIG_WORKER,
        ],
        timeout=400,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 1, out[-4000:]  # no trial finished: no best trial
    assert "[watchdog] run " in out and "waiting for the Train workers to start" in out, out[-4000:]
    errors = list((tmp_path / "busy-sweep").glob("trial_*/error.txt"))
    assert errors, out[-4000:]
    text = errors[0].read_text()
    assert "RunStalled" in text and f"run.stall_timeout_s={STALL_S}" in text, text[-2000:]
    assert "lower tune.py --max-concurrent" in text
    record = json.loads((tmp_path / "busy-sweep" / "road_ray_sweep.json").read_text())
    assert record["base_config"]["run"]["stall_timeout_s"] == STALL_S


def test_train_waiting_for_ray_data_planning_says_so(busy_cluster, tmp_path):
    """Last in the module: it holds 0.5 more CPU, so Ray Data's planning tasks (1 CPU) wait."""
    busy_cluster.occupy(0.5, name="occupier2")
    r = stalled_train(busy_cluster, tmp_path, "planning", "--set", f"run.stall_timeout_s={PLANNING_STALL_S}")
    out = r.stdout + r.stderr
    assert r.returncode == 1, out[-4000:]
    waiting = waiting_lines(out, "planning")
    assert waiting and "waiting for Ray Data to plan the reads" in waiting[0], out[-4000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("road-ray train: error:")]
    print("\n".join([*waiting, *errors]))  # shown with -rP
    assert errors and errors[0].startswith("road-ray train: error: run planning stopped: no progress for"), out[-4000:]
