"""The training engine without Ray: optimizer groups, poly lr, checkpoints, inference, the loop."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from road_ray.config import Config, apply_overrides
from road_ray.data.boxes import make_box
from road_ray.engine.checkpoint import load_checkpoint, read_checkpoint_config, save_checkpoint
from road_ray.engine.inference import predict_slide, predict_whole
from road_ray.engine.loop import LoopHooks, TrainingDiverged, build_objective, train_loop
from road_ray.engine.optim import build_optimizer, poly_factor, set_learning_rate


def tiny_config(**overrides) -> Config:
    cfg = Config()
    apply_overrides(
        cfg,
        {
            "model.pretrained": "none",
            "model.allow_untrained_teacher": True,
            "data.crop_size": 32,
            "data.batch_source": 2,
            "data.batch_target": 2,
            "optim.max_iters": 6,
            "optim.lr": 0.01,
            "run.eval_every": 3,
            "run.log_every": 1,
            "road.grid": "2x2",
            "road.lambda_spt": 0.1,
            **overrides,
        },
    )
    return cfg.validate()


def synthetic_batches(size: int = 32, bs: int = 2, seed: int = 0):
    """Learnable toy data: the label is the class of the brightest colour channel, per half image."""
    g = torch.Generator().manual_seed(seed)
    box = torch.from_numpy(np.stack([make_box(0, 0, size, size, size * 2, size * 2)] * bs))
    while True:
        label = torch.zeros(bs, size, size, dtype=torch.int64)
        label[:, size // 2 :] = 1
        image = torch.randn(bs, 3, size, size, generator=g) * 0.1
        image[:, 0, : size // 2] += 1.0
        image[:, 1, size // 2 :] += 1.0
        yield {
            "source_image": image,
            "source_label": label,
            "source_box": box,
            "target_image": image.flip(-1) * 0.9,
            "target_box": box,
        }


def val_batches_factory(size: int = 32):
    def images():
        it = synthetic_batches(size, 1, seed=1)
        for _ in range(2):
            b = next(it)
            yield {"image": b["source_image"], "label": b["source_label"], "id": ["x"]}

    def val_batches(name: str):
        if name != "target_val":
            raise KeyError(name)
        return images()

    return val_batches


class Recorder:
    def __init__(self, keep: Path):
        self.reports: list[dict] = []
        self.keep = keep

    def __call__(self, metrics, checkpoint_dir):
        self.reports.append(dict(metrics))
        if checkpoint_dir is not None:  # persist like Ray does (the loop's temp dir goes away)
            import shutil

            dest = self.keep / f"checkpoint_{metrics['iter']:07d}"
            shutil.copytree(checkpoint_dir, dest)


def test_poly_schedule_and_param_groups():
    assert poly_factor(0, 100, 0.9) == 1.0 and poly_factor(100, 100, 0.9) == 0.0
    assert math.isclose(poly_factor(50, 100, 0.9), 0.5**0.9)
    cfg = tiny_config()
    objective = build_objective(cfg, torch.device("cpu"))
    opt = build_optimizer(objective.student, objective.domain_classifiers, cfg.optim)
    names = [g["name"] for g in opt.param_groups]
    assert names == ["backbone", "head", "domain_classifiers"]
    set_learning_rate(opt, cfg.optim, 0)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["head"] == pytest.approx(10 * lrs["backbone"]) and lrs["backbone"] == pytest.approx(cfg.optim.lr)
    assert opt.defaults["momentum"] == 0.9 and opt.defaults["weight_decay"] == 5e-4


def test_frozen_mode_leaves_first_stages_out_of_the_optimizer():
    cfg = tiny_config(**{"road.mode": "frozen", "road.frozen_stages": 2})
    objective = build_objective(cfg, torch.device("cpu"))
    opt = build_optimizer(objective.student, objective.domain_classifiers, cfg.optim)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    frozen = [p for p in objective.student.backbone_parameters() if not p.requires_grad]
    assert frozen and not any(id(p) in in_opt for p in frozen)
    assert objective.teacher is None and objective.domain_classifiers is None


def test_checkpoint_is_atomic_and_checked(tmp_path):
    cfg = tiny_config()
    objective = build_objective(cfg, torch.device("cpu"))
    opt = build_optimizer(objective.student, objective.domain_classifiers, cfg.optim)
    d = save_checkpoint(
        tmp_path / "ck",
        config=cfg,
        iteration=7,
        student=objective.student,
        domain_classifiers=objective.domain_classifiers,
        optimizer=opt,
        metrics={"miou": 1.5},
    )
    assert read_checkpoint_config(d).road.grid == "2x2"
    assert load_checkpoint(d)["iteration"] == 7
    assert json.loads((d / "meta.json").read_text())["metrics"]["miou"] == 1.5
    assert not list(tmp_path.glob(".tmp-*"))
    # truncated file -> clear error, nothing overwritten
    data = (d / "checkpoint.pt").read_bytes()
    (d / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_checkpoint(d)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_checkpoint_config(tmp_path / "missing")


def test_inference_shapes_whole_and_slide():
    cfg = tiny_config()
    model = build_objective(cfg, torch.device("cpu")).student.eval()
    x = torch.randn(1, 3, 40, 80)
    whole = predict_whole(model, x, scale=0.5)
    slide = predict_slide(model, x, window=32)
    assert whole.shape == slide.shape == (1, 19, 40, 80)
    assert torch.isfinite(slide).all()


def test_loop_loss_falls_reports_and_resumes(tmp_path):
    cfg = tiny_config(**{"optim.max_iters": 12, "run.eval_every": 6})
    rec = Recorder(tmp_path)
    last = train_loop(cfg, synthetic_batches(), val_batches_factory(), LoopHooks(report=rec, log=lambda s: None))
    assert [r["iter"] for r in rec.reports] == [6, 12]
    assert rec.reports[-1]["miou"] is not None and rec.reports[-1]["source_val_miou"] is None
    assert "iou/road" in rec.reports[-1] and rec.reports[-1]["target_entropy"] > 0
    assert last["iter"] == 12
    # Where the run's time went: its phases, and the share of it spent in training steps.
    timeline = rec.reports[-1]
    phases = [timeline[f"time/{p}"] for p in ("startup", "train", "eval", "checkpoint")]
    assert all(t >= 0 for t in phases) and timeline["time/train"] > 0 and timeline["time/eval"] > 0
    assert rec.reports[0]["time/checkpoint"] == 0 < timeline["time/checkpoint"]  # the first save counts later
    assert sum(phases) <= timeline["time/wall"] + 1e-3 and 0 < timeline["train_share"] < 1

    # Resume from the iteration-6 checkpoint with a longer schedule: it continues at 7, not 0,
    # with the optimizer's momentum buffers restored.
    cfg2 = tiny_config(**{"optim.max_iters": 18, "run.eval_every": 6})
    rec2 = Recorder(tmp_path / "second")
    (tmp_path / "second").mkdir()
    ckpt = tmp_path / "checkpoint_0000006"
    assert load_checkpoint(ckpt)["optimizer"]["state"], "momentum buffers are saved"
    train_loop(
        cfg2, synthetic_batches(), val_batches_factory(), LoopHooks(report=rec2, resume_dir=ckpt, log=lambda s: None)
    )
    assert [r["iter"] for r in rec2.reports] == [12, 18]


@pytest.mark.parametrize("mode", ["road", "nonadapt"])
def test_every_evaluation_reports_the_label_free_validators(tmp_path, mode):
    from road_ray.engine.validators import VALIDATORS

    def images(seed):
        it = synthetic_batches(32, 1, seed=seed)
        for _ in range(3):
            b = next(it)
            yield {"image": b["source_image"], "label": b["source_label"], "id": ["x"]}

    def unlabelled(seed):
        for batch in images(seed):
            yield {"image": batch["image"], "id": batch["id"]}

    seen = []

    def val_batches(name):
        seen.append(name)
        return {
            "target_val": lambda: images(1),
            "source_val": lambda: images(2),
            "target_train": lambda: unlabelled(3),
        }[name]()

    cfg = tiny_config(**{"road.mode": mode, "validators.max_images": 2, "validators.mixval_images": 2})
    rec = Recorder(tmp_path)
    train_loop(cfg, synthetic_batches(), val_batches, LoopHooks(report=rec, log=lambda s: None))
    assert seen == ["target_val", "source_val", "target_train"] * 2
    last = rec.reports[-1]
    for name in VALIDATORS:
        assert name in last, name
    # computed on what they are given: every one has a value here (DEV from ROAD's own domain
    # classifiers in road mode, from its own logistic classifier in nonadapt mode)
    assert all(last[k] is not None for k in ("val/entropy", "val/im", "val/bnm", "val/snd", "val/dev", "val/mixval"))
    assert 0 < last["val/bnm"] <= 1 and last["val/entropy"] > 0


def test_seg_loss_falls_over_training(tmp_path):
    cfg = tiny_config(**{"optim.max_iters": 30, "run.eval_every": 30, "run.log_every": 1, "road.mode": "nonadapt"})
    seen = []
    train_loop(cfg, synthetic_batches(), None, LoopHooks(report=lambda m, c: None, log=lambda s: seen.append(s)))
    seg = [float(s.split("seg ")[1].split()[0]) for s in seen if s.startswith("[train] iter")]
    assert np.mean(seg[-5:]) < 0.7 * np.mean(seg[:5])


def test_the_logged_loss_is_the_mean_over_the_log_interval():
    from road_ray.engine.progress import ProgressLog
    from road_ray.road import StepOutput

    def step(seg, spt=0.0, acc=0.5):
        t = torch.tensor
        return StepOutput(
            loss=t(seg + spt, requires_grad=True),
            losses={"seg": t(seg), "dist": t(0.0), "spt": t(spt)},
            domain_acc=t(acc),
        )

    lines: list[str] = []
    progress = ProgressLog(max_iters=10, images_per_step=4, start_iter=0, log=lines.append)
    for seg, acc in [(1.0, 0.25), (4.0, 0.75), (1.0, 0.5)]:  # one spike among three steps
        progress.observe(step(seg, spt=0.5, acc=acc))
    m = progress.metrics(3, lr=0.1)
    assert m["loss/seg"] == pytest.approx(2.0) and m["loss/total"] == pytest.approx(2.5)
    assert m["loss/spt"] == pytest.approx(0.5) and m["domain_acc"] == pytest.approx(0.5) and len(lines) == 1
    progress.observe(step(3.0))  # the next interval starts from zero
    assert progress.metrics(4, lr=0.1)["loss/seg"] == pytest.approx(3.0)
    # A NaN in any step of the interval, not only its last, stops the run.
    progress.observe(step(float("nan")))
    progress.observe(step(1.0))
    with pytest.raises(TrainingDiverged, match="loss became nan by iteration 6"):
        progress.metrics(6, lr=0.1)


def test_divergence_stops_with_a_clear_reason(tmp_path):
    cfg = tiny_config(**{"optim.lr": 1e12, "optim.max_iters": 30, "run.eval_every": 2, "road.mode": "nonadapt"})
    rec = Recorder(tmp_path)
    with pytest.raises(TrainingDiverged, match="loss became"):
        train_loop(cfg, synthetic_batches(), val_batches_factory(), LoopHooks(report=rec, log=lambda s: None))
    # every checkpoint written before the divergence is whole
    for d in tmp_path.glob("checkpoint_*"):
        assert load_checkpoint(d)["iteration"] > 0


class _FakeValShard:
    """What CachedValidation reads: a Ray DataIterator's iter_batches, counting executions."""

    def __init__(self, n: int, size: int = 8):
        self.n, self.size, self.executions = n, size, 0

    def iter_batches(self, **_):
        self.executions += 1
        for i in range(self.n):
            yield {
                "image": np.full((1, 3, self.size, self.size), i, np.float32),
                "label": np.zeros((1, self.size, self.size), np.int64),
                "id": np.array([f"v{i}"]),
            }


