"""Planning synthetic retrieval videos without rendering them: ``VideoPlanner`` samples a video's
ground truth (kind, objects, tracks, events, shots) and the temporal-only transforms make its
twins (``reverse_spec``: every frame reversed; ``swap_spec``: the two shots swapped).
"""

from __future__ import annotations

import json

import numpy as np
from video_retrieval.datasets.synth_render import (
    BACKGROUNDS,
    COLOURS,
    EVENTS,
    GROW_FACTOR,
    REVERSE,
    SHAPES,
    SIZES_PX,
    apply_event,
    new_track,
    track_to_json,
)

KIND_WEIGHTS = {"single": 0.35, "same2": 0.30, "two2": 0.35}


def _choice(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def held_out_combos(rng: np.random.Generator, n: int) -> list[tuple[str, str]]:
    """``n`` colour-shape pairs with distinct colours and distinct shapes (every colour and shape
    still appears in training through other combinations)."""
    cols = list(COLOURS)
    n = min(n, len(cols), len(SHAPES))
    cperm = rng.permutation(len(cols))
    sperm = rng.permutation(len(SHAPES))
    return [(cols[cperm[i]], SHAPES[sperm[i]]) for i in range(n)]


class VideoPlanner:
    """Samples video specs (ground truth + tracks) without rendering."""

    def __init__(self, rng: np.random.Generator, p: dict):
        self.rng = rng
        self.T = int(p["num_frames"])
        self.fps = float(p["fps"])
        self.size = int(p["size"])
        self.move_px = float(p["move_px"])
        if self.T < 12:
            raise ValueError("num_frames must be >= 12")

    # -- objects ---------------------------------------------------------------------------
    def sample_object(self, combos: list[tuple[str, str]], avoid_colours=()) -> dict:
        rng = self.rng
        for _ in range(100):
            colour, shape = combos[int(rng.integers(len(combos)))]
            if colour not in avoid_colours:
                break
        size = _choice(rng, ("small", "big"))
        return {"colour": colour, "shape": shape, "size": size, "size_px": SIZES_PX[size]}

    def _place(self, obj: dict, track: dict, visible: np.ndarray) -> bool:
        """Shift ``track`` (built at origin 0,0) to a random start keeping the object inside."""
        rng = self.rng
        r = obj["size_px"] / 2.0 * track["scale"] * 1.1 + 1.0
        vis = visible & (track["alpha"] > 0)
        if not vis.any():
            vis = visible
        lo_x = np.max((r - track["x"])[vis])
        hi_x = np.min((self.size - r - track["x"])[vis])
        lo_y = np.max((r - track["y"])[vis])
        hi_y = np.min((self.size - r - track["y"])[vis])
        if lo_x > hi_x or lo_y > hi_y:
            return False
        ox = float(rng.uniform(lo_x, hi_x))
        oy = float(rng.uniform(lo_y, hi_y))
        track["x"] += round(ox, 1)
        track["y"] += round(oy, 1)
        return True

    def _object_track(self, obj, events, shot=None):
        """events: [(event, f0, f1)] for one object; shot: (s, e) frames where it is visible."""
        T = self.T
        first_scale = next((e for e, *_ in events if e in ("grow", "shrink")), None)
        first_alpha = next((e for e, *_ in events if e in ("appear", "disappear")), None)
        track = new_track(
            T,
            0.0,
            0.0,
            scale=GROW_FACTOR if first_scale == "shrink" else 1.0,
            alpha=0.0 if first_alpha == "appear" else 1.0,
        )
        s, e = shot if shot is not None else (0, T)
        track["alpha"][:s] = 0.0
        for ev, f0, f1 in events:
            apply_event(track, ev, f0, f1, self.move_px, hold_to=e)
        visible = np.zeros(T, dtype=bool)
        visible[s:e] = True
        track["alpha"][~visible] = 0.0
        if not self._place(obj, track, visible):
            return None
        return track_to_json(track)

    # -- kinds -----------------------------------------------------------------------------
    def _range(self, lo0, hi0, lo1, hi1):
        f0 = int(self.rng.integers(lo0, hi0 + 1))
        f1 = int(self.rng.integers(lo1, hi1 + 1))
        return f0, f1

    def plan(self, kind: str, combos) -> dict | None:
        rng, T = self.rng, self.T
        bg = {
            "kind": _choice(rng, BACKGROUNDS),
            "level": int(rng.integers(25, 61)),
            "seed": int(rng.integers(2**31)),
            "orient": _choice(rng, ("h", "v", "d")),
        }
        q = max(1, T // 8)
        if kind == "single":
            obj = self.sample_object(combos)
            ev = _choice(rng, EVENTS)
            f0, f1 = self._range(1, 2 * q, T - 2 * q, T)
            tr = self._object_track(obj, [(ev, f0, f1)])
            if tr is None:
                return None
            obj["track"] = tr
            objects, events, shots = [obj], [(0, ev, f0, f1)], [[0, T]]
        elif kind == "same2":
            obj = self.sample_object(combos)
            e1, e2 = _choice(rng, EVENTS), _choice(rng, EVENTS)
            if e1 == e2 or e1 == "disappear" or e2 == "appear":
                return None
            mid = T // 2
            a0, a1 = self._range(1, q, mid - 2, mid)
            b0, b1 = self._range(a1, a1 + 2, T - q, T)
            tr = self._object_track(obj, [(e1, a0, a1), (e2, b0, b1)])
            if tr is None:
                return None
            obj["track"] = tr
            objects, events, shots = [obj], [(0, e1, a0, a1), (0, e2, b0, b1)], [[0, T]]
        elif kind == "two2":
            o1 = self.sample_object(combos)
            o2 = self.sample_object(combos, avoid_colours=(o1["colour"],))
            if o2["colour"] == o1["colour"]:
                return None
            e1, e2 = _choice(rng, EVENTS), _choice(rng, EVENTS)
            c = int(rng.integers(T // 2 - q // 2, T // 2 + q // 2 + 1))
            a0, a1 = self._range(1, max(1, q // 2), c - max(1, q // 2), c)
            b0, b1 = self._range(c + 1, c + max(1, q // 2), T - max(1, q // 2), T)
            t1 = self._object_track(o1, [(e1, a0, a1)], shot=(0, c))
            t2 = self._object_track(o2, [(e2, b0, b1)], shot=(c, T))
            if t1 is None or t2 is None:
                return None
            o1["track"], o2["track"] = t1, t2
            objects = [o1, o2]
            events = [(0, e1, a0, a1), (1, e2, b0, b1)]
            shots = [[0, c], [c, T]]
        else:
            raise ValueError(kind)
        return self._spec(kind, bg, objects, events, shots)

    def _spec(self, kind, bg, objects, events, shots) -> dict:
        return {
            "kind": kind,
            "size": self.size,
            "num_frames": self.T,
            "fps": self.fps,
            "duration": self.T / self.fps,
            "background": bg,
            "objects": objects,
            "events": [
                {
                    "object": o,
                    "event": e,
                    "start_frame": f0,
                    "end_frame": f1,
                    "start_s": f0 / self.fps,
                    "end_s": f1 / self.fps,
                }
                for o, e, f0, f1 in events
            ],
            "shots": shots,
        }


def _copy_spec(spec: dict) -> dict:
    return json.loads(json.dumps(spec))


def reverse_spec(spec: dict) -> dict:
    """Time-reversed video: frames reversed, each event reversed, event order reversed."""
    T = spec["num_frames"]
    fps = spec["fps"]
    out = _copy_spec(spec)
    for o in out["objects"]:
        o["track"] = {k: v[::-1] for k, v in o["track"].items()}
    evs = []
    for e in reversed(spec["events"]):
        f0, f1 = T - e["end_frame"] + 1, T - e["start_frame"] + 1
        evs.append(
            {
                "object": e["object"],
                "event": REVERSE[e["event"]],
                "start_frame": f0,
                "end_frame": f1,
                "start_s": f0 / fps,
                "end_s": f1 / fps,
            }
        )
    out["events"] = evs
    out["shots"] = [[T - e, T - s] for s, e in reversed(spec["shots"])]
    return out


def swap_spec(spec: dict) -> dict:
    """The two shots of a ``two2`` video swapped ("A then B" -> "B then A")."""
    assert spec["kind"] == "two2" and len(spec["shots"]) == 2
    T = spec["num_frames"]
    fps = spec["fps"]
    c = spec["shots"][0][1]
    out = _copy_spec(spec)
    for o in out["objects"]:
        o["track"] = {k: v[c:] + v[:c] for k, v in o["track"].items()}
    evs = []
    for e in spec["events"][1:] + spec["events"][:1]:
        off = -c if e["start_frame"] >= c else T - c
        f0, f1 = e["start_frame"] + off, e["end_frame"] + off
        evs.append(
            {**e, "start_frame": f0, "end_frame": f1, "start_s": f0 / fps, "end_s": f1 / fps}
        )
    out["events"] = evs
    out["shots"] = [[0, T - c], [T - c, T]]
    return out


def semantic_key(spec: dict) -> tuple:
    """What captions can state: objects (colour, shape, size), events, their order, structure."""
    objs = spec["objects"]
    parts = tuple(
        (
            objs[e["object"]]["colour"],
            objs[e["object"]]["shape"],
            objs[e["object"]]["size"],
            e["event"],
        )
        for e in spec["events"]
    )
    return (spec["kind"], parts)


def combos_of(spec: dict) -> set[tuple[str, str]]:
    return {(o["colour"], o["shape"]) for o in spec["objects"]}
