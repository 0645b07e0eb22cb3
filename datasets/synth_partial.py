"""The partial-relevance split of the synthetic retrieval world (``vr synth retrieval --partial N``).

CLIP-Hitchhiker and CLIPRerank are built for long videos of which a query describes only a part.
This split holds such videos: 30-120 s at 1 fps, cut into shots of 10-24 s; each shot shows one
object (its own colour and shape) doing one event, and each caption describes one shot's event
("the red disc slides left"), so most of a video is irrelevant to any one of its captions.

Captions are unambiguous over the split even for an order-blind model: no two shots of the split
share (colour, shape, axis of the event), where the axis is horizontal motion, vertical motion,
size change or visibility change (an event and its time reversal share an axis: "moves left" and
"moves right" show the same set of frames). Hence at most ``4 * 8 colours * 6 shapes = 192``
shots per split; the planner draws keys without replacement and says so when the split is larger.

Each video's spec (``world.json``) has ``kind: "partial"``, ``shots`` (frame ranges), ``events``
(one per shot) and ``caption_events`` (the event each caption describes). The split is planned
from its own random stream (``seed``, then ``PARTIAL_STREAM``), so adding it leaves every other
split of a world byte-identical.
"""

from __future__ import annotations

import numpy as np
from video_retrieval.datasets.synth_captions import single_caption
from video_retrieval.datasets.synth_render import BACKGROUNDS, COLOURS, EVENTS, SHAPES, SIZES_PX

PARTIAL_STREAM = 7  # np.random.default_rng([seed, PARTIAL_STREAM])
AXIS = {
    "move_left": "horizontal",
    "move_right": "horizontal",
    "move_up": "vertical",
    "move_down": "vertical",
    "grow": "size",
    "shrink": "size",
    "appear": "visibility",
    "disappear": "visibility",
}
AXES = ("horizontal", "vertical", "size", "visibility")
PARTIAL_DEFAULTS = {
    "fps": 1.0,
    "min_duration": 30,
    "max_duration": 120,
    "min_shot": 10,
    "max_shot": 24,
    "captions_per_event": 2,
    "move_px": 20,
}


def max_partial_shots() -> int:
    return len(COLOURS) * len(SHAPES) * len(AXES)


def shot_lengths(rng: np.random.Generator, total: int, lo: int, hi: int) -> list[int]:
    """Frame counts of consecutive shots filling ``total`` frames, each in [lo, hi] where the
    numbers allow it (a video shorter than ``lo`` is one shot)."""
    out: list[int] = []
    left = total
    while left > hi and left - lo >= lo:
        n = int(rng.integers(lo, min(hi, left - lo) + 1))
        out.append(n)
        left -= n
    out.append(left)
    return out


