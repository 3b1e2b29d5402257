"""MiniCity's objects: trees, people, two-wheelers, vehicles, poles with lights and signs.

Each builder places one object in metres on the road plane (``x`` across, ``z`` along the
street, the near end at ``z``) as planar :class:`~road_ray.data.minicity.scene.Part` s, adds
it to a :class:`Builder` with its painter's key, and, in sunshine, casts its shadow on the
road plane. Sizes are real-world sizes (a car is 1.7-1.9 m wide, a person 1.55-1.95 m tall),
so their image size comes from the camera alone. Far away, details smaller than a pixel
(wheels, lights, side windows, small crown discs) are left out, as a game engine's level of
detail would.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from road_ray.data.minicity.scene import (
    BAR,
    BUS,
    CAR,
    DISC,
    LIGHT,
    MOTORCYCLE,
    PERSON,
    POLE,
    RIDER,
    SIGN,
    TRAIN,
    TRUCK,
    VEGETATION,
    M,
    Part,
    box,
    circle_x,
    circle_y0,
    face_x,
    face_z,
    poly,
    visible_side_x,
)


class Builder:
    """Collects objects with their painter's keys; ``parts()`` returns them far to near."""

    def __init__(self, rng: np.random.Generator, cam_height: float):
        self.rng = rng
        self.cam_h = cam_height
        self.items: list[tuple[int, float, int, list[Part]]] = []
        self.shadows: list[np.ndarray] = []
        self.sun_dir: tuple[float, float] | None = None  # ground offset per metre of height
        self.focus: list[list[Part]] = []
        self._tone_rng = np.random.default_rng(rng.integers(2**63))
        self._tones: list[list[float]] = []

    def tone(self) -> tuple[float, float, float]:
        """An object's appearance draw: three uniforms that each style maps to its colours."""
        if not self._tones:  # drawn in bulk, from a stream of their own: fast
            self._tones = self._tone_rng.random((256, 3)).tolist()
        return tuple(self._tones.pop())

    def add(self, layer: int, depth: float, parts: list[Part], focus: bool = False) -> None:
        if focus:  # in plain view: drawn after everything else
            self.focus.append(parts)
            layer, depth = 4, -float(len(self.focus))
        self.items.append((layer, depth, len(self.items), parts))

    def parts(self) -> list[Part]:
        self.items.sort(key=lambda it: (it[0], -it[1], it[2]))
        return [p for *_, parts in self.items for p in parts]

    def shadow(self, footprint: np.ndarray, height: float) -> None:
        """Cast the shadow of a vertical prism (footprint (N, 2) in X, Z) onto the road plane."""
        if self.sun_dir is None:
            return
        dx, dz = self.sun_dir
        top = footprint + height * np.array([dx, dz])
        hull = _convex_hull(np.concatenate([footprint, top]))
        self.shadows.append(np.stack([hull[:, 0], np.zeros(len(hull)), hull[:, 1]], axis=1))


def _convex_hull(points: np.ndarray) -> np.ndarray:
    """Convex hull of (N, 2) points."""
    return cv2.convexHull(points.astype(np.float32)).reshape(-1, 2).astype(np.float64)


def _rect(x0: float, x1: float, z0: float, z1: float) -> np.ndarray:
    return np.array([[x0, z0], [x1, z0], [x1, z1], [x0, z1]], dtype=np.float64)


