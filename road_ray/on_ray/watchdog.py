"""No silent hangs: a run that makes no progress says what it waits for, then stops (issue #17).

*Progress* is any of: the Train workers start, a step batch or a validation image reaches
rank 0, a report. Rank 0 leaves a :class:`Heartbeat` in the run's folder (at most every
``HEARTBEAT_EVERY_S`` seconds, and at every change of stage); :class:`RunWatchdog`, a thread
next to ``trainer.fit()`` on the driver (or in the Tune trial), reads it:

- after ``NOTICE_S`` seconds without progress (half of ``run.stall_timeout_s`` when that is
  shorter) it prints one line: what the run waits for (the Train workers' resources, Ray Data's),
  what the cluster has free, and how to fix it; again every ``NOTICE_REPEAT_S`` seconds;
- after ``run.stall_timeout_s`` seconds without progress (0 = never) it writes a stop marker,
  which :class:`StopWhenStalled`, a callback inside Train's controller, sees and aborts the run
  with; ``fit()`` then raises :class:`RunStalled`, one line.

Long evaluations are progress (every validation image beats), so the timeout only has to
cover the longest single step, image or checkpoint upload, and start-up.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from ray.train.v2._internal.execution.callback import ControllerCallback

from road_ray.failures import RunStalled
from road_ray.storage import join, read_text, write_text

HEARTBEAT_FILE = "HEARTBEAT.json"
STOP_FILE = "STALLED.txt"
HEARTBEAT_EVERY_S = 10.0
POLL_S = 2.0
NOTICE_S = 45.0  # "say within a minute what it is waiting for"
NOTICE_REPEAT_S = 300.0
STOP_POLL_S = 2.0
ABORT_GRACE_S = 15.0  # after abort() is asked for, the controller process exits anyway

T = TypeVar("T")


@dataclass(frozen=True)
class WatchPlan:
    """Where one launch of a run keeps its heartbeat and stop marker; ``launch`` tells this launch's
    files from a previous launch's (a resumed run reuses the folder)."""

    heartbeat: str
    stop: str
    launch: str

    @classmethod
    def for_run(cls, storage: str, name: str) -> WatchPlan:
        run_dir = join(storage, name)
        return cls(join(run_dir, HEARTBEAT_FILE), join(run_dir, STOP_FILE), uuid.uuid4().hex[:12])

    def to_dict(self) -> dict[str, str]:
        return {"heartbeat": self.heartbeat, "stop": self.stop, "launch": self.launch}


# ---------------------------------------------------------------------------------------
# Worker side


class Heartbeat:
    """Rank 0's sign of life: ``{"launch", "beats", "stage"}`` in the heartbeat file, written at
    every change of stage and otherwise at most every ``HEARTBEAT_EVERY_S`` seconds. Other ranks
    (``plan`` None) write nothing: they are held by the same collectives as rank 0."""

    def __init__(self, plan: dict[str, str] | None):
        self.plan = plan
        self.beats, self.stage, self.written_at = 0, "", 0.0

    def beat(self, stage: str) -> None:
        if not self.plan:
            return
        self.beats += 1
        now = time.monotonic()
        if stage == self.stage and now - self.written_at < HEARTBEAT_EVERY_S:
            return
        self.stage, self.written_at = stage, now
        body = {"launch": self.plan["launch"], "beats": self.beats, "stage": stage}
        try:
            write_text(self.plan["heartbeat"], json.dumps(body))
        except OSError:  # a missed beat must never fail the run; the next one retries
            pass

    def each(self, items: Iterable[T], stage: str) -> Iterator[T]:
        """``items``, beating once per item."""
        for item in items:
            self.beat(stage)
            yield item


# ---------------------------------------------------------------------------------------
# Inside Train's controller


class StopWhenStalled(ControllerCallback):
    """Aborts the Train run from inside its controller when the driver's watchdog wrote this
    launch's stop marker. The controller may sit in a blocking wait for its placement group, so
    the process exits by itself ``ABORT_GRACE_S`` after asking for the abort."""

    def __init__(self, plan: WatchPlan):
        self.plan = plan
        self._done = threading.Event()

    def __getstate__(self) -> dict[str, Any]:
        return {"plan": self.plan}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.plan, self._done = state["plan"], threading.Event()

    def after_controller_start(self, train_run_context: Any) -> None:
        threading.Thread(target=self._watch, name="road-ray-stop-when-stalled", daemon=True).start()

    def after_controller_finish(self, result: Any) -> None:
        self._done.set()

    def _watch(self) -> None:
        import ray

        while not self._done.wait(STOP_POLL_S):
            if stop_reason(self.plan) is not None:
                ray.get_runtime_context().current_actor.abort.remote()
                if not self._done.wait(ABORT_GRACE_S):
                    os._exit(1)
                return