class _KeyPool:
    """(colour, shape, axis) keys without replacement."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        keys = [(c, s, a) for c in COLOURS for s in SHAPES for a in AXES]
        self.keys = [keys[i] for i in rng.permutation(len(keys))]

    def take(self, avoid_combos: set[tuple[str, str]]) -> tuple[str, str, str] | None:
        for i, k in enumerate(self.keys):
            if (k[0], k[1]) not in avoid_combos:
                return self.keys.pop(i)
        return None


def plan_partial_video(rng: np.random.Generator, pool: _KeyPool, p: dict, size: int) -> dict:
    """One long multi-shot video spec (tracks included), keys taken from ``pool``."""
    from video_retrieval.datasets.synth_plan import VideoPlanner

    fps = float(p["fps"])
    dur = int(rng.integers(int(p["min_duration"]), int(p["max_duration"]) + 1))
    total = int(round(dur * fps))
    lo = max(4, int(round(int(p["min_shot"]) * fps)))
    hi = max(lo, int(round(int(p["max_shot"]) * fps)))
    lengths = shot_lengths(rng, total, lo, hi)
    planner = VideoPlanner(
        rng, {"num_frames": total, "fps": fps, "size": size, "move_px": p["move_px"]}
    )
    bg = {
        "kind": BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))],
        "level": int(rng.integers(25, 61)),
        "seed": int(rng.integers(2**31)),
        "orient": ("h", "v", "d")[int(rng.integers(3))],
    }
    objects, events, shots, used = [], [], [], set()
    s = 0
    for n in lengths:
        e = s + n
        key = pool.take(used)
        if key is None:
            raise ValueError(
                f"the partial-relevance split needs more than {max_partial_shots()} distinct "
                "(colour, shape, axis) shots: ask for fewer --partial videos"
            )
        colour, shape, axis = key
        used.add((colour, shape))
        ev_choices = [ev for ev in EVENTS if AXIS[ev] == axis]
        for _ in range(50):
            ev = ev_choices[int(rng.integers(len(ev_choices)))]
            size_name = ("small", "big")[int(rng.integers(2))]
            obj = {
                "colour": colour,
                "shape": shape,
                "size": size_name,
                "size_px": SIZES_PX[size_name],
            }
            # the event starts 1-3 s into the shot and lasts 3-8 s, ending >= 1 s before the cut
            f0 = s + max(1, int(round(float(rng.uniform(1, 3)) * fps)))
            span = max(2, int(round(float(rng.uniform(3, 8)) * fps)))
            f1 = min(f0 + span, e - max(1, int(round(fps))))
            if f1 - f0 < 2:
                continue
            track = planner._object_track(obj, [(ev, f0, f1)], shot=(s, e))
            if track is not None:
                break
        else:
            raise RuntimeError("could not place a shot's object; check the partial parameters")
        obj["track"] = track
        events.append((len(objects), ev, f0, f1))
        objects.append(obj)
        shots.append([s, e])
        s = e
    spec = planner._spec("partial", bg, objects, events, shots)
    return spec


def partial_captions(rng: np.random.Generator, spec: dict, per_event: int) -> tuple[list, list]:
    """(captions, the event index each describes): ``per_event`` distinct ones per shot."""
    caps, which = [], []
    bg_kind = spec["background"]["kind"]
    for k, ev in enumerate(spec["events"]):
        seen: set[str] = set()
        for _ in range(per_event * 10):
            if len(seen) >= per_event:
                break
            c = single_caption(rng, spec["objects"][ev["object"]], ev["event"], bg_kind)
            if c not in seen:
                seen.add(c)
                caps.append(c)
                which.append(k)
    return caps, which


def plan_partial_split(seed: int, n: int, size: int, **params) -> list[dict]:
    """``n`` partial-relevance video specs with their captions (``captions``, ``caption_events``)."""
    unknown = set(params) - set(PARTIAL_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown partial parameters: {sorted(unknown)}")
    p = {**PARTIAL_DEFAULTS, **{k: v for k, v in params.items() if v is not None}}
    if float(p["fps"]) <= 0:
        raise ValueError(f"partial fps must be > 0, got {p['fps']}")
    if not 12 <= int(p["min_duration"]) <= int(p["max_duration"]):
        raise ValueError("the partial split needs 12 <= min_duration <= max_duration")
    if not 4 <= int(p["min_shot"]) <= int(p["max_shot"]):
        raise ValueError("the partial split needs 4 <= min_shot <= max_shot")
    if int(p["min_duration"]) * float(p["fps"]) < 12:
        raise ValueError("partial videos need at least 12 frames (min_duration * fps)")
    if int(p["captions_per_event"]) < 1:
        raise ValueError("captions_per_event must be >= 1")
    rng = np.random.default_rng([int(seed), PARTIAL_STREAM])
    pool = _KeyPool(rng)
    specs = []
    for _ in range(int(n)):
        spec = plan_partial_video(rng, pool, p, size)
        caps, which = partial_captions(rng, spec, int(p["captions_per_event"]))
        spec["captions"] = caps
        spec["caption_events"] = which
        specs.append(spec)
    return specs
