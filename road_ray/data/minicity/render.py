"""MiniCity's renderers: one rasterization, two image formations (``docs/minicity.md``, "Domain gap").

:func:`rasterize` turns a :class:`~road_ray.data.minicity.scene.Scene` into an id map (one id
per part, painter's order, no anti-aliasing); the label map is the class of each id, so it is
exact and identical for both styles. The styles then colour the same ids:

- ``"game"`` (source): what a real-time game renderer outputs for an artist's scene: one flat,
  saturated colour per object (small per-instance variation), uniform lighting, hard aliased
  edges, no noise, lossless.
- ``"photo"`` (target): what a camera records of a physical scene: textured materials with
  natural (duller, mostly achromatic) colour statistics, a sun with shading and cast shadows
  (or overcast light), then the camera: lens blur, vignetting, sensor noise, white balance and
  a tone curve that clips the sky, and JPEG compression.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np

from road_ray.data.minicity.colours import LAMP_RGB, tone_colours
from road_ray.data.minicity.scene import (
    BAR,
    DISC,
    IGNORE,
    LIGHT,
    MATERIALS,
    POLY,
    ROAD,
    SIDEWALK,
    SKY,
    TERRAIN,
    Z_NEAR,
    M,
    Scene,
    ground_classes,
)

STYLES = ("game", "photo")
SKY_ID, HOOD_ID, FIRST_PART_ID = 0, 4, 5  # ids 1..3: road, sidewalk, terrain
_SHIFT = 4  # cv2 sub-pixel bits


@dataclass
class Raster:
    ids: np.ndarray  # int32 (H, W)
    classes: np.ndarray  # uint8 per id (trainId, 255 for the ego bonnet)
    materials: np.ndarray  # int per id
    gx: np.ndarray  # float32 (H, W): road-plane X of each pixel's ray (0 above the horizon)
    gz: np.ndarray  # float32 (H, W): road-plane Z (0 above the horizon)

    @property
    def label(self) -> np.ndarray:
        return self.classes[self.ids]


def _clip_near(xyz: np.ndarray) -> np.ndarray | None:
    """Clip a world polygon to Z >= Z_NEAR (Sutherland-Hodgman against one plane)."""
    out = []
    n = len(xyz)
    for i in range(n):
        a, b = xyz[i], xyz[(i + 1) % n]
        if a[2] >= Z_NEAR:
            out.append(a)
        if (a[2] >= Z_NEAR) != (b[2] >= Z_NEAR):
            out.append(a + (b - a) * (Z_NEAR - a[2]) / (b[2] - a[2]))
    return np.array(out) if len(out) >= 3 else None


def project_polygons(cam, polys: list[np.ndarray]) -> list[np.ndarray | None]:
    """Project world polygons to fixed-point pixel coordinates for cv2 (None: behind the camera or off-image)."""
    if not polys:
        return []
    sizes = np.array([len(p) for p in polys])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    xyz = np.concatenate(polys)
    zmin = np.minimum.reduceat(xyz[:, 2], starts)
    uv = cam.project(np.where(xyz[:, 2:3] < Z_NEAR, [[0.0, 0.0, 1.0]], xyz))
    umin, umax = np.minimum.reduceat(uv[:, 0], starts), np.maximum.reduceat(uv[:, 0], starts)
    vmin, vmax = np.minimum.reduceat(uv[:, 1], starts), np.maximum.reduceat(uv[:, 1], starts)
    visible = (umax >= -1) & (umin <= cam.width) & (vmax >= -1) & (vmin <= cam.height)
    fixed = np.round(np.clip(uv, -1e5, 1e5) * (1 << _SHIFT)).astype(np.int32)
    out: list[np.ndarray | None] = []
    for i, (a, n) in enumerate(zip(starts.tolist(), sizes.tolist())):
        if zmin[i] < Z_NEAR:  # partly behind the near plane: clip exactly, then decide
            clipped = _clip_near(polys[i])
            if clipped is None:
                out.append(None)
                continue
            p = cam.project(clipped)
            ok = (
                p[:, 0].max() >= -1
                and p[:, 0].min() <= cam.width
                and p[:, 1].max() >= -1
                and p[:, 1].min() <= cam.height
            )
            out.append(np.round(np.clip(p, -1e5, 1e5) * (1 << _SHIFT)).astype(np.int32) if ok else None)
        else:
            out.append(fixed[a : a + n] if visible[i] else None)
    return out


def draw_list(scene: Scene) -> list[tuple | None]:
    """What cv2 draws for each part, in the camera's fixed-point pixels; None for a part out of view."""
    cam, parts = scene.camera, scene.parts
    h, w = cam.height, cam.width
    kinds = np.array([p.kind for p in parts], dtype=np.int8)
    out: list[tuple | None] = [None] * len(parts)
    poly_idx = np.flatnonzero(kinds == POLY)
    for i, pts in zip(poly_idx.tolist(), project_polygons(cam, [parts[i].geom for i in poly_idx])):
        if pts is not None:
            out[i] = (POLY, pts)
    disc_idx = np.flatnonzero(kinds == DISC)
    if len(disc_idx):
        g = np.array([parts[i].geom for i in disc_idx], dtype=np.float64)
        ok = g[:, 2] >= Z_NEAR
        uv = cam.project(np.where(ok[:, None], g[:, :3], [[0.0, 0.0, 1.0]]))
        rad = cam.focal * g[:, 3] / np.maximum(g[:, 2], Z_NEAR)
        ok &= (uv[:, 0] >= -rad) & (uv[:, 0] <= w + rad) & (uv[:, 1] >= -rad) & (uv[:, 1] <= h + rad)
        c = np.round(uv * (1 << _SHIFT)).astype(np.int64)
        r = np.maximum(1, np.round(rad * (1 << _SHIFT))).astype(np.int64)
        for k in np.flatnonzero(ok).tolist():
            out[disc_idx[k]] = (DISC, (int(c[k, 0]), int(c[k, 1])), int(r[k]))
    bar_idx = np.flatnonzero(kinds == BAR)
    if len(bar_idx):
        g = np.array([parts[i].geom for i in bar_idx], dtype=np.float64)  # x, z, y0, y1, width
        zz = np.maximum(g[:, 1], Z_NEAR)
        u = cam.cx + cam.focal * g[:, 0] / zz
        v0 = cam.horizon + cam.focal * (cam.cam_height - g[:, 2]) / zz
        v1 = cam.horizon + cam.focal * (cam.cam_height - g[:, 3]) / zz
        half = np.maximum(cam.focal * g[:, 4] / zz, 1.0) / 2  # at least one pixel wide
        c0, c1 = np.maximum(np.ceil(u - half), 0), np.minimum(np.floor(u + half - 1e-9), w - 1)
        r0, r1 = np.maximum(np.ceil(v1), 0), np.minimum(np.floor(v0), h - 1)
        ok = (g[:, 1] >= Z_NEAR) & (c0 <= c1) & (r0 <= r1)
        for k in np.flatnonzero(ok).tolist():
            out[bar_idx[k]] = (BAR, int(r0[k]), int(r1[k]) + 1, int(c0[k]), int(c1[k]) + 1)
    return out


