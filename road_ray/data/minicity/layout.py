"""MiniCity's street model: how a scene is drawn at random (see ``docs/minicity.md``).

A straight street seen from a vehicle in one of its lanes: driving lanes (and sometimes
parking lanes) between two curbs; on each side an optional grass verge, a sidewalk, and a lot
line along which a sequence of *segments* follows down the street (buildings, gaps, walls,
fences, parks, side streets); a second row of taller buildings behind; at the far end either a
cross street's facades or a distant skyline. Street furniture (lamp posts, sign posts, traffic
lights at crossings) stands on the sidewalks, street trees along the curb, pedestrians on the
sidewalks and crosswalks, vehicles in the lanes (cars, trucks, buses, rarely a tram), parked
cars in the parking lanes, cyclists and motorcyclists in the outer lane, parked bicycles and
motorcycles on the sidewalk. Every object is placed in metres on the ground plane, so its
image size follows from the camera alone.

Painter's order: layer 0 the far end, layer 1 the back row of buildings, layer 2 what stands
on the lot lines (front buildings, walls, fences, hedges, park trees), layer 3 the corridor
between them (road and sidewalk objects, :mod:`road_ray.data.minicity.corridor`); within a
layer, far to near.
"""

from __future__ import annotations

import math

import numpy as np

from road_ray.data.minicity.corridor import corridor
from road_ray.data.minicity.objects import Builder, bushes, person, pole_with, tree, two_wheeler, vehicle
from road_ray.data.minicity.scene import (
    BICYCLE,
    BUILDING,
    BUS,
    CAR,
    DISC,
    FENCE,
    LIGHT,
    MOTORCYCLE,
    PERSON,
    POLE,
    RIDER,
    SIDEWALK,
    SIGN,
    TERRAIN,
    TRAIN,
    TRUCK,
    VEGETATION,
    WALL,
    Camera,
    Ground,
    M,
    Part,
    Scene,
    Side,
    face_x,
    face_z,
)

RIGS = ("game", "photo")


def sample_camera(rng: np.random.Generator, height: int, width: int, rig: str) -> Camera:
    """The camera of one frame. ``rig`` "photo": a car-mounted camera behind the windscreen
    (one rig: fixed height, small pitch changes, the bonnet in view); "game": a game's
    vehicle camera (height and pitch vary with the vehicle and the view; no bonnet)."""
    if rig not in RIGS:
        raise ValueError(f"unknown camera rig {rig!r}; expected one of {', '.join(RIGS)}")
    hfov = math.radians(rng.uniform(50.0, 62.0))
    focal = (width / 2) / math.tan(hfov / 2)
    cx = (width - 1) / 2 + width * min(max(rng.normal(0.0, 0.05), -0.12), 0.12)
    if rig == "photo":
        cam_h, horizon, hood = rng.uniform(1.15, 1.35), height * rng.uniform(0.40, 0.47), rng.uniform(0.08, 0.13)
    else:
        cam_h, horizon, hood = rng.uniform(1.1, 2.6), height * rng.uniform(0.34, 0.52), 0.0
    return Camera(height, width, focal, cx, horizon, cam_h, hood)


# --- the street --------------------------------------------------------------------------------

SEGMENTS = ("building", "gap", "wall", "fence", "park", "street")
SEGMENT_P = {"urban": (0.60, 0.10, 0.07, 0.07, 0.04, 0.12), "green": (0.22, 0.08, 0.08, 0.16, 0.34, 0.12)}
SEGMENT_LEN = {"gap": (3, 10), "wall": (8, 25), "fence": (8, 25), "park": (15, 50), "street": (9, 15)}

FOCUS_OBJECTS = (PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE, POLE, LIGHT, SIGN, VEGETATION)