def test_validation_images_are_kept_after_the_first_complete_pass():
    from road_ray.on_ray.data import CachedValidation

    shard = _FakeValShard(5)
    val = CachedValidation(lambda: shard)
    first = [b["id"][0] for b in val()]
    assert first == [f"v{i}" for i in range(5)] and shard.executions == 1
    assert [b["id"][0] for b in val()] == first and shard.executions == 1  # from memory
    # A pass stopped early caches nothing; splits over the byte budget stream every time.
    partial = CachedValidation(lambda: shard)
    next(partial())
    assert partial.cached is None
    big = CachedValidation(lambda: shard, max_bytes=3 * 3 * 8 * 8 * 4)
    assert len(list(big())) == 5 and len(list(big())) == 5 and big.cached is None and big.too_large


def test_uint8_crops_are_normalized_on_the_device():
    from road_ray.data.transforms import normalize
    from road_ray.engine.loop import to_device

    rgb = np.random.default_rng(0).integers(0, 256, (2, 6, 6, 3), dtype=np.uint8)
    batch = {
        "source_image": torch.from_numpy(np.ascontiguousarray(np.moveaxis(rgb, -1, -3))),
        "source_label": torch.tensor([[[0, 255]]], dtype=torch.uint8),
        "source_box": torch.zeros(2, 8),
    }
    out = to_device(batch, torch.device("cpu"))
    np.testing.assert_allclose(out["source_image"].numpy(), normalize(rgb), rtol=1e-6, atol=1e-6)
    assert out["source_label"].dtype == torch.int64 and out["source_label"].tolist() == [[[0, 255]]]
    assert out["source_box"] is batch["source_box"]