def cull(scene: Scene) -> Scene:
    """The scene without the parts that fall entirely outside its image (the same label map)."""
    return replace(scene, parts=[p for p, d in zip(scene.parts, draw_list(scene)) if d is not None])


def rasterize(scene: Scene) -> Raster:
    """The id map of a scene: sky, then the road plane, then every part far to near, then the bonnet."""
    cam = scene.camera
    h, w = cam.height, cam.width
    ids = np.zeros((h, w), dtype=np.int32)
    rows = np.arange(h, dtype=np.float64)[:, None] - cam.horizon
    cols = np.arange(w, dtype=np.float64)[None, :] - cam.cx
    below = np.broadcast_to(rows > 1e-6, (h, w))
    z = np.where(rows > 1e-6, cam.focal * cam.cam_height / np.maximum(rows, 1e-6), 0.0) * np.ones((1, w))
    x = cols * z / cam.focal
    gcls = ground_classes(scene.ground, x[below], z[below])
    ids[below] = np.select([gcls == ROAD, gcls == SIDEWALK], [1, 2], 3)
    for k, cmd in enumerate(draw_list(scene)):
        if cmd is None:
            continue
        value = FIRST_PART_ID + k
        if cmd[0] == POLY:
            cv2.fillPoly(ids, [cmd[1]], value, cv2.LINE_8, _SHIFT)
        elif cmd[0] == DISC:
            cv2.circle(ids, cmd[1], cmd[2], value, -1, cv2.LINE_8, _SHIFT)
        else:
            ids[cmd[1] : cmd[2], cmd[3] : cmd[4]] = value
    if cam.hood > 0:
        t = (np.arange(w) - cam.cx) / (w / 2)
        top = h - 0.5 - cam.hood * h * (1.0 - 0.45 * t**2)
        ids[np.arange(h)[:, None] >= top[None, :]] = HOOD_ID
    classes = np.array([SKY, ROAD, SIDEWALK, TERRAIN, IGNORE] + [p.cls for p in scene.parts], dtype=np.uint8)
    materials = np.array([M["sky"], M["asphalt"], M["paving"], M["grass"], M["hood"]] + [p.mat for p in scene.parts])
    return Raster(ids, classes, materials, x.astype(np.float32), z.astype(np.float32))


