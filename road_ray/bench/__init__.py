"""``road-ray bench {step|data|eval}``: speed as ratios measured side by side in one run."""

from road_ray.bench.common import run_bench

__all__ = ["run_bench"]