def sample_scene(
    rng: np.random.Generator,
    height: int,
    width: int,
    rig: str = "game",
    focus: tuple[int, ...] = (),
    max_distance: float = 1e9,
) -> Scene:
    """Draw one street scene for an image of ``height x width`` seen by the camera ``rig``.

    For the pretraining crops: each class in ``focus`` (up to two distinct trainIds) also gets an object
    in plain view, drawn last, the first on the left, the second on the right (``scene.focus``
    holds their parts; wall, fence and terrain get a wall/fence segment or a grass verge
    instead); ``max_distance`` ends the street sooner.
    """
    camera = sample_camera(rng, height, width, rig)
    b = Builder(rng, camera.cam_height)
    sun = _sun(b)
    edges, first, last, n_back, park, lines = _lanes(rng)
    closing = rng.random() < 0.35
    z_far = min(rng.uniform(70, 170) if closing else rng.uniform(160, 260), max_distance)
    crosswalks: list[tuple[float, float]] = []
    lot_lines = {}
    sides = {}
    sides_of = {cls: (-1.0 if k == 0 else 1.0) for k, cls in enumerate(focus)}
    for sign in (-1.0, 1.0):
        edge = float(edges[0] if sign < 0 else edges[-1])
        verge = rng.uniform(1.0, 3.0) if rng.random() < 0.25 else rng.uniform(2.5, 4.5) if TERRAIN in focus else 0.0
        walk = rng.uniform(2.0, 5.5)
        style = "urban" if rng.random() < 0.7 else "green"
        lot = edge + sign * (verge + walk)
        lot_lines[sign] = lot
        forced = next((c for c in (WALL, FENCE, TERRAIN) if sides_of.get(c) == sign), None)
        sides[sign] = _side(b, sign, edge, verge, walk, lot, style, z_far, crosswalks, forced)
    _back_row_and_far_end(b, lot_lines, z_far, closing)
    corridor(b, edges, first, last, n_back, park, sides, z_far, crosswalks)
    for cls, sign in sides_of.items():
        if cls in FOCUS_OBJECTS:
            _focus_object(b, cls, sign, camera, edges, first, last, sides)
        else:  # a material: the crop's window is searched in the image
            b.focus.append([])
    ground = Ground(sides[-1.0], sides[1.0], lines, crosswalks, b.tone())
    return Scene(camera, ground, b.parts(), sun, int(rng.integers(2**31)), b.shadows, b.focus)


def _sun(b: Builder) -> tuple[float, float] | None:
    """Sunshine (60% of scenes): the sun's (elevation, azimuth), and the shadows' direction on ``b``."""
    rng = b.rng
    sunny = rng.random() < 0.6
    sun = (rng.uniform(math.radians(20), math.radians(60)), rng.uniform(-math.pi, math.pi)) if sunny else None
    if sun is not None:  # horizontal shadow offset per metre of height (away from the sun)
        el, az = sun
        b.sun_dir = (-math.sin(az) / math.tan(el), -math.cos(az) / math.tan(el))
    return sun


def _lanes(rng: np.random.Generator) -> tuple[np.ndarray, int, int, int, tuple[bool, bool], list[tuple[float, bool]]]:
    """The lanes, left to right: [parking] [oncoming lanes] [our lanes] [parking], the camera in one of ours.

    Returns the lane edges (x, metres), the driving lanes ``[first, last)``, the number of
    oncoming lanes, which sides have a parking lane, and the lane lines (x, dashed).
    """
    lane_w = rng.uniform(2.9, 3.5)
    n_fwd, n_back = int(rng.choice([1, 2, 2, 3])), int(rng.choice([0, 1, 1, 2]))
    park = (rng.random() < 0.4, rng.random() < 0.5)
    widths = [2.3] * park[0] + [lane_w] * (n_back + n_fwd) + [2.3] * park[1]
    edges = np.concatenate([[0.0], np.cumsum(widths)])
    ego = int(park[0]) + n_back + int(rng.integers(n_fwd))
    edges -= (edges[ego] + edges[ego + 1]) / 2 + rng.uniform(-0.35, 0.35)
    first, last = int(park[0]), len(widths) - int(park[1])  # driving lanes [first, last)
    lines: list[tuple[float, bool]] = []
    for i in range(first + 1, last):
        lines.append((float(edges[i]), i != first + n_back))
    if rng.random() < 0.6:
        lines += [(float(edges[first]) + 0.2, False), (float(edges[last]) - 0.2, False)]
    return edges, first, last, n_back, park, lines