def stop_reason(plan: WatchPlan) -> str | None:
    """This launch's stall reason, when its watchdog wrote one."""
    text = read_text(plan.stop)
    if not text:
        return None
    launch, _, reason = text.partition("\n")
    return reason if launch == plan.launch else None


# ---------------------------------------------------------------------------------------
# Driver side


class RunWatchdog:
    """The thread that watches one launch's heartbeat (see the module docstring).

    ``explain()`` returns what the run waits for; it is called only when the run is quiet.
    """

    def __init__(
        self,
        plan: WatchPlan,
        *,
        run: str,
        stall_timeout_s: float,
        explain: Callable[[str], str],
        log: Callable[[str], None],
    ):
        self.plan, self.run, self.stall_timeout_s = plan, run, stall_timeout_s
        self.explain, self.log = explain, log
        self.notice_after = min(NOTICE_S, stall_timeout_s / 2) if stall_timeout_s > 0 else NOTICE_S
        self.reason: str | None = None
        self.phase = ""  # "planning" while the driver plans the Ray Data reads (no heartbeat yet)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="road-ray-watchdog", daemon=True)

    def __enter__(self) -> RunWatchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._done.set()
        self._thread.join(timeout=10)

    def _read(self) -> tuple[int, str] | None:
        try:
            body = json.loads(read_text(self.plan.heartbeat) or "null")
        except ValueError:  # caught mid-write
            return None
        if not isinstance(body, dict) or body.get("launch") != self.plan.launch:
            return None
        return int(body.get("beats", 0)), str(body.get("stage", ""))

    def _watch(self) -> None:
        last_beat, stage = None, ""
        quiet_since, noticed_at = time.monotonic(), None
        while not self._done.wait(POLL_S):
            beat = self._read()
            now = time.monotonic()
            if beat is not None and beat != last_beat:
                last_beat, stage = beat, beat[1]
                quiet_since, noticed_at = now, None
                continue
            quiet = now - quiet_since
            if self.stall_timeout_s > 0 and quiet >= self.stall_timeout_s:
                self._stop(quiet, stage or self.phase)
                return
            if quiet >= self.notice_after and (noticed_at is None or now - noticed_at >= NOTICE_REPEAT_S):
                noticed_at = now
                self.log(
                    f"[watchdog] run {self.run}: no progress for {quiet:.0f} s: {self._explain(stage or self.phase)}"
                )

    def _stop(self, quiet: float, stage: str) -> None:
        self.reason = (
            f"run {self.run} stopped: no progress for {quiet:.0f} s (run.stall_timeout_s={self.stall_timeout_s:g}): "
            f"{self._explain(stage)}"
        )
        self.log(f"[watchdog] {self.reason}")
        try:
            write_text(self.plan.stop, f"{self.plan.launch}\n{self.reason}")
        except OSError as e:  # the run is still given up on; its controller keeps running until fit() ends
            self.log(f"[watchdog] could not write the stop marker {self.plan.stop}: {e}")

    def _explain(self, stage: str) -> str:
        try:
            return self.explain(stage)
        except Exception as e:  # noqa: BLE001 - the diagnosis must never hide the stall itself
            return f"the run is waiting ({stage or 'not started'}; no diagnosis: {e})"


def watched_fit(trainer_factory: Callable[[], Any], watchdog: RunWatchdog) -> Any:
    """Build the trainer, then ``fit()`` it, under ``watchdog``; RunStalled when it stopped them.

    Building plans the Ray Data reads, which runs sampling tasks (1 CPU each) on the cluster, so
    it can wait for CPUs too: it runs in a helper thread that is abandoned on a stall (its
    tasks go with the process, or with the Tune trial's actor). ``fit()`` stays in the calling
    thread (Train's Ctrl-C handling needs the main thread) and is aborted from inside Train's
    controller (:class:`StopWhenStalled`)."""
    with watchdog:
        watchdog.phase = "planning"
        trainer = _in_thread(trainer_factory, watchdog)
        watchdog.phase = ""
        try:
            result = trainer.fit()
        except Exception:
            if watchdog.reason:
                raise RunStalled(watchdog.reason) from None
            raise
    if watchdog.reason:
        raise RunStalled(watchdog.reason)
    return result