def test_a_checkpoint_uri_is_fetched_before_loading(tmp_path):
    from road_ray.engine.checkpoint import local_checkpoint

    ckpt = tmp_path / "run" / "checkpoint_0000003"
    ckpt.mkdir(parents=True)
    (ckpt / "checkpoint.pt").write_bytes(b"weights")
    (ckpt / "meta.json").write_text("{}")
    assert local_checkpoint(str(ckpt)) == str(ckpt)  # a path stays a path
    local = Path(local_checkpoint(f"file://{ckpt}"))
    assert local != ckpt and (local / "checkpoint.pt").read_bytes() == b"weights" and (local / "meta.json").is_file()
    with pytest.raises(FileNotFoundError, match="no such folder"):
        local_checkpoint(f"file://{tmp_path}/missing")


def test_precision_auto_is_bf16_on_gpus_and_native_bf16_cpus(monkeypatch):
    from road_ray.engine import precision

    assert precision.resolve_precision("auto", torch.device("cuda")) == "bf16"
    assert precision.resolve_precision("fp32", torch.device("cuda")) == "fp32"
    for native in (True, False):
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda native=native: native)
        assert precision.resolve_precision("auto", torch.device("cpu")) == ("bf16" if native else "fp32")
        assert precision.autocast_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="expected auto, fp32 or bf16"):
        precision.resolve_precision("fp16", torch.device("cpu"))
