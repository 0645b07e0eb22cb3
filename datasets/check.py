"""``vr data check DATASET ROOT``: a dataset folder against its published split sizes.

For each split file of the layout the recipes use (below), the report has the number of
annotations and distinct videos next to the published figures, duplicate ids, and the videos that
are missing, empty or undecodable. Videos are decoded with the project's decoder
(``probe_video`` + two frames of ``load_frames``, i.e. decord with the PyAV fallback), in a thread
pool, with a progress bar; a file whose decodable frames fall more than a second short of the
count its header declares is reported as truncated. The report ends with the exact command that
trains on the folder next.

Layouts (``ROOT`` = the folder given; videos under ``ROOT/videos`` unless ``--video-dir``):

* msrvtt: ``MSRVTT_data.json`` (10,000 videos, 200,000 sentences), ``MSRVTT_train.9k.csv``
  (9,000 videos, 180,000 captions), ``MSRVTT_train.7k.csv`` (7,010 / 140,200; optional),
  ``MSRVTT_JSFUSION_test.csv`` (1,000 / 1,000); ``videos/<video_id>.mp4`` (or ``.webm``).
* didemo: ``{train,val,test}_data.json`` (33,005 / 4,180 / 4,021 annotations over 8,395 / 1,065 /
  1,004 videos); ``videos/<name>`` (see ``datasets.didemo`` for the file of a name; two names
  that would read one file are reported).
* qvhighlights: ``highlight_{train,val,test}_release.jsonl`` (7,218 / 1,550 / 1,542 queries over
  7,100 / 1,519 / 1,529 videos); ``videos/<vid>.mp4`` and/or the released features in
  ``features/`` (``datasets.qvh_features``; checked instead of videos when present).
* charades: ``charades_sta_{train,test}.txt`` (12,408 / 3,720 queries over 5,338 / 1,334
  videos), ``Charades_v1_{train,test}.csv`` (durations, optional); ``videos/<id>.mp4``.

Sources of the published figures: MSR-VTT and QVHighlights from the reference notes (row counts
of the released files), DiDeMo val/test from the released files, DiDeMo train and the video counts
and Charades-STA from the datasets' papers as commonly cited.
"""

from __future__ import annotations

import csv
import os
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from video_retrieval.errors import UserError

DATASETS = ("msrvtt", "didemo", "qvhighlights", "charades")

# file -> published {annotations, videos} (annotations = captions for MSR-VTT, queries otherwise)
PUBLISHED: dict[str, dict[str, dict[str, int]]] = {
    "msrvtt": {
        "MSRVTT_data.json": {"annotations": 200000, "videos": 10000},
        "MSRVTT_train.9k.csv": {"annotations": 180000, "videos": 9000},
        "MSRVTT_train.7k.csv": {"annotations": 140200, "videos": 7010},
        "MSRVTT_JSFUSION_test.csv": {"annotations": 1000, "videos": 1000},
    },
    "didemo": {
        "train_data.json": {"annotations": 33005, "videos": 8395},
        "val_data.json": {"annotations": 4180, "videos": 1065},
        "test_data.json": {"annotations": 4021, "videos": 1004},
    },
    "qvhighlights": {
        "highlight_train_release.jsonl": {"annotations": 7218, "videos": 7100},
        "highlight_val_release.jsonl": {"annotations": 1550, "videos": 1519},
        "highlight_test_release.jsonl": {"annotations": 1542, "videos": 1529},
    },
    "charades": {
        "charades_sta_train.txt": {"annotations": 12408, "videos": 5338},
        "charades_sta_test.txt": {"annotations": 3720, "videos": 1334},
    },
}
OPTIONAL = {"MSRVTT_train.7k.csv", "highlight_test_release.jsonl"}


def _nonempty(path) -> bool:
    try:
        return os.path.isfile(path) and os.path.getsize(path) > 0
    except OSError:
        return False


def _dups(ids) -> list:
    return sorted((k for k, n in Counter(ids).items() if n > 1), key=str)


class _Split:
    def __init__(self, file: str, published: dict):
        self.report: dict = {
            "file": file,
            "found": False,
            "annotations": 0,
            "published_annotations": published["annotations"],
            "videos": 0,
            "published_videos": published["videos"],
            "duplicate_ids": [],
            "missing": [],
            "undecodable": [],
        }
        self.videos: dict[str, str | None] = {}  # id -> path (None: not found)


