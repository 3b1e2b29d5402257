"""The ROAD objective (paper Sec. 3): distillation (Eq. 1), spatial-aware adaptation (Eq. 2-4), Eq. 5."""

from road_ray.road.distillation import distillation_loss
from road_ray.road.grl import GradientReversal, grad_reverse
from road_ray.road.objective import ROADObjective, StepOutput, segmentation_loss, train_step
from road_ray.road.spatial import (
    INVALID_REGION,
    RegionDomainClassifiers,
    region_counts,
    region_index,
    spatial_aware_loss,
)

__all__ = [
    "INVALID_REGION",
    "GradientReversal",
    "ROADObjective",
    "RegionDomainClassifiers",
    "StepOutput",
    "distillation_loss",
    "grad_reverse",
    "region_counts",
    "region_index",
    "segmentation_loss",
    "spatial_aware_loss",
    "train_step",
]
