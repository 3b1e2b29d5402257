"""MiniCity's colour statistics: per domain, per material (and class), the distribution of colours.

Each object carries a *tone*, three uniforms drawn with the scene. A style maps it through its
palette entry for the object's material: the first uniform picks a *mode* (by weight) and the
hue inside it, the second the saturation, the third the value. The two palettes are the
colour half of MiniCity's domain gap (``docs/minicity.md``): the game's are the saturated,
evenly spread colours an artist picks; the photo's are what a camera sees of real materials:
duller, mostly achromatic cars and clothes, olive vegetation, warm grey asphalt.
"""

from __future__ import annotations

import numpy as np

from road_ray.data.minicity.scene import MATERIALS

ColourMode = tuple[float, tuple[float, float], tuple[float, float], tuple[float, float]]
ANY = (0.0, 360.0)
GREY = (0.0, 0.06)
PALETTES: dict[str, dict[str, list[ColourMode]]] = {
    "game": {  # saturated, bright, "designed" colours; little per-instance spread
        "sky": [(1, (205, 212), (0.55, 0.65), (0.88, 0.95))],
        "asphalt": [(1, (255, 275), (0.10, 0.16), (0.33, 0.40))],
        "paving": [(1, (15, 30), (0.22, 0.32), (0.66, 0.74))],
        "grass": [(1, (95, 110), (0.60, 0.72), (0.58, 0.70))],
        "facade": [(1, ANY, (0.28, 0.45), (0.60, 0.85))],
        "concrete": [(1, (205, 225), (0.18, 0.28), (0.52, 0.62))],
        "fence": [(1, (18, 30), (0.45, 0.60), (0.52, 0.62))],
        "metal_pole": [(1, (210, 225), (0.12, 0.20), (0.58, 0.68))],
        "housing": [(1, (45, 52), (0.75, 0.90), (0.65, 0.78))],
        "sign": [
            (0.4, (50, 58), (0.85, 0.95), (0.85, 0.95)),
            (0.3, (215, 225), (0.80, 0.95), (0.65, 0.8)),
            (0.3, (0, 6), (0.85, 0.95), (0.75, 0.88)),
        ],
        "sign_mark": [(1, ANY, (0.0, 0.03), (0.93, 1.0))],
        "foliage": [(1, (100, 118), (0.65, 0.78), (0.45, 0.60))],
        "bark": [(1, (25, 32), (0.60, 0.70), (0.38, 0.45))],
        "skin": [(1, (20, 28), (0.40, 0.52), (0.78, 0.90))],
        "clothes": [(1, ANY, (0.65, 0.90), (0.55, 0.85))],
        "paint": [(1, ANY, (0.65, 0.92), (0.55, 0.90))],
        "paint/bus": [(1, (0, 55), (0.75, 0.90), (0.75, 0.90))],
        "paint/train": [(1, (100, 170), (0.60, 0.80), (0.60, 0.80))],
        "glass": [(1, (190, 205), (0.35, 0.50), (0.35, 0.45))],
        "tyre": [(1, ANY, GREY, (0.12, 0.16))],
        "rear_light": [(1, (0, 4), (0.90, 1.0), (0.85, 0.92))],
        "lamp": [(1, (50, 58), (0.20, 0.30), (0.95, 1.0))],
        "hood": [(1, ANY, GREY, (0.2, 0.25))],
    },
    "photo": {  # natural materials: duller, mostly achromatic, wider spread
        "sky": [(0.6, (195, 220), (0.10, 0.35), (0.80, 0.97)), (0.4, ANY, (0.0, 0.05), (0.75, 0.95))],
        "asphalt": [(1, (20, 50), (0.02, 0.10), (0.30, 0.50))],
        "paving": [(1, (25, 45), (0.04, 0.14), (0.45, 0.68))],
        "grass": [(1, (50, 80), (0.25, 0.50), (0.25, 0.45))],
        "facade": [
            (0.45, (25, 45), (0.10, 0.30), (0.45, 0.80)),
            (0.2, (5, 20), (0.35, 0.55), (0.30, 0.50)),
            (0.35, ANY, GREY, (0.35, 0.70)),
        ],
        "concrete": [(1, (30, 45), (0.03, 0.12), (0.40, 0.65))],
        "fence": [(0.6, ANY, GREY, (0.25, 0.50)), (0.4, (20, 35), (0.30, 0.50), (0.25, 0.45))],
        "metal_pole": [(1, ANY, GREY, (0.20, 0.45))],
        "housing": [(1, ANY, (0.0, 0.08), (0.06, 0.18))],
        "sign": [
            (0.35, (205, 220), (0.50, 0.70), (0.35, 0.60)),
            (0.25, (350, 360), (0.55, 0.70), (0.40, 0.60)),
            (0.25, ANY, (0.0, 0.08), (0.70, 0.85)),
            (0.15, (40, 50), (0.40, 0.60), (0.55, 0.70)),
        ],
        "sign_mark": [(1, ANY, (0.0, 0.06), (0.75, 0.90))],
        "foliage": [(1, (60, 95), (0.30, 0.55), (0.18, 0.40))],
        "bark": [(1, (25, 40), (0.20, 0.40), (0.15, 0.30))],
        "skin": [(1, (15, 30), (0.25, 0.50), (0.35, 0.80))],
        "clothes": [(0.6, ANY, (0.0, 0.10), (0.08, 0.45)), (0.4, ANY, (0.20, 0.50), (0.20, 0.55))],
        "paint": [
            (0.2, ANY, (0.0, 0.05), (0.75, 0.90)),
            (0.25, ANY, (0.0, 0.05), (0.50, 0.70)),
            (0.25, ANY, (0.0, 0.08), (0.05, 0.20)),
            (0.3, ANY, (0.30, 0.65), (0.20, 0.60)),
        ],
        "paint/truck": [
            (0.6, ANY, (0.0, 0.05), (0.75, 0.90)),
            (0.2, ANY, GREY, (0.4, 0.6)),
            (0.2, ANY, (0.3, 0.6), (0.3, 0.6)),
        ],
        "paint/bus": [
            (0.4, (200, 220), (0.40, 0.60), (0.30, 0.55)),
            (0.3, ANY, GREY, (0.75, 0.90)),
            (0.3, (40, 55), (0.45, 0.65), (0.55, 0.75)),
        ],
        "paint/train": [
            (0.4, ANY, GREY, (0.75, 0.90)),
            (0.3, (0, 10), (0.50, 0.70), (0.40, 0.60)),
            (0.3, (195, 210), (0.10, 0.30), (0.50, 0.70)),
        ],
        "paint/motorcycle": [(0.6, ANY, (0.0, 0.08), (0.05, 0.20)), (0.4, ANY, (0.40, 0.70), (0.30, 0.60))],
        "paint/bicycle": [
            (0.4, ANY, (0.0, 0.08), (0.05, 0.20)),
            (0.3, ANY, GREY, (0.55, 0.75)),
            (0.3, ANY, (0.30, 0.60), (0.30, 0.60)),
        ],
        "glass": [(1, (200, 230), (0.05, 0.20), (0.08, 0.25))],
        "tyre": [(1, ANY, GREY, (0.04, 0.10))],
        "rear_light": [(1, (355, 365), (0.70, 0.90), (0.45, 0.70))],
        "lamp": [(1, (45, 55), (0.05, 0.15), (0.80, 0.95))],
        "hood": [(1, ANY, (0.0, 0.1), (0.05, 0.22))],
    },
}
CLASS_SUFFIX = {14: "truck", 15: "bus", 16: "train", 17: "motorcycle", 18: "bicycle"}
LAMP_RGB = np.array([[1.0, 0.15, 0.1], [1.0, 0.7, 0.1], [0.2, 1.0, 0.45]])


