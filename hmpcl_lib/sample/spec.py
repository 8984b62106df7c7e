"""Generated sample corpus in DeepPatent2's exact layout: the embedded default the whole pipeline runs on.

Nothing real is reachable offline, so the project draws its own design patents: each patent is a small 3-D
object built from lathe (surface of revolution), box and tube primitives and rendered as hidden-line art
from several projections. The hierarchy is visible in the drawings, so hierarchy-aware training has
something real to find:

* main class   -> shape family (09 bottle, 06 furniture, 26 lamp, 07 cup, 14 device, 10 clock, 08 tool, 11 vase),
* subclass     -> structural variant of that family (real Locarno subclass codes, e.g. 07-01 mug, 07-02 pot),
* patent       -> its own proportions, curvature and surface ornament (bands, flutes, zigzag, panels, ...),
* drawing/view -> projection (perspective, front, side, top, rear, bottom, ...) plus small jitter.

Output, byte for byte in the real layout (see docs/ARCHITECTURE.md): per year the parts `raw/YYYY/YYYY.aa`,
`.ab`, ... of one tar.gz holding a year-dependent top folder with `design{YYYY}.json` and two inner
tar.gz archives of PNG (Original / Segmented, names and folders vary by year); weekly USPTO grant files
`uspto/ipgYYMMDD.xml` carrying `classification-locarno`; a Dataverse-shaped listing of the parts.
Same spec -> identical bytes (fixed tar mtimes/owners, gzip mtime 0, sorted members, seeded RNGs).

Injected faults (`faults=True`), deterministic and rare (well under 5 % of records), as real data has them;
`sample_patents()` names them in its `fault` column:

* ``malformed_patent_id`` - one figure record's `patentID` lost its '-' separator (`USD0836880D20190101`-like);
  its PNGs are present, the record itself is bad.
* ``missing_image``       - one figure record whose original and segmented PNGs are absent from the archives.
* ``lic_missing``         - a design patent whose grant XML has no `classification-locarno` element.
* ``lic_class_only``      - a design patent whose Locarno code is the class only (e.g. `15`), subclass unknown.

Each kind hits max(1, round(0.5 % of patents)) patents, chosen among patents with >= 2 drawings so the
patent stays usable.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import io
import json
import math
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from xml.sax.saxutils import escape

import numpy as np
import polars as pl
from PIL import Image, ImageDraw

from hmpcl_lib.io import atomic_path

# --------------------------------------------------------------------------------------------------------------
# Spec and ground truth
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleSpec:
    """Size and shape of the generated corpus; every output is a pure function of it."""

    years: tuple[int, ...] = (2019, 2020)
    n_classes: int = 8
    subclasses_per_class: int = 4
    patents_per_subclass: int = 10
    views: tuple[int, int] = (4, 8)  # min, max drawings per patent (inclusive)
    image_size: int = 128
    seed: int = 0
    part_size: int = 256 * 1024  # bytes per Dataverse part
    faults: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.n_classes <= len(FAMILIES):
            raise ValueError(f"n_classes must be in 1..{len(FAMILIES)}, got {self.n_classes}")
        if not 1 <= self.subclasses_per_class <= 4:
            raise ValueError(f"subclasses_per_class must be in 1..4, got {self.subclasses_per_class}")
        if self.patents_per_subclass < 1 or not self.years:
            raise ValueError("need at least one patent per subclass and one year")
        lo, hi = self.views
        if not 1 <= lo <= hi <= len(VIEWS):
            raise ValueError(f"views must satisfy 1 <= min <= max <= {len(VIEWS)}, got {self.views}")
        if self.image_size < 32 or self.part_size < 1024:
            raise ValueError("image_size must be >= 32 and part_size >= 1024")


@dataclass(frozen=True)
class Family:
    """One Locarno main class drawn as one shape family; its 4 real subclasses are structural variants."""

    class_code: str
    noun: str
    subclasses: tuple[tuple[str, str], ...]  # (subclass code, object title) per variant
    build: Callable[[int, "Style"], list]


# Each patent's own look; drawn once per patent so every view of it shares it.
@dataclass(frozen=True)
class Style:
    wide: float  # width multiplier
    tall: float  # height multiplier
    bulge: float  # profile curvature
    decor: int  # ornament kind 0..3
    ndecor: int  # ornament count 1..4
    detail: float  # variant-specific detail in [0, 1)
    detail2: float


VIEWS: tuple[tuple[str, float, float, bool], ...] = (
    # (aspect, yaw deg, pitch deg, perspective) in the order real design patents number their figures
    ("front perspective view", 35.0, 25.0, True),
    ("front elevational view", 0.0, 0.0, False),
    ("right side elevational view", 90.0, 0.0, False),
    ("top plan view", 0.0, 90.0, False),
    ("rear elevational view", 180.0, 0.0, False),
    ("left side elevational view", -90.0, 0.0, False),
    ("bottom plan view", 0.0, -90.0, False),
    ("rear perspective view", 215.0, 25.0, True),
)

GRANT_WEEKS_PER_YEAR = 8
FAULT_RATE = 0.005
FAULT_KINDS = ("malformed_patent_id", "missing_image", "lic_missing", "lic_class_only")
_TAR_MTIME = 1_600_000_000  # fixed member mtime: same spec -> same bytes


def _rng(spec: SampleSpec, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([spec.seed, *keys]))


def _tuesdays(year: int) -> list[dt.date]:
    first = dt.date(year, 1, 1)
    first += dt.timedelta(days=(1 - first.weekday()) % 7)
    return [first + dt.timedelta(weeks=w) for w in range(53) if (first + dt.timedelta(weeks=w)).year == year]


def _patent_style(spec: SampleSpec, patent_index: int) -> Style:
    r = _rng(spec, 1, patent_index)
    return Style(
        wide=float(r.uniform(0.78, 1.3)),
        tall=float(r.uniform(0.78, 1.3)),
        bulge=float(r.uniform(-0.2, 0.35)),
        decor=int(r.integers(0, 4)),
        ndecor=int(r.integers(1, 5)),
        detail=float(r.uniform()),
        detail2=float(r.uniform()),
    )


def sample_patents(spec: SampleSpec | None = None) -> pl.DataFrame:
    """Ground truth of the corpus: one row per design patent with its true Locarno codes and injected fault."""
    spec = spec or SampleSpec()
    rows = []
    index = 0
    for family in FAMILIES[: spec.n_classes]:
        for variant, (subclass, _title) in enumerate(family.subclasses[: spec.subclasses_per_class]):
            for k in range(spec.patents_per_subclass):
                r = _rng(spec, 2, index)
                rows.append(
                    dict(
                        patent_index=index,
                        year=spec.years[index % len(spec.years)],
                        class_code=family.class_code,
                        subclass_code=subclass,
                        variant=variant,
                        n_views=int(r.integers(spec.views[0], spec.views[1] + 1)),
                        week_pick=int(r.integers(0, 1 << 30)),
                        order_key=float(r.uniform()),
                    )
                )
                index += 1
    # grant dates: a few Tuesdays per year; doc numbers rise with the date as at the USPTO
    for year in spec.years:
        r = _rng(spec, 3, year)
        weeks = sorted(r.choice(len(_tuesdays(year)), size=GRANT_WEEKS_PER_YEAR, replace=False).tolist())
        in_year = sorted((row for row in rows if row["year"] == year), key=lambda x: (x["week_pick"] % len(weeks), x["order_key"]))
        number = 836_000 + (year - 2019) * 36_000 + int(r.integers(0, 500))
        for row in in_year:
            row["grant_date"] = _tuesdays(year)[weeks[row["week_pick"] % len(weeks)]]
            number += int(r.integers(1, 40))
            row["doc_number"] = f"D0{number:06d}" if number < 1_000_000 else f"D{number:07d}"
    for row in rows:
        row["patent_id"] = f"US{row['doc_number']}-{row['grant_date']:%Y%m%d}"
        row["fault"] = None
    if spec.faults:
        r = _rng(spec, 4)
        eligible = [row for row in rows if row["n_views"] >= 2]
        per_kind = max(1, round(FAULT_RATE * len(rows)))
        picked = r.choice(len(eligible), size=min(len(eligible), per_kind * len(FAULT_KINDS)), replace=False)
        for j, i in enumerate(picked.tolist()):
            eligible[i]["fault"] = FAULT_KINDS[j % len(FAULT_KINDS)]
    frame = pl.DataFrame(rows, infer_schema_length=None).select(  # faults may first appear after row 100
        "patent_id", "doc_number", "grant_date", "year", "class_code", "subclass_code", "n_views",
        "patent_index", "variant", "fault",
    )
    return frame.with_columns(pl.col("year").cast(pl.Int16), pl.col("fault").cast(pl.String)).sort("patent_index")


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


# --------------------------------------------------------------------------------------------------------------
# Shape families: class = family, subclass = variant, patent = Style (proportions + ornament)
# --------------------------------------------------------------------------------------------------------------


def _profile(ctrl: list[tuple[float, float]], bulge: float = 0.0, span: tuple[float, float] | None = None,
             n: int = 16) -> np.ndarray:
    """Dense (z, r) profile through control points, optionally bulged (the patent's curvature) over `span`."""
    c = np.asarray(ctrl, float)
    z = np.unique(np.concatenate([c[:, 0], np.linspace(c[0, 0], c[-1, 0], n)]))
    r = np.interp(z, c[:, 0], c[:, 1])
    if bulge and span:
        t = np.clip((z - span[0]) / max(span[1] - span[0], 1e-6), 0, 1)
        r = r * (1 + bulge * np.sin(np.pi * t))
    return np.stack([z, np.maximum(r, 0)], axis=1)


def _surface_curve(lathe: Lathe, theta: np.ndarray, z: np.ndarray) -> Curve:
    r = lathe.radius_at(z)
    slope = np.gradient(lathe.radius_at(lathe.profile[:, 0]), lathe.profile[:, 0])
    s = np.interp(z, lathe.profile[:, 0], slope)
    pts = np.stack([r * np.cos(theta), r * np.sin(theta), z], axis=1)
    return pts * [1.01, 1.01, 1], np.stack([np.cos(theta), np.sin(theta), -s], axis=1)


def _lathe_ornament(lathe: Lathe, style: Style, z0: float, z1: float) -> list[Curve]:
    """The patent's distinctive surface detail on a lathe body between heights z0 and z1."""
    n, th = style.ndecor, np.linspace(0, 2 * np.pi, 97)
    mid, half = (z0 + z1) / 2, (z1 - z0) / 2
    if style.decor == 0:  # horizontal bands
        return [_surface_curve(lathe, th, np.full_like(th, z)) for z in np.linspace(z0, z1, n + 2)[1:-1]]
    if style.decor == 1:  # vertical flutes
        zs = np.linspace(z0 + 0.1 * half, z1 - 0.1 * half, 12)
        return [_surface_curve(lathe, np.full_like(zs, a), zs) for a in np.arange(2 * n + 4) * 2 * np.pi / (2 * n + 4)]
    if style.decor == 2:  # zigzag band
        teeth = 3 * n + 3
        tz = np.linspace(0, 2 * np.pi, 2 * teeth + 1)
        zz = mid + 0.35 * half * np.where(np.arange(len(tz)) % 2 == 0, 1, -1)
        return [_surface_curve(lathe, tz, zz)]
    waves = n + 2  # two interlaced waves
    return [_surface_curve(lathe, th, mid + 0.3 * half * np.sin(waves * th + ph)) for ph in (0, np.pi)]


def _face_ornament(size: tuple[float, float, float], style: Style, face: str = "front") -> list[Curve]:
    """The patent's distinctive detail drawn on one face of a box (front = -y, back = +y, top = +z)."""
    sx, sy, sz = size
    axis, sign, (ua, hu), (va, hv) = {
        "front": (1, -1, (0, sx / 2), (2, sz / 2)),
        "back": (1, 1, (0, sx / 2), (2, sz / 2)),
        "top": (2, 1, (0, sx / 2), (1, sy / 2)),
    }[face]
    n, half = style.ndecor, [sx / 2, sy / 2, sz / 2]
    normal = np.zeros(3)
    normal[axis] = sign

    def curve(u: np.ndarray, v: np.ndarray) -> Curve:
        pts = np.zeros((len(u), 3))
        pts[:, ua], pts[:, va], pts[:, axis] = u, v, sign * half[axis] * 1.01
        return pts, np.tile(normal, (len(u), 1))

    if style.decor == 0:  # inset panel
        u = np.array([-1, 1, 1, -1, -1]) * hu * 0.72
        v = np.array([-1, -1, 1, 1, -1]) * hv * 0.72
        return [curve(u, v)]
    if style.decor == 1:  # horizontal grooves
        return [curve(np.array([-0.85, 0.85]) * hu, np.full(2, v)) for v in np.linspace(-hv, hv, n + 2)[1:-1] * 0.9]
    if style.decor == 2:  # row of circles
        r = 0.6 * min(hu / n, hv)
        t = np.linspace(0, 2 * np.pi, 33)
        return [curve(cu + r * np.cos(t), r * np.sin(t)) for cu in np.linspace(-hu, hu, 2 * n + 1)[1::2]]
    # diagonal cross-hatch
    out = []
    for k in np.linspace(-1, 1, n + 2)[1:-1]:
        out.append(curve(np.array([-hu, hu]) * 0.9, np.array([k - 0.5, k + 0.5]) * hv * 0.9))
    return out


def _arc(center, radius, a0, a1, plane: str = "xz", n: int = 24) -> np.ndarray:
    t = np.radians(np.linspace(a0, a1, n))
    c, s = radius * np.cos(t), radius * np.sin(t)
    z = np.zeros_like(t)
    cols = {"xz": (c, z, s), "yz": (z, c, s), "xy": (c, s, z)}[plane]
    return np.stack(cols, axis=1) + np.asarray(center, float)


def _bottle(v: int, s: Style) -> list:
    R, H = 0.3 * s.wide, 1.0 * s.tall
    cap = lambda z, r: Lathe(_profile([(z, r), (z + 0.1 * H, r)]), creases=(z + 0.03 * H,))  # noqa: E731
    if v == 0:  # round bottle, narrow neck
        body = Lathe(_profile([(0, 0.9 * R), (0.04, R), (0.55 * H, R), (0.72 * H, 0.34 * R), (0.86 * H, 0.3 * R)],
                              s.bulge, (0.04, 0.55 * H)), creases=(0.04, 0.55 * H))
        body.decor = _lathe_ornament(body, s, 0.08, 0.5 * H)
        return [body, cap(0.86 * H, 0.36 * R)]
    if v == 1:  # drum: wide ribbed cylinder with an off-centre bung
        Rd = 1.35 * R
        body = Lathe(_profile([(0, Rd), (0.7 * H, Rd)], s.bulge * 0.5, (0, 0.7 * H)), creases=(0.23 * H, 0.47 * H))
        body.decor = _lathe_ornament(body, s, 0.26 * H, 0.44 * H)
        bung = Lathe(_profile([(0.7 * H, 0.2 * R), (0.78 * H, 0.2 * R)]), pos=(0.55 * Rd, 0, 0))
        return [body, bung]
    if v == 2:  # square bottle
        size = (2 * R, 1.3 * R, 0.62 * H)
        body = Box(size, pos=(0, 0, 0.31 * H), decor=_face_ornament(size, s))
        neck = Lathe(_profile([(0.62 * H, 0.5 * R), (0.68 * H, 0.3 * R), (0.8 * H, 0.3 * R)]))
        return [body, neck, cap(0.8 * H, 0.36 * R)]
    # pump dispenser: squat bottle, collar, stem, head and a sideways nozzle
    body = Lathe(_profile([(0, R), (0.45 * H, R), (0.55 * H, 0.45 * R), (0.6 * H, 0.4 * R)], s.bulge, (0, 0.45 * H)),
                 creases=(0.45 * H,))
    body.decor = _lathe_ornament(body, s, 0.05, 0.42 * H)
    collar = Lathe(_profile([(0.6 * H, 0.45 * R), (0.68 * H, 0.45 * R)]), creases=(0.64 * H,))
    stem = Lathe(_profile([(0.68 * H, 0.12 * R), (0.8 * H, 0.12 * R)]))
    head = Box((0.9 * R, 0.45 * R, 0.12 * H), pos=(0.15 * R, 0, 0.86 * H))
    nozzle = Tube(np.array([[0.55 * R, 0, 0.88 * H], [(1.0 + 0.6 * s.detail) * R, 0, 0.84 * H]]), 0.07 * R)
    return [body, collar, stem, head, nozzle]


def _legs(w: float, d: float, h: float, t: float) -> list:
    return [Box((t, t, h), pos=(sx * (w / 2 - t), sy * (d / 2 - t), h / 2)) for sx in (-1, 1) for sy in (-1, 1)]


def _furniture(v: int, s: Style) -> list:
    t = 0.04 + 0.04 * s.detail  # leg thickness: the patent's own
    if v == 0:  # chair: seat, four legs, backrest with slats
        w, d, h = 0.55 * s.wide, 0.5, 0.45 * s.tall
        parts = [Box((w, d, 0.05), pos=(0, 0, h)), *_legs(w, d, h - 0.025, t)]
        back_h = 0.5 * s.tall
        for sx in (-1, 1):
            parts.append(Box((t, t, back_h), pos=(sx * (w / 2 - t), d / 2 - t, h + back_h / 2)))
        rail = (w - 2 * t, t, 0.08)
        parts.append(Box(rail, pos=(0, d / 2 - t, h + back_h - 0.04)))
        for x in np.linspace(-w / 2, w / 2, s.ndecor + 2)[1:-1]:
            parts.append(Box((0.5 * t, 0.5 * t, back_h - 0.08), pos=(x, d / 2 - t, h + back_h / 2 - 0.04)))
        return parts
    if v == 1:  # table: wide top, four legs, apron carrying the ornament
        w, d, h = 1.1 * s.wide, 0.7, 0.72 * s.tall
        apron = (w - 4 * t, 0.02, 0.1 + 0.06 * s.detail2)
        return [Box((w, d, 0.05), pos=(0, 0, h)), *_legs(w, d, h - 0.025, t),
                Box(apron, pos=(0, -(d / 2 - t), h - 0.025 - apron[2] / 2), decor=_face_ornament(apron, s))]
    if v == 2:  # cabinet: carcass on short legs, drawer fronts
        w, d, h = 0.8 * s.wide, 0.45, 0.8 * s.tall
        size = (w, d, h)
        fronts = []
        for z in np.linspace(-h / 2, h / 2, s.ndecor + 2)[1:-1]:
            u = np.array([-0.9, 0.9]) * w / 2
            fronts.append((np.stack([u, np.full(2, -d / 2 * 1.01), np.full(2, z)], 1), np.tile([0, -1, 0], (2, 1))))
        return [Box(size, pos=(0, 0, 0.12 + h / 2), decor=fronts + _face_ornament(size, s, "top")),
                *_legs(w, d, 0.12, t)]
    # stool: round seat on three splayed legs with a ring stretcher
    r, h = 0.28 * s.wide, 0.62 * s.tall
    seat = Lathe(_profile([(h, r), (h + 0.06, r)]), creases=())
    seat.decor = _face_ornament((2 * r, 2 * r, 0.06), s, "top") if s.decor != 1 else []
    seat.decor = [(p + [0, 0, h + 0.03], nrm) for p, nrm in seat.decor]
    legs = []
    for a in np.radians([90, 210, 330]):
        top = [0.7 * r * np.cos(a), 0.7 * r * np.sin(a), h]
        foot = [(1.0 + 0.3 * s.detail) * r * np.cos(a), (1.0 + 0.3 * s.detail) * r * np.sin(a), 0]
        legs.append(Tube(np.array([top, foot]), t / 2))
    ring_r = 0.9 * r
    stretcher = Tube(_arc((0, 0, 0), ring_r, 0, 360, "xy", 37) + [0, 0, h * 0.35], t / 3)
    return [seat, *legs, stretcher]


def _lamp(v: int, s: Style) -> list:
    W, H = s.wide, s.tall
    if v == 0:  # table lamp with conical shade
        base = Lathe(_profile([(0, 0.2 * W), (0.04, 0.2 * W), (0.08, 0.08 * W)]), creases=(0.04,))
        stem = Lathe(_profile([(0.08, 0.025), (0.55 * H, 0.025)]))
        shade = Lathe(_profile([(0.45 * H, 0.34 * W), (0.85 * H, (0.14 + 0.08 * s.detail) * W)], s.bulge * 0.4,
                               (0.45 * H, 0.85 * H)))
        shade.decor = _lathe_ornament(shade, s, 0.47 * H, 0.83 * H)
        return [base, stem, shade]
    if v == 1:  # lantern: square base, glass cylinder, cone cap, ring handle
        base = Box((0.4 * W, 0.4 * W, 0.06), pos=(0, 0, 0.03))
        glass = Lathe(_profile([(0.06, 0.16 * W), (0.6 * H, 0.16 * W)], s.bulge, (0.06, 0.6 * H)), creases=())
        glass.decor = _lathe_ornament(glass, s, 0.1, 0.56 * H)
        capl = Lathe(_profile([(0.6 * H, 0.22 * W), (0.66 * H, 0.22 * W), (0.78 * H, 0.04)]), creases=(0.66 * H,))
        handle = Tube(_arc((0, 0, 0.78 * H), 0.12, 0, 180, "xz"), 0.012)
        return [base, glass, capl, handle]
    if v == 2:  # street light: tall pole, curved arm, hanging dome
        pole_h = 1.4 * H
        pole = Lathe(_profile([(0, 0.08), (0.05, 0.08), (0.1, 0.035), (pole_h, 0.03)]), creases=(0.05,))
        reach = (0.35 + 0.25 * s.detail) * W
        arm = Tube(np.array([[0, 0, pole_h], [reach * 0.5, 0, pole_h + 0.1], [reach, 0, pole_h + 0.05]]), 0.02)
        dome = Lathe(_profile([(0, 0.2 * W), (0.05, 0.2 * W), (0.16, 0.1 * W), (0.2, 0.02)], s.bulge, (0.05, 0.16)),
                     pos=(reach, 0, pole_h - 0.17), creases=(0.05,))
        dome.decor = _lathe_ornament(dome, s, 0.05, 0.16)
        return [pole, arm, dome]
    # candlestick: wide foot, knopped stem, drip pan, candle and flame
    knops = [(0.06 + 0.4 * H * (i + 0.5) / s.ndecor, 0.06) for i in range(s.ndecor)]
    stem_ctrl = [(0, 0.22 * W), (0.04, 0.2 * W), (0.06, 0.04)]
    for z, r in knops:
        stem_ctrl += [(z - 0.02, 0.035), (z, r + 0.02 * s.detail), (z + 0.02, 0.035)]
    stem_ctrl += [(0.46 * H, 0.04), (0.48 * H, 0.16 * W), (0.5 * H, 0.16 * W)]
    stem = Lathe(_profile(stem_ctrl), creases=(0.04,))
    candle = Lathe(_profile([(0.5 * H, 0.05), (0.9 * H, 0.05)]), creases=())
    flame = Lathe(_profile([(0.9 * H, 0.0), (0.93 * H, 0.03), (1.0 * H, 0.0)]))
    return [stem, candle, flame]


def _cup(v: int, s: Style) -> list:
    W, H = s.wide, s.tall
    if v == 0:  # mug with a loop handle
        r, h = 0.28 * W, 0.6 * H
        body = Lathe(_profile([(0, 0.9 * r), (0.03, r), (h, r)], s.bulge * 0.5, (0.03, h)), open_top=True)
        body.decor = _lathe_ornament(body, s, 0.06, h * 0.92)
        loop = _arc((r, 0, h / 2), (0.14 + 0.08 * s.detail) * H, -80, 80, "xz")
        return [body, Tube(loop, 0.03)]
    if v == 1:  # cooking pot: wide body, two side handles, lid with knob
        r, h = 0.42 * W, 0.4 * H
        body = Lathe(_profile([(0, 0.95 * r), (0.03, r), (h, r)], s.bulge * 0.3, (0.03, h)), creases=(0.9 * h,))
        body.decor = _lathe_ornament(body, s, 0.05, 0.85 * h)
        lid = Lathe(_profile([(h, 1.02 * r), (h + 0.02, 1.02 * r), (h + 0.1 * (1 + s.detail), 0.15 * r),
                              (h + 0.12 * (1 + s.detail), 0.001)]), creases=(h + 0.02,))
        knob = Lathe(_profile([(h + 0.1 * (1 + s.detail), 0.06), (h + 0.18 * (1 + s.detail), 0.08)]))
        handles = [Tube(np.array([[sx * r, 0, 0.8 * h], [sx * (r + 0.12), 0, 0.82 * h]]), 0.035) for sx in (-1, 1)]
        return [body, lid, knob, *handles]
    if v == 2:  # goblet: bowl on a stem and foot
        bowl = Lathe(_profile([(0.45 * H, 0.02), (0.5 * H, 0.16 * W), (0.75 * H, 0.24 * W), (0.95 * H, 0.22 * W)],
                              s.bulge, (0.5 * H, 0.95 * H)), open_top=True)
        bowl.decor = _lathe_ornament(bowl, s, 0.55 * H, 0.9 * H)
        stem = Lathe(_profile([(0, 0.2 * W), (0.02, 0.18 * W), (0.05, 0.03), (0.45 * H, 0.025)]), creases=(0.02,))
        return [stem, bowl]
    # bucket: tapered, open, bail handle over the top
    r0, r1, h = 0.26 * W, 0.36 * W, 0.55 * H
    body = Lathe(_profile([(0, r0), (h, r1)], s.bulge * 0.3, (0, h)), open_top=True, creases=(0.1 * h,))
    body.decor = _lathe_ornament(body, s, 0.15 * h, 0.9 * h)
    bail = Tube(_arc((0, 0, h * 0.9), r1, 0, 180, "xz") * [1, 1, 0.8 + 0.6 * s.detail] + [0, 0, 0.18 * h], 0.012)
    return [body, bail]


def _device(v: int, s: Style) -> list:
    W, H = s.wide, s.tall
    if v == 0:  # phone: thin slab, screen inset, home button
        size = (0.5 * W, 0.05, 1.0 * H)
        t = np.linspace(0, 2 * np.pi, 25)
        y = -size[1] / 2 * 1.01
        screen = np.stack([np.array([-1, 1, 1, -1, -1]) * size[0] * 0.42, np.full(5, y),
                           np.array([-0.7, -0.7, 1, 1, -0.7]) * size[2] * 0.45], 1)
        button = np.stack([0.04 * np.cos(t), np.full_like(t, y), -size[2] * 0.41 + 0.04 * np.sin(t)], 1)
        cam_r = (0.03 + 0.03 * s.detail)
        lens = [np.stack([sx * 0.07 + cam_r * np.cos(t), np.full_like(t, -y), size[2] * 0.4 + cam_r * np.sin(t)], 1)
                for sx in range(s.ndecor % 3 + 1)]
        back = _face_ornament(size, s, "back")
        decor = [(screen, np.tile([0, -1, 0], (5, 1))), (button, np.tile([0, -1, 0], (25, 1)))]
        decor += [(p, np.tile([0, 1, 0], (len(p), 1))) for p in lens] + back
        return [Box(size, pos=(0, 0, size[2] / 2), decor=decor)]
    if v == 1:  # laptop: base with keyboard, lid opened on a hinge
        w, d = 1.0 * W, 0.7
        base = (w, d, 0.04)
        lid = (w, 0.03, 0.65 * H)
        ang = 15 + 25 * s.detail
        lid_rot = rot_x(-ang)
        lid_pos = np.array([0, d / 2, 0.04]) + lid_rot @ np.array([0, 0, lid[2] / 2])
        keys = _face_ornament(base, Style(1, 1, 0, 3, 3 + s.ndecor % 2, 0, 0), "top")
        return [Box(base, pos=(0, 0, 0.02), decor=keys),
                Box(lid, pos=tuple(lid_pos), rot=lid_rot, decor=_face_ornament(lid, s, "back"))]
    if v == 2:  # monitor: wide screen on a neck and foot
        screen = (1.0 * W, 0.05, 0.62 * H)
        z0 = 0.3
        neck = Box((0.08, 0.04, z0 + 0.1), pos=(0, 0.05, (z0 + 0.1) / 2))
        foot = Box(((0.3 + 0.2 * s.detail) * W, 0.3, 0.03), pos=(0, 0.05, 0.015))
        bezel = np.stack([np.array([-1, 1, 1, -1, -1]) * screen[0] * 0.46, np.full(5, -0.026),
                          z0 + screen[2] / 2 + np.array([-1, -1, 1, 1, -1]) * screen[2] * 0.42], 1)
        panel = Box(screen, pos=(0, 0, z0 + screen[2] / 2),
                    decor=[(bezel - [0, 0, z0 + screen[2] / 2], np.tile([0, -1, 0], (5, 1)))] + _face_ornament(screen, s, "back"))
        return [foot, neck, panel]
    # camera: body, lens barrel toward the front, viewfinder hump, shutter button
    size = (0.8 * W, 0.4, 0.5 * H)
    body = Box(size, pos=(0, 0, size[2] / 2), decor=_face_ornament(size, s, "back"))
    lens_len = 0.2 + 0.25 * s.detail
    lens = Lathe(_profile([(0, 0.17 * H), (lens_len * 0.5, 0.17 * H), (lens_len * 0.55, 0.15 * H), (lens_len, 0.15 * H)]),
                 pos=(0.1 * W, -size[1] / 2, size[2] / 2), rot=rot_x(90), creases=(lens_len * 0.5,))
    hump = Box((0.25 * W, 0.25, 0.1), pos=(-0.1 * W, 0, size[2] + 0.05))
    button = Lathe(_profile([(size[2], 0.04), (size[2] + 0.04, 0.04)]), pos=(0.28 * W, 0, 0))
    return [body, lens, hump, button]


def _dial(r: float, thickness: float, s: Style, pos=(0, 0, 0), arc: float = 360) -> Lathe:
    """A disc facing the viewer (-y) with ticks and hands on its face: the patent's own tick count and time."""
    disc = Lathe(_profile([(0, r), (thickness, r), (thickness * 1.05, 0.92 * r)]), pos=pos, rot=rot_x(90),
                 creases=(thickness,))
    z = thickness * 1.06
    nrm = lambda k: np.tile([0, 0, 1.0], (k, 1))  # noqa: E731
    ticks = [4, 8, 12, 60][s.decor] if arc == 360 else 6 + 2 * s.ndecor
    start = 90 if arc == 360 else 225
    curves = []
    for a in np.radians(start - np.arange(ticks) * arc / (ticks if arc == 360 else ticks - 1)):
        inner = 0.72 if ticks < 60 else 0.8
        pts = np.array([[inner * r * np.cos(a), inner * r * np.sin(a), z], [0.84 * r * np.cos(a), 0.84 * r * np.sin(a), z]])
        curves.append((pts, nrm(2)))
    for length, a in ((0.45, 360 * s.detail), (0.65, 360 * s.detail2)):
        a = np.radians(90 - a)
        curves.append((np.array([[0, 0, z], [length * r * np.cos(a), length * r * np.sin(a), z]]), nrm(2)))
    if s.ndecor >= 3:
        curves.append((np.stack([0.55 * r * np.cos(_RING), 0.55 * r * np.sin(_RING), np.full_like(_RING, z)], 1)[[*range(40), 0]],
                       nrm(41)))
    disc.decor = curves
    return disc


def _clock(v: int, s: Style) -> list:
    W = s.wide
    if v == 0:  # wall clock: large thin disc with a hanging ring
        r = 0.5 * W
        return [_dial(r, 0.08, s, pos=(0, 0.04, r)), Tube(_arc((0, 0.04, 2 * r + 0.05), 0.05, -60, 240, "xz"), 0.012)]
    if v == 1:  # wristwatch: case, straps up and down, crown
        r = 0.3 * W
        strap = (0.36 * W * (0.8 + 0.3 * s.detail2), 0.04, 0.55 * s.tall)
        case = _dial(r, 0.1, s, pos=(0, 0.05, 0))
        crown = Lathe(_profile([(0, 0.04), (0.08, 0.04)]), pos=(r, 0, 0), rot=rot_y(90))
        straps = [Box(strap, pos=(0, 0.02, sz * (r + strap[2] / 2 - 0.05))) for sz in (-1, 1)]
        return [*straps, case, crown]
    if v == 2:  # alarm clock: case on two legs with two bells on top
        r = 0.35 * W
        case = _dial(r, 0.15, s, pos=(0, 0.075, r + 0.1))
        bells = [Lathe(_profile([(0, 0.14), (0.05, 0.13), (0.1, 0.09), (0.14, 0.001)], s.bulge * 0.3, (0, 0.14)),
                       pos=(sx * r * 0.7, 0, 2 * r + 0.02 - 0.02 * s.detail), rot=rot_y(sx * 35)) for sx in (-1, 1)]
        legs = [Tube(np.array([[sx * r * 0.5, 0, 0.25], [sx * r * 0.75, 0, 0.0]]), 0.02) for sx in (-1, 1)]
        return [*legs, case, *bells]
    # gauge: dial with a partial scale on a threaded stem and hex nut
    r = 0.4 * W
    gauge = _dial(r, 0.12, s, pos=(0, 0.06, 0.45 * s.tall + r), arc=270)
    nut = Box((0.16, 0.16, 0.08), pos=(0, 0, 0.4 * s.tall))
    stem = Lathe(_profile([(0, 0.04), (0.4 * s.tall, 0.04)]), creases=tuple(np.linspace(0.02, 0.2, s.ndecor + 1)))
    return [stem, nut, gauge]


def _tool(v: int, s: Style) -> list:
    L, W = 0.9 * s.tall, s.wide
    if v == 0:  # hammer: handle with grip, head across the top
        handle = Box((0.07, 0.05, L), pos=(0, 0, L / 2), decor=_face_ornament((0.07, 0.05, L), s))
        head = (0.45 * W, 0.1, 0.12)
        claw = Tube(np.array([[-head[0] / 2, 0, L], [-head[0] / 2 - 0.12, 0, L + 0.02 + 0.08 * s.detail]]), 0.03)
        return [handle, Box(head, pos=(0, 0, L)), claw]
    if v == 1:  # screwdriver: fluted handle lathe, thin shaft, flat tip
        handle = Lathe(_profile([(0, 0.05), (0.05, 0.08 * W), (0.4 * L, 0.08 * W), (0.45 * L, 0.05)], s.bulge,
                                (0.05, 0.4 * L)), creases=(0.05,))
        handle.decor = _lathe_ornament(handle, s, 0.06, 0.38 * L)
        shaft = Lathe(_profile([(0.45 * L, 0.015), (L, 0.015), (L + 0.04, 0.006)]))
        return [handle, shaft]
    if v == 2:  # open-end wrench: flat bar, C-shaped jaw, ring end
        bar = (0.08 * W, 0.03, L)
        jaw_r = 0.1 + 0.05 * s.detail
        jaw = Tube(_arc((0, 0, L + jaw_r * 0.6), jaw_r, -60, 240, "xz"), 0.035)
        ring = Tube(_arc((0, 0, -0.05), 0.08, 0, 360, "xz", 33), 0.03)
        return [Box(bar, pos=(0, 0, L / 2), decor=_face_ornament(bar, s)), jaw, ring]
    # key: round bow with a hole, blade with the patent's own bitting
    bow_r = 0.16 * W
    bow = Lathe(_profile([(0, bow_r), (0.03, bow_r)]), pos=(0, 0.015, L - bow_r), rot=rot_x(90))
    hole = np.stack([0.3 * bow_r * np.cos(_RING), 0.3 * bow_r * np.sin(_RING), np.full_like(_RING, 0.031)], 1)
    bow.decor = [(hole[[*range(40), 0]], np.tile([0, 0, 1.0], (41, 1)))]
    blade_len = L - 2 * bow_r
    blade = Box((0.07, 0.02, blade_len), pos=(0, 0, blade_len / 2))
    rng = np.random.default_rng(int(s.detail * 1e6))
    teeth = [Box((0.04 + 0.05 * float(rng.uniform()), 0.02, 0.05), pos=(0.05, 0, z))
             for z in np.linspace(0.05, 0.45 * blade_len, s.ndecor + 2)]
    return [blade, *teeth, bow]


def _vase(v: int, s: Style) -> list:
    W, H = s.wide, s.tall
    if v == 0:  # amphora: narrow foot, belly, neck, flared lip, two ear handles
        body = Lathe(_profile([(0, 0.12 * W), (0.05, 0.1 * W), (0.35 * H, 0.3 * W), (0.7 * H, 0.14 * W),
                               (0.85 * H, 0.1 * W), (0.95 * H, 0.16 * W)], s.bulge, (0.05, 0.7 * H)), open_top=True)
        body.decor = _lathe_ornament(body, s, 0.15 * H, 0.6 * H)
        ears = [Tube(np.array([[sx * 0.12 * W, 0, 0.8 * H], [sx * 0.28 * W, 0, 0.78 * H], [sx * 0.25 * W, 0, 0.55 * H]]), 0.02)
                for sx in (-1, 1)]
        return [body, *ears]
    if v == 1:  # planter: tapered pot, rim, saucer, plant stems
        r0, r1, h = 0.2 * W, 0.3 * W, 0.45 * H
        saucer = Lathe(_profile([(0, 0.26 * W), (0.03, 0.32 * W)]))
        pot = Lathe(_profile([(0.03, r0), (0.8 * h, r1 * 0.95), (0.82 * h, r1), (h, r1)], s.bulge * 0.3, (0.03, 0.8 * h)),
                    open_top=True, creases=(0.82 * h,))
        pot.decor = _lathe_ornament(pot, s, 0.1, 0.78 * h)
        stems = []
        for i in range(s.ndecor + 1):
            a = np.radians(90 + (i - s.ndecor / 2) * 25)
            top = np.array([0.5 * W * np.cos(a) * (0.6 + 0.4 * s.detail), 0, h + 0.5 * H * np.sin(a)])
            stems.append(Tube(np.array([[0, 0, h], top]), 0.012))
            stems.append(Lathe(_profile([(0, 0.0), (0.04, 0.05), (0.12, 0.0)]), pos=tuple(top)))
        return [saucer, pot, *stems]
    if v == 2:  # bauble: sphere with a cap and hanging loop
        R = 0.3 * W
        zs = np.linspace(-np.pi / 2, np.pi / 2, 15)
        ball = Lathe(np.stack([R * np.sin(zs) * (1 + 0.3 * s.bulge) + R, R * np.cos(zs) + 1e-3], 1))
        ball.decor = _lathe_ornament(ball, s, 0.4 * R, 1.6 * R)
        capl = Lathe(_profile([(2 * R - 0.01, 0.08), (2 * R + 0.08, 0.08)]), creases=(2 * R + 0.03,))
        loop = Tube(_arc((0, 0, 2 * R + 0.13), 0.05 + 0.03 * s.detail, -90, 270, "xz", 29), 0.01)
        return [ball, capl, loop]
    # pendant: teardrop with a bail and chain
    R = 0.2 * W
    drop = Lathe(_profile([(0, 0.001), (0.08, 0.6 * R), (0.25 * H, R), (0.6 * H, 0.05)], s.bulge, (0.05, 0.55 * H)))
    drop.decor = _lathe_ornament(drop, s, 0.08, 0.5 * H)
    bail = Tube(_arc((0, 0, 0.65 * H), 0.05, -90, 270, "xz", 29), 0.012)
    chain = Tube(np.array([[-0.25 * W, 0, 1.0 * H], [0, 0, 0.7 * H], [0.25 * W, 0, 1.0 * H]]), 0.008)
    return [drop, bail, chain]


FAMILIES: tuple[Family, ...] = (
    Family("09", "container", (("09-01", "Bottle"), ("09-02", "Drum container"), ("09-03", "Square bottle"),
                               ("09-07", "Dispenser pump bottle")), _bottle),
    Family("06", "furniture", (("06-01", "Chair"), ("06-03", "Table"), ("06-04", "Cabinet"), ("06-06", "Stool")),
           _furniture),
    Family("26", "lamp", (("26-05", "Table lamp"), ("26-02", "Lantern"), ("26-03", "Street light"),
                          ("26-01", "Candlestick")), _lamp),
    Family("07", "vessel", (("07-01", "Mug"), ("07-02", "Cooking pot"), ("07-06", "Goblet"), ("07-07", "Bucket")),
           _cup),
    Family("14", "electronic device", (("14-03", "Mobile phone"), ("14-02", "Laptop computer"),
                                       ("14-04", "Display monitor"), ("14-01", "Camera")), _device),
    Family("10", "clock", (("10-01", "Wall clock"), ("10-02", "Wristwatch"), ("10-03", "Alarm clock"),
                           ("10-04", "Pressure gauge")), _clock),
    Family("08", "tool", (("08-02", "Hammer"), ("08-04", "Screwdriver"), ("08-05", "Wrench"), ("08-07", "Key")),
           _tool),
    Family("11", "ornament", (("11-02", "Vase"), ("11-04", "Planter"), ("11-05", "Ornamental bauble"),
                              ("11-01", "Pendant")), _vase),
)
_FAMILY_BY_CLASS = {f.class_code: f for f in FAMILIES}


def object_title(class_code: str, variant: int) -> str:
    return _FAMILY_BY_CLASS[class_code].subclasses[variant][1]


def contact_sheet(spec: SampleSpec, per_class: int = 8) -> Image.Image:
    """One row per main class, drawings of different subclasses, patents and views: for eyeballing the corpus."""
    patents = sample_patents(spec)
    size = spec.image_size
    sheet = Image.new("L", (size * per_class, size * spec.n_classes), 255)
    for row, family in enumerate(FAMILIES[: spec.n_classes]):
        members = patents.filter(pl.col("class_code") == family.class_code).sort("variant", "patent_index").to_dicts()
        for col in range(per_class):
            patent = members[(col * len(members)) // per_class]
            sheet.paste(render_drawing(spec, patent, col % patent["n_views"]), (col * size, row * size))
    return sheet


def render_drawing(spec: SampleSpec, patent: dict, view_index: int) -> Image.Image:
    """Segmented drawing (image_size x image_size, 'L') of one patent from one view, jittered per drawing."""
    family = _FAMILY_BY_CLASS[patent["class_code"]]
    prims = family.build(int(patent["variant"]), _patent_style(spec, int(patent["patent_index"])))
    _aspect, yaw, pitch, persp = VIEWS[view_index]
    r = _rng(spec, 5, int(patent["patent_index"]), view_index)
    big = 2 * spec.image_size  # drawn at 2x, box-filtered down: anti-aliased lines
    lw = int(r.integers(2, 5)) * big // 256 + 1
    img = render_object(
        prims, yaw + float(r.uniform(-6, 6)), pitch + float(r.uniform(-4, 4)), persp, big, lw,
        fill=float(r.uniform(0.78, 0.92)), shift=(float(r.uniform(-0.03, 0.03)), float(r.uniform(-0.03, 0.03))),
    )
    return img.reduce(2)


# --------------------------------------------------------------------------------------------------------------
# DeepPatent2 year archive: records, figures, nested tar.gz, Dataverse parts
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _YearLayout:
    """Folder and archive names inside a year's archive: they differ by year in the real data."""

    top: str
    original_archive: str
    segmented_archive: str
    original_dir: str  # "" = PNGs at the archive root
    segmented_dir: str
    national_class: bool  # this year's records carry `classification_national`


def year_layout(year: int) -> _YearLayout:
    if year % 2:
        return _YearLayout(f"{year}", f"Original_{year}.tar.gz", f"Segmented_{year}.tar.gz",
                           f"Original_{year}/", f"Segmented_{year}/", False)
    return _YearLayout(f"DesignPatent{year}", f"{year}_original_png.tar.gz", f"{year}_segmented_png.tar.gz",
                       "", "segmented/", True)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _tar_gz(files: dict[str, bytes]) -> bytes:
    """Deterministic tar.gz: sorted members, parent folders listed, fixed mtime/owner, gzip mtime 0."""
    dirs = {"/".join(name.split("/")[:i]) for name in files for i in range(1, name.count("/") + 1)}
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=6) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for name in sorted(dirs | set(files)):
                info = tarfile.TarInfo(name)
                info.mtime, info.uid, info.gid, info.uname, info.gname = _TAR_MTIME, 0, 0, "", ""
                if name in files:
                    info.size, info.mode = len(files[name]), 0o644
                    tar.addfile(info, io.BytesIO(files[name]))
                else:
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
    return buf.getvalue()


def _figure_label_font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=max(10, size // 9))
    except (TypeError, OSError):  # Pillow without FreeType: the bitmap default font
        return ImageFont.load_default()


def _aspect_short(aspect: str) -> str:
    return aspect.replace(" elevational", "").replace(" plan", "").replace(" view", "")


def _year_figures(spec: SampleSpec, year: int) -> tuple[list[dict], dict[str, bytes], dict[str, bytes]]:
    """Per-figure records plus original and segmented PNG bytes (by file name) of one year."""
    patents = sample_patents(spec).filter(pl.col("year") == year).sort("patent_id").to_dicts()
    layout = year_layout(year)
    font = _figure_label_font(spec.image_size)
    records, originals, segmented = [], {}, {}
    for patent in patents:
        title = object_title(patent["class_code"], patent["variant"])
        national = f"D{int(patent['class_code'])}/{100 + patent['patent_index'] % 800}"
        for view in range(patent["n_views"]):
            fig = view + 1
            seg = render_drawing(spec, patent, view)
            r = _rng(spec, 6, patent["patent_index"], view)
            width, height = int(spec.image_size * 1.5), int(spec.image_size * 1.8)
            x0 = int(r.integers(4, width - spec.image_size - 4))
            y0 = int(r.integers(4, height - spec.image_size - spec.image_size // 4))
            original = Image.new("L", (width, height), 255)
            original.paste(seg, (x0, y0))
            draw = ImageDraw.Draw(original)
            label = f"FIG. {fig}"
            lx, ly = x0 + int(r.integers(0, spec.image_size // 3)), y0 + spec.image_size + 4
            lbox = draw.textbbox((lx, ly), label, font=font)
            draw.text((lx, ly), label, fill=0, font=font)
            ink = seg.point(lambda v: 255 if v < 128 else 0).getbbox() or (0, 0, spec.image_size, spec.image_size)
            figure_file = f"{patent['patent_id']}-D{fig:05d}.png"
            subfigure_file = f"{figure_file[:-4]}_1.png"
            aspect = VIEWS[view][0]
            article = "an" if title[0].lower() in "aeiou" else "a"
            record = {
                "id": 0,
                "patentID": patent["patent_id"],
                "patentdate": f"{patent['grant_date']:%Y%m%d}",
                "figid": 1,
                "caption": f"FIG. {fig} is a {aspect} of {article} {title.lower()}"
                + (", showing our new design;" if fig == 1 else ";"),
                "object": title.lower(),
                "aspect": _aspect_short(aspect),
                "figure_file": figure_file,
                "subfigure_file": subfigure_file,
                "object_title": title,
                "x_figure": x0 + ink[0], "y_figure": y0 + ink[1],
                "w_figure": ink[2] - ink[0], "h_figure": ink[3] - ink[1],
                "W_label": lbox[2] - lbox[0], "H_label": lbox[3] - lbox[1], "L_label": lbox[0], "T_label": lbox[1],
            }
            if layout.national_class:
                record["classification_national"] = national
            last = fig == patent["n_views"]
            if last and patent["fault"] == "malformed_patent_id":
                record["patentID"] = patent["patent_id"].replace("-", "")
            records.append(record)
            if last and patent["fault"] == "missing_image":
                continue
            originals[layout.original_dir + figure_file] = _png(original)
            segmented[layout.segmented_dir + subfigure_file] = _png(seg)
    for i, record in enumerate(records):
        record["id"] = i
    return records, originals, segmented


def _part_suffix(i: int) -> str:
    if i >= 26 * 26:
        raise ValueError("more than 676 parts: raise SampleSpec.part_size")
    return chr(97 + i // 26) + chr(97 + i % 26)


def write_sample_year(spec: SampleSpec, year: int, raw_dir: str | Path) -> list[Path]:
    """Write one year as Dataverse parts raw_dir/YYYY.aa, .ab, ... (byte slices of one tar.gz); stale parts go."""
    if year not in spec.years:
        raise ValueError(f"year {year} not in spec.years {spec.years}")
    raw_dir = Path(raw_dir)
    layout = year_layout(year)
    records, originals, segmented = _year_figures(spec, year)
    top = layout.top + "/"
    archive = _tar_gz({
        f"{top}design{year}.json": json.dumps(records, indent=1).encode(),
        top + layout.original_archive: _tar_gz(originals),
        top + layout.segmented_archive: _tar_gz(segmented),
    })
    paths = []
    for i, start in enumerate(range(0, len(archive), spec.part_size)):
        path = raw_dir / f"{year}.{_part_suffix(i)}"
        with atomic_path(path) as tmp:
            tmp.write_bytes(archive[start:start + spec.part_size])
        paths.append(path)
    for stale in raw_dir.glob(f"{year}.??"):
        if stale not in paths:
            stale.unlink()
    return paths


def sample_listing(spec: SampleSpec, raw_root: str | Path) -> dict:
    """Dataverse dataset JSON (`/api/datasets/:persistentId/`) listing the parts under raw_root/YYYY/."""
    raw_root = Path(raw_root)
    files = []
    for y, year in enumerate(spec.years):
        for p, path in enumerate(sorted((raw_root / str(year)).glob(f"{year}.??"))):
            md5 = hashlib.md5(path.read_bytes()).hexdigest()
            files.append({
                "label": path.name, "restricted": False, "version": 1, "datasetVersionId": 300001,
                "dataFile": {
                    "id": 6_100_000 + 1000 * y + p, "persistentId": "", "filename": path.name,
                    "contentType": "application/octet-stream", "filesize": path.stat().st_size,
                    "storageIdentifier": f"s3://dvn-cloud:{md5[:12]}", "rootDataFileId": -1,
                    "md5": md5, "checksum": {"type": "MD5", "value": md5},
                },
            })
    return {
        "status": "OK",
        "data": {
            "id": 4500000, "identifier": "DVN/UG4SBD", "persistentUrl": "https://doi.org/10.7910/DVN/UG4SBD",
            "protocol": "doi", "authority": "10.7910", "publisher": "Harvard Dataverse",
            "latestVersion": {"id": 300001, "versionState": "RELEASED", "versionNumber": 1,
                              "versionMinorNumber": 0, "files": files},
        },
    }


# --------------------------------------------------------------------------------------------------------------
# USPTO weekly grant XML carrying the Locarno codes
# --------------------------------------------------------------------------------------------------------------


def locarno_edition(year: int) -> str:
    for since, edition in ((2023, "14"), (2021, "13"), (2019, "12"), (2017, "11"), (2013, "10"), (2009, "9")):
        if year >= since:
            return edition
    return "8"


def _grant_xml(doc_number: str, date: dt.date, kind: str, title: str, locarno: str | None, claim: str,
               national: str) -> str:
    ymd = f"{date:%Y%m%d}"
    design = kind == "S1"
    lic = (f"<classification-locarno>\n<edition>{locarno_edition(date.year)}</edition>\n"
           f"<main-classification>{locarno}</main-classification>\n</classification-locarno>\n") if locarno else ""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<!DOCTYPE us-patent-grant SYSTEM "us-patent-grant-v45-2014-04-03.dtd" [ ]>\n'
        f'<us-patent-grant lang="EN" dtd-version="v4.5 2014-04-03" file="US{doc_number}-{ymd}.XML" '
        f'status="PRODUCTION" id="us-patent-grant" country="US" date-produced="{ymd}" date-publ="{ymd}">\n'
        "<us-bibliographic-data-grant>\n"
        "<publication-reference>\n<document-id>\n<country>US</country>\n"
        f"<doc-number>{doc_number}</doc-number>\n<kind>{kind}</kind>\n<date>{ymd}</date>\n"
        "</document-id>\n</publication-reference>\n"
        f'<application-reference appl-type="{"design" if design else "utility"}">\n<document-id>\n'
        f"<country>US</country>\n<doc-number>{'29' if design else '15'}{int(doc_number.lstrip('D')) % 1000000:06d}</doc-number>\n"
        f"<date>{date.year - 2}0615</date>\n</document-id>\n</application-reference>\n"
        f"<us-application-series-code>{'29' if design else '15'}</us-application-series-code>\n"
        + ("<us-term-of-grant>\n<length-of-grant>15</length-of-grant>\n</us-term-of-grant>\n" if design else "")
        + lic
        + ("" if design else "<classifications-ipcr>\n<classification-ipcr>\n<section>G</section>\n<class>06</class>\n"
           "<subclass>F</subclass>\n<main-group>16</main-group>\n<subgroup>00</subgroup>\n"
           "</classification-ipcr>\n</classifications-ipcr>\n")
        + f"<classification-national>\n<country>US</country>\n<main-classification>{national}</main-classification>\n"
        "</classification-national>\n"
        f'<invention-title id="d2e53">{escape(title)}</invention-title>\n'
        "</us-bibliographic-data-grant>\n"
        f'<claims id="claims">\n<claim id="CLM-00001" num="00001">\n<claim-text>{escape(claim)}</claim-text>\n'
        "</claim>\n</claims>\n</us-patent-grant>\n"
    )


def _locarno_raw(spec: SampleSpec, patent: dict) -> str | None:
    if patent["fault"] == "lic_missing":
        return None
    klass, sub = patent["subclass_code"].split("-")
    if patent["fault"] == "lic_class_only":
        return klass
    pick = float(_rng(spec, 7, patent["patent_index"]).uniform())
    return f"{klass}-{sub}" if pick < 0.05 else f"{klass}/{sub}" if pick < 0.10 else f"{klass}{sub}"


def write_sample_uspto(spec: SampleSpec, uspto_dir: str | Path) -> list[Path]:
    """Weekly grant files uspto_dir/ipgYYMMDD.xml, one per grant Tuesday used, each with a utility patent too."""
    uspto_dir = Path(uspto_dir)
    patents = sample_patents(spec)
    paths = []
    for w, (date,) in enumerate(patents.select("grant_date").unique().sort("grant_date").iter_rows()):
        utility_number = f"{10_150_000 + 350_000 * (date.year - 2019) + 7_000 * w:08d}"
        docs = [_grant_xml(utility_number, date, "B2", "Method and system for indexing data records",
                           None, "1. A method comprising: receiving a data record; and indexing it.", "707741")]
        for patent in patents.filter(pl.col("grant_date") == date).sort("doc_number").iter_rows(named=True):
            title = object_title(patent["class_code"], patent["variant"])
            docs.append(_grant_xml(
                patent["doc_number"], date, "S1", title, _locarno_raw(spec, patent),
                f"The ornamental design for a {title.lower()}, as shown and described.",
                f"D{int(patent['class_code']):>2}{100 + patent['patent_index'] % 800}",
            ))
        path = uspto_dir / f"ipg{date:%y%m%d}.xml"
        with atomic_path(path) as tmp:
            tmp.write_bytes("".join(docs).encode("utf-8"))
        paths.append(path)
    return paths


def generate_sample(spec: SampleSpec, root: str | Path) -> dict:
    """Whole corpus: root/raw/YYYY/ parts, root/raw/dataverse_listing.json, root/uspto/ipg*.xml; returns counts."""
    root = Path(root)
    parts = {year: write_sample_year(spec, year, root / "raw" / str(year)) for year in spec.years}
    listing = sample_listing(spec, root / "raw")
    with atomic_path(root / "raw" / "dataverse_listing.json") as tmp:
        tmp.write_text(json.dumps(listing, indent=1))
    xml_files = write_sample_uspto(spec, root / "uspto")
    patents = sample_patents(spec)
    faults = patents.filter(pl.col("fault").is_not_null())
    return {
        "patents": patents.height,
        "records": int(patents["n_views"].sum()),
        "drawings": int(patents["n_views"].sum()) - faults.filter(pl.col("fault") == "missing_image").height,
        "classes": patents["class_code"].n_unique(),
        "subclasses": patents["subclass_code"].n_unique(),
        "parts": {str(y): len(p) for y, p in parts.items()},
        "bytes": sum(p.stat().st_size for ps in parts.values() for p in ps),
        "xml_files": len(xml_files),
        "faults": dict(sorted(faults.group_by("fault").len().iter_rows())),
    }
