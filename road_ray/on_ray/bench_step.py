"""The Ray Train variant of ``road-ray bench step``: the ROAD step inside a one-worker TorchTrainer.

The worker builds the same :class:`road_ray.bench.step_setup.StepSetup` as the driver (same
seed, same weights, same batch) and times one step per round. A small "baton" actor hands the
turn between the driver and the worker, so the two never compute at the same time and the
Ray step is interleaved with the driver's variants like any other; only the step is timed
(no start-up), so ``ray / road`` is the overhead of running inside Ray Train.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
from ray.train.torch import TorchTrainer

from road_ray.bench.common import Progress, timed
from road_ray.bench.step_setup import StepSetup
from road_ray.config import Config, config_from_dict
from road_ray.on_ray.train import ray_instance

# How long the driver waits for the worker's turn before it gives up.
TURN_TIMEOUT_S = 900.0


@ray.remote(num_cpus=0)
class Baton:
    """Whose turn it is (``"driver"``, ``"worker"`` or ``"abort"``), and the worker's result."""

    def __init__(self) -> None:
        self.turn = "worker"  # the worker starts: it warms up before the first round
        self.changed = asyncio.Event()
        self.result: dict[str, Any] | None = None

    async def pass_to(self, who: str) -> None:
        self.turn = who
        self.changed.set()

    async def wait_for(self, who: str) -> str:
        while self.turn not in (who, "abort"):
            self.changed.clear()
            await self.changed.wait()
        return self.turn

    async def put_result(self, result: dict[str, Any]) -> None:
        self.result = result

    async def get_result(self) -> dict[str, Any] | None:
        return self.result


def ray_step_worker(loop_config: dict[str, Any]) -> None:
    """``train_loop_per_worker``: the ROAD step of :class:`StepSetup`, timed once per round."""
    torch.set_num_threads(int(loop_config["threads"]))
    device = ray.train.torch.get_device()
    setup = StepSetup(config_from_dict(loop_config["config"]), device, loop_config["seed"])
    for _ in range(loop_config["warmup"]):
        setup.road_step()
    baton = loop_config["baton"]
    ray.get(baton.pass_to.remote("driver"))
    times = []
    for _ in range(loop_config["rounds"]):
        if ray.get(baton.wait_for.remote("worker")) == "abort":  # the driver failed: stop quietly
            return
        times.append(timed(setup.road_step, device))
        if len(times) == loop_config["rounds"]:
            result = {"times": times, "threads": torch.get_num_threads(), "device": str(device)}
            ray.get(baton.put_result.remote(result))
        ray.get(baton.pass_to.remote("driver"))


def _step_trainer(cfg: Config, device: torch.device, storage: str, baton: Any, **loop: Any) -> TorchTrainer:
    """A one-worker TorchTrainer running :func:`ray_step_worker` (``loop``: seed, warmup, rounds, threads)."""
    use_gpu = device.type == "cuda"
    return TorchTrainer(
        ray_step_worker,
        train_loop_config={"config": cfg.to_dict(), "baton": baton, **loop},
        scaling_config=ray.train.ScalingConfig(
            num_workers=1, use_gpu=use_gpu, resources_per_worker={"CPU": 1, **({"GPU": 1} if use_gpu else {})}
        ),
        run_config=ray.train.RunConfig(name=f"bench-step-{os.getpid()}", storage_path=storage),
    )


class _FitInBackground:
    """``trainer.fit()`` in a daemon thread; its error, if any, kept for the driver thread."""

    def __init__(self, trainer: TorchTrainer) -> None:
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._fit, args=(trainer,), name="bench-step-trainer", daemon=True)

    def _fit(self, trainer: TorchTrainer) -> None:
        try:
            trainer.fit()
        except BaseException as e:  # reported by wait_turn / check in the driver thread
            self.errors.append(e)

    def wait_turn(self, baton: Any, timeout_s: float = TURN_TIMEOUT_S) -> None:
        """Block until the worker hands the turn back; fail when the trainer died or hangs."""
        ref, start = baton.wait_for.remote("driver"), time.monotonic()
        while not ray.wait([ref], timeout=1.0)[0]:
            if not self.thread.is_alive():
                reason = self.errors[0] if self.errors else "no error given"
                raise RuntimeError(f"bench step: the Ray Train worker stopped: {reason}")
            if time.monotonic() - start > timeout_s:
                raise RuntimeError(f"bench step: the Ray Train worker did not answer in {timeout_s:.0f} s")

    def check(self) -> None:
        self.thread.join(timeout=300)
        if self.errors:
            raise RuntimeError(f"bench step: the TorchTrainer failed: {self.errors[0]}")


def rounds_with_ray_worker(
    cfg: Config,
    device: torch.device,
    *,
    seed: int,
    warmup: int,
    rounds: int,
    threads: int,
    driver_round: Callable[[int], None],
    progress: Progress,
) -> dict[str, Any]:
    """Run ``driver_round(r)`` and the Train worker's timed step in turn, ``rounds`` times.

    Returns the worker's ``{"times": [s per round], "threads", "device"}``. Starts a local Ray
    instance when none is running (and stops it afterwards).
    """
    with ray_instance():
        storage = tempfile.mkdtemp(prefix="road-ray-bench-")
        try:
            baton = Baton.remote()
            loop = {"seed": seed, "warmup": warmup, "rounds": rounds, "threads": threads}
            fit = _FitInBackground(_step_trainer(cfg, device, storage, baton, **loop))
            progress("starting a one-worker TorchTrainer (start-up is not timed)")
            fit.thread.start()
            try:
                for r in range(rounds):
                    fit.wait_turn(baton)
                    driver_round(r)
                    ray.get(baton.pass_to.remote("worker"))
                fit.wait_turn(baton)
            except BaseException:
                baton.pass_to.remote("abort")  # let the worker (and the trainer) end
                raise
            result = ray.get(baton.get_result.remote())
            fit.check()
            return result
        finally:
            shutil.rmtree(storage, ignore_errors=True)


__all__ = ["Baton", "ray_step_worker", "rounds_with_ray_worker"]
