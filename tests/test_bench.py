"""`road-ray bench {step|data|eval}` at smoke size: the JSON's keys and sane values, never timings."""

from __future__ import annotations

import json
import math

import pytest

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


def test_bench_step_without_ray(tmp_path):
    result = run_cli(tmp_path, "step", "--no-ray", "--repeats", "1", "--warmup", "0", "--crop", "16")
    f = result["figures"]
    assert result["settings"]["ray"] is False and result["settings"]["crop"] == 16
    assert f["ray_over_bare"] is None and "ray" not in f["times_s"] and positive(f["road_over_plain"])
    assert f["peak_tflops"] is None and f["mfu"] == {"road": None, "plain": None}  # CPU: no peak without --peak-tflops


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
    import torch

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
