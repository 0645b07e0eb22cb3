"""Synthetic moment-localization world: long videos with QVHighlights-style queries.

``generate_moments(out, seed)`` writes::

    OUT/train.jsonl, OUT/val.jsonl, OUT/test.jsonl   one QVHighlights annotation per line:
        {"qid": int, "query": str, "duration": int, "vid": str, "relevant_clip_ids": [int],
         "saliency_scores": [[int, int, int]], "relevant_windows": [[start, end], ...]}
    OUT/videos/<vid>.mp4     64x64 H.264 at 2 fps by default, 30-150 s
    OUT/world.json           seed, parameters and per-video ground truth (object tracks, events)
    OUT/clips.jsonl          captions.jsonl of every relevant 2 s clip (+1 s context each side)
                             with its query, a ``split`` field per line (``moment_clip_captions``)
    OUT/clip_pairs.json      hard-negative pairs of those clips for the clip encoder
                             (``moment_clip_pairs``): the same object doing the reverse event in the
                             same video (up/down, left/right, grow/shrink, appear/disappear), else
                             another of its events; ``pair_batches`` puts both into one batch

Each video holds three objects (distinct colours and shapes). A timeline on the 2 s clip grid has
events (moves left/right/up/down, grows, shrinks, appears, disappears; 2-8 s each, starting and
ending on even seconds), idle gaps, and distractor motion (an object spins: no query describes
it). Events never overlap in time and moving objects never overlap each other. A query describes
one (object, event); its windows are *all* the times that object does that event, so some
queries have two windows. The object's pixels change only inside those windows (or during its
own other events/spins). Clip ids are ``floor(t / 2)``; saliency is 4 in an event's core and
lower at its first/last clip.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
from video_retrieval.datasets.moments import moment_clip_captions
from video_retrieval.datasets.synth_captions import query_text
from video_retrieval.datasets.synth_moment_plan import CLIP_LEN, MomentPlanner
from video_retrieval.datasets.synth_render import (
    COLOURS,
    encode_all,
    render_frames,
)

from video_retrieval.media.atomic import atomic_write_text

WORLD_VERSION = 1


CLIP_CONTEXT = 1.0  # seconds each side of a clip in clips.jsonl (moment clip-encoder training)


DEFAULTS = {
    "num_videos": 91,
    "val_fraction": 1 / 7,
    "test_fraction": 1 / 7,
    "fps": 2.0,
    "size": 64,
    "min_duration": 30,
    "max_duration": 150,
    "objects_per_video": 3,
    "queries_per_video": 5,
    "move_px": 12,
    "repeat_prob": 0.35,
    "max_repeats": 2,
    "spin_prob": 0.2,
}


def saliency_for_window(rng: np.random.Generator, n_clips: int) -> list[list[int]]:
    """Three annotators' 0-4 scores per clip: 4 (or 3) in the core, 2-3 at the edges."""
    out = []
    for i in range(n_clips):
        edge = n_clips >= 3 and i in (0, n_clips - 1)
        if edge:
            out.append([int(v) for v in rng.integers(2, 4, size=3)])
        else:
            out.append([int(v) for v in np.where(rng.random(3) < 0.8, 4, 3)])
    return out


def make_queries(rng: np.random.Generator, vid: str, spec: dict, n: int, qid0: int) -> list[dict]:
    groups: dict[tuple[int, str], list[dict]] = {}
    for e in spec["events"]:
        groups.setdefault((e["object"], e["event"]), []).append(e)
    keys = sorted(groups)
    multi = [k for k in keys if len(groups[k]) > 1]
    single = [k for k in keys if len(groups[k]) == 1]
    rng.shuffle(multi)
    rng.shuffle(single)
    # Prefer multi-window groups for one or two queries, then fill with single-window ones.
    chosen = multi[:2] + single
    chosen = chosen[:n] if len(chosen) >= n else (chosen + multi[2:])[:n]
    rows = []
    for i, key in enumerate(chosen):
        obj = spec["objects"][key[0]]
        wins = sorted((e["start_s"], e["end_s"]) for e in groups[key])
        clip_ids, sal = [], []
        for s, e in wins:
            c0, c1 = s // CLIP_LEN, e // CLIP_LEN
            clip_ids.extend(range(c0, c1))
            sal.extend(saliency_for_window(rng, c1 - c0))
        rows.append(
            {
                "qid": qid0 + i,
                "query": query_text(rng, obj, key[1]),
                "duration": int(spec["duration"]),
                "vid": vid,
                "relevant_clip_ids": [int(c) for c in clip_ids],
                "saliency_scores": sal,
                "relevant_windows": [[int(s), int(e)] for s, e in wins],
            }
        )
    return rows


