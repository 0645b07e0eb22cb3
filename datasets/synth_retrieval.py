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
from pathlib import Path

import numpy as np
from video_retrieval.datasets.synth_captions import make_captions
from video_retrieval.datasets.synth_plan import (
    KIND_WEIGHTS,
    VideoPlanner,
    combos_of,
    held_out_combos,
    reverse_spec,
    semantic_key,
    swap_spec,
)
from video_retrieval.datasets.synth_render import (
    COLOURS,
    GROW_FACTOR,
    SHAPES,
    SIZES_PX,
    encode_all,
    render_frames,
)

from video_retrieval.media.atomic import atomic_write_text

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
    planner = VideoPlanner(rng, p)
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
            if need_held and not (combos_of(spec) & set(held)):
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
    progress: bool = False,
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
    encode_all(jobs, lambda path, spec: _encode(path, spec, codec), workers, progress)

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
    atomic_write_text(
        out / "test_compositional.csv", _csv_text(header, split_rows["test_compositional"])
    )
    if "partial" in world:
        atomic_write_text(out / "test_partial.csv", _csv_text(header, split_rows["test_partial"]))
    atomic_write_text(
        out / "temporal_pairs.json", json.dumps(world["temporal_pairs"], indent=1) + "\n"
    )
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
