"""Small statistics for studies over seeds: a 95% confidence interval of a difference of means
(Welch's t interval: the two points' seeds need not have equal variances). No SciPy needed."""

from __future__ import annotations

import math
import statistics
from typing import Any

# Student's t, two-sided 95% (the 0.975 quantile), for 1..30 degrees of freedom; above 30 the
# normal 1.96 is within 4% of it.
T_975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t_975(df: float) -> float:
    """The t quantile at the Welch degrees of freedom rounded down (the wider, safer interval)."""
    k = max(1, math.floor(df))
    return T_975[k - 1] if k <= len(T_975) else 1.96


def difference_ci(a: list[float], b: list[float]) -> dict[str, Any] | None:
    """mean(a) − mean(b) with its 95% Welch interval; None with fewer than 2 values on a side.

    se = sqrt(s_a²/n_a + s_b²/n_b); df = se⁴ / ((s_a²/n_a)²/(n_a−1) + (s_b²/n_b)²/(n_b−1)).
    Equal values on both sides give a zero-width interval.
    """
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    diff = statistics.fmean(a) - statistics.fmean(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return {"mean": diff, "low": diff, "high": diff, "df": None}
    df = se**4 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = t_975(df) * se
    return {"mean": diff, "low": diff - half, "high": diff + half, "df": df}
