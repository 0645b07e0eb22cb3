"""Objects, shapes, backgrounds and frame rendering of the synthetic video world.

A video is described by a plain JSON-able *spec* (stored in ``world.json``) and rendered from it
deterministically: every frame depends only on the per-frame state of each object at that frame
(centre x/y in pixels, scale, alpha, angle), so a video whose tracks are the reversed (or
segment-swapped) tracks of another renders to exactly the reversed (swapped) frames.

Spec layout (the parts the renderer reads)::

    {"size": 64, "num_frames": 32, "fps": 8,
     "background": {"kind": "plain"|"noise"|"stripes", "level": int, "seed": int, "orient": "h"|"v"|"d"},
     "objects": [{"colour": "red", "shape": "circle", "size": "small", "size_px": 14,
                  "track": {"x": [...], "y": [...], "scale": [...], "alpha": [...], "angle": [...]}}]}

Events (what captions describe) change an object's state linearly over a frame range
``[start_frame, end_frame)``: frame ``i`` of the range is at progress ``(i - start + 1) / n``, so the
frame before the range is the rest state and exactly the frames of the range differ from their
predecessor.
"""

from __future__ import annotations

import numpy as np

# Clear, saturated colours on a dark background; pairwise RGB distances are large.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 200, 50),
    "blue": (40, 80, 255),
    "yellow": (245, 225, 30),
    "purple": (200, 50, 225),
    "cyan": (30, 225, 235),
    "orange": (255, 140, 20),
    "white": (240, 240, 240),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond")
SIZES_PX: dict[str, int] = {"small": 14, "big": 22}
GROW_FACTOR = 1.5  # "grows": scale 1 -> 1.5; "shrinks": 1.5 -> 1
BACKGROUNDS: tuple[str, ...] = ("plain", "noise", "stripes")

# Caption-describable events and their time reversals.
EVENTS: tuple[str, ...] = (
    "move_left",
    "move_right",
    "move_up",
    "move_down",
    "grow",
    "shrink",
    "appear",
    "disappear",
)
REVERSE: dict[str, str] = {
    "move_left": "move_right",
    "move_right": "move_left",
    "move_up": "move_down",
    "move_down": "move_up",
    "grow": "shrink",
    "shrink": "grow",
    "appear": "disappear",
    "disappear": "appear",
    "spin": "spin",
}
MOVE_DELTA: dict[str, tuple[int, int]] = {
    "move_left": (-1, 0),
    "move_right": (1, 0),
    "move_up": (0, -1),
    "move_down": (0, 1),
}
TRACK_KEYS = ("x", "y", "scale", "alpha", "angle")


def _star_polygon(points: int = 5, outer: float = 1.08, inner: float = 0.45) -> np.ndarray:
    ang = -np.pi / 2 + np.arange(2 * points) * np.pi / points
    rad = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([rad * np.cos(ang), rad * np.sin(ang)], axis=1)


_POLYGONS = {
    "triangle": np.array([[0.0, -1.05], [1.0, 0.8], [-1.0, 0.8]]),
    "star": _star_polygon(),
}