# ------------------------------------------------------------------------------------ per dataset


def _msrvtt(root: Path, vdir: Path, splits: dict[str, _Split], notes: list[str]) -> None:
    from video_retrieval.datasets.msrvtt import read_msrvtt_captions, read_split_ids, video_path

    lists = {}
    for f in ("MSRVTT_train.9k.csv", "MSRVTT_train.7k.csv", "MSRVTT_JSFUSION_test.csv"):
        if (root / f).is_file():
            try:
                lists[f] = read_split_ids(root / f)
            except UserError as e:
                splits[f].report["error"] = str(e)
    caps: dict[str, list[str]] = {}
    data = splits["MSRVTT_data.json"]
    if (root / "MSRVTT_data.json").is_file():
        data.report["found"] = True
        try:  # one streaming pass over the 200k sentences, for every list at once
            caps = read_msrvtt_captions(root / "MSRVTT_data.json")
        except UserError as e:
            data.report["error"] = str(e)
        data.report["annotations"] = sum(len(v) for v in caps.values())
        data.report["videos"] = len(caps)
    for f, ids in lists.items():
        sp = splits[f]
        sp.report["found"] = True
        sp.report["videos"] = len(set(ids))
        sp.report["duplicate_ids"] = _dups(ids)
        if f == "MSRVTT_JSFUSION_test.csv":
            sp.report["annotations"] = len(ids)  # one caption per row
        else:
            sp.report["annotations"] = sum(len(caps.get(v, [])) for v in set(ids))
            without = [v for v in dict.fromkeys(ids) if v not in caps]
            if caps and without:
                sp.report["without_captions"] = without[:20]
                sp.report["without_captions_count"] = len(without)
        for v in dict.fromkeys(ids):
            p = video_path(vdir, v)
            sp.videos[v] = p if _nonempty(p) else None


def _didemo(root: Path, vdir: Path, splits: dict[str, _Split], notes: list[str]) -> None:
    from video_retrieval.datasets.didemo import (
        didemo_candidates,
        didemo_collisions,
        read_didemo_records,
    )

    for f, sp in splits.items():
        if not (root / f).is_file():
            continue
        sp.report["found"] = True
        try:
            records = read_didemo_records(root / f)
        except UserError as e:
            sp.report["error"] = str(e)
            continue
        names = [r.get("video") for r in records if isinstance(r, dict)]
        names = [n for n in names if isinstance(n, str) and n]
        sp.report["annotations"] = len(records)
        sp.report["videos"] = len(set(names))
        sp.report["duplicate_ids"] = _dups(
            r.get("annotation_id") for r in records if isinstance(r, dict)
        )
        clashes = didemo_collisions(vdir, names)
        if clashes:
            sp.report["shared_files"] = {f2: ns for f2, ns in sorted(clashes.items())}
        present = {e.name for e in os.scandir(vdir)} if vdir.is_dir() else set()
        for n in dict.fromkeys(names):
            f2 = next((c for c in didemo_candidates(n) if c in present), None)
            sp.videos[n] = str(vdir / f2) if f2 and _nonempty(vdir / f2) else None


def _qvhighlights(root: Path, vdir: Path, splits: dict[str, _Split], notes: list[str]) -> None:
    from video_retrieval.datasets.moments import find_video, load_qvhighlights
    from video_retrieval.datasets.qvh_features import STREAM_DIRS, OfficialFeatures

    feats = None
    fdir = root / "features"
    if fdir.is_dir():
        streams = [s for s in ("slowfast", "clip") if (fdir / STREAM_DIRS[s]).is_dir()]
        try:
            feats = OfficialFeatures(fdir, streams or ["clip"])
        except UserError as e:
            notes.append(f"features/: {e}")
    for f, sp in splits.items():
        if not (root / f).is_file():
            continue
        sp.report["found"] = True
        try:
            rows = load_qvhighlights(root / f, require_text=False)
        except UserError as e:
            sp.report["error"] = str(e)
            continue
        sp.report["annotations"] = len(rows)
        sp.report["videos"] = len({r["vid"] for r in rows})
        if feats is not None:
            missing, _keep = feats.check(rows)
            sp.report["missing_features"] = missing[:20]
            sp.report["missing_features_count"] = len(missing)
        if vdir.is_dir() or feats is None:
            for r in rows:
                if r["vid"] not in sp.videos:
                    p = find_video(vdir, {"vid": r["vid"]})
                    sp.videos[r["vid"]] = p if p and _nonempty(p) else None