def part_colours(scene: Scene, raster: Raster, style: str) -> np.ndarray:
    """(n_ids, 3) float32 colours: sky, road plane bands (the ground's tone, permuted), bonnet, parts."""
    g = scene.ground.tone
    tones = np.array([g, g, (g[1], g[2], g[0]), (g[2], g[0], g[1]), g] + [p.tone for p in scene.parts], np.float64)
    out = tone_colours(style, raster.materials, raster.classes, tones)
    lamps = np.flatnonzero((raster.materials == M["lamp"]) & (raster.classes == LIGHT))
    if len(lamps):  # traffic-light lamps: one of three lit (vehicle lamps keep their palette colour)
        t = tones[lamps]
        which = np.rint(t[:, 1] * 2).astype(int)
        lit = (t[:, 0] * 3).astype(int) == which
        out[lamps] = LAMP_RGB[which] * np.where(lit, 1.0, 0.25)[:, None]
    return out.astype(np.float32)


def markings(scene: Scene, raster: Raster) -> np.ndarray:
    """Coverage (0..1) of lane lines and zebra stripes on road pixels, filtered by pixel footprint."""
    road = raster.ids == 1
    cover = np.zeros(road.shape, dtype=np.float32)
    if not road.any():
        return cover
    gx, gz = raster.gx[road], raster.gz[road]
    foot = np.maximum(gz / scene.camera.focal, 1e-4)  # metres per pixel across
    on = np.zeros(gx.shape, np.float32)
    width = 0.15
    for x, dashed in scene.ground.lines:
        line = np.clip(width / foot, 0, 1) * (np.abs(gx - x) < np.maximum(width / 2, foot / 2))
        if dashed:
            line = line * (np.mod(gz, 9.0) < 3.0)
        on = np.maximum(on, line)
    for za, zb in scene.ground.crosswalks:
        on = np.maximum(on, ((gz > za) & (gz < zb) & (np.mod(gx, 1.0) < 0.5)) * 0.9)
    cover[road] = on
    return cover


def render_game(scene: Scene, raster: Raster) -> np.ndarray:
    """Flat colours per id, painted markings, nothing else."""
    colours = part_colours(scene, raster, "game")
    img = colours[raster.ids]
    paint = markings(scene, raster)[..., None]
    img = img * (1 - paint) + paint * np.float32(0.95)
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)


# --- photo --------------------------------------------------------------------------------------