def plan_moments(seed: int, **params) -> dict:
    p = {**DEFAULTS, **{k: v for k, v in params.items() if v is not None}}
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown parameters: {sorted(unknown)}")
    if int(p["min_duration"]) < 8 or int(p["max_duration"]) < int(p["min_duration"]):
        raise ValueError("need 8 <= min_duration <= max_duration")
    if not 0 < float(p["fps"]) <= 30:
        raise ValueError(f"fps must be in (0, 30], got {p['fps']}")
    if not 1 <= int(p["objects_per_video"]) <= 4:
        raise ValueError("objects_per_video must be 1..4")
    if int(p["num_videos"]) < 1:
        raise ValueError("num_videos must be >= 1")
    rng = np.random.default_rng(seed)
    planner = MomentPlanner(rng, p)
    n = int(p["num_videos"])
    n_val = int(round(n * float(p["val_fraction"])))
    n_test = int(round(n * float(p["test_fraction"])))
    if n >= 3:  # a split asked for gets at least one video; one not asked for (0) gets none
        n_val = max(1, n_val) if float(p["val_fraction"]) > 0 else 0
        n_test = max(1, n_test) if float(p["test_fraction"]) > 0 else 0
    n_test = min(n_test, n)
    n_val = min(n_val, n - n_test)  # never more videos than num_videos
    n_train = max(0, n - n_val - n_test)
    splits = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    videos, queries = {}, {"train": [], "val": [], "test": []}
    qid = 0
    for i, split in enumerate(splits):
        for _ in range(200):
            spec = planner.plan()
            if spec is not None:
                break
        else:
            raise RuntimeError("could not plan a moment video; check the parameters")
        vid = f"synmom{i:04d}_{split}"
        rows = make_queries(rng, vid, spec, int(p["queries_per_video"]), qid)
        qid += len(rows)
        spec["video_id"] = vid
        spec["split"] = split
        spec["qids"] = [r["qid"] for r in rows]
        videos[vid] = spec
        queries[split].extend(rows)
    return {
        "kind": "moments",
        "version": WORLD_VERSION,
        "seed": int(seed),
        "params": p,
        "clip_len": CLIP_LEN,
        "colours": {k: list(v) for k, v in COLOURS.items()},
        "videos": videos,
        "queries": queries,
    }


def _encode(path: Path, spec: dict, codec: str) -> None:
    from video_retrieval.media.write import write_video

    write_video(
        path,
        render_frames(spec),
        fps=spec["fps"],
        codec=codec,
        extra_args=["-threads", "1", "-map_metadata", "-1", "-fflags", "+bitexact"],
        gop=max(1, int(round(spec["fps"] * 4))),
    )


#: each event and its reverse (the same frames played backwards show the other one)
REVERSE_EVENT = {
    "move_up": "move_down",
    "move_down": "move_up",
    "move_left": "move_right",
    "move_right": "move_left",
    "grow": "shrink",
    "shrink": "grow",
    "appear": "disappear",
    "disappear": "appear",
}


def query_event(spec: dict, row: dict) -> tuple[int, str]:
    """(object index, event) that a query row of the video ``spec`` describes (its windows are
    exactly that object's events of that kind)."""
    wins = {(int(s), int(e)) for s, e in row["relevant_windows"]}
    for e in spec["events"]:
        if (int(e["start_s"]), int(e["end_s"])) in wins:
            return int(e["object"]), str(e["event"])
    raise ValueError(f"query {row['qid']}: no event of {row['vid']} has its windows")