def _charades(root: Path, vdir: Path, splits: dict[str, _Split], notes: list[str]) -> None:
    from video_retrieval.datasets.moments import find_video, load_charades_sta

    for f, sp in splits.items():
        if not (root / f).is_file():
            continue
        sp.report["found"] = True
        try:
            rows = load_charades_sta(root / f)
        except UserError as e:
            sp.report["error"] = str(e)
            continue
        sp.report["annotations"] = len(rows)
        sp.report["videos"] = len({r["vid"] for r in rows})
        # the qid is the line index: a duplicate is the same (video, window, sentence) twice
        keys = [(r["vid"], *r["relevant_windows"][0], r["query"].lower()) for r in rows]
        sp.report["duplicate_ids"] = [list(k) for k in _dups(keys)][:20]
        csv_name = f.replace("charades_sta_", "Charades_v1_").replace(".txt", ".csv")
        if not (root / csv_name).is_file():
            notes.append(f"{csv_name} not found: durations will be read from the videos")
        else:
            with open(root / csv_name, newline="", encoding="utf-8") as fh:
                have = {row.get("id") for row in csv.DictReader(fh)}
            without = sorted({r["vid"] for r in rows} - have)
            if without:
                sp.report["without_duration"] = without[:20]
        for r in rows:
            if r["vid"] not in sp.videos:
                p = find_video(vdir, {"vid": r["vid"]})
                sp.videos[r["vid"]] = p if p and _nonempty(p) else None


READERS = {
    "msrvtt": _msrvtt,
    "didemo": _didemo,
    "qvhighlights": _qvhighlights,
    "charades": _charades,
}


# ------------------------------------------------------------------------------------ decoding


def decode_problem(path: str) -> str | None:
    """None when the project's decoder reads the file, else the reason (one line)."""
    from video_retrieval.media.decode import load_frames, probe_video

    try:
        info = probe_video(path)
        load_frames(path, num_frames=2, size=32)
    except Exception as e:  # noqa: BLE001 - any failure is the report's content
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        if text.startswith(f"{path}: "):
            text = text[len(path) + 2 :]
        return text[:300]
    if info.header_frames and info.fps > 0:
        short = info.header_frames - info.num_frames
        if short > max(2.0, info.fps):
            return (
                f"truncated: {info.num_frames} decodable frames of the {info.header_frames} "
                f"the header declares ({short / info.fps:.1f} s short)"
            )
    return None


def decode_all(paths: list[str], workers: int, progress: bool) -> dict[str, str]:
    """``{path: reason}`` for the files that do not decode (thread pool + progress bar)."""
    from tqdm import tqdm

    bad: dict[str, str] = {}
    if not paths:
        return bad
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(decode_problem, paths)
        bar = tqdm(
            zip(paths, results),
            total=len(paths),
            desc="decoding",
            unit="video",
            file=sys.stderr,
            disable=not progress,
        )
        for p, reason in bar:
            if reason is not None:
                bad[p] = reason
    return bad


# ------------------------------------------------------------------------------------ the check


