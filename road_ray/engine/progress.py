"""What a run says while it trains: progress lines, the divergence guard, and where its time goes.

:class:`ProgressLog` sums every step's detached losses on the device and turns their mean over
the log interval into the logged metrics once per interval (the only host sync of the loop), stops
a run whose loss is NaN/inf, and prints the progress line (losses, images/s, ETA). :class:`Timeline` sums the wall time of a run's phases
(start-up to the first step, training steps, evaluations, checkpoints), so that a run reports
``train_share``: the fraction of its time spent training.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import Tensor

from road_ray.road import StepOutput

PHASES = ("startup", "train", "eval", "checkpoint")


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf: the run stops; its last good checkpoint is left intact."""


class Timeline:
    """Wall-clock seconds per phase of a run, from ``launched_at`` (``time.time()`` when the runner
    launched it, e.g. before Ray Train started its workers) or from construction.

    ``startup`` is everything before the first training step (the runner's start-up, building
    the model, resuming, the first batch); the training phase includes fetching batches, since a
    stream that cannot keep up is time lost to training as much as a slow step.
    """

    def __init__(self, launched_at: float | None = None) -> None:
        # perf_counter for the phases; the launch time (another process's clock) through time.time()
        self.start = time.perf_counter() - max(0.0, time.time() - launched_at if launched_at else 0.0)
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self._started = False

    def started_training(self) -> None:
        if not self._started:
            self.seconds["startup"] = time.perf_counter() - self.start
            self._started = True

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - t0

    def metrics(self) -> dict[str, float]:
        """``time/<phase>`` seconds, ``time/wall`` and ``train_share`` = train / wall."""
        wall = time.perf_counter() - self.start
        out = {f"time/{name}": round(value, 3) for name, value in self.seconds.items()}
        out["time/wall"] = round(wall, 3)
        out["train_share"] = self.seconds["train"] / wall if wall > 0 else None
        return out


class ProgressLog:
    """Per log interval: the mean losses of its steps, images/s, ETA, and the divergence guard.

    One step's loss on a batch of a few crops swings to several times the trend, so a logged
    (and reported) loss is the mean over the steps since the last log, as mmsegmentation's
    logger does; a NaN/inf in any of those steps makes the mean NaN/inf and stops the run.
    """

    def __init__(
        self, max_iters: int, images_per_step: int, start_iter: int, log: Callable[[str], None] | None
    ) -> None:
        self.max_iters, self.images_per_step, self.log = max_iters, images_per_step, log
        self._t, self._it = time.perf_counter(), start_iter
        self._sums: dict[str, Tensor] = {}
        self._steps = 0

    def observe(self, out: StepOutput) -> None:
        """Add one step's detached losses to the interval's sums (on the device: no host sync)."""
        step = {"total": out.loss.detach(), **out.losses, "domain_acc": out.domain_acc}
        self._sums = {k: v.float() + self._sums[k] if k in self._sums else v.float() for k, v in step.items()}
        self._steps += 1

    def metrics(self, iteration: int, lr: float) -> dict[str, Any]:
        """One host sync: the interval's mean losses as floats; raises TrainingDiverged on NaN/inf."""
        if not self._steps:
            raise RuntimeError("ProgressLog.metrics: no step observed since the last log")
        means = {k: v.item() / self._steps for k, v in self._sums.items()}
        self._sums, self._steps = {}, 0
        total, acc = means.pop("total"), means.pop("domain_acc")
        if not math.isfinite(total):
            raise TrainingDiverged(
                f"loss became {total} by iteration {iteration} (seg {means['seg']}, dist {means['dist']}, "
                f"spt {means['spt']}); the last good checkpoint is kept"
            )
        now = time.perf_counter()
        ips = (iteration - self._it) * self.images_per_step / max(now - self._t, 1e-9)
        self._t, self._it = now, iteration
        metrics = {"iter": iteration, "lr": lr, "loss/total": total}
        metrics.update({f"loss/{k}": v for k, v in means.items()})
        metrics.update({"domain_acc": acc, "images_per_s": ips})
        if self.log is not None:
            self.log(self.line(metrics))
        return metrics

    def line(self, m: dict[str, Any]) -> str:
        eta = (self.max_iters - m["iter"]) * self.images_per_step / max(m["images_per_s"], 1e-9)
        return (
            f"[train] iter {m['iter']}/{self.max_iters} loss {m['loss/total']:.4f} (seg {m['loss/seg']:.4f} "
            f"dist {m['loss/dist']:.4f} spt {m['loss/spt']:.4f}) dom_acc {m['domain_acc']:.2f} "
            f"lr {m['lr']:.2e} {m['images_per_s']:.1f} img/s eta {eta:.0f}s"
        )


def eval_line(metrics: dict[str, Any]) -> str:
    """The evaluation line: the oracle (needs target labels) first, the label-free numbers beside it."""

    def fmt(v: Any) -> str:
        return "n/a" if v is None else f"{v:.2f}"

    return (
        f"[eval] iter {metrics['iter']} target-val mIoU (oracle) {fmt(metrics.get('miou'))} | "
        f"source-val mIoU {fmt(metrics.get('source_val_miou'))} | target entropy (label-free) "
        f"{fmt(metrics.get('target_entropy'))}"
    )
