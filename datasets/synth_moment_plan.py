"""Planning a synthetic moment video without rendering it: ``MomentPlanner`` places objects that
do not overlap and lays out a sequence of events (move, grow, shrink, appear, disappear, spin)
with their exact ``[start, end]`` seconds.
"""

from __future__ import annotations

import numpy as np
from video_retrieval.datasets.synth_render import (
    BACKGROUNDS,
    COLOURS,
    EVENTS,
    GROW_FACTOR,
    MOVE_DELTA,
    SHAPES,
    SIZES_PX,
    apply_event,
    new_track,
    track_to_json,
)

CLIP_LEN = 2  # seconds: the clip grid of moment windows (Moment-DETR's clip length)


def _choice(rng, seq):
    return seq[int(rng.integers(len(seq)))]


class _State:
    def __init__(self, obj: dict, x: float, y: float, alpha: float):
        self.obj = obj
        self.x, self.y, self.scale, self.alpha = x, y, 1.0, alpha

    def radius(self, scale=None) -> float:
        return self.obj["size_px"] / 2.0 * (self.scale if scale is None else scale) * 1.15 + 1.0


def _box(x, y, r):
    return (x - r, y - r, x + r, y + r)


def _overlap(a, b, margin=1.0) -> bool:
    return not (
        a[2] + margin <= b[0]
        or b[2] + margin <= a[0]
        or a[3] + margin <= b[1]
        or b[3] + margin <= a[1]
    )


