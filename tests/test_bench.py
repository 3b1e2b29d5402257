"""`road-ray bench {step|data|eval|trial|gpu}` at smoke size: the JSON's keys and sane values, never timings."""

from __future__ import annotations

import json
import math

import pytest
import torch

from road_ray.cli import main


def run_cli(tmp_path, *argv: str) -> dict:
    out = tmp_path / "bench.json"
    # one torch thread: two threads on a loaded 2-core machine spin at every barrier
    assert main(["bench", *argv, "--smoke", "--threads", "1", "--json", str(out)]) == 0
    return json.loads(out.read_text())


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def check_machine(result: dict, what: str) -> None:
    assert result["bench"] == what and result["settings"]["smoke"] is True
    machine = result["machine"]
    for key in ("platform", "cpu_count", "torch", "ray", "device", "device_name", "load_avg_start", "load_avg_end"):
        assert machine[key] is not None, key
    assert machine["cpu_count"] >= 1 and machine["load_avg_start"] >= 0 and machine["load_avg_end"] >= 0


def test_bad_options_are_one_line_errors(capsys):
    assert main(["bench", "eval", "--teacher-layer", "layer3"]) == 2
    assert "--teacher-layer does not apply" in capsys.readouterr().err
    assert main(["bench", "step", "--network", "unet-small", "--no-ray"]) == 2
    assert "--network 'unet-small'" in capsys.readouterr().err


@pytest.mark.ray
def test_bench_step_smoke(ray_session, tmp_path):
    result = run_cli(tmp_path, "step", "--repeats", "2", "--peak-tflops", "1.5")
    check_machine(result, "step")
    s, f = result["settings"], result["figures"]
    assert (s["network"], s["teacher_layer"], s["pretrained"], s["ray"]) == ("deeplabv2-small", "layer4", "none", True)
    for key in ("road_over_plain", "ray_over_bare", "teacher_over_road", "crops_per_s_consumed_by_road_step"):
        assert positive(f[key]), key
    assert set(f["times_s"]) == {"road", "plain", "road_no_dist", "road_no_spt", "splitting_layer", "teacher", "ray"}
    assert all(v["n"] == 2 and positive(v["median"]) for v in f["times_s"].values())
    # shares are differences of noisy times: finite, not necessarily positive at smoke size
    assert set(f["shares_of_road_step"]) == {"distillation", "spatial_term", "splitting_layer", "domain_classifiers"}
    assert all(math.isfinite(v) for v in f["shares_of_road_step"].values()) and "toggle" in f["share_method"]
    assert all(positive(f["images_per_s"][k]) for k in ("road", "plain", "ray"))
    # FLOPs: the ROAD step does the plain step's work plus the teacher's forward and the classifiers
    assert f["gflop_per_call"]["road"] > f["gflop_per_call"]["plain"] > 0 and f["flop_ratio_road_over_plain"] > 1
    assert (
        0 < f["flop_shares_of_road_step"]["distillation"] < 1 and 0 < f["flop_shares_of_road_step"]["spatial_term"] < 1
    )
    assert f["peak_tflops"] == 1.5
    assert all(positive(f["mfu"][k]) and positive(f["tflops_achieved"][k]) for k in ("road", "plain"))
    assert isinstance(f["targets"]["road_over_plain_met"], bool) and isinstance(f["targets"]["ray_over_bare_met"], bool)
    assert result["ray_worker"]["threads"] == 1 and s["torch_threads"] == 1
    check_step_over_peak(f, s["precision"])


def check_step_over_peak(f: dict, precision: str) -> None:
    """The measured peak of {matmul, conv3x3} x {fp32, bf16} and the step against it."""
    assert set(f["peak_gflops"]) == {"matmul", "conv3x3"}
    assert all(set(v) == {"fp32", "bf16"} and all(positive(x) for x in v.values()) for v in f["peak_gflops"].values())
    assert f["step_precision"] == precision and positive(f["step_gflops"])
    assert set(f["step_over_peak"]) == {"matmul", "conv3x3"} and all(positive(v) for v in f["step_over_peak"].values())
    assert isinstance(f["targets"]["step_over_peak_met"], bool) and f["targets"]["step_over_peak_min"] == 0.5
    assert {k["kernel"] for k in f["peak_kernels"]} >= {"matmul/fp32", "matmul/bf16"}


