"""3-D primitives (lathe, box, tube) and a small hidden-line renderer (painter's algorithm over primitives)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

# --------------------------------------------------------------------------------------------------------------
# 3-D primitives and a small hidden-line renderer (painter's algorithm over primitives)
# --------------------------------------------------------------------------------------------------------------


def rot_x(deg: float) -> np.ndarray:
    a = math.radians(deg)
    c, s = math.cos(a), math.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def rot_z(deg: float) -> np.ndarray:
    a = math.radians(deg)
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def rot_y(deg: float) -> np.ndarray:
    a = math.radians(deg)
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


_I3 = np.eye(3)
_RING = np.linspace(0, 2 * np.pi, 40, endpoint=False)

# A surface curve: local points (n, 3) and local outward normals (n, 3); drawn where it faces the viewer.
Curve = tuple[np.ndarray, np.ndarray]


@dataclass
class Lathe:
    """Surface of revolution about local z: profile rows (z, r) bottom to top."""

    profile: np.ndarray
    pos: tuple[float, float, float] = (0.0, 0.0, 0.0)
    rot: np.ndarray = field(default_factory=lambda: _I3)
    creases: tuple[float, ...] = ()  # z of ring lines drawn on the surface
    open_top: bool = False
    decor: list[Curve] = field(default_factory=list)

    def radius_at(self, z: np.ndarray | float) -> np.ndarray:
        return np.interp(z, self.profile[:, 0], self.profile[:, 1])

    def ring(self, z: float, r: float | None = None, angles: np.ndarray = _RING) -> Curve:
        r = float(self.radius_at(z)) if r is None else r
        zs, rs = self.profile[:, 0], self.profile[:, 1]
        i = int(np.clip(np.searchsorted(zs, z), 1, len(zs) - 1))
        slope = (rs[i] - rs[i - 1]) / max(zs[i] - zs[i - 1], 1e-6)
        pts = np.stack([r * np.cos(angles), r * np.sin(angles), np.full_like(angles, z)], axis=1)
        normals = np.stack([np.cos(angles), np.sin(angles), np.full_like(angles, -slope)], axis=1)
        return pts, normals


@dataclass
class Box:
    size: tuple[float, float, float]
    pos: tuple[float, float, float] = (0.0, 0.0, 0.0)
    rot: np.ndarray = field(default_factory=lambda: _I3)
    decor: list[Curve] = field(default_factory=list)


@dataclass
class Tube:
    points: np.ndarray  # world (n, 3)
    radius: float


_BOX_CORNERS = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
_BOX_FACES = (  # corner indices (ring order), outward normal
    ((0, 1, 3, 2), (-1, 0, 0)), ((4, 6, 7, 5), (1, 0, 0)),
    ((0, 4, 5, 1), (0, -1, 0)), ((2, 3, 7, 6), (0, 1, 0)),
    ((0, 2, 6, 4), (0, 0, -1)), ((1, 5, 7, 3), (0, 0, 1)),
)


def _to_world(prim: Lathe | Box, pts: np.ndarray) -> np.ndarray:
    return pts @ prim.rot.T + np.asarray(prim.pos)


@dataclass
class _Camera:
    rot: np.ndarray
    perspective: bool
    scale: float = 1.0
    offset: tuple[float, float] = (0.0, 0.0)
    center: tuple[float, float] = (0.0, 0.0)

    def view(self, world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World -> (2-D view coords, depth): camera looks along +y, z is up."""
        q = world @ self.rot.T
        uv = q[:, [0, 2]]
        if self.perspective:
            uv = uv * (4.0 / (4.0 + q[:, 1:2]))
        return uv, q[:, 1]

    def pixels(self, world: np.ndarray) -> np.ndarray:
        uv, _ = self.view(world)
        x = self.offset[0] + (uv[:, 0] - self.center[0]) * self.scale
        y = self.offset[1] - (uv[:, 1] - self.center[1]) * self.scale
        return np.stack([x, y], axis=1)

    def faces_viewer(self, normals_world: np.ndarray) -> np.ndarray:
        return (normals_world @ self.rot.T)[:, 1] < -1e-3