def moment_clip_pairs(world: dict, seed: int = 0) -> list[dict]:
    """Hard-negative pairs of ``clips.jsonl`` items (``{"a", "b", "kind", "split"}``, ids as in
    ``moment_clip_captions``) for training the clip encoder with ``pair_batches``.

    In-batch negatives of random clips differ in object and background, so a contrastive clip
    encoder can match "the purple star goes up" by the star alone and never needs the motion
    (measured: zero-shot R1@0.5 5-14% on move queries against 48-57% on the others). Each clip
    is paired with a clip of the *same object in the same video* doing the reverse event
    (``kind`` ``reverse``), or, when it never does, another of its queried events
    (``same_object``): both members share objects, background and colours and differ only in
    what happens. Greedy one-to-one matching in a seeded random order; clips without a partner
    stay single."""
    rng = np.random.default_rng(seed)
    pairs: list[dict] = []
    for split, rows in world["queries"].items():
        by_vid: dict[str, list[dict]] = {}
        for r in rows:
            by_vid.setdefault(r["vid"], []).append(r)
        for vid in sorted(by_vid):
            vrows = by_vid[vid]
            spec = world["videos"][vid]
            key = {r["qid"]: query_event(spec, r) for r in vrows}
            clips = {
                r["qid"]: [c["video_id"] for c in moment_clip_captions([r], CLIP_LEN, CLIP_CONTEXT)]
                for r in vrows
            }
            free = {q: list(ids) for q, ids in clips.items()}
            for i in rng.permutation(len(vrows)):
                r = vrows[int(i)]
                obj, ev = key[r["qid"]]
                rev = [q["qid"] for q in vrows if key[q["qid"]] == (obj, REVERSE_EVENT.get(ev))]
                other = [q["qid"] for q in vrows if key[q["qid"]][0] == obj and q["qid"] != r["qid"]
                         and q["qid"] not in rev]  # fmt: skip
                for kind, partners in (("reverse", rev), ("same_object", other)):
                    for c in list(free[r["qid"]]):
                        pool = [(q, b) for q in partners for b in free[q]]
                        if not pool:
                            break
                        q, b = pool[int(rng.integers(len(pool)))]
                        free[r["qid"]].remove(c)
                        free[q].remove(b)
                        pairs.append({"a": c, "b": b, "kind": kind, "split": split})
    return pairs


def generate_moments(
    out: str | os.PathLike, seed: int = 0, workers: int = 2, codec: str = "h264",
    progress: bool = False, **params,
) -> dict:  # fmt: skip
    """Generate the moments world under ``out``; returns a JSON-able summary."""
    t0 = time.perf_counter()
    out = Path(out)
    world = plan_moments(seed, **params)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    jobs = [(out / "videos" / f"{vid}.mp4", spec) for vid, spec in world["videos"].items()]
    encode_all(jobs, lambda path, spec: _encode(path, spec, codec), workers, progress)
    clips = []
    for split, rows in world["queries"].items():
        atomic_write_text(out / f"{split}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        clips += moment_clip_captions(rows, CLIP_LEN, CLIP_CONTEXT, split=split)
    atomic_write_text(out / "clips.jsonl", "".join(json.dumps(c) + "\n" for c in clips))
    atomic_write_text(out / "clip_pairs.json", json.dumps(moment_clip_pairs(world, seed)) + "\n")
    atomic_write_text(out / "world.json", json.dumps(world) + "\n")
    counts = {s: 0 for s in ("train", "val", "test")}
    for spec in world["videos"].values():
        counts[spec["split"]] += 1
    nq = {s: len(r) for s, r in world["queries"].items()}
    nmulti = sum(len(r["relevant_windows"]) > 1 for rows in world["queries"].values() for r in rows)
    durs = [s["duration"] for s in world["videos"].values()]
    return {
        "kind": "moments",
        "out": str(out),
        "seed": int(seed),
        "videos": counts,
        "queries": nq,
        "multi_window_queries": int(nmulti),
        "duration_s": {"min": min(durs), "max": max(durs), "mean": round(float(np.mean(durs)), 1)},
        "fps": world["params"]["fps"],
        "seconds": round(time.perf_counter() - t0, 2),
    }