def tree(b: Builder, x: float, z: float, layer: int, scale: float = 1.0, focus: bool = False) -> None:
    """A trunk and a crown of overlapping discs (fewer discs far away, where they merge anyway)."""
    rng, tone = b.rng, b.tone()
    u = rng.random(4 + 4 * 5)
    trunk_h = (1.8 + 1.4 * u[0]) * scale
    r = (1.6 + 1.6 * u[1]) * scale
    yc = trunk_h + 0.7 * r
    parts = [
        Part(BAR, (x, z, 0.0, trunk_h + 0.3 * r, (0.22 + 0.18 * u[2]) * scale), VEGETATION, M["bark"], tone),
        Part(DISC, (x, yc, z, r), VEGETATION, M["foliage"], tone),
    ]
    n = 2 + int(u[3] * 4) if z < 60 else 1
    for k in range(n):
        a, d, rr = u[4 + 3 * k] * 2 * math.pi, r * (0.35 + 0.4 * u[5 + 3 * k]), r * (0.45 + 0.3 * u[6 + 3 * k])
        parts.append(
            Part(DISC, (x + d * math.cos(a), yc + 0.8 * d * math.sin(a), z, rr), VEGETATION, M["foliage"], tone)
        )
    b.add(layer, z - r, parts, focus)
    if b.sun_dir is not None:
        dx, dz = b.sun_dir
        b.shadows.append(circle_y0(x + yc * dx, z + yc * dz, r, 0.8 * r))


def bushes(b: Builder, x: float, z: float, layer: int) -> None:
    rng, tone = b.rng, b.tone()
    parts = []
    for _ in range(rng.integers(1, 4)):
        r = rng.uniform(0.5, 1.2)
        parts.append(
            Part(DISC, (x + rng.uniform(-1, 1), 0.7 * r, z + rng.uniform(-1, 1), r), VEGETATION, M["foliage"], tone)
        )
    b.add(layer, z - 1.0, parts)


def person(b: Builder, x: float, z: float, cls: int = PERSON, seated: bool = False, focus: bool = False) -> list[Part]:
    """A pedestrian (or, ``seated``, a rider's body) as a billboard in the plane Z = z."""
    rng = b.rng
    h = rng.uniform(1.55, 1.95)
    t_up, t_low, t_skin = b.tone(), b.tone(), b.tone()
    w = h * rng.uniform(0.12, 0.15)  # half shoulder width
    parts = []
    if seated:  # on a saddle at ~0.9 m: thighs forward (hidden), shins down to the pedals
        seat, hip = 0.85, 0.85
        for s in (-1, 1):
            parts.append(face_z(x + s * 0.05, x + s * 0.16, 0.3, seat + 0.1, z + 0.05, cls, "clothes", t_low))
        top = seat + 0.6 * h * 0.62
    else:
        stride = rng.uniform(0.0, 0.12) * h
        hip = 0.48 * h
        for s in (-1, 1):
            foot = x + s * stride
            leg = np.array(
                [
                    [foot - 0.055 * h, 0, z],
                    [foot + 0.055 * h, 0, z],
                    [x + s * 0.01 * h + s * 0.1 * h, hip, z],
                    [x + s * 0.01 * h, hip, z],
                ]
            )
            parts.append(poly(leg, cls, "clothes", t_low, ("z", z)))
        top = 0.81 * h
    torso_low = hip - 0.03 * h
    for s in (-1, 1):  # arms
        parts.append(
            face_z(x + s * w, x + s * (w + 0.05 * h), torso_low + 0.05 * h, top - 0.02 * h, z, cls, "clothes", t_up)
        )
    parts.append(face_z(x - w, x + w, torso_low, top, z, cls, "clothes", t_up))
    parts.append(face_z(x - 0.03 * h, x + 0.03 * h, top - 0.01 * h, top + 0.04 * h, z, cls, "skin", t_skin))
    parts.append(Part(DISC, (x, top + 0.1 * h, z, 0.068 * h), cls, M["skin"], t_skin))
    if not seated:
        b.add(3, z, parts, focus)
        b.shadow(_rect(x - w, x + w, z - 0.1, z + 0.1), h)
    return parts