def test_bench_step_without_ray(tmp_path):
    result = run_cli(tmp_path, "step", "--no-ray", "--repeats", "1", "--warmup", "0", "--crop", "16")
    f = result["figures"]
    assert result["settings"]["ray"] is False and result["settings"]["crop"] == 16
    assert f["ray_over_bare"] is None and "ray" not in f["times_s"] and positive(f["road_over_plain"])
    assert f["peak_tflops"] is None and f["mfu"] == {"road": None, "plain": None}  # CPU: no peak without --peak-tflops
    from road_ray.engine.precision import resolve_precision

    assert result["settings"]["precision"] == resolve_precision("auto", torch.device("cpu"))  # as run.precision=auto
    check_step_over_peak(f, result["settings"]["precision"])


def test_bench_step_no_peak(tmp_path):
    result = run_cli(tmp_path, "step", "--no-ray", "--no-peak", "--repeats", "1", "--warmup", "0", "--crop", "16")
    f = result["figures"]
    assert f["peak_gflops"] is None and f["step_over_peak"] is None and f["targets"]["step_over_peak_met"] is None


def test_measured_peak_at_toy_size():
    from road_ray.bench.peak import KINDS, PRECISIONS, measure_peak

    result = measure_peak(torch.device("cpu"), rounds=2, toy=True)
    assert set(result["peak_gflops"]) == set(KINDS)
    for kind in KINDS:
        assert all(positive(result["peak_gflops"][kind][p]) for p in PRECISIONS)
    names = {k["kernel"] for k in result["kernels"]}
    assert names == {
        "matmul/fp32",
        "matmul/bf16",
        "conv3x3/fp32/contiguous",
        "conv3x3/fp32/channels_last",
        "conv3x3/bf16/contiguous",
        "conv3x3/bf16/channels_last",
    }
    for k in result["kernels"]:
        # toy sizes are no peak (and the machine may be loaded): positive, and no unit slip (< 10 TFLOP/s)
        assert k["reps_per_call"] >= 1 and 0 < k["gflops"] < 10_000, k
        once = 2 * 96**3 if k["kernel"].startswith("matmul") else 2 * 2 * 16 * 16 * 16 * 16 * 9  # SHAPES["toy"]
        assert math.isclose(k["gflop_per_call"], k["reps_per_call"] * once / 1e9), k
        assert math.isclose(k["gflops"], k["gflop_per_call"] / k["call_s_median"], rel_tol=1e-9)
    # the conv peak is the faster layout
    conv = [k["gflops"] for k in result["kernels"] if k["kernel"].startswith("conv3x3/fp32")]
    assert result["peak_gflops"]["conv3x3"]["fp32"] == max(conv)


def test_step_over_peak_pairs_rounds():
    """A step doing half a kernel's FLOP/s in every round is at 0.5 of the peak, whatever the round's speed."""
    from road_ray.bench.peak import PeakKernel, over_peak

    kernels = [
        PeakKernel(kind, p, "-", "x", 100, lambda: None, reps=1, times=[1.0, 2.0, 4.0])
        for kind in ("matmul", "conv3x3")
        for p in ("fp32", "bf16")
    ]
    ratios = over_peak(50, [1.0, 2.0, 4.0], kernels, "bf16")
    assert ratios == {"matmul": 0.5, "conv3x3": 0.5}


def test_datasheet_peaks_by_gpu_name():
    from road_ray.bench.step_setup import datasheet_peak

    assert datasheet_peak("NVIDIA H100 80GB HBM3", "bf16")[0] == 989.0  # the SXM part
    assert datasheet_peak("NVIDIA H100 PCIe", "bf16")[0] == 756.0
    assert datasheet_peak("NVIDIA H200", "bf16")[0] == 989.0
    assert datasheet_peak("NVIDIA A100-SXM4-80GB", "bf16")[0] == 312.0
    assert datasheet_peak("NVIDIA L4", "bf16")[0] == 121.0 and datasheet_peak("NVIDIA L40S", "bf16")[0] == 362.0
    assert datasheet_peak("NVIDIA A10G", "bf16")[0] == 125.0
    value, reason = datasheet_peak("Tesla T4", "bf16")
    assert value is None and "not in the peak table" in reason


