"""The watchdog's logic on short clocks, without a Ray instance (the busy-cluster case: test_stall.py)."""

from __future__ import annotations

import threading
import time

import pytest

from road_ray.config import ConfigError, apply_overrides, default_config
from road_ray.failures import RunStalled
from road_ray.on_ray import watchdog
from road_ray.on_ray.watchdog import Heartbeat, RunWatchdog, WatchPlan, stop_reason, watched_fit


@pytest.fixture(autouse=True)
def fast_clocks(monkeypatch):
    monkeypatch.setattr(watchdog, "POLL_S", 0.1)
    monkeypatch.setattr(watchdog, "HEARTBEAT_EVERY_S", 0.05)


def make_watchdog(tmp_path, stall_s: float, lines: list[str]) -> RunWatchdog:
    plan = WatchPlan.for_run(str(tmp_path), "r")
    return RunWatchdog(
        plan, run="r", stall_timeout_s=stall_s, explain=lambda stage: f"waiting ({stage or 'start'})", log=lines.append
    )


def test_a_quiet_run_is_noticed_then_stopped(tmp_path):
    lines: list[str] = []
    with make_watchdog(tmp_path, 1.0, lines) as wd:
        time.sleep(1.6)
    assert lines[0].startswith("[watchdog] run r: no progress for 0 s: waiting (start)") or lines[0].startswith(
        "[watchdog] run r: no progress for 1 s: waiting (start)"
    ), lines
    assert wd.reason.startswith("run r stopped: no progress for 1 s (run.stall_timeout_s=1): waiting (start)")
    assert stop_reason(wd.plan) == wd.reason  # what the controller's callback reads


def test_heartbeats_are_progress_and_a_stale_launch_is_not(tmp_path):
    lines: list[str] = []
    wd = make_watchdog(tmp_path, 0.8, lines)
    stale = Heartbeat({**wd.plan.to_dict(), "launch": "an-older-launch"})
    beat = Heartbeat(wd.plan.to_dict())
    with wd:
        for _ in range(20):
            beat.beat("step")
            time.sleep(0.1)
    assert wd.reason is None, lines
    stale.beat("step")  # the heartbeat file now holds another launch's beat
    with make_watchdog(tmp_path, 0.6, lines) as wd2:  # a new launch: the old heartbeat is not its own
        time.sleep(1.0)
    assert wd2.reason is not None and "waiting (start)" in wd2.reason


def test_watched_fit_raises_one_line_when_fit_is_stopped(tmp_path):
    class Trainer:
        def __init__(self, plan):
            self.plan = plan

        def fit(self):  # stands in for Train's controller, aborted by StopWhenStalled
            while stop_reason(self.plan) is None:
                time.sleep(0.05)
            raise RuntimeError("ActorDiedError: the controller exited")

    wd = make_watchdog(tmp_path, 0.5, [])
    with pytest.raises(RunStalled, match=r"^run r stopped: no progress for \d s") as e:
        watched_fit(lambda: Trainer(wd.plan), wd)
    assert len(str(e.value).splitlines()) == 1


def test_a_planning_that_never_ends_is_abandoned(tmp_path):
    never = threading.Event()
    wd = make_watchdog(tmp_path, 0.5, [])
    with pytest.raises(RunStalled, match=r"waiting \(planning\)"):
        watched_fit(never.wait, wd)


def test_stall_timeout_key():
    assert default_config().run.stall_timeout_s == 600
    assert apply_overrides(default_config(), {"run.stall_timeout_s": 0}).validate().run.stall_timeout_s == 0
    with pytest.raises(ConfigError, match=r"run\.stall_timeout_s: expected >= 0"):
        apply_overrides(default_config(), {"run.stall_timeout_s": -1}).validate()