def two_wheeler(b: Builder, x: float, z0: float, cls: int, rider: bool, focus: bool = False) -> None:
    """A bicycle or motorcycle along the street (side view in the plane X = x), with or without its rider."""
    tone = b.tone()
    moto = cls == MOTORCYCLE
    r, length = (0.31, 2.0) if moto else (0.34, 1.75)
    za, zb = z0 + r + 0.02, z0 + length - r - 0.02
    parts = [Part(BAR, (x, za, 0.0, 2 * r, 0.07 if not moto else 0.14), cls, M["tyre"], tone)]  # tyre seen end-on
    for zc in (za, zb):
        parts.append(poly(circle_x(x, zc, r, r), cls, "tyre", tone, ("x", x), (1.0, 0.0, 0.0)))
    if moto:
        body = np.array([[x, 0.35, za + 0.2], [x, 0.35, zb - 0.15], [x, 1.0, zb - 0.25], [x, 0.95, za + 0.1]])
        parts.append(poly(body, cls, "paint", tone, ("x", x), (1.0, 0.0, 0.0)))
        parts.append(face_z(x - 0.2, x + 0.2, 0.45, 0.95, z0 + 0.25, cls, "paint", tone))
        parts.append(face_z(x - 0.08, x + 0.08, 0.75, 0.85, z0 + 0.24, cls, "rear_light", tone))
    else:
        t = 0.06
        frame = [
            ((za, r), (z0 + 0.85, 0.35)),
            ((z0 + 0.85, 0.35), (zb - 0.1, 0.85)),
            ((za + 0.2, 0.9), (zb - 0.1, 0.85)),
            ((za, r), (za + 0.25, 0.9)),
            ((z0 + 0.85, 0.35), (za + 0.2, 0.9)),
            ((zb, r), (zb - 0.15, 1.05)),
        ]
        for (zp, yp), (zq, yq) in frame:
            quad = np.array([[x, yp - t, zp], [x, yq - t, zq], [x, yq + t, zq], [x, yp + t, zp]])
            parts.append(poly(quad, cls, "frame", tone, ("x", x), (1.0, 0.0, 0.0)))
        parts.append(face_z(x - 0.3, x + 0.3, 1.0, 1.08, zb - 0.1, cls, "frame", tone))  # handlebar
    if rider:
        parts += person(b, x, z0 + 0.75, RIDER, seated=True)
    b.add(3, z0, parts, focus)
    b.shadow(_rect(x - 0.3, x + 0.3, z0, z0 + length), 1.6 if rider else 1.0)


