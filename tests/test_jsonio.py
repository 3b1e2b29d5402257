"""Every JSON road-ray writes is strict: missing numbers are null."""

import json
import math

import numpy as np
import pytest
import torch

from road_ray import jsonio


def test_non_finite_numbers_become_null_and_strict_parsers_read_it():
    value = {"miou": 12.5, "source_val_miou": math.nan, "x": [math.inf, np.float32("nan"), torch.tensor(2.0)]}
    text = jsonio.dumps(value)
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in {text}")) == {
        "miou": 12.5,
        "source_val_miou": None,
        "x": [None, None, 2.0],
    }