def test_every_bench_option_is_a_cli_flag():
    """The options each bench takes are flags of `road-ray bench`, and the CLI hands over every flag."""
    import importlib

    from road_ray.bench.common import BENCHES
    from road_ray.cli import build_parser

    args = build_parser().parse_args(["bench", "step"])
    flags = set(args.bench_options) | {"seed"}  # seed: a keyword of the functions, no flag
    for what, module in BENCHES.items():
        missing = set(importlib.import_module(module).OPTIONS) - flags
        assert not missing, f"bench {what}: options without a flag: {missing}"


def test_bench_gpu_refuses_without_cuda(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for argv in (["bench", "gpu"], ["bench", "gpu", "--allow-cpu"], ["bench", "gpu", "--smoke"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "no CUDA device" in err and "--allow-cpu --smoke" in err


@pytest.mark.ray
def test_bench_data_smoke(ray_session, road_ray_home, tmp_path):
    result = run_cli(tmp_path, "data")
    check_machine(result, "data")
    s, f = result["settings"], result["figures"]
    assert "small" in s["dataset"] and s["rows"] > 0 and s["workers"] >= 1
    for key in (
        "ray_over_dataloader",
        "ray_data_crops_per_s",
        "dataloader_crops_per_s",
        "step_crops_per_s",
        "stream_over_step",
    ):
        assert positive(f[key]), key
    for kind in ("png", "jpeg"):
        e = f["encodings"][kind]
        assert all(
            positive(e[k])
            for k in (
                "ray_data_crops_per_s",
                "dataloader_crops_per_s",
                "transform_only_crops_per_s",
                "image_bytes_per_row",
            )
        )
    assert all(positive(v) for v in f["jpeg_over_png"].values())
    assert isinstance(f["targets"]["stream_over_step_met"], bool)


def test_bench_eval_smoke(road_ray_home, tmp_path):
    result = run_cli(tmp_path, "eval")
    check_machine(result, "eval")
    s, f = result["settings"], result["figures"]
    assert s["images"] == 4 and "small" in s["dataset"]
    assert positive(f["images_per_s"]["whole"]) and positive(f["images_per_s"]["slide"])
    assert positive(f["slide_over_whole_time"]) and f["confusion_matrix_on_device"] is True
    for mode in ("whole", "slide"):
        audit = f["host_syncs"][mode]
        assert audit["images"] == 4 and audit["host_sync_calls_per_image"] >= 0
        assert sum(audit["sites_per_pass"].values()) >= 1  # at least the one read of the totals per pass
        assert isinstance(f["per_image_host_sync_free"], bool)


def test_step_bench_batch_is_what_the_loop_hands_the_step():
    """bench step prepares its batch with the loop's own to_device (uint8 on the wire, normalized there)."""
    from road_ray.bench.step_setup import StepSetup, bench_config, synthetic_batch
    from road_ray.engine.loop import to_device

    cfg = bench_config("deeplabv2-small", 16, 1, "fp32", None)
    wire = synthetic_batch(cfg, seed=0)
    assert wire["source_image"].dtype == torch.uint8 and wire["source_label"].dtype == torch.uint8
    setup = StepSetup(cfg, torch.device("cpu"), seed=0)
    expected = to_device(wire, torch.device("cpu"))
    assert set(setup.batch) == set(expected)
    assert all(torch.equal(setup.batch[k], expected[k]) for k in expected)
    assert setup.batch["source_image"].dtype == torch.float32 and setup.batch["source_label"].dtype == torch.int64


TIMELINE_KEYS = ("startup", "train", "eval", "checkpoint", "wall")


def test_trial_timeline_from_the_last_report():
    from road_ray.bench.trial import timeline_figures

    history = [
        {"iter": 2, "time/startup": 5.0, "time/train": 2.0, "time/eval": 1.0, "time/checkpoint": 0.0, "time/wall": 8.0},
        {
            "iter": 4,
            "time/startup": 5.0,
            "time/train": 6.0,
            "time/eval": 2.0,
            "time/checkpoint": 0.5,
            "time/wall": 14.0,
        },
    ]
    history[-1]["train_share"] = 6.0 / 14.0
    f = timeline_figures(history, driver_wall_s=20.0, ray_start_s=3.0, ray_stop_s=1.0)
    assert f["iterations"] == 4 and f["worker_timeline_s"]["train"] == 6.0
    assert math.isclose(f["teardown_s"], 6.0) and math.isclose(f["worker_unaccounted_s"], 0.5)
    assert math.isclose(f["train_share_of_run"], 0.3) and math.isclose(f["train_share_with_ray_start_stop"], 0.25)
    assert f["targets"] == {"train_share_of_run_min": 0.75, "train_share_of_run_met": False}


def test_trial_config_is_the_default_sweeps_run():
    from road_ray.bench.trial import sweep_run_config

    cfg = sweep_run_config(480, 160)
    assert (cfg.data.crop_size, cfg.data.batch_source, cfg.data.batch_target) == (128, 4, 4)
    assert (cfg.model.backbone, cfg.data.minicity_size, cfg.optim.max_iters, cfg.run.eval_every) == (
        "small",
        "default",
        480,
        160,
    )
    assert (cfg.road.lambda_dist, cfg.road.lambda_spt, cfg.road.grid) == (0.1, 0.01, "3x3")  # the paper's point
    smoke = sweep_run_config(4, 2, smoke=True)
    assert smoke.data.minicity_size == "small" and smoke.optim.max_iters == 4 and smoke.data.crop_size < 128


@pytest.mark.ray
@pytest.mark.slow
def test_bench_trial_smoke(ray_session, road_ray_home, tmp_path):
    result = run_cli(tmp_path, "trial")
    check_machine(result, "trial")
    s, f = result["settings"], result["figures"]
    assert s["iterations"] == 4 and s["eval_every"] == 2 and f["iterations"] == 4
    assert set(f["worker_timeline_s"]) == set(TIMELINE_KEYS)
    assert all(f["worker_timeline_s"][k] >= 0 for k in TIMELINE_KEYS) and positive(f["worker_timeline_s"]["train"])
    assert 0 < f["train_share"] <= 1 and 0 < f["train_share_of_run"] <= 1
    assert f["driver_wall_s"] >= f["worker_timeline_s"]["wall"] > 0 and f["teardown_s"] >= 0
    assert f["ray_start_s"] >= 0 and f["ray_stop_s"] >= 0  # Ray was up already (the test session's)
    assert [r["iter"] for r in f["reports"]] == [2, 4] and f["outcome"]["iter"] == 4
    assert isinstance(f["targets"]["train_share_of_run_met"], bool)


GPU_PARTS = ("step_vgg16", "step_resnet101", "ray_over_bare", "fullres_stream", "eval_fullres", "road_run")


@pytest.mark.ray
@pytest.mark.slow
def test_bench_gpu_cpu_path_runs_every_part(ray_session, road_ray_home, tmp_path):
    out = tmp_path / "gpu.json"
    assert main(["bench", "gpu", "--allow-cpu", "--smoke", "--threads", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())  # strict JSON (no NaN)
    check_machine(result, "gpu")
    assert result["ok"] is True and result["failed_parts"] == [] and result["settings"]["device"] == "cpu"
    parts = result["figures"]["parts"]
    assert set(parts) == {*GPU_PARTS, "ddp_2_workers"}
    assert all(parts[name]["status"] == "ok" for name in (*GPU_PARTS, "ddp_2_workers")), parts
    summary = result["figures"]["summary"]
    for name in ("step_vgg16", "step_resnet101"):
        r = parts[name]["result"]
        assert r["crop"] == 24 and r["network"] == f"deeplabv2-{name.split('_')[1]}"
        assert positive(summary[name]["images_per_s"]) and positive(summary[name]["road_over_plain"])
        assert summary[name]["mfu"] is None and "CPU" in summary[name]["mfu_source"]  # no datasheet peak on a CPU
        assert positive(summary[name]["step_over_peak_conv3x3"])
    assert positive(summary["ray_over_bare"])
    assert parts["fullres_stream"]["result"]["available"] is True
    assert positive(parts["fullres_stream"]["result"]["stream"]["crops_per_s"])
    assert positive(summary["eval_images_per_s_1024x512_to_2048x1024"])
    assert parts["eval_fullres"]["result"]["label_size"] == "64x32"
    for name, workers in (("road_run", 1), ("ddp_2_workers", 2)):
        assert parts[name]["result"]["workers"] == workers and summary[name]["iterations"] == 2
        assert 0 < summary[name]["train_share_of_run"] <= 1 and summary[name]["miou"] is not None
    assert all(isinstance(parts[n]["wall_s"], float) and parts[n]["budget_s"] > 0 for n in GPU_PARTS)
