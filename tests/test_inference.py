"""Whole-image and sliding-window inference at ``data.eval_scale``, logits at the label's full size."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from road_ray.engine.evaluate import EvalSettings, predict
from road_ray.engine.inference import predict_slide, predict_whole


class Recorder(torch.nn.Module):
    """Logits = the input's first channel, twice (a position-wise identity), and the sizes it saw."""

    def __init__(self):
        super().__init__()
        self.sizes: list[tuple[int, int]] = []

    def forward(self, x):
        self.sizes.append(tuple(x.shape[-2:]))
        return x[:, :1].repeat(1, 2, 1, 1) * torch.tensor([1.0, -1.0]).view(1, 2, 1, 1), {}


def test_slide_windows_the_image_resized_by_eval_scale_and_returns_full_size_logits():
    x = torch.randn(1, 3, 40, 80)
    model = Recorder()
    out = predict_slide(model, x, window=16, scale=0.5)
    assert out.shape == (1, 2, 40, 80)
    # windows of the 20x40 image: rows 0, 4; columns 0, 10, 20, 24 (stride 16 * 2/3 = 10)
    assert model.sizes == [(16, 16)] * 8
    small = F.interpolate(x, size=(20, 40), mode="bilinear", align_corners=False)[:, :1]
    expected = F.interpolate(small, size=(40, 80), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out[:, :1], expected)
    torch.testing.assert_close(out, predict_whole(Recorder(), x, scale=0.5))


def test_eval_settings_pass_the_scale_to_both_modes():
    x = torch.randn(1, 3, 40, 80)
    for mode, window in [("whole", 16), ("slide", 16)]:
        model = Recorder()
        assert predict(model, x, EvalSettings(mode=mode, scale=0.25, window=window)).shape == (1, 2, 40, 80)
        assert model.sizes == ([(10, 20)] if mode == "whole" else [(16, 16)] * 2)  # slide: 10x20, padded to 16 rows
    with pytest.raises(ValueError, match="scale"):
        predict_slide(Recorder(), x, window=16, scale=0.0)