def _no_reconnect() -> None:
    """Keep the abandoned planning thread from reconnecting Ray after ``ray.shutdown()`` (Ray Data
    calls ``ray.init()`` when it finds Ray down): the process is ending its run."""
    try:
        import ray._private.auto_init_hook as auto_init

        auto_init.enable_auto_connect = False
    except (ImportError, AttributeError):
        pass


def _in_thread(work: Callable[[], T], watchdog: RunWatchdog) -> T:
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as e:  # noqa: BLE001 - re-raised in the calling thread
            outcome["error"] = e

    thread = threading.Thread(target=run, name="road-ray-plan", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(POLL_S)
        if watchdog.reason:
            _no_reconnect()
            raise RunStalled(watchdog.reason)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


# ---------------------------------------------------------------------------------------
# What a quiet run waits for

STAGE_NAMES = {"step": "a step batch", "eval": "a validation image", "report": "a report"}


@dataclass(frozen=True)
class RunNeeds:
    """What one run asks of the cluster, for the waiting line."""

    num_workers: int
    cpus_per_worker: float
    gpus_per_worker: int
    data_cpus: float  # per Ray Data task (data.cpus_per_map_task)
    cluster: str  # "this run's local Ray instance" / "the Ray cluster at ..."
    joined: bool  # True: a cluster the run joined (RAY_ADDRESS / --address), not its own
    in_sweep: bool = False

    def explain(self, stage: str) -> str:
        """One clause: what the run waits for, what the cluster has free, how to fix it."""
        import ray

        free, total = ray.available_resources(), ray.cluster_resources()
        have = f"{self.cluster} has {free.get('CPU', 0):g} of {total.get('CPU', 0):g} CPUs free"
        if self.gpus_per_worker:
            have += f", {free.get('GPU', 0):g} of {total.get('GPU', 0):g} GPUs"
        have += _holders()
        if stage == "planning":
            what = "waiting for Ray Data to plan the reads (its sampling tasks need 1 CPU each)"
        elif not stage:
            gpu = f", GPU: {self.gpus_per_worker}" if self.gpus_per_worker else ""
            what = (
                f"waiting for the Train workers to start ({self.num_workers} x {{CPU: {self.cpus_per_worker:g}{gpu}}})"
            )
        elif stage == "started":
            what = f"the Train workers started but no data arrived (Ray Data's tasks need {self.data_cpus:g} CPU each)"
        else:
            what = f"the last sign of life was {STAGE_NAMES.get(stage, stage)}"
        return f"{what}; {have}; {self._fixes(stage)}"

    def _fixes(self, stage: str) -> str:
        fixes = ["free them", "lower run.num_workers or run.cpus_per_worker"]
        if self.joined:
            fixes[0] = "free them (`ray status`)"
            fixes.append("run on a local Ray instance of its own (unset RAY_ADDRESS, no --address)")
        if self.in_sweep:
            fixes.append("lower tune.py --max-concurrent (other trials may hold them)")
        if stage in STAGE_NAMES:
            fixes.append("raise run.stall_timeout_s if one step, image or checkpoint upload takes that long")
        return ", ".join(fixes[:-1]) + " or " + fixes[-1]


def _holders(limit: int = 4) -> str:
    """`` (held by 1 x Occupier: 1 CPU, ...)``: the live actors and running tasks that hold CPUs,
    best effort (Ray's State API; nothing when it does not answer within a few seconds)."""
    try:
        from ray.util.state import list_actors, list_tasks

        options = dict(detail=True, timeout=5, raise_on_missing_output=False)
        actors = list_actors(filters=[("state", "=", "ALIVE")], **options)
        tasks = list_tasks(filters=[("state", "=", "RUNNING"), ("type", "=", "NORMAL_TASK")], **options)
    except Exception:  # noqa: BLE001 - no State API (no dashboard), or a slow one
        return ""
    held: dict[str, list[float]] = {}
    for name, resources in [(a.class_name, a.required_resources) for a in actors] + [
        (t.name, t.required_resources) for t in tasks
    ]:
        cpus = float((resources or {}).get("CPU", 0) or 0)
        if cpus > 0:
            held.setdefault(name, []).append(cpus)
    if not held:
        return ""
    top = sorted(held.items(), key=lambda kv: -sum(kv[1]))[:limit]
    return " (held by " + ", ".join(f"{len(c)} x {name}: {sum(c):g} CPU" for name, c in top) + ")"