def value_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth noise in [-1, 1] with features about ``cell`` pixels wide."""
    gh, gw = max(2, int(h / cell) + 2), max(2, int(w / cell) + 2)
    grid = rng.uniform(-1, 1, (gh, gw)).astype(np.float32)
    big = cv2.resize(grid, (int((gw - 1) * cell) + 1, int((gh - 1) * cell) + 1), interpolation=cv2.INTER_CUBIC)
    return big[:h, :w]


def fractal(rng: np.random.Generator, h: int, w: int, cells=(16, 8, 4, 2)) -> np.ndarray:
    """Octaves of value noise (amplitude 0.6 per halving of the cell), normalized."""
    out = np.zeros((h, w), np.float32)
    for i, c in enumerate(cells):
        out += value_noise(rng, h, w, c) * 0.6**i
    return out / sum(0.6**i for i in range(len(cells)))


def _world_texture(tile: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Sample a periodic texture tile at texel coordinates (perspective-correct texture mapping)."""
    return cv2.remap(tile, u.astype(np.float32), v.astype(np.float32), cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)


def _plane_coords(scene: Scene, raster: Raster, mask: np.ndarray, part_ids: np.ndarray):
    """For the pixels of ``mask`` on planar parts: the coordinate along the plane, the height and
    the depth, in metres (the pixel's ray intersected with the part's plane)."""
    cam = scene.camera
    vv, uu = np.nonzero(mask)
    dx = (uu - cam.cx) / cam.focal
    dy = (cam.horizon - vv) / cam.focal
    axis_x = np.array([p.plane[0] == "x" for p in scene.parts])[part_ids]
    c = np.array([p.plane[1] for p in scene.parts])[part_ids]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(axis_x, c / np.where(np.abs(dx) < 1e-6, 1e-6, dx), c)
    t = np.clip(t, Z_NEAR, 1e4)
    s = np.where(axis_x, t, t * dx)
    return s, cam.cam_height + t * dy, t


# Per-material grain of the photo style: amplitude of fine (pixel) and mid (a few pixels) noise.
_GRAIN = {
    "asphalt": (0.12, 0.0),
    "paving": (0.10, 0.0),
    "grass": (0.35, 0.25),
    "facade": (0.10, 0.10),
    "concrete": (0.08, 0.18),
    "foliage": (0.25, 0.45),
    "bark": (0.15, 0.30),
    "paint": (0.02, 0.05),
    "clothes": (0.05, 0.10),
    "skin": (0.05, 0.05),
    "glass": (0.05, 0.15),
    "metal_pole": (0.05, 0.05),
}
_FINE = np.array([_GRAIN.get(m, (0.03, 0.03))[0] for m in MATERIALS], np.float32)
_MID = np.array([_GRAIN.get(m, (0.03, 0.03))[1] for m in MATERIALS], np.float32)


def _facade_windows(scene: Scene, raster: Raster, albedo: np.ndarray, mask: np.ndarray, fine: np.ndarray) -> None:
    """Paint a grid of windows (floor height and bay width from each building's tone) into ``albedo``."""
    cam, ids = scene.camera, raster.ids
    pid = ids[mask] - FIRST_PART_ID
    s, y, depth = _plane_coords(scene, raster, mask, pid)
    tones = np.array([p.tone for p in scene.parts])[pid]
    floor_h, bay = 2.9 + 0.7 * tones[:, 1], 2.2 + 1.8 * tones[:, 2]
    fy, fs = np.mod(y, floor_h) / floor_h, np.mod(s, bay) / bay
    win = (fy > 0.3) & (fy < 0.78) & (fs > 0.22) & (fs < 0.78) & (y > floor_h * 0.9)
    shop = (y < floor_h * 0.8) & (y > 0.3) & (fs > 0.08) & (fs < 0.92) & (tones[:, 0] > 0.5)
    visible = np.clip(cam.focal * 0.5 / depth, 0, 1)  # windows fade where they shrink below a pixel
    cell = (np.floor(s / bay) * 7 + np.floor(y / floor_h) * 13).astype(np.int64) % 17
    glass = np.array([0.10, 0.12, 0.15], np.float32) * (0.6 + 0.1 * cell + 0.3 * fine[mask])[:, None]
    a = ((win | shop) * visible).astype(np.float32)[:, None]
    albedo[mask] = albedo[mask] * (1 - a) + glass * a