def next_commands(dataset: str, root: Path, vdir: Path, any_missing: bool, features: bool):
    r = str(root)
    allow = " --data.init_args.allow_missing true" if any_missing else ""
    vd = f" --data.init_args.video_dir {vdir}"
    if dataset == "msrvtt":
        extra = f" --data.init_args.video_dir {vdir}" if vdir != root / "videos" else ""
        return [
            f"vr train fit --config configs/msrvtt_mean.yaml --data.init_args.root {r}{extra}{allow}"
        ]
    if dataset == "didemo":
        extra = f" --data.init_args.video_dir {vdir}" if vdir != root / "videos" else ""
        return [
            f"vr train fit --config configs/didemo_mean.yaml --data.init_args.root {r}{extra}{allow}",
            "vr train fit --config configs/moments_didemo.yaml"
            f" --data.init_args.train_path {r}/train_data.json"
            f" --data.init_args.val_path {r}/val_data.json"
            f" --data.init_args.test_path {r}/test_data.json{vd}{allow}",
        ]
    if dataset == "qvhighlights":
        paths = (
            f" --data.init_args.train_path {r}/highlight_train_release.jsonl"
            f" --data.init_args.val_path {r}/highlight_val_release.jsonl"
        )
        src = f" --data.init_args.features_dir {r}/features" if features else vd
        return [f"vr train fit --config configs/moments_qvhighlights.yaml{paths}{src}{allow}"]
    return [
        "vr train fit --config configs/moments_charades.yaml"
        f" --data.init_args.train_path {r}/charades_sta_train.txt"
        f" --data.init_args.val_path {r}/charades_sta_test.txt"
        f" --data.init_args.test_path {r}/charades_sta_test.txt"
        f" --data.init_args.durations_csv {r}/Charades_v1_test.csv{vd}{allow}"
    ]


def check_dataset(
    dataset: str,
    root,
    video_dir=None,
    decode: bool = True,
    workers: int | None = None,
    progress: bool = True,
    max_listed: int = 20,
) -> dict:
    """The report of ``vr data check`` (a JSON-able dict; ``ok`` is False when a split file is
    missing or invalid, or a video is missing / empty / undecodable, or an id repeats, or two
    annotated videos would read one file). Counts that differ from the published ones are listed
    in ``notes`` (a subset is legitimate) and do not make ``ok`` False."""
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r}; choose one of {list(DATASETS)}")
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"no such folder: {root}")
    vdir = Path(video_dir) if video_dir is not None else root / "videos"
    splits = {f: _Split(f, pub) for f, pub in PUBLISHED[dataset].items()}
    notes: list[str] = []
    READERS[dataset](root, vdir, splits, notes)
    if not vdir.is_dir() and not (dataset == "qvhighlights" and (root / "features").is_dir()):
        notes.append(f"no video folder {vdir}")

    existing = sorted({p for sp in splits.values() for p in sp.videos.values() if p})
    workers = workers or min(8, os.cpu_count() or 1)
    bad = decode_all(existing, workers, progress) if decode else {}

    problems = 0
    for f, sp in splits.items():
        rep = sp.report
        if not rep["found"]:
            if f not in OPTIONAL:
                problems += 1
                notes.append(f"{f} not found in {root}")
            continue
        missing = [v for v, p in sp.videos.items() if p is None]
        undecodable = [(v, p) for v, p in sp.videos.items() if p in bad]
        rep["videos_found"] = len(sp.videos) - len(missing)
        rep["missing_count"] = len(missing)
        rep["missing"] = missing[:max_listed]
        rep["undecodable_count"] = len(undecodable)
        rep["undecodable"] = [{"id": v, "path": p, "reason": bad[p]} for v, p in undecodable][
            :max_listed
        ]
        rep["duplicate_count"] = len(rep["duplicate_ids"])
        rep["duplicate_ids"] = rep["duplicate_ids"][:max_listed]
        problems += bool(missing) + bool(undecodable) + bool(rep["duplicate_ids"])
        problems += bool(rep.get("error")) + bool(rep.get("shared_files"))
        problems += bool(rep.get("without_captions_count")) + bool(
            rep.get("missing_features_count")
        )
        for key in ("annotations", "videos"):
            if rep[key] != rep[f"published_{key}"]:
                notes.append(f"{f}: {rep[key]:,} {key}, published {rep[f'published_{key}']:,}")
    any_missing = any(
        sp.report.get("missing_count") or sp.report.get("missing_features_count")
        for sp in splits.values()
    )
    features = dataset == "qvhighlights" and (root / "features").is_dir()
    return {
        "dataset": dataset,
        "root": str(root),
        "video_dir": str(vdir),
        "decoded": decode,
        "videos_checked": len(existing) if decode else 0,
        "splits": [sp.report for sp in splits.values()],
        "notes": notes,
        "ok": problems == 0,
        "next": next_commands(dataset, root, vdir, bool(any_missing), features),
    }
