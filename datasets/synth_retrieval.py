"""Synthetic retrieval world: short videos of coloured shapes with MSR-VTT-style annotations.

``generate_retrieval(out, seed)`` writes (see docs/interfaces.md, "Synthetic world")::

    OUT/MSRVTT_data.json      {"videos": [{video_id, category, url, start time, end time, split, id}],
                               "sentences": [{caption, video_id, sen_id}]}
    OUT/train.csv             video_id
    OUT/test.csv              key,vid_key,video_id,sentence   (every caption of every test video)
    OUT/test_compositional.csv  same columns; videos with held-out colour-shape combinations
    OUT/temporal_pairs.json   [{"a", "b", "kind": "direction"|"order"}]  (both videos in test.csv)
    OUT/train_pairs.json      the same for the train split (hard negatives that training can
                              put in one batch: RetrievalDataModule(pair_batches=True))
    OUT/test_partial.csv      same columns, only with ``num_partial`` > 0: long multi-shot videos
                              (``videos/partial<k>.mp4``) whose captions each describe one shot
                              (the partial-relevance split, ``synth_partial``)
    OUT/captions.jsonl        {"video": "videos/<id>.mp4", "caption", "split"}
    OUT/videos/<id>.mp4       H.264, 64x64, 32 frames at 8 fps by default
    OUT/world.json            seed, parameters and per-video ground truth (objects with per-frame
                              tracks, events with frame ranges and seconds, shots, captions)

Video kinds: ``single`` (one object, one event), ``same2`` (one object, two events in sequence) and
``two2`` (two shots: object X does A in the first, object Y does B in the second; each object is
visible only in its own shot, so swapping the shots gives a consistent "B then A" video).
Temporal-only pairs are made by transforming tracks: ``direction`` = all frames reversed (moves
left <-> moves right, grows <-> shrinks, appears <-> disappears, and event order reversed);
``order`` = the two shots swapped. The rendered frames of a pair are the same multiset.
Event frame ranges ``[start_frame, end_frame)`` are the frames that differ from their predecessor.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from video_retrieval.datasets.synth_captions import make_captions
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
    render_frames,
    track_to_json,
)

from video_retrieval.atomic import atomic_write_text

WORLD_VERSION = 1
DEFAULTS = {
    "num_train": 1200,
    "num_test": 200,
    "num_compositional": 100,
    "num_frames": 32,
    "fps": 8,
    "size": 64,
    "min_captions": 5,
    "max_captions": 10,
    "num_held_out": 5,
    "test_direction_pairs": None,  # default num_test // 8
    "test_order_pairs": None,  # default num_test // 8
    "train_pair_fraction": 0.25,  # of train videos in direction pairs, same again in order pairs
    "move_px": 20,
}
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


class _Planner:
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


def _combos_of(spec: dict) -> set[tuple[str, str]]:
    return {(o["colour"], o["shape"]) for o in spec["objects"]}


def _encode(path: Path, spec: dict, codec: str) -> None:
    from video_retrieval.media.write import write_video

    frames = render_frames(spec)
    write_video(
        path,
        frames,
        fps=spec["fps"],
        codec=codec,
        extra_args=["-threads", "1", "-map_metadata", "-1", "-fflags", "+bitexact"],
        gop=max(1, int(spec["fps"]) * 2),
    )


def _csv_text(header: list[str], rows: list[list]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def plan_retrieval(seed: int, num_partial: int = 0, partial: dict | None = None, **params) -> dict:
    """All video specs and captions of a retrieval world (no rendering). Returns the world dict.

    ``num_partial`` adds that many long multi-shot videos as the ``test_partial`` split
    (``synth_partial``; ``partial``: its parameters, e.g. ``{"fps": 1.0}``); 0 (the default)
    leaves the world exactly as without the option."""
    if int(num_partial) < 0:
        raise ValueError(f"num_partial must be >= 0, got {num_partial}")
    p = {**DEFAULTS, **{k: v for k, v in params.items() if v is not None}}
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown parameters: {sorted(unknown)}")
    for k in ("num_train", "num_test", "num_compositional", "num_held_out"):
        if int(p[k]) < 0:
            raise ValueError(f"{k} must be >= 0, got {p[k]}")
    if int(p["num_frames"]) < 12:
        raise ValueError(f"num_frames must be >= 12, got {p['num_frames']}")
    if float(p["fps"]) <= 0:
        raise ValueError(f"fps must be > 0, got {p['fps']}")
    if not 1 <= int(p["min_captions"]) <= int(p["max_captions"]):
        raise ValueError("need 1 <= min_captions <= max_captions")
    if int(p["num_compositional"]) > 0 and int(p["num_held_out"]) < 1:
        raise ValueError("a compositional split needs num_held_out >= 1")
    n_test = int(p["num_test"])
    if p["test_direction_pairs"] is None:
        p["test_direction_pairs"] = n_test // 8
    if p["test_order_pairs"] is None:
        p["test_order_pairs"] = n_test // 8
    if 2 * (p["test_direction_pairs"] + p["test_order_pairs"]) > n_test:
        raise ValueError("temporal pairs need more test videos than num_test")
    rng = np.random.default_rng(seed)
    planner = _Planner(rng, p)
    held = held_out_combos(rng, int(p["num_held_out"]))
    all_combos = [(c, s) for c in COLOURS for s in SHAPES]
    normal = [cs for cs in all_combos if cs not in set(held)]
    used: set[tuple] = set()
    kinds = list(KIND_WEIGHTS)
    kprob = np.array([KIND_WEIGHTS[k] for k in kinds])

    def fresh(kind, combos, need_held=False):
        for _ in range(400):
            spec = planner.plan(kind, combos)
            if spec is None:
                continue
            if need_held and not (_combos_of(spec) & set(held)):
                continue
            key = semantic_key(spec)
            if key in used:
                continue
            used.add(key)
            return spec
        raise RuntimeError(f"could not plan a new {kind} video; world too large for its vocabulary")

    def make_pair(kind_pair, combos):
        for _ in range(400):
            if kind_pair == "direction":
                base_kind = kinds[int(rng.choice(len(kinds), p=[0.5, 0.25, 0.25]))]
                a = planner.plan(base_kind, combos)
                b = reverse_spec(a) if a is not None else None
            else:
                a = planner.plan("two2", combos)
                b = swap_spec(a) if a is not None else None
            if a is None:
                continue
            ka, kb = semantic_key(a), semantic_key(b)
            if ka == kb or ka in used or kb in used:
                continue
            used.update((ka, kb))
            return a, b
        raise RuntimeError(f"could not plan a new {kind_pair} pair")

    def split_specs(n, n_dir, n_ord, combos, need_held=False):
        """n specs: n_dir direction pairs, n_ord order pairs, the rest independent; shuffled
        so pair members are not adjacent. Returns (specs, pairs as index tuples)."""
        items: list[list[dict]] = []
        pair_kinds: list[str | None] = []
        for _ in range(n_dir):
            items.append(list(make_pair("direction", combos)))
            pair_kinds.append("direction")
        for _ in range(n_ord):
            items.append(list(make_pair("order", combos)))
            pair_kinds.append("order")
        for _ in range(n - 2 * (n_dir + n_ord)):
            kind = kinds[int(rng.choice(len(kinds), p=kprob))]
            items.append([fresh(kind, combos, need_held)])
            pair_kinds.append(None)
        flat = [(i, s) for i, group in enumerate(items) for s in group]
        order = rng.permutation(len(flat))
        specs = [flat[j][1] for j in order]
        where: dict[int, list[int]] = {}
        for pos, j in enumerate(order):
            where.setdefault(flat[j][0], []).append(pos)
        pairs = [
            (min(where[g]), max(where[g]), pk) for g, pk in enumerate(pair_kinds) if pk is not None
        ]
        return specs, sorted(pairs)

    n_train = int(p["num_train"])
    n_tp = int(round(n_train * float(p["train_pair_fraction"]) / 2))
    train, train_pairs = split_specs(n_train, n_tp, n_tp, normal)
    test, test_pairs = split_specs(
        n_test, int(p["test_direction_pairs"]), int(p["test_order_pairs"]), normal
    )
    comp, _ = split_specs(int(p["num_compositional"]), 0, 0, all_combos, need_held=True)

    videos: dict[str, dict] = {}
    pairs_out = []
    train_pairs_out = []
    idx = 0
    for split, specs, pairs in (
        ("train", train, train_pairs),
        ("test", test, test_pairs),
        ("test_compositional", comp, []),
    ):
        ids = []
        for spec in specs:
            vid = f"video{idx}"
            idx += 1
            n_caps = int(rng.integers(int(p["min_captions"]), int(p["max_captions"]) + 1))
            spec["video_id"] = vid
            spec["split"] = split
            spec["captions"] = make_captions(rng, spec, n_caps)
            videos[vid] = spec
            ids.append(vid)
        for i, j, kind in pairs:
            videos[ids[i]]["pair"] = {"with": ids[j], "kind": kind}
            videos[ids[j]]["pair"] = {"with": ids[i], "kind": kind}
            out = {"test": pairs_out, "train": train_pairs_out}.get(split)
            if out is not None:
                out.append({"a": ids[i], "b": ids[j], "kind": kind})
    world_partial = None
    if int(num_partial) > 0:
        from video_retrieval.datasets.synth_partial import PARTIAL_DEFAULTS, plan_partial_split

        pp = {k: v for k, v in (partial or {}).items() if v is not None}
        specs = plan_partial_split(seed, int(num_partial), int(p["size"]), **pp)
        for k, spec in enumerate(specs):
            vid = f"partial{k}"
            spec["video_id"] = vid
            spec["split"] = "test_partial"
            videos[vid] = spec
        world_partial = {"num_videos": int(num_partial), **PARTIAL_DEFAULTS, **pp}
    out = {
        "kind": "retrieval",
        "version": WORLD_VERSION,
        "seed": int(seed),
        "params": p,
        "colours": {k: list(v) for k, v in COLOURS.items()},
        "shapes": list(SHAPES),
        "sizes_px": dict(SIZES_PX),
        "grow_factor": GROW_FACTOR,
        "held_out_combos": [list(c) for c in held],
        "temporal_pairs": pairs_out,
        "train_pairs": train_pairs_out,
        "videos": videos,
    }
    if world_partial is not None:
        out["partial"] = world_partial
    return out


def generate_retrieval(
    out: str | os.PathLike,
    seed: int = 0,
    workers: int = 2,
    codec: str = "h264",
    num_partial: int = 0,
    partial: dict | None = None,
    **params,
) -> dict:
    """Generate the retrieval world under ``out``; returns a JSON-able summary. With
    ``num_partial`` > 0 it also writes the partial-relevance split (``test_partial.csv``, its
    videos ``videos/partial<k>.mp4`` and ``captions.jsonl`` lines with split ``test_partial``)."""
    t0 = time.perf_counter()
    out = Path(out)
    world = plan_retrieval(seed, num_partial=num_partial, partial=partial, **params)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    videos = world["videos"]

    jobs = [(out / "videos" / f"{vid}.mp4", spec) for vid, spec in videos.items()]
    if workers and workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as ex:
            list(ex.map(lambda a: _encode(a[0], a[1], codec), jobs))
    else:
        for path, spec in jobs:
            _encode(path, spec, codec)

    msr_videos, sentences, cap_lines = [], [], []
    split_rows: dict[str, list[list]] = {"test": [], "test_compositional": [], "test_partial": []}
    sen_id = 0
    for i, (vid, spec) in enumerate(videos.items()):
        msr_videos.append(
            {
                "category": 0,
                "url": f"synthetic://{vid}",
                "video_id": vid,
                "start time": 0.0,
                "end time": spec["duration"],
                "split": "train" if spec["split"] == "train" else "test",
                "id": i,
                "synth_split": spec["split"],
            }
        )
        for cap in spec["captions"]:
            sentences.append({"caption": cap, "video_id": vid, "sen_id": sen_id})
            cap_lines.append(
                json.dumps({"video": f"videos/{vid}.mp4", "caption": cap, "split": spec["split"]})
            )
            if spec["split"] in split_rows:
                rows = split_rows[spec["split"]]
                key = vid[len("video") :] if vid.startswith("video") else f"_{vid}"
                rows.append([f"ret{len(rows)}", f"msr{key}", vid, cap])
            sen_id += 1

    atomic_write_text(
        out / "MSRVTT_data.json", json.dumps({"videos": msr_videos, "sentences": sentences}) + "\n"
    )
    train_ids = [[vid] for vid, s in videos.items() if s["split"] == "train"]
    atomic_write_text(out / "train.csv", _csv_text(["video_id"], train_ids))
    header = ["key", "vid_key", "video_id", "sentence"]
    atomic_write_text(out / "test.csv", _csv_text(header, split_rows["test"]))
    atomic_write_text(out / "test_compositional.csv", _csv_text(header, split_rows["test_compositional"]))
    if "partial" in world:
        atomic_write_text(out / "test_partial.csv", _csv_text(header, split_rows["test_partial"]))
    atomic_write_text(out / "temporal_pairs.json", json.dumps(world["temporal_pairs"], indent=1) + "\n")
    atomic_write_text(out / "train_pairs.json", json.dumps(world["train_pairs"], indent=1) + "\n")
    atomic_write_text(out / "captions.jsonl", "\n".join(cap_lines) + "\n")
    atomic_write_text(out / "world.json", json.dumps(world) + "\n")

    splits = ("train", "test", "test_compositional") + (
        ("test_partial",) if "partial" in world else ()
    )
    counts = {s: 0 for s in splits}
    ncaps = dict(counts)
    for spec in videos.values():
        counts[spec["split"]] += 1
        ncaps[spec["split"]] += len(spec["captions"])
    pk = [p["kind"] for p in world["temporal_pairs"]]
    extra = {}
    if "partial" in world:
        part = [s for s in videos.values() if s["split"] == "test_partial"]
        extra["partial"] = {
            "videos": len(part),
            "events": sum(len(s["events"]) for s in part),
            "duration_s": {
                "min": min(s["duration"] for s in part),
                "max": max(s["duration"] for s in part),
                "mean": round(float(np.mean([s["duration"] for s in part])), 1),
            },
            "fps": world["partial"]["fps"],
        }
    return {
        "kind": "retrieval",
        "out": str(out),
        "seed": int(seed),
        "videos": counts,
        "captions": ncaps,
        "temporal_pairs": {"direction": pk.count("direction"), "order": pk.count("order")},
        "held_out_combos": world["held_out_combos"],
        "num_frames": world["params"]["num_frames"],
        "fps": world["params"]["fps"],
        **extra,
        "seconds": round(time.perf_counter() - t0, 2),
    }
