"""Micro-benchmark of the label-free validators' cost (issue #16: ≤ 10% of an evaluation's time).

``python -m road_ray.engine.validators_bench [--smoke]`` prints, as JSON, medians over
``repeats`` rounds of: the accumulator's ms per kept image (``update_target`` +
``update_source`` on one ``[1, K, H, W]`` logits map with ``C``-channel stride-8 features, over
``max_images`` images: later ones are no-ops), its ``compute()`` ms once per evaluation, with
ROAD-style domain probabilities and with the fallback classifier, MixVal's ms per mix (one
mixed forward pass + the agreement), and the student's own forward ms at the same size for
comparison (the small DeepLab-v2 of ``ModelConfig()`` with random weights). Timings on a
loaded machine are rough: read the ratios to the forward pass. Not a test.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any

import torch

from road_ray.engine.label_free import LabelFreeValidators, ValidatorSettings, mixval


def _ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


@torch.no_grad()
def measure(
    height: int = 128,
    width: int = 256,
    classes: int = 19,
    channels: int = 64,
    images: int | None = None,
    pairs: int = 4,
    repeats: int = 5,
    settings: ValidatorSettings | None = None,
) -> dict[str, Any]:
    """The costs above, in milliseconds (CPU, current torch threads)."""
    from road_ray.config import ModelConfig
    from road_ray.models.segmenter import build_segmenter

    settings = settings or ValidatorSettings()
    # past max_images an update is a no-op, which would flatter the per-image figure
    images = min(images or settings.max_images, settings.max_images)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, classes, height, width, generator=g)
    feats = torch.randn(1, channels, -(-height // 8), -(-width // 8), generator=g)
    label = torch.randint(0, classes, (1, height, width), generator=g)
    label[:, : height // 10] = 255
    image = torch.randn(1, 3, height, width, generator=g)
    domain = torch.rand(1, *feats.shape[-2:], generator=g)

    acc = LabelFreeValidators(settings)
    counter = iter(range(10**9))

    def one_image() -> None:
        i = next(counter) % settings.max_images
        acc.update_target(logits, feats, images=image, index=i)
        acc.update_source(logits, label, feats, domain_prob=domain, index=i)

    per_image = []
    for _ in range(repeats):
        acc.reset()
        t0 = time.perf_counter()
        for _ in range(images):
            one_image()
        per_image.append((time.perf_counter() - t0) * 1000 / images)
    compute_ms = _ms(acc.compute, repeats)
    no_domain = LabelFreeValidators(settings)
    for i in range(images):
        no_domain.update_target(logits, feats, index=i)
        no_domain.update_source(logits, label, feats, index=i)
    fallback_ms = _ms(no_domain.compute, repeats)

    model = build_segmenter(ModelConfig(pretrained="none", num_classes=classes)).eval()
    forward_ms = _ms(lambda: model(image), repeats)
    pair_images = torch.randn(2 * pairs, 3, height, width, generator=g)
    labels = torch.randint(0, classes, (2 * pairs, height, width), generator=g)
    mix_ms = _ms(lambda: mixval(model, pair_images, labels, settings.mixval_ratio), repeats) / (2 * pairs)
    return {
        "size": [height, width],
        "classes": classes,
        "channels": channels,
        "images_per_stream": images,
        "threads": torch.get_num_threads(),
        "accumulator_ms_per_image": round(statistics.median(per_image), 3),
        "compute_ms_per_evaluation": round(compute_ms, 2),
        "compute_fallback_dev_ms_per_evaluation": round(fallback_ms, 2),
        "forward_ms_per_image": round(forward_ms, 2),
        "mixval_ms_per_mix": round(mix_ms, 2),
    }


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    kwargs: dict[str, Any] = (
        {"height": 32, "width": 64, "images": 4, "pairs": 1, "repeats": 1} if "--smoke" in argv else {}
    )
    print(json.dumps(measure(**kwargs), indent=1))


if __name__ == "__main__":
    main()
