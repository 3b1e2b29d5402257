"""Which Ray cluster a run uses, and starting or joining it (README, "Which Ray cluster a run uses").

A run starts a local Ray instance of its own unless it is told to join a cluster: ``address``
(``road-ray train --address``, ``tune.py --address``) or else ``RAY_ADDRESS`` (what ``ray job
submit`` sets). ``auto`` joins the cluster ``ray start`` recorded under Ray's temp folder;
``local`` is an instance of its own even when ``RAY_ADDRESS`` is set.

Why not ``ray.init()`` without an address: it attaches to whatever cluster ``ray start``
recorded on the machine, possibly one whose CPUs another job holds, and the run then waits
for them forever (issue #17). ``ray.init(address="local")`` never attaches.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import ray
import ray.data

LOCAL = "local"
AUTO = "auto"


@dataclass(frozen=True)
class ClusterChoice:
    """Where a run's Ray lives: ``address`` is ``"local"`` (an instance of its own), ``"auto"`` or
    an address; ``source`` says who chose it (``--address``, ``RAY_ADDRESS`` or the default)."""

    address: str
    source: str

    @property
    def is_local(self) -> bool:
        return self.address == LOCAL

    def describe(self) -> str:
        """``this run's local Ray instance`` or ``the Ray cluster at HOST:PORT (RAY_ADDRESS=...)``."""
        if self.is_local:
            return "this run's local Ray instance"
        where = _connected_address() or self.address
        return f"the Ray cluster at {where} ({self.source}={self.address})"


def choose_cluster(address: str | None = None) -> ClusterChoice:
    """``address`` if given, else ``RAY_ADDRESS`` if set, else a local instance of its own."""
    if address:
        return ClusterChoice(address.strip(), "--address")
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if env:
        return ClusterChoice(env, "RAY_ADDRESS")
    return ClusterChoice(LOCAL, "default")


_current: ClusterChoice | None = None


def current_cluster() -> ClusterChoice:
    """The choice :func:`init_ray` made in this process (a Ray worker: the cluster it runs in)."""
    if _current is not None:
        return _current
    return ClusterChoice(_connected_address() or AUTO, "worker") if ray.is_initialized() else choose_cluster()


def _connected_address() -> str | None:
    try:
        return ray.get_runtime_context().gcs_address if ray.is_initialized() else None
    except Exception:  # noqa: BLE001 - a description must never fail the run
        return None


def init_ray(
    num_cpus: int | None = None,
    *,
    address: str | None = None,
    object_store_memory: int | None = None,
    log_to_driver: bool = True,
    log: Callable[[str], None] | None = None,
) -> ClusterChoice:
    """Start a local Ray instance of its own, or join the cluster ``address`` / ``RAY_ADDRESS``
    names (:func:`choose_cluster`); say which in one line (``log``, default stderr).

    A local instance runs its dashboard and tells its workers where it is: Ray's State API,
    which Train's placement-group cleaner uses when a run ends early (ASHA), otherwise finds
    "the" local cluster by scanning processes and fails when another Ray instance runs on the
    machine; the stopped run's placement group would then starve the next one.
    A process already connected (a test session, a notebook) keeps its instance.
    """
    global _current
    if ray.is_initialized():
        return current_cluster()
    log = log or _stderr
    choice = choose_cluster(address)
    if choice.is_local:
        _start_local(num_cpus, object_store_memory, log_to_driver)
    else:
        _join(choice, log_to_driver)
    _current = choice
    ray.data.DataContext.get_current().enable_progress_bars = False
    log(_cluster_line(choice))
    return choice


def _start_local(num_cpus: int | None, object_store_memory: int | None, log_to_driver: bool) -> None:
    # Fractional-CPU map tasks make Ray kill idle workers past the CPU count, so every
    # epoch would start fresh ones (re-importing pyarrow/cv2): keep a few more alive.
    os.environ.setdefault("RAY_num_workers_soft_limit", "6")
    # Ray starts its workers at nice 15, so on a small machine every other process (Ray's
    # own daemons included) preempts the training step: `road-ray bench step` measured the
    # step in a Train worker 5% slower than bare (1.051), 0.97 at nice 0.
    os.environ.setdefault("RAY_worker_niceness", "0")
    port = _free_port()
    ray.init(
        address=LOCAL,  # never the cluster `ray start` recorded on this machine
        num_cpus=num_cpus,
        object_store_memory=object_store_memory,
        log_to_driver=log_to_driver,
        include_dashboard=True,
        dashboard_port=port,
        runtime_env={"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}},
    )


def _join(choice: ClusterChoice, log_to_driver: bool) -> None:
    """Connect without resources (passing ``num_cpus`` while connecting is an error)."""
    try:
        ray.init(address=choice.address, log_to_driver=log_to_driver)
    except (ConnectionError, ValueError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConnectionError(
            f"could not join the Ray cluster {choice.source}={choice.address}: {first}; "
            f"fix the address, or unset it to run on a local Ray instance of its own"
        ) from None


def _cluster_line(choice: ClusterChoice) -> str:
    total = ray.cluster_resources()
    resources = f"{total.get('CPU', 0):g} CPUs, {total.get('GPU', 0):g} GPUs"
    if choice.is_local:
        return (
            f"[ray] a local Ray instance of its own ({resources}); "
            "to join a cluster instead: --address ADDRESS or RAY_ADDRESS (auto = the one `ray start` recorded)"
        )
    free = ray.available_resources().get("CPU", 0)
    return f"[ray] joined {choice.describe()}: {resources}, {free:g} CPUs free"


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def ray_instance(**init_options: Any) -> Iterator[None]:
    """:func:`init_ray` for the ``with`` block; stops Ray afterwards only if this call started it
    (a bench run inside a test session or a notebook leaves their instance alone)."""
    global _current
    started = not ray.is_initialized()
    init_ray(**init_options)
    try:
        yield
    finally:
        if started:
            ray.shutdown()
            _current = None