def vehicle(b: Builder, kind: int, x: float, z0: float, oncoming: bool, focus: bool = False) -> float:
    """A car, truck, bus or tram whose near end is at Z = z0, centred on X = x; returns its length."""
    rng, tone, cam_h = b.rng, b.tone(), b.cam_h
    W, L, H = {
        CAR: (rng.uniform(1.7, 1.9), rng.uniform(3.9, 4.8), rng.uniform(1.38, 1.6)),
        TRUCK: (rng.uniform(2.3, 2.5), rng.uniform(6.5, 10.0), rng.uniform(3.0, 3.8)),
        BUS: (2.55, rng.uniform(10.0, 12.5), rng.uniform(3.0, 3.4)),
        TRAIN: (2.4, rng.uniform(20.0, 32.0), rng.uniform(3.3, 3.7)),
    }[kind]
    x0, x1, z1 = x - W / 2, x + W / 2, z0 + L
    detail = z0 < 45 or focus  # far away, lights, wheels and side windows are below a pixel
    xs = visible_side_x(x0, x1) if detail else None
    parts: list[Part] = []
    wheel_r = {CAR: 0.32, TRUCK: 0.5, BUS: 0.5, TRAIN: 0.0}[kind]
    if wheel_r and detail:
        for xa, xb in ((x0 + 0.05, x0 + 0.35), (x1 - 0.35, x1 - 0.05)):
            parts.append(face_z(xa, xb, 0.0, 2 * wheel_r * 0.8, z0 + 0.8, kind, "tyre", tone))
    if kind == CAR:
        yb = H * rng.uniform(0.55, 0.62)
        zc0, zc1 = z0 + L * rng.uniform(0.2, 0.3), z1 - L * rng.uniform(0.2, 0.28)
        parts += box(x0, x1, 0.22, yb, z0, z1, kind, "paint", tone, cam_h)
        parts += box(x0 + 0.1, x1 - 0.1, yb, H, zc0, zc1, kind, "paint", tone, cam_h)
        parts.append(face_z(x0 + 0.2, x1 - 0.2, yb + 0.06, H - 0.07, zc0, kind, "glass", tone))
        xc = visible_side_x(x0 + 0.1, x1 - 0.1) if detail else None  # the cabin's side toward us
        if xc is not None:
            mid = (zc0 + zc1) / 2
            parts.append(face_x(xc, zc0 + 0.12, mid - 0.05, yb + 0.06, H - 0.08, kind, "glass", tone))
            parts.append(face_x(xc, mid + 0.05, zc1 - 0.12, yb + 0.06, H - 0.08, kind, "glass", tone))
        light_y = (yb - 0.22, yb - 0.08)
    elif kind == TRUCK:
        cab_l, cab_h = 2.3, H * rng.uniform(0.75, 0.85)
        if oncoming:  # cab in front, cargo box behind
            parts += box(x0, x1, 0.5, H, z0 + cab_l + 0.2, z1, kind, "paint", tone, cam_h)
            parts += box(x0 + 0.05, x1 - 0.05, 0.45, cab_h, z0, z0 + cab_l, kind, "paint", tone, cam_h)
            parts.append(face_z(x0 + 0.2, x1 - 0.2, cab_h * 0.55, cab_h - 0.15, z0, kind, "glass", tone))
        else:
            parts += box(x0 + 0.05, x1 - 0.05, 0.45, cab_h, z1 - cab_l, z1, kind, "paint", tone, cam_h)
            parts += box(x0, x1, 0.5, H, z0, z1 - cab_l - 0.2, kind, "paint", tone, cam_h)
        light_y = (0.55, 0.75)
    else:  # bus, tram: a long box with a band of windows
        parts += box(x0, x1, 0.3 if kind == BUS else 0.25, H, z0, z1, kind, "paint", tone, cam_h)
        parts.append(face_z(x0 + 0.15, x1 - 0.15, 1.2, H - 0.35, z0, kind, "glass", tone))
        if xs is not None:
            step = 1.6 if kind == TRAIN else 1.4
            for zw in np.arange(z0 + 1.5, z1 - 1.0, step):
                parts.append(face_x(xs, zw, zw + step - 0.25, 1.15, H - 0.6, kind, "glass", tone))
        light_y = (0.6, 0.85)
    if xs is not None and wheel_r:
        for zc in (z0 + 0.4 + wheel_r * 2, z1 - 0.4 - wheel_r * 2):
            parts.append(poly(circle_x(xs, zc, wheel_r, wheel_r), kind, "tyre", tone, ("x", xs), (1.0, 0.0, 0.0)))
    lamp = "lamp" if oncoming else "rear_light"
    for xa, xb in ((x0 + 0.08, x0 + 0.32), (x1 - 0.32, x1 - 0.08)) if detail else ():
        parts.append(face_z(xa, xb, light_y[0], light_y[1], z0, kind, lamp, tone))
    b.add(3, z0, parts, focus)
    if b.sun_dir is not None:
        b.shadow(_rect(x0, x1, z0, z1), H)
    b.shadows.append(np.stack([[x0 - 0.1, 0, z0 - 0.2], [x1 + 0.1, 0, z0 - 0.2], [x1 + 0.1, 0, z1], [x0 - 0.1, 0, z1]]))
    return L