def _side(b, sign, edge, verge, walk, lot, style, z_far, crosswalks, forced) -> Side:
    """One side's segments down the street (``forced``: WALL, FENCE or TERRAIN for a pretraining crop)."""
    rng = b.rng
    z, bounds, lots, crossing = -10.0, [], [], []
    base_h = rng.uniform(8, 24) if style == "urban" else rng.uniform(5, 10)
    setback = 0.0 if (style == "urban" and rng.random() < 0.8) else rng.uniform(2, 7)
    while z < z_far:
        kind = SEGMENTS[min(int(np.searchsorted(np.cumsum(SEGMENT_P[style]), rng.random())), 5)]
        lo, hi = SEGMENT_LEN.get(kind, (8, 30) if style == "urban" else (8, 18))
        if forced in (WALL, FENCE) and z < 0:  # pretraining: a wall or fence from right beside the camera
            kind, lo, hi = ("wall" if forced == WALL else "fence"), 35, 55
        z1 = min(z + rng.uniform(lo, hi), z_far)
        bounds.append(z)
        crossing.append(kind == "street")
        lot_mat = SIDEWALK if (setback < 1 and kind in ("building", "street")) or rng.random() < 0.3 else TERRAIN
        lot_mat = TERRAIN if forced == TERRAIN else lot_mat
        lots.append(lot_mat)
        _segment(b, kind, sign, z, z1, edge, lot, setback, base_h, crosswalks)
        z = z1
    return Side(edge, verge, walk, np.array(bounds), np.array(lots, dtype=np.uint8), np.array(crossing))


def _segment(b, kind, sign, z0, z1, edge, lot, setback, base_h, crosswalks) -> None:
    """What stands along the lot line between z0 and z1 (and a side street's lights and crosswalk)."""
    rng = b.rng
    if kind == "building":
        xb = lot + sign * (setback + (rng.uniform(0, 1.5) if rng.random() < 0.3 else 0.0))
        h = min(max(base_h * rng.uniform(0.6, 1.4), 4.0), 45.0)
        depth = rng.uniform(8, 20)
        tone = b.tone()
        parts = [
            face_z(
                min(xb, xb + sign * depth), max(xb, xb + sign * depth), 0, h, max(z0, 0.6), BUILDING, "facade", tone
            ),
            face_x(xb, z0, z1, 0, h, BUILDING, "facade", tone),
        ]
        if setback > 1 and rng.random() < 0.5:  # front yard with a hedge
            parts.append(
                face_x(lot + sign * 0.4, z0 + 1, z1 - 1, 0, rng.uniform(0.8, 1.6), VEGETATION, "foliage", b.tone())
            )
        b.add(2, z0, parts)
        b.shadow(np.array([[xb, z0], [xb, z1]]), h)
    elif kind in ("wall", "fence"):
        for _ in range(int(rng.integers(0, 3))):
            tree(b, lot + sign * rng.uniform(2, 10), rng.uniform(z0, z1), 2)
        cls, h = (WALL, rng.uniform(1.2, 3.0)) if kind == "wall" else (FENCE, rng.uniform(0.9, 2.0))
        b.add(2, z0 - 0.01, [face_x(lot, z0, z1, 0, h, cls, "concrete" if cls == WALL else "fence", b.tone())])
        b.shadow(np.array([[lot, z0], [lot, z1]]), h)
    elif kind in ("gap", "park"):
        n = int(rng.integers(0, 3)) if kind == "gap" else int((z1 - z0) / rng.uniform(5, 10))
        for _ in range(n):
            tree(
                b,
                lot + sign * rng.uniform(1.0, 8.0 if kind == "gap" else 25.0),
                rng.uniform(z0, z1),
                2,
                scale=rng.uniform(0.9, 1.5),
            )
        for _ in range(int(rng.integers(0, 3))):
            bushes(b, lot + sign * rng.uniform(1.0, 5.0), rng.uniform(z0, z1), 2)
        if rng.random() < 0.3:
            cls = FENCE if rng.random() < 0.6 else WALL
            b.add(
                2,
                z0 - 0.01,
                [face_x(lot, z0, z1, 0, rng.uniform(0.8, 1.6), cls, "fence" if cls == FENCE else "concrete", b.tone())],
            )
    elif kind == "street":
        if rng.random() < 0.8:
            pole_with(b, edge + sign * 0.6, z0 - 1.0, sign, "light")
        if rng.random() < 0.5:
            pole_with(b, edge + sign * 0.6, z1 + 1.0, sign, "light")
        if rng.random() < 0.5 and z0 > 4:
            crosswalks.append((z0 - 5.0, z0 - 1.5))


