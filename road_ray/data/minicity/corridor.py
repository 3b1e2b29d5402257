"""MiniCity's street corridor: what stands between the two lot lines (painter's layer 3).

Street trees, lamp posts and sign posts along the curbs, a mid-block crossing with lights,
pedestrians on the sidewalks and crosswalks, traffic in the lanes (cars, trucks, buses, rarely
a tram), parked cars, cyclists and parked two-wheelers. Called by
:func:`road_ray.data.minicity.layout.sample_scene` once the sides and lanes are drawn; every
draw comes from the scene's generator in a fixed order, so a scene depends on its seed only.
"""

from __future__ import annotations

import bisect

from road_ray.data.minicity.objects import person, pole_with, tree, two_wheeler, vehicle
from road_ray.data.minicity.scene import BICYCLE, BUS, CAR, MOTORCYCLE, TRAIN, TRUCK


def corridor(b, edges, first, last, n_back, park, sides, z_far, crosswalks) -> None:
    """Street trees, lamp posts, signs, crossings, pedestrians, traffic, parked and two-wheeled vehicles."""
    in_crossing = _crossing_test(sides)
    _street_furniture(b, sides, z_far, crosswalks, in_crossing)
    _pedestrians(b, edges, first, last, sides, crosswalks)
    _traffic(b, edges, first, last, n_back, park, z_far, in_crossing)
    _two_wheelers(b, edges, last, sides)


def _crossing_test(sides: dict):
    """``in_crossing(sign, z)``: whether ``z`` on side ``sign`` lies in a side street's mouth."""
    bounds = {k: s.z_bounds.tolist() for k, s in sides.items()}
    crossing = {k: s.crossing.tolist() for k, s in sides.items()}

    def in_crossing(sign, z):
        return crossing[sign][max(bisect.bisect_right(bounds[sign], z) - 1, 0)]

    return in_crossing


def _street_furniture(b, sides, z_far, crosswalks, in_crossing) -> None:
    """Street trees and lamp posts along each curb, sign posts, and sometimes a mid-block crossing."""
    rng = b.rng
    for sign in (-1.0, 1.0):
        s = sides[sign]
        if rng.random() < 0.55:  # street trees
            x = s.edge + sign * (s.verge / 2 if s.verge > 0.8 else rng.uniform(0.6, 1.0))
            z, end, step = rng.uniform(-2, 6), min(z_far, 120) * rng.uniform(0.5, 1.0), rng.uniform(8, 14)
            while z < end:
                if not in_crossing(sign, z):
                    tree(b, x, z, 3)
                z += step * rng.uniform(0.85, 1.15)
        if rng.random() < 0.7:  # lamp posts
            z, step = rng.uniform(0, 20), rng.uniform(20, 35)
            while z < min(z_far * 0.8, 130):
                if not in_crossing(sign, z):
                    pole_with(b, s.edge + sign * 0.45, z, sign, "lamp")
                z += step
    for _ in range(rng.poisson(2.5)):  # sign posts
        sign = float(rng.choice([-1.0, 1.0]))
        z = rng.uniform(3, 70)
        if not in_crossing(sign, z):
            pole_with(b, sides[sign].edge + sign * rng.uniform(0.3, 1.0), z, sign, "sign")
    if rng.random() < 0.25:  # a mid-block crossing with lights
        z = rng.uniform(12, 45)
        crosswalks.append((z, z + 3.5))
        for sign in (-1.0, 1.0):
            if rng.random() < 0.8:
                pole_with(b, sides[sign].edge + sign * 0.6, z - 1.0, sign, "light")


def _pedestrians(b, edges, first, last, sides, crosswalks) -> None:
    """Pedestrians on the sidewalks, alone or in groups, and on the crosswalks."""
    rng = b.rng
    for _ in range(rng.poisson(rng.uniform(1.0, 8.0))):
        sign = float(rng.choice([-1.0, 1.0]))
        s = sides[sign]
        x0 = s.edge + sign * (s.verge + rng.uniform(0.3, max(0.4, s.walk - 0.3)))
        z = rng.uniform(3, 60)
        for _ in range(1 + (rng.poisson(0.8) if rng.random() < 0.3 else 0)):
            person(b, x0 + rng.uniform(-0.5, 0.5), z + rng.uniform(-0.8, 0.8))
    for za, zb in crosswalks:
        if rng.random() < 0.5:
            for _ in range(rng.integers(1, 4)):
                person(b, rng.uniform(edges[first], edges[last]), rng.uniform(za, zb))


def _traffic(b, edges, first, last, n_back, park, z_far, in_crossing) -> None:
    """Vehicles in the driving lanes (right of the centre line our way, the others toward us),
    rarely a tram, and parked cars in the parking lanes."""
    rng = b.rng
    for lane in range(first, last):
        xc = (edges[lane] + edges[lane + 1]) / 2
        oncoming = lane < first + n_back
        z = rng.uniform(10, 45) if abs(xc) < 1.5 else rng.uniform(0, 35)
        density = rng.uniform(0.0, 0.9)
        while z < z_far * 0.6:
            u = rng.random()
            if u < 0.03:
                two_wheeler(b, xc + rng.uniform(-0.5, 0.5), z, MOTORCYCLE, rider=True)
                length = 2.0
            else:
                kind = CAR if u < 0.955 else TRUCK if u < 0.98 else BUS
                length = vehicle(b, kind, xc + rng.uniform(-0.3, 0.3), z, oncoming)
            z += length + 4 + rng.exponential(10 + 50 * (1 - density))
    if rng.random() < 0.06:  # a tram in the centre lanes
        xc = edges[first + n_back] if n_back else (edges[first] + edges[first + 1]) / 2
        vehicle(b, TRAIN, xc, rng.uniform(10, 50), oncoming=n_back > 0)
    for i, sign in ((0, -1.0), (1, 1.0)):  # parked cars
        if park[i]:
            lane = 0 if sign < 0 else len(edges) - 2
            xc = (edges[lane] + edges[lane + 1]) / 2
            z, end = rng.uniform(-2, 15), rng.uniform(20, 90)
            while z < end:
                if rng.random() < 0.6 and not in_crossing(sign, z):
                    z += vehicle(b, TRUCK if rng.random() < 0.02 else CAR, xc + rng.uniform(-0.15, 0.15), z, sign < 0)
                z += rng.uniform(0.6, 3.0) + (rng.uniform(5, 20) if rng.random() < 0.15 else 0)


def _two_wheelers(b, edges, last, sides) -> None:
    """Cyclists and motorcyclists at the edge of the outer lane; parked two-wheelers on a sidewalk."""
    rng = b.rng
    if rng.random() < 0.45:  # cyclists at the edge of the outer lane
        for _ in range(rng.integers(1, 3)):
            motor = rng.random() < 0.2
            two_wheeler(b, edges[last] - 0.7, rng.uniform(5, 50), MOTORCYCLE if motor else BICYCLE, rider=True)
    if rng.random() < 0.5:  # parked bicycles / motorcycles on a sidewalk
        sign = float(rng.choice([-1.0, 1.0]))
        s = sides[sign]
        z = rng.uniform(4, 35)
        for _ in range(rng.integers(2, 9)):
            cls = MOTORCYCLE if rng.random() < 0.2 else BICYCLE
            two_wheeler(b, s.edge + sign * (s.verge + rng.uniform(0.4, 1.2)), z, cls, rider=False)
            z += rng.uniform(0.7, 2.5)