def _erode(mask: np.ndarray, k: int) -> np.ndarray:
    """Binary erosion by a (2k+1) square, separable: the silhouette edge is mask minus its erosion."""
    out = mask.copy()
    for s in range(1, k + 1):
        out[s:, :] &= mask[:-s, :]
        out[:-s, :] &= mask[s:, :]
    tmp = out.copy()
    for s in range(1, k + 1):
        out[:, s:] &= tmp[:, :-s]
        out[:, :-s] &= tmp[:, s:]
    return out


class _Renderer:
    def __init__(self, size: int, camera: _Camera, line_width: int):
        self.size = size
        self.cam = camera
        self.lw = line_width
        self.canvas = Image.new("L", (size, size), 255)
        self.draw = ImageDraw.Draw(self.canvas)

    def _paint_region(self, polygons: list[np.ndarray], lines: list[tuple[np.ndarray, float]]) -> None:
        """White-fill the union of polygons / thick lines, then stroke its outline black."""
        allpts = np.concatenate([*polygons, *[p for p, _ in lines]]) if (polygons or lines) else None
        if allpts is None:
            return
        pad = self.lw + 2 + int(max([w for _, w in lines], default=0))
        x0, y0 = np.floor(allpts.min(0)).astype(int) - pad
        x1, y1 = np.ceil(allpts.max(0)).astype(int) + pad
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, self.size), min(y1, self.size)
        if x1 <= x0 or y1 <= y0:
            return
        mask = Image.new("1", (x1 - x0, y1 - y0), 0)
        md = ImageDraw.Draw(mask)
        off = np.array([x0, y0])
        for poly in polygons:
            md.polygon([tuple(p) for p in (poly - off).tolist()], fill=1)
        for pts, width in lines:
            rel = (pts - off).tolist()
            md.line([tuple(p) for p in rel], fill=1, width=max(1, int(round(width))), joint="curve")
            r = width / 2
            for cx, cy in (rel[0], rel[-1]):
                md.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
        m = np.asarray(mask, dtype=bool)
        edge = m & ~_erode(m, max(1, self.lw // 2))
        self.canvas.paste(255, (x0, y0), mask)
        self.canvas.paste(0, (x0, y0), Image.fromarray(edge))

    def _stroke_curve(self, world: np.ndarray, normals: np.ndarray | None, closed: bool = False) -> None:
        px = self.cam.pixels(world)
        visible = np.ones(len(px), bool) if normals is None else self.cam.faces_viewer(normals)
        if closed:
            px, visible = np.vstack([px, px[:1]]), np.concatenate([visible, visible[:1]])
        run: list[tuple[float, float]] = []
        for p, v in zip(px.tolist(), visible.tolist()):
            if v:
                run.append((p[0], p[1]))
            else:
                if len(run) > 1:
                    self.draw.line(run, fill=0, width=self.lw, joint="curve")
                run = []
        if len(run) > 1:
            self.draw.line(run, fill=0, width=self.lw, joint="curve")

    def lathe(self, prim: Lathe) -> None:
        prof = prim.profile
        r = prof[:, 1:2]
        local = np.stack([r * np.cos(_RING), r * np.sin(_RING), np.broadcast_to(prof[:, 0:1], r.shape[:1] + _RING.shape)], -1)
        rings_px = self.cam.pixels(_to_world(prim, local.reshape(-1, 3))).reshape(len(prof), len(_RING), 2)
        axis_px = self.cam.pixels(_to_world(prim, np.array([[0, 0, prof[0, 0]], [0, 0, prof[-1, 0]]])))
        d = axis_px[1] - axis_px[0]
        perp = np.array([-d[1], d[0]]) if np.hypot(*d) > 1e-6 else np.array([1.0, 0.0])
        proj = rings_px @ perp
        rows = np.arange(len(prof))
        lo, hi = rings_px[rows, proj.argmin(1)], rings_px[rows, proj.argmax(1)]
        polys = list(rings_px) + list(np.stack([lo[:-1], lo[1:], hi[1:], hi[:-1]], 1))
        self._paint_region(polys, [])
        axis_dir = prim.rot @ np.array([0.0, 0.0, 1.0])
        for end, z, sign in ((0, prof[0, 0], -1.0), (-1, prof[-1, 0], 1.0)):
            if prof[end, 1] <= 1e-4:
                continue
            pts, normals = prim.ring(z)
            cap_visible = self.cam.faces_viewer((sign * axis_dir)[None, :])[0]
            self._stroke_curve(_to_world(prim, pts), None if cap_visible else normals @ prim.rot.T, closed=cap_visible)
            if prim.open_top and end == -1 and cap_visible:
                inner = prim.ring(z, r=float(prof[-1, 1]) * 0.88)[0]
                self._stroke_curve(_to_world(prim, inner), None, closed=True)
        for z in prim.creases:
            pts, normals = prim.ring(z)
            self._stroke_curve(_to_world(prim, pts), normals @ prim.rot.T)
        self._decor(prim, prim.decor)

    def box(self, prim: Box) -> None:
        corners = _to_world(prim, _BOX_CORNERS * np.asarray(prim.size))
        px = self.cam.pixels(corners)
        normals = np.array([n for _, n in _BOX_FACES], float) @ prim.rot.T
        visible = self.cam.faces_viewer(normals)
        faces = [px[list(idx)] for (idx, _), v in zip(_BOX_FACES, visible) if v]
        if not faces:
            return
        self._paint_region(faces, [])
        for face in faces:
            self.draw.line([tuple(p) for p in np.vstack([face, face[:1]]).tolist()], fill=0, width=self.lw, joint="curve")
        self._decor(prim, prim.decor)

    def tube(self, prim: Tube) -> None:
        px = self.cam.pixels(prim.points)
        width = 2 * prim.radius * self.cam.scale
        if width <= 2 * self.lw + 2:
            self.draw.line([tuple(p) for p in px.tolist()], fill=0, width=max(self.lw, int(round(width))), joint="curve")
        else:
            self._paint_region([], [(px, width)])

    def _decor(self, prim: Lathe | Box, curves: list[Curve]) -> None:
        for pts, normals in curves:
            self._stroke_curve(_to_world(prim, pts), normals @ prim.rot.T)


def _prim_points(prim) -> np.ndarray:
    if isinstance(prim, Lathe):
        r = prim.profile[:, 1:2]
        local = np.stack([r * np.cos(_RING), r * np.sin(_RING), np.broadcast_to(prim.profile[:, 0:1], r.shape[:1] + _RING.shape)], -1)
        local = local.reshape(-1, 3)
        return _to_world(prim, local)
    if isinstance(prim, Box):
        return _to_world(prim, _BOX_CORNERS * np.asarray(prim.size))
    return prim.points


def render_object(prims: list, yaw: float, pitch: float, perspective: bool, size: int, line_width: int,
                  fill: float = 0.86, shift: tuple[float, float] = (0.0, 0.0)) -> Image.Image:
    """Hidden-line drawing of the primitives from one viewpoint, fitted into a size x size canvas ('L')."""
    cam = _Camera(rot=rot_x(pitch) @ rot_z(yaw), perspective=perspective)
    depth_of, pts_all = [], []
    for prim in prims:
        uv, depth = cam.view(_prim_points(prim))
        pad = prim.radius if isinstance(prim, Tube) else 0.0
        pts_all.append(np.vstack([uv - pad, uv + pad]))
        depth_of.append(float(depth.mean()))
    uv = np.vstack(pts_all)
    lo, hi = uv.min(0), uv.max(0)
    cam.scale = fill * size / max(float((hi - lo).max()), 1e-6)
    cam.center = tuple(((lo + hi) / 2).tolist())
    cam.offset = (size / 2 + shift[0] * size, size / 2 + shift[1] * size)
    ren = _Renderer(size, cam, line_width)
    for i in np.argsort(-np.asarray(depth_of), kind="stable").tolist():
        prim = prims[i]
        if isinstance(prim, Lathe):
            ren.lathe(prim)
        elif isinstance(prim, Box):
            ren.box(prim)
        else:
            ren.tube(prim)
    return ren.canvas