def _back_row_and_far_end(b: Builder, lot_lines: dict, z_far: float, closing: bool) -> None:
    """Taller buildings behind each side, and the cross street's facades or a distant skyline."""
    rng = b.rng
    for sign, lot in lot_lines.items():
        z = -10.0
        while z < z_far:
            z1 = z + rng.uniform(15, 40)
            if rng.random() < 0.8:
                x = lot + sign * rng.uniform(14, 32)
                h = rng.uniform(10, 45)
                b.add(1, z, [face_x(x, z, min(z1, z_far), 0, h, BUILDING, "facade", b.tone())])
            z = z1
    if closing:  # a cross street's facades close the view
        x = -120.0
        while x < 120:
            x1 = x + rng.uniform(10, 30)
            b.add(0, z_far, [face_z(x, x1, 0, rng.uniform(8, 28), z_far + 6, BUILDING, "facade", b.tone())])
            x = x1
        return
    zs = z_far + rng.uniform(40, 160)
    x = -300.0
    while x < 300:
        x1 = x + rng.uniform(15, 60)
        if rng.random() < 0.7:
            b.add(0, zs, [face_z(x, x1, 0, rng.uniform(5, 45), zs + rng.uniform(0, 30), BUILDING, "facade", b.tone())])
        elif rng.random() < 0.6:
            tone = b.tone()
            r = rng.uniform(4, 8)
            b.add(
                0,
                zs - 10,
                [Part(DISC, (xc, r * 0.6, zs - 10, r), VEGETATION, M["foliage"], tone) for xc in np.arange(x, x1, r)],
            )
        x = x1


def _focus_object(b: Builder, cls: int, sign: float, camera: Camera, edges, first, last, sides) -> None:
    """One object of class ``cls`` in plain view, inside the image, on the side ``sign`` (pretraining crops)."""
    rng = b.rng
    s = sides[sign]
    walk_x = s.edge + sign * (s.verge + rng.uniform(0.5, max(0.6, s.walk - 0.5)))

    def depth_to_see(x: float, z: float) -> float:  # push the object back until it is inside the image
        room = 0.75 * (camera.cx if x < 0 else camera.width - 1 - camera.cx)
        return max(z, abs(x) * camera.focal / max(room, 1.0))

    def road_x(z: float) -> float:  # on the road, in view, in this side's half of the view
        lo = max(edges[first] + 1.2, -0.6 * camera.cx * z / camera.focal)
        hi = min(edges[last] - 1.2, 0.6 * (camera.width - 1 - camera.cx) * z / camera.focal)
        if lo >= hi:
            return 0.0
        mid = (lo + hi) / 2
        return rng.uniform(lo, mid) if sign < 0 else rng.uniform(mid, hi)

    if cls in (CAR, TRUCK, BUS, TRAIN):
        z = rng.uniform(6, 12) if cls == CAR else rng.uniform(9, 18)
        vehicle(b, cls, road_x(z), z, rng.random() < 0.5, focus=True)
    elif cls == PERSON:
        person(b, walk_x, depth_to_see(walk_x, rng.uniform(4, 10)), focus=True)
    elif cls == RIDER:
        z = rng.uniform(4, 9)
        two_wheeler(b, road_x(z), z, MOTORCYCLE if rng.random() < 0.3 else BICYCLE, rider=True, focus=True)
    elif cls in (MOTORCYCLE, BICYCLE):
        two_wheeler(b, walk_x, depth_to_see(walk_x, rng.uniform(4, 9)), cls, rider=False, focus=True)
    elif cls == VEGETATION:
        tree(b, walk_x, depth_to_see(walk_x, rng.uniform(7, 14)), 3, focus=True)
    else:
        x = s.edge + sign * 0.6
        kind = {POLE: "lamp", LIGHT: "light", SIGN: "sign"}[cls]
        pole_with(b, x, depth_to_see(x, rng.uniform(5, 10)), sign, kind, focus=True)