def _compile(style: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The style's palette as arrays: palette entry per (material, class); per entry and mode, where
    the mode starts and ends in [0, 1) (by weight), and its (hue, saturation, value) ranges."""
    keys = list(PALETTES[style])
    lut = np.zeros((len(MATERIALS), 256), np.int64)
    for m, name in enumerate(MATERIALS):
        base = "paint" if name == "frame" else name
        for cls in range(256):
            special = f"{base}/{CLASS_SUFFIX.get(cls, '')}"
            lut[m, cls] = keys.index(special if special in PALETTES[style] else base)
    n = max(len(v) for v in PALETTES[style].values())
    starts, ends, ranges = np.full((len(keys), n), 2.0), np.ones((len(keys), n)), np.zeros((len(keys), n, 6))
    for k, key in enumerate(keys):
        modes = PALETTES[style][key]
        edges = np.concatenate([[0.0], np.cumsum([m[0] for m in modes])]) / sum(m[0] for m in modes)
        starts[k, : len(modes)], ends[k, : len(modes)] = edges[:-1], edges[1:]
        ranges[k, : len(modes)] = [[m[1][0], m[1][1], m[2][0], m[2][1], m[3][0], m[3][1]] for m in modes]
    return lut, starts, ends, ranges


_COMPILED = {style: _compile(style) for style in PALETTES}


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorized colorsys.hsv_to_rgb; h in [0, 1)."""
    i = np.floor(h * 6.0).astype(np.int64) % 6
    f = h * 6.0 - np.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    r = np.choose(i, [v, q, p, p, t, v])
    g = np.choose(i, [t, v, v, q, p, p])
    b = np.choose(i, [p, p, t, v, v, q])
    return np.stack([r, g, b], axis=1)


def tone_colours(style: str, materials: np.ndarray, classes: np.ndarray, tones: np.ndarray) -> np.ndarray:
    """RGB in [0, 1] per object: its tone (3 uniforms) picks a mode of its palette entry, then a hue,
    a saturation and a value inside the mode's ranges."""
    lut, starts, ends, ranges = _COMPILED[style]
    key = lut[materials, classes]
    mode = (starts[key] <= tones[:, :1]).sum(axis=1) - 1
    lo, hi = starts[key, mode], ends[key, mode]
    frac = (tones[:, 0] - lo) / (hi - lo)
    r = ranges[key, mode]
    hue = (r[:, 0] + frac * (r[:, 1] - r[:, 0])) % 360.0
    sat = r[:, 2] + tones[:, 1] * (r[:, 3] - r[:, 2])
    val = r[:, 4] + tones[:, 2] * (r[:, 5] - r[:, 4])
    return _hsv_to_rgb(hue / 360.0, sat, val)
