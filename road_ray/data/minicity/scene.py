"""MiniCity's scene model: a pinhole camera over a street world measured in metres.

World axes: ``X`` to the right, ``Y`` up (the road is ``Y = 0``), ``Z`` forward along the
street; the camera sits at ``(0, cam_height, 0)`` looking down ``+Z``. A world point projects
to column ``u = cx + focal * X / Z`` and row ``v = horizon + focal * (cam_height - Y) / Z``
(pixel centres at integer coordinates), so everything standing on the road shrinks toward
the vanishing point ``(cx, horizon)`` as ``1 / Z``: sizes follow the perspective by
construction, not by a rule of thumb.

A scene is a :class:`Camera`, a :class:`Ground` (the road, sidewalks and terrain, labelled per
pixel by casting the pixel's ray onto ``Y = 0``) and a list of planar :class:`Part` s already
sorted in painter's order (far to near). Both render styles draw the same parts, so a scene's
label map does not depend on its style. The sampling of streets and objects lives in
:mod:`road_ray.data.minicity.layout`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

# trainIds (road_ray.labels.CLASS_NAMES order)
(
    ROAD,
    SIDEWALK,
    BUILDING,
    WALL,
    FENCE,
    POLE,
    LIGHT,
    SIGN,
    VEGETATION,
    TERRAIN,
    SKY,
    PERSON,
    RIDER,
    CAR,
    TRUCK,
    BUS,
    TRAIN,
    MOTORCYCLE,
    BICYCLE,
) = range(19)
IGNORE = 255

# Materials: what a surface is made of, for the renderer (the label is the part's class).
MATERIALS = (
    "sky",
    "asphalt",
    "paving",
    "grass",
    "facade",
    "concrete",
    "fence",
    "metal_pole",
    "housing",
    "lamp",
    "sign",
    "sign_mark",
    "foliage",
    "bark",
    "skin",
    "clothes",
    "paint",
    "glass",
    "tyre",
    "rear_light",
    "frame",
    "hood",
)
M = {name: i for i, name in enumerate(MATERIALS)}

POLY, DISC, BAR = 0, 1, 2  # part kinds
Z_NEAR = 0.5  # metres; geometry nearer than this is clipped


@dataclass(frozen=True)
class Camera:
    """Image size and pinhole intrinsics; ``hood`` is the ego-vehicle bonnet's height (fraction of rows, 0 = none)."""

    height: int
    width: int
    focal: float
    cx: float
    horizon: float
    cam_height: float
    hood: float = 0.0

    def crop(self, top: float, left: float, size: float, out: int) -> Camera:
        """The camera whose ``out x out`` image is the square window ``(top, left, size)`` of this one, resampled."""
        s = out / size
        return replace(
            self,
            height=out,
            width=out,
            focal=self.focal * s,
            hood=0.0,
            cx=(self.cx - left + 0.5) * s - 0.5,
            horizon=(self.horizon - top + 0.5) * s - 0.5,
        )

    def project(self, xyz: np.ndarray) -> np.ndarray:
        """(N, 3) world points with Z > 0 -> (N, 2) pixel coordinates (u, v)."""
        z = xyz[:, 2]
        return np.stack(
            [self.cx + self.focal * xyz[:, 0] / z, self.horizon + self.focal * (self.cam_height - xyz[:, 1]) / z],
            axis=1,
        )


@dataclass(slots=True)
class Part:
    """One planar piece of an object, drawn with one id.

    ``kind`` POLY: ``geom`` is an (N, 3) convex polygon; DISC: ``(x, y, z, r)``, a disc facing
    the camera; BAR: ``(x, z, y0, y1, w)``, a vertical pole at least one pixel wide.
    ``plane`` ``("x", c)`` or ``("z", c)`` is the plane the part lies in (for textures),
    ``normal`` its outward normal (for lighting), ``tone`` the object's random appearance draw.
    """

    kind: int
    geom: object
    cls: int
    mat: int
    tone: tuple[float, float, float]
    plane: tuple[str, float] = ("z", 0.0)
    normal: tuple[float, float, float] = (0.0, 0.0, -1.0)


@dataclass
class Side:
    """One side of the street beyond the road edge: bands measured outward from the curb.

    ``z_bounds`` splits the street length into segments; per segment ``lot`` is the ground
    material beyond the sidewalk (SIDEWALK or TERRAIN) and ``crossing`` marks a side street
    (the ground there is road).
    """

    edge: float  # X of the road edge (curb)
    verge: float  # grass strip between curb and sidewalk
    walk: float  # sidewalk width
    z_bounds: np.ndarray
    lot: np.ndarray
    crossing: np.ndarray


@dataclass
class Ground:
    """The road plane: road between the two curbs, per-side bands, markings (image only: they are road)."""

    left: Side
    right: Side
    lines: list[tuple[float, bool]]  # lane lines: (X, dashed)
    crosswalks: list[tuple[float, float]]  # (z0, z1) zebra crossings across the road
    tone: tuple[float, float, float]