def render_photo(scene: Scene, raster: Raster) -> np.ndarray:
    """Radiance = albedo x texture x light (+ sky), then :func:`camera_pipeline`."""
    h, w = raster.ids.shape
    rng = np.random.default_rng([scene.seed, 1])
    albedo = part_colours(scene, raster, "photo")[raster.ids]
    fine = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), 0.6)
    mid, coarse = fractal(rng, h, w, (8, 4, 2)), fractal(rng, h, w, (32, 16, 8))
    tile = fractal(rng, 64, 64, (16, 8, 4, 2))
    albedo, gain = _photo_surfaces(scene, raster, albedo, fine, mid, coarse, tile)
    _photo_light(scene, raster, gain, rng)
    img = albedo * gain[..., None]
    sky = _photo_sky(scene.camera, raster.ids, img, coarse, rng)
    return camera_pipeline(rng, img, exclude=sky)


def _photo_surfaces(scene: Scene, raster: Raster, albedo, fine, mid, coarse, tile) -> tuple[np.ndarray, np.ndarray]:
    """The materials' texture: (albedo with paint, grass, leaves and windows, gain of the grain)."""
    ids = raster.ids
    mats = raster.materials[ids]
    gain = 1 + _FINE[mats] * fine + _MID[mats] * mid
    # the road plane, textured in world coordinates: asphalt grain and repairs, paving joints, worn paint
    wt = _world_texture(tile, raster.gx * 8, raster.gz * 8)
    patches = _world_texture(tile, raster.gx * 0.7 + 17, raster.gz * 0.25)
    near = np.clip(60.0 / np.maximum(raster.gz, 1e-3), 0, 1)
    gain += np.where(ids == 1, 0.22 * wt * near + 0.18 * patches, 0)
    joint = (np.minimum(np.mod(raster.gx, 0.6), np.mod(raster.gz, 0.6)) < 0.05) & (raster.gz < 25) & (ids == 2)
    gain += np.where(ids == 2, 0.12 * wt, 0) - 0.25 * joint
    paint = (markings(scene, raster) * (0.75 + 0.25 * np.clip(1 + mid, 0, 1)))[..., None]
    albedo = albedo * (1 - paint) + paint * np.array([0.80, 0.80, 0.76], np.float32)
    grass = (ids == 3)[..., None]
    albedo = albedo + grass * (0.06 * np.clip(coarse, 0, 1))[..., None] * np.array([0.6, 0.4, 0.1], np.float32)
    leaf = (mats == M["foliage"])[..., None]
    albedo = albedo + leaf * (0.05 * coarse)[..., None] * np.array([0.5, 0.4, -0.2], np.float32)
    facade = mats == M["facade"]
    if facade.any():
        _facade_windows(scene, raster, albedo, facade, fine)
    fence = mats == M["fence"]
    if fence.any():
        s, y, depth = _plane_coords(scene, raster, fence, ids[fence] - FIRST_PART_ID)
        bars = (np.mod(s, 0.25) < 0.08) | (np.mod(y, 1.2) < 0.08)
        gain[fence] *= 0.55 + 0.6 * bars * np.clip(scene.camera.focal * 0.1 / depth, 0, 1)
    return albedo, gain


