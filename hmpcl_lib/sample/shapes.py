"""Shape families of the sample corpus: one Locarno main class = one family of 3-D objects, a subclass = a
structural variant, a patent = its own `Style` (proportions + ornament); `FAMILIES` and `object_title`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from hmpcl_lib.sample.render import Box, Curve, Lathe, Tube, _RING, rot_x, rot_y

# --------------------------------------------------------------------------------------------------------------
# Shape families: class = family, subclass = variant, patent = Style (proportions + ornament)
# --------------------------------------------------------------------------------------------------------------

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