@dataclass
class Scene:
    camera: Camera
    ground: Ground
    parts: list[Part]
    sun: tuple[float, float] | None  # (elevation, azimuth) in radians; None = overcast
    seed: int  # appearance seed: the style draws its colours and textures from it
    shadows: list[np.ndarray] = field(default_factory=list)  # ground polygons (N, 3) in shadow
    focus: list[list[Part]] = field(default_factory=list)  # per focus class: the parts of its object (pretraining)


def ground_classes(ground: Ground, x: np.ndarray, z: np.ndarray) -> np.ndarray:
    """trainId of the road-plane point(s) ``(x, z)``: ROAD, SIDEWALK or TERRAIN."""
    out = np.full(x.shape, ROAD, dtype=np.uint8)
    for side, sign in ((ground.left, -1.0), (ground.right, 1.0)):
        d = sign * (x - side.edge)  # metres beyond the curb
        beyond = d > 0
        if not beyond.any():
            continue
        seg = np.clip(np.searchsorted(side.z_bounds, z[beyond], side="right") - 1, 0, len(side.lot) - 1)
        db = d[beyond]
        cls = np.where(db < side.verge, TERRAIN, np.where(db < side.verge + side.walk, SIDEWALK, side.lot[seg]))
        cls = np.where(side.crossing[seg], ROAD, cls)
        out[beyond] = cls
    return out


# --- geometry builders (camera at X = 0, so which faces are visible is known in advance) ---


def quad_z(x0: float, x1: float, y0: float, y1: float, z: float) -> np.ndarray:
    """A rectangle in the plane Z = z (facing the camera)."""
    return np.array([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]], dtype=np.float64)


def quad_x(x: float, z0: float, z1: float, y0: float, y1: float) -> np.ndarray:
    """A rectangle in the plane X = x (along the street)."""
    return np.array([[x, y0, z0], [x, y0, z1], [x, y1, z1], [x, y1, z0]], dtype=np.float64)


_UNIT = np.stack(
    [np.cos(np.linspace(0, 2 * math.pi, 12, endpoint=False)), np.sin(np.linspace(0, 2 * math.pi, 12, endpoint=False))],
    axis=1,
)


def circle_x(x: float, z: float, y: float, r: float) -> np.ndarray:
    """A 12-gon circle in the plane X = x (a wheel seen from the side)."""
    out = np.empty((12, 3))
    out[:, 0] = x
    out[:, 1] = y + r * _UNIT[:, 1]
    out[:, 2] = z + r * _UNIT[:, 0]
    return out


def circle_y0(x: float, z: float, rx: float, rz: float) -> np.ndarray:
    """A 12-gon ellipse on the road plane (a tree crown's shadow)."""
    out = np.zeros((12, 3))
    out[:, 0] = x + rx * _UNIT[:, 0]
    out[:, 2] = z + rz * _UNIT[:, 1]
    return out


def poly(geom: np.ndarray, cls: int, mat: str, tone, plane=("z", 0.0), normal=(0.0, 0.0, -1.0)) -> Part:
    return Part(POLY, geom, cls, M[mat], tone, plane, normal)


def face_z(x0, x1, y0, y1, z, cls, mat, tone) -> Part:
    return poly(quad_z(x0, x1, y0, y1, z), cls, mat, tone, ("z", z), (0.0, 0.0, -1.0))


def face_x(x, z0, z1, y0, y1, cls, mat, tone) -> Part:
    """A face in the plane X = x, oriented toward the camera (normal pointing to X = 0)."""
    nx = -1.0 if x > 0 else 1.0
    return poly(quad_x(x, z0, z1, y0, y1), cls, mat, tone, ("x", x), (nx, 0.0, 0.0))


def box(x0, x1, y0, y1, z0, z1, cls, mat, tone, cam_height: float) -> list[Part]:
    """The faces of an axis-aligned box that the camera can see, back to front."""
    parts = []
    if y1 < cam_height:
        parts.append(
            poly(
                np.array([[x0, y1, z0], [x1, y1, z0], [x1, y1, z1], [x0, y1, z1]]),
                cls,
                mat,
                tone,
                ("z", z0),
                (0.0, 1.0, 0.0),
            )
        )
    if x1 < 0:
        parts.append(face_x(x1, z0, z1, y0, y1, cls, mat, tone))
    elif x0 > 0:
        parts.append(face_x(x0, z0, z1, y0, y1, cls, mat, tone))
    parts.append(face_z(x0, x1, y0, y1, z0, cls, mat, tone))
    return parts


def visible_side_x(x0: float, x1: float) -> float | None:
    """X of the box side facing the camera, or None when the camera is between x0 and x1."""
    return x1 if x1 < 0 else x0 if x0 > 0 else None