def _photo_light(scene: Scene, raster: Raster, gain: np.ndarray, rng: np.random.Generator) -> None:
    """Multiply ``gain`` by the light: sun + sky (Lambert) and cast shadows on the road plane;
    overcast: sky light only."""
    ids = raster.ids
    normals = np.array([(0, 0, -1)] + [(0, 1, 0)] * 4 + [p.normal for p in scene.parts], np.float32)
    if scene.sun is not None:
        el, az = scene.sun
        sun = np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)], np.float32)
        ambient, direct = rng.uniform(0.35, 0.5), rng.uniform(0.8, 1.0)
        shade = ambient * (0.75 + 0.25 * normals[:, 1]) + direct * np.clip((normals * sun).sum(axis=1), 0, None)
    else:
        ambient = rng.uniform(0.8, 0.95)
        shade = ambient * (0.72 + 0.28 * normals[:, 1])
    gain *= shade[ids]
    if scene.shadows and (raster.gz > 0).any():
        mask = np.zeros(ids.shape, np.float32)
        for pts in project_polygons(scene.camera, scene.shadows):  # one at a time: overlaps must not cancel
            if pts is not None:
                cv2.fillPoly(mask, [pts], 1.0, cv2.LINE_8, _SHIFT)
        # in a cast shadow only the sky lights the ground; contact shadows under vehicles in any light
        dark = max(1.0 - ambient / float(shade[1]), 0.3) if scene.sun is not None else 0.3
        gain *= 1 - dark * cv2.GaussianBlur(mask, (0, 0), 0.8) * ((ids >= 1) & (ids <= 3))


def _photo_sky(cam, ids: np.ndarray, img: np.ndarray, coarse: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Paint the sky into ``img``: several times brighter than what it lights (it clips), brighter
    toward the horizon, with clouds. Returns the sky's mask."""
    h, w = ids.shape
    sky = ids == SKY_ID
    if sky.any():
        rows = np.clip((np.arange(h, dtype=np.float32)[:, None] - cam.horizon) / max(cam.horizon, 1.0) + 1, 0, 1.2)
        haze = np.broadcast_to(rows, (h, w))[sky][:, None]
        clouds = np.clip(coarse[sky] * 1.6 + rng.uniform(-0.6, 0.4), 0, 1)[:, None]
        bright = rng.uniform(1.3, 2.2)
        img[sky] = bright * (img[sky] * (0.75 + 0.35 * haze) * (1 - clouds) + clouds * rng.uniform(0.75, 1.0))
    return sky


def camera_pipeline(rng: np.random.Generator, radiance: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
    """Optics (lens blur, vignetting), sensor (auto-exposure, shot and read noise), ISP (white
    balance, highlight roll-off and clipping, 8-bit quantization) and JPEG compression."""
    h, w = radiance.shape[:2]
    x = cv2.GaussianBlur(radiance, (0, 0), rng.uniform(0.5, 0.9))
    ry = ((np.arange(h, dtype=np.float32) - h / 2) / (h / 2)) ** 2
    rx = ((np.arange(w, dtype=np.float32) - w / 2) / (w / 2)) ** 2
    x *= (1 - rng.uniform(0.15, 0.35) * 0.5 * (ry[:, None] + rx[None, :]))[..., None]
    lum = 0.3 * x[..., 0] + 0.59 * x[..., 1] + 0.11 * x[..., 2]
    metered = float(lum[~exclude].mean()) if exclude is not None and (~exclude).any() else float(lum.mean())
    x *= float(np.clip(rng.uniform(0.28, 0.40) / max(metered, 1e-3), 0.5, 3.0))  # auto-exposure on the scene
    noise_a, noise_b = rng.uniform(0.0005, 0.002), rng.uniform(0.0001, 0.0004)
    x += rng.standard_normal(x.shape, dtype=np.float32) * np.sqrt(noise_a * np.clip(x, 0, None) + noise_b)
    x *= np.array([rng.uniform(0.88, 1.02), 1.0, rng.uniform(0.80, 0.95)], np.float32)  # white balance
    np.clip(x, 0, None, out=x)
    x = 1.2 * x / (1 + 0.2 * x)
    out = np.clip(x * 255 + 0.5, 0, 255).astype(np.uint8)
    quality = int(rng.integers(55, 86))
    ok, buf = cv2.imencode(".jpg", out[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].copy()


def render(scene: Scene, style: str, raster: Raster | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 (H, W, 3), trainIds uint8 (H, W)) of ``scene`` in ``style``; the label does not depend on the style."""
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; expected one of {', '.join(STYLES)}")
    raster = raster or rasterize(scene)
    image = render_game(scene, raster) if style == "game" else render_photo(scene, raster)
    return image, raster.label