def pole_with(b: Builder, x: float, z: float, side: float, kind: str, focus: bool = False) -> None:
    """A lamp post, a sign post or a traffic-light pole on the sidewalk at (x, z); ``side`` = -1 left, +1 right."""
    rng, tone = b.rng, b.tone()
    w = rng.uniform(0.12, 0.22)
    parts: list[Part] = []
    if kind == "lamp":
        h = rng.uniform(6.0, 9.0)
        arm = rng.uniform(1.0, 2.2)
        parts.append(Part(BAR, (x, z, 0.0, h, w), POLE, M["metal_pole"], tone))
        parts.append(face_z(min(x, x - side * arm), max(x, x - side * arm), h - 0.12, h, z, POLE, "metal_pole", tone))
        xa = x - side * arm
        parts.append(face_z(xa - 0.3, xa + 0.3, h - 0.25, h - 0.05, z, POLE, "housing", tone))
        if rng.random() < 0.25:
            parts += _sign(b, x, z, rng.uniform(2.2, 3.0))
    elif kind == "sign":
        parts.append(Part(BAR, (x, z, 0.0, rng.uniform(2.4, 3.2), w * 0.7), POLE, M["metal_pole"], tone))
        y = parts[0].geom[3] - 0.05
        for _ in range(1 if rng.random() < 0.7 else 2):
            sign = _sign(b, x, z - 0.02, y)
            parts += sign
            y -= 0.9
    else:  # traffic light, sometimes on a mast arm over the road
        mast = rng.random() < 0.45
        h = rng.uniform(5.2, 6.4) if mast else rng.uniform(3.0, 4.2)
        parts.append(Part(BAR, (x, z, 0.0, h, w * 1.2), POLE, M["metal_pole"], tone))
        spots = [(x, h - 0.05)] if not mast else []
        if mast:
            reach = rng.uniform(3.0, 6.5)
            parts.append(
                face_z(min(x, x - side * reach), max(x, x - side * reach), h - 0.2, h, z, POLE, "metal_pole", tone)
            )
            spots = [(x - side * reach * f, h - 0.2) for f in ((0.95,) if rng.random() < 0.5 else (0.55, 0.95))]
            if rng.random() < 0.5:
                spots.append((x, 3.4))
        facing = rng.random() < 0.75  # lamps toward the camera, or the housing's back
        lt = b.tone()
        for xl, top in spots:
            parts.append(face_z(xl - 0.17, xl + 0.17, top - 0.95, top, z - 0.05, LIGHT, "housing", tone))
            if facing:
                for i in range(3):
                    parts.append(
                        Part(DISC, (xl, top - 0.17 - 0.3 * i, z - 0.1, 0.1), LIGHT, M["lamp"], (lt[0], i / 2, lt[2]))
                    )
    b.add(3, z, parts, focus)
    b.shadow(_rect(x - w / 2, x + w / 2, z - w / 2, z + w / 2), parts[0].geom[3])


def _sign(b: Builder, x: float, z: float, top: float) -> list[Part]:
    rng, tone = b.rng, b.tone()
    shape = int(np.searchsorted([0.45, 0.8], rng.random()))
    if shape == 0:  # round
        r = rng.uniform(0.3, 0.4)
        return [
            Part(DISC, (x, top - r, z, r), SIGN, M["sign"], tone),
            Part(DISC, (x, top - r, z - 0.01, r * 0.7), SIGN, M["sign_mark"], tone),
        ]
    if shape == 1:  # rectangle
        w, h = rng.uniform(0.5, 1.0), rng.uniform(0.5, 0.9)
        return [
            face_z(x - w / 2, x + w / 2, top - h, top, z, SIGN, "sign", tone),
            face_z(x - w / 3, x + w / 3, top - 0.7 * h, top - 0.3 * h, z - 0.01, SIGN, "sign_mark", tone),
        ]
    s = rng.uniform(0.6, 0.9)
    tri = np.array([[x - s / 2, top - 0.87 * s, z], [x + s / 2, top - 0.87 * s, z], [x, top, z]])
    return [poly(tri, SIGN, "sign", tone, ("z", z))]