def _inside_polygon(x: np.ndarray, y: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd rule, vectorised over points."""
    inside = np.zeros(x.shape, dtype=bool)
    n = len(poly)
    for i in range(n):
        x1, y1 = poly[i]
        x2, y2 = poly[(i + 1) % n]
        cond = (y1 > y) != (y2 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            xc = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
        inside ^= cond & (x < xc)
    return inside


def shape_inside(shape: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Whether normalised points (radius 1 = half the nominal size; y points down) are inside."""
    ax, ay = np.abs(x), np.abs(y)
    if shape == "circle":
        return x * x + y * y <= 1.0
    if shape == "square":
        return (ax <= 0.86) & (ay <= 0.86)
    if shape == "diamond":
        return ax + ay <= 1.08
    if shape == "cross":
        return ((ax <= 0.32) & (ay <= 1.0)) | ((ay <= 0.32) & (ax <= 1.0))
    if shape in _POLYGONS:
        return _inside_polygon(x, y, _POLYGONS[shape])
    raise ValueError(f"unknown shape {shape!r}")


_SUB = np.array([-0.25, 0.25])  # 2x2 supersampling offsets (anti-aliased edges, sub-pixel motion)


def coverage(shape: str, cx: float, cy: float, radius: float, angle_deg: float, h: int, w: int):
    """Fractional coverage of the object over its bounding box: ``(y0, x0, cov [hh, ww])`` or None."""
    ext = radius * 1.12 + 1.0
    x0, x1 = max(int(np.floor(cx - ext)), 0), min(int(np.ceil(cx + ext)), w)
    y0, y1 = max(int(np.floor(cy - ext)), 0), min(int(np.ceil(cy + ext)), h)
    if x1 <= x0 or y1 <= y0 or radius <= 0:
        return None
    px = np.arange(x0, x1, dtype=np.float64) + 0.5
    py = np.arange(y0, y1, dtype=np.float64) + 0.5
    sx = (px[None, :, None] + _SUB[None, None, :]).reshape(1, -1)  # [1, ww*2]
    sy = (py[:, None, None] + _SUB[None, None, :]).reshape(-1, 1)  # [hh*2, 1]
    dx = (sx - cx) / radius
    dy = (sy - cy) / radius
    if angle_deg:
        a = np.deg2rad(angle_deg)
        c, s = np.cos(a), np.sin(a)
        dx, dy = c * dx + s * dy, -s * dx + c * dy
    dx, dy = np.broadcast_arrays(dx, dy)
    ins = shape_inside(shape, dx, dy).astype(np.float32)
    hh, ww = y1 - y0, x1 - x0
    cov = ins.reshape(hh, 2, ww, 2).mean(axis=(1, 3))
    return y0, x0, cov


def make_background(bg: dict, h: int, w: int) -> np.ndarray:
    """Static float32 [H,W,3] background: dark plain grey, grey noise, or subtle stripes."""
    level = float(bg.get("level", 40))
    kind = bg.get("kind", "plain")
    img = np.full((h, w, 3), level, dtype=np.float32)
    if kind == "plain":
        return img
    if kind == "noise":
        rng = np.random.default_rng(int(bg.get("seed", 0)))
        noise = rng.uniform(-14, 14, size=(h, w, 1)).astype(np.float32)
        return img + noise
    if kind == "stripes":
        yy, xx = np.mgrid[0:h, 0:w]
        orient = bg.get("orient", "h")
        coord = yy if orient == "h" else xx if orient == "v" else (xx + yy)
        stripe = np.where((coord // 4) % 2 == 0, 12.0, -12.0).astype(np.float32)
        return img + stripe[..., None]
    raise ValueError(f"unknown background kind {kind!r}")


def render_frames(spec: dict) -> np.ndarray:
    """Render a video spec to uint8 frames [T, H, W, 3]."""
    size = int(spec["size"])
    t_total = int(spec["num_frames"])
    bg = make_background(spec["background"], size, size)
    out = np.empty((t_total, size, size, 3), dtype=np.uint8)
    objs = []
    for o in spec["objects"]:
        tr = o["track"]
        objs.append(
            (
                o["shape"],
                np.asarray(COLOURS[o["colour"]], dtype=np.float32),
                float(o["size_px"]) / 2.0,
                [np.asarray(tr[k], dtype=np.float64) for k in TRACK_KEYS],
            )
        )
    for t in range(t_total):
        frame = bg.copy()
        for shape, colour, r0, (xs, ys, scales, alphas, angles) in objs:
            a = float(alphas[t])
            if a <= 0:
                continue
            res = coverage(shape, xs[t], ys[t], r0 * scales[t], float(angles[t]), size, size)
            if res is None:
                continue
            y0, x0, cov = res
            hh, ww = cov.shape
            wgt = (cov * a)[..., None]
            region = frame[y0 : y0 + hh, x0 : x0 + ww]
            frame[y0 : y0 + hh, x0 : x0 + ww] = region * (1.0 - wgt) + colour * wgt
        out[t] = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
    return out


# ---------------------------------------------------------------------------------------------
# Tracks: per-frame object states, built by applying events.


def new_track(t_total: int, x: float, y: float, scale: float = 1.0, alpha: float = 1.0) -> dict:
    return {
        "x": np.full(t_total, x, dtype=np.float64),
        "y": np.full(t_total, y, dtype=np.float64),
        "scale": np.full(t_total, scale, dtype=np.float64),
        "alpha": np.full(t_total, alpha, dtype=np.float64),
        "angle": np.zeros(t_total, dtype=np.float64),
    }


def _ramp(arr: np.ndarray, f0: int, f1: int, start: float, end: float, hold_to: int) -> None:
    n = f1 - f0
    p = (np.arange(f0, f1) - f0 + 1) / n
    arr[f0:f1] = start + p * (end - start)
    arr[f1:hold_to] = end


def apply_event(
    track: dict,
    event: str,
    f0: int,
    f1: int,
    move_px: float,
    hold_to: int | None = None,
    spin_deg: float = 180.0,
) -> None:
    """Change ``track`` over frames [f0, f1) and hold the end state until ``hold_to`` (default: end)."""
    if not 1 <= f0 < f1:
        raise ValueError(f"bad event range [{f0}, {f1})")
    hold_to = len(track["x"]) if hold_to is None else hold_to
    if event in MOVE_DELTA:
        dx, dy = MOVE_DELTA[event]
        for key, d in (("x", dx), ("y", dy)):
            if d:
                s = track[key][f0 - 1]
                _ramp(track[key], f0, f1, s, s + d * move_px, hold_to)
    elif event in ("grow", "shrink"):
        s = track["scale"][f0 - 1]
        e = s * GROW_FACTOR if event == "grow" else s / GROW_FACTOR
        _ramp(track["scale"], f0, f1, s, e, hold_to)
    elif event in ("appear", "disappear"):
        _ramp(
            track["alpha"],
            f0,
            f1,
            0.0 if event == "appear" else 1.0,
            float(event == "appear"),
            hold_to,
        )
    elif event == "spin":
        s = track["angle"][f0 - 1]
        _ramp(track["angle"], f0, f1, s, s + spin_deg, hold_to)
    else:
        raise ValueError(f"unknown event {event!r}")


def track_to_json(track: dict) -> dict:
    """Round to what world.json stores; render from the rounded values so files reproduce exactly."""
    dec = {"x": 3, "y": 3, "scale": 4, "alpha": 4, "angle": 2}
    return {k: [round(float(v), dec[k]) for v in track[k]] for k in TRACK_KEYS}


def object_radius_px(obj: dict, scale: float = 1.0) -> float:
    return float(obj["size_px"]) * scale / 2.0


def encode_all(jobs, encode, workers: int, progress: bool = False, desc: str = "rendering") -> None:
    """``encode(path, spec)`` for every ``(path, spec)`` job, on ``workers`` threads, with a
    progress bar on stderr when asked (and only when stderr is a terminal)."""
    import sys
    from concurrent.futures import ThreadPoolExecutor

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), unit="video", desc=desc, file=sys.stderr, disable=None)

    def one(job) -> None:
        encode(*job)
        if bar is not None:
            bar.update(1)

    try:
        if workers and workers > 1:
            with ThreadPoolExecutor(max_workers=workers) as ex:
                list(ex.map(one, jobs))
        else:
            for job in jobs:
                one(job)
    finally:
        if bar is not None:
            bar.close()