class MomentPlanner:
    def __init__(self, rng: np.random.Generator, p: dict):
        self.rng = rng
        self.p = p
        self.size = int(p["size"])
        self.fps = float(p["fps"])
        if abs(self.fps * CLIP_LEN - round(self.fps * CLIP_LEN)) > 1e-9 or self.fps <= 0:
            raise ValueError("fps must be a multiple of 0.5")

    def _inside(self, box) -> bool:
        return box[0] >= 0 and box[1] >= 0 and box[2] <= self.size and box[3] <= self.size

    def _free(self, states, k, box) -> bool:
        for j, st in enumerate(states):
            if j != k and _overlap(box, _box(st.x, st.y, st.radius())):
                return False
        return self._inside(box)

    def _feasible(self, states, k, ev) -> bool:
        st = states[k]
        visible = st.alpha > 0
        nvis = sum(s.alpha > 0 for s in states)
        if ev == "appear":
            return not visible
        if not visible:
            return False
        if ev == "disappear":
            return nvis >= 2
        if ev == "grow":
            return st.scale == 1.0 and self._free(
                states, k, _box(st.x, st.y, st.radius(GROW_FACTOR))
            )
        if ev == "shrink":
            return st.scale != 1.0
        if ev in MOVE_DELTA:
            dx, dy = MOVE_DELTA[ev]
            d = float(self.p["move_px"])
            r = st.radius()
            box = (
                min(st.x, st.x + dx * d) - r,
                min(st.y, st.y + dy * d) - r,
                max(st.x, st.x + dx * d) + r,
                max(st.y, st.y + dy * d) + r,
            )
            return self._free(states, k, box)
        if ev == "spin":
            return st.obj["shape"] != "circle"
        raise ValueError(ev)

    def _commit(self, states, k, ev):
        st = states[k]
        if ev in MOVE_DELTA:
            dx, dy = MOVE_DELTA[ev]
            st.x += dx * float(self.p["move_px"])
            st.y += dy * float(self.p["move_px"])
        elif ev == "grow":
            st.scale *= GROW_FACTOR
        elif ev == "shrink":
            st.scale /= GROW_FACTOR
        elif ev == "appear":
            st.alpha = 1.0
        elif ev == "disappear":
            st.alpha = 0.0

    def plan(self) -> dict | None:
        rng, p = self.rng, self.p
        lo = int(p["min_duration"]) // CLIP_LEN
        hi = int(p["max_duration"]) // CLIP_LEN
        n_clips = int(rng.integers(lo, hi + 1))
        duration = n_clips * CLIP_LEN
        n_frames = int(round(duration * self.fps))
        n_obj = int(p["objects_per_video"])
        cols = rng.permutation(len(COLOURS))[:n_obj]
        shapes = rng.permutation(len(SHAPES))[:n_obj]
        names = list(COLOURS)
        states: list[_State] = []
        for i in range(n_obj):
            size = _choice(rng, ("small", "big"))
            obj = {
                "colour": names[cols[i]],
                "shape": SHAPES[shapes[i]],
                "size": size,
                "size_px": SIZES_PX[size],
            }
            for _ in range(200):
                st = _State(obj, 0.0, 0.0, 1.0)
                r = st.radius(GROW_FACTOR)
                st.x = round(float(rng.uniform(r, self.size - r)), 1)
                st.y = round(float(rng.uniform(r, self.size - r)), 1)
                box = _box(st.x, st.y, st.radius(GROW_FACTOR))
                if all(not _overlap(box, _box(o.x, o.y, o.radius(GROW_FACTOR))) for o in states):
                    break
            else:
                return None
            if i > 0 and rng.random() < 0.2:
                st.alpha = 0.0
            states.append(st)
        init = [(s.x, s.y, s.alpha) for s in states]
        # Timeline on the 2 s grid.
        events: list[tuple[int, str, int, int]] = []  # (object, event, start_clip, end_clip)
        distractors: list[tuple[int, str, int, int]] = []
        cursor = int(rng.integers(1, 4))
        while True:
            is_spin = rng.random() < float(p["spin_prob"])
            dur = int(rng.integers(1, 4)) if is_spin else int(rng.integers(1, 5))
            if cursor + dur > n_clips:
                break
            cands = []
            if is_spin:
                cands = [(k, "spin") for k in range(n_obj) if self._feasible(states, k, "spin")]
            else:
                counts: dict[tuple[int, str], int] = {}
                for k, e, *_ in events:
                    counts[(k, e)] = counts.get((k, e), 0) + 1
                done = sorted(counts)
                # at most max_repeats windows per (object, event): one query, 1-2 windows
                if done and rng.random() < float(p["repeat_prob"]):
                    cands = [
                        (k, e)
                        for k, e in done
                        if counts[(k, e)] < int(p["max_repeats"]) and self._feasible(states, k, e)
                    ]
                if not cands:
                    cands = [
                        (k, e)
                        for k in range(n_obj)
                        for e in EVENTS
                        if counts.get((k, e), 0) < int(p["max_repeats"])
                        and self._feasible(states, k, e)
                    ]
            if cands:
                k, ev = cands[int(rng.integers(len(cands)))]
                self._commit(states, k, ev)
                (distractors if ev == "spin" else events).append((k, ev, cursor, cursor + dur))
                cursor += dur
            cursor += int(rng.integers(0, 3))
        if len(events) < 2:
            return None
        # Tracks.
        objects = []
        for k, st in enumerate(states):
            x, y, a = init[k]
            first_scale = next(
                (e for j, e, *_ in events if j == k and e in ("grow", "shrink")), None
            )
            tr = new_track(
                n_frames, x, y, scale=GROW_FACTOR if first_scale == "shrink" else 1.0, alpha=a
            )
            for j, ev, c0, c1 in sorted(events + distractors, key=lambda e: e[2]):
                if j == k:
                    f0 = int(round(c0 * CLIP_LEN * self.fps))
                    f1 = int(round(c1 * CLIP_LEN * self.fps))
                    apply_event(tr, ev, f0, f1, float(p["move_px"]))
            objects.append({**st.obj, "track": track_to_json(tr)})
        # Note: "shrink" is only feasible after "grow" (all objects start at scale 1), so
        # first_scale is never "shrink" here; kept for symmetry with the retrieval world.

        def ev_dict(j, ev, c0, c1):
            s, e = c0 * CLIP_LEN, c1 * CLIP_LEN
            return {
                "object": j,
                "event": ev,
                "start_s": s,
                "end_s": e,
                "start_frame": int(round(s * self.fps)),
                "end_frame": int(round(e * self.fps)),
            }

        return {
            "size": self.size,
            "fps": self.fps,
            "num_frames": n_frames,
            "duration": duration,
            "background": {
                "kind": _choice(rng, BACKGROUNDS),
                "level": int(rng.integers(25, 61)),
                "seed": int(rng.integers(2**31)),
                "orient": _choice(rng, ("h", "v", "d")),
            },
            "objects": objects,
            "events": [ev_dict(*e) for e in events],
            "distractors": [ev_dict(*e) for e in distractors],
        }
