"""Search by example on the synthetic test split: frame-to-video and clip-to-video R@1, and the
latency of an image query through `vr serve`.

The world: `vr synth retrieval --seed 0` (its 200 test videos, 64 px, 4 s at 8 fps), indexed with
the committed demo model (`demo_retrieval.ckpt`: vr-tiny + seqTransf, its own sampling of 8
frames). Queries:

* frames: for each test video, ``--frames-per-video`` frames grabbed at random times (seeded),
  as they are, re-encoded as JPEG (quality 75), cropped (a random 60-90 % box, as a screenshot of
  part of the picture is) and cropped then re-encoded;
* clips: a 2 s sub-clip of each test video at a random start (written as its own H.264 file).

Each is searched with every stage-1 space (``frame``: the image-tower embedding against the
pooled vectors; ``pooled``: the image pooled as a one-frame video) and stage 2 (``none``: the
stage-1 cosine; ``frames``: max over the candidate's stored frames for an image, best alignment
for a clip; ``cliprerank``: 0.4 * stage 1 + 0.6 * frames), 100 candidates. A hit counts when the
query's source video is ranked first; temporal-pair twins (the same frames in another order)
tie on a single frame, so "R@1 twin-aware" also counts a tie with the source at rank 1 as half.

    .venv/bin/python benchmarks/search_by_example.py --work data/example_bench [--serve 200]
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def world(work: Path):
    from video_retrieval.datasets.synth_retrieval import generate_retrieval

    from video_retrieval.index.api import Index
    from video_retrieval.models.assets import DEMO_RETRIEVAL

    coll = work / "synth"
    if not (coll / "test.csv").is_file():
        generate_retrieval(coll, seed=0)
    import csv

    with open(coll / "test.csv") as f:
        ids = sorted({row["video_id"] for row in csv.DictReader(f)}, key=lambda v: int(v[5:]))
    test = work / "test_videos"
    test.mkdir(parents=True, exist_ok=True)
    for vid in ids:
        link = test / f"{vid}.mp4"
        if not link.exists():
            link.symlink_to((coll / "videos" / f"{vid}.mp4").resolve())
    idx_dir = work / "index"
    if not (idx_dir / "manifest.json").is_file():
        Index.build([test], idx_dir, checkpoint=str(DEMO_RETRIEVAL), progress=False)
    return Index.open(idx_dir)


def jpeg(img: np.ndarray, quality: int = 75) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def crop(img: np.ndarray, rng) -> np.ndarray:
    h, w, _ = img.shape
    frac = np.sqrt(rng.uniform(0.6, 0.9))  # of the area
    ch, cw = max(8, int(h * frac)), max(8, int(w * frac))
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    return np.ascontiguousarray(img[y : y + ch, x : x + cw])


def rank_of(hits, row: int) -> tuple[int, float]:
    """(strict rank of ``row``, twin-aware R@1 credit: 1, 1/ties when tied at the top, 0)."""
    for h in hits:
        if h.id == row:
            top = [x for x in hits if abs(x.score - hits[0].score) < 1e-6]
            tied = any(x.id == row for x in top)
            return h.rank, (1.0 / len(top) if tied else 0.0)
    return 10**6, 0.0


def frame_queries(index, per_video: int, seed: int):
    from video_retrieval.media.decode import load_frames

    rng = np.random.default_rng(seed)
    out = {"as is": [], "jpeg 75": [], "crop": [], "crop + jpeg 75": []}
    for row, v in enumerate(index.videos):
        d = float(v["duration"])
        for _ in range(per_video):
            t = float(rng.uniform(0.0, d - 0.01))
            img = load_frames(v["path"], num_frames=1, start=t, end=t + 0.005).pixels[0]
            c = crop(img, rng)
            out["as is"].append((row, img))
            out["jpeg 75"].append((row, jpeg(img)))
            out["crop"].append((row, c))
            out["crop + jpeg 75"].append((row, jpeg(c)))
    return out


def frame_table(index, queries) -> list[str]:
    from video_retrieval.index.example_search import rank_example
    from video_retrieval.index.examples import image_query

    encoder, agg = index.models()
    lines = ["| query frames | stage 1 | stage 2 | R@1 | R@1 twin-aware | R@5 | ms per query |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for variant, qs in queries.items():
        settings = [
            (sp, r, 100) for sp in ("frame", "pooled") for r in ("none", "frames", "cliprerank")
        ] + [("frame", "frames", len(index))]
        for space, rerank, cands in settings:  # fmt: skip
            if True:
                r1 = r5 = twin = 0.0
                t0 = time.perf_counter()
                for row, img in qs:
                    ex = image_query(index, encoder, agg, img, space=space)
                    hits = rank_example(index, ex, k=10, rerank=rerank, candidates=cands)
                    rank, credit = rank_of(hits, row)
                    r1 += rank == 1
                    r5 += rank <= 5
                    twin += credit
                ms = (time.perf_counter() - t0) * 1e3 / len(qs)
                n = len(qs)
                lines.append(f"| {variant} | {space} | {rerank} ({cands}) | {100 * r1 / n:.1f} | "
                             f"{100 * twin / n:.1f} | {100 * r5 / n:.1f} | {ms:.1f} |")  # fmt: skip
                print(lines[-1], flush=True)
    return lines


def text_image_table(index, work: Path, seed: int) -> list[str]:
    """A caption of each test video plus a frame of it: text alone, image alone, both."""
    import csv

    from video_retrieval.index.example_search import rank_example
    from video_retrieval.index.examples import image_query
    from video_retrieval.index.queries import encode_query
    from video_retrieval.index.search import rank_candidates, stage_one
    from video_retrieval.media.decode import load_frames

    rng = np.random.default_rng(seed + 2)
    rows = {Path(v["path"]).stem: i for i, v in enumerate(index.videos)}
    caps = {}
    with open(work / "synth" / "test.csv") as f:
        for r in csv.DictReader(f):
            caps.setdefault(r["video_id"], r["sentence"])
    encoder, agg = index.models()
    qs = []
    for vid, text in caps.items():
        v = index.videos[rows[vid]]
        t = float(rng.uniform(0.0, float(v["duration"]) - 0.01))
        qs.append((rows[vid], text, load_frames(v["path"], num_frames=1, start=t,
                                                end=t + 0.005).pixels[0]))  # fmt: skip
    lines = ["| caption + frame of one video | W | stage 2 | R@1 | R@5 |", "|---|---|---|---|---|"]
    r1 = r5 = 0
    for row, text, _ in qs:  # the text search as vr search runs it on this index (rerank none)
        q = encode_query(encoder, agg, text)
        base, cand = stage_one(index, q.embedding, 100)
        hits = rank_candidates(index, q, base, cand, None, 10)
        rank = next((h.rank for h in hits if h.id == row), 10**6)
        r1, r5 = r1 + (rank == 1), r5 + (rank <= 5)
    lines.append(f"| text alone | 0 | none | {100 * r1 / len(qs):.1f} | {100 * r5 / len(qs):.1f} |")
    for w, rerank in [(1.0, "frames"), (0.5, "none"), (0.5, "frames"), (0.3, "frames"),
                      (0.7, "frames")]:  # fmt: skip
        r1 = r5 = 0
        for row, text, img in qs:
            ex = image_query(index, encoder, agg, img, text=None if w == 1.0 else text,
                             image_weight=w)  # fmt: skip
            rank, _ = rank_of(rank_example(index, ex, k=10, rerank=rerank), row)
            r1, r5 = r1 + (rank == 1), r5 + (rank <= 5)
        what = "image alone" if w == 1.0 else "text + image"
        lines.append(f"| {what} | {w} | {rerank} | {100 * r1 / len(qs):.1f} | "
                     f"{100 * r5 / len(qs):.1f} |")  # fmt: skip
        print(lines[-1], flush=True)
    return lines


def clip_table(index, work: Path, seed: int) -> list[str]:
    from video_retrieval.index.example_search import rank_example
    from video_retrieval.index.examples import video_query
    from video_retrieval.media.cut import cut_clip

    rng = np.random.default_rng(seed + 1)
    clips = work / "clips"
    clips.mkdir(exist_ok=True)
    encoder, agg = index.models()
    queries = []
    for row, v in enumerate(index.videos):
        s = round(float(rng.uniform(0.0, float(v["duration"]) - 2.0)), 3)
        out = clips / f"{row}_{s}.mp4"
        if not out.exists():
            cut_clip(v["path"], s, s + 2.0, out)
        queries.append((row, out))
    lines = ["| clip queries | stage 1 | stage 2 | R@1 | R@1 twin-aware | R@5 | "
             "moment start error (median s) |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    encoded = {space: [(row, video_query(index, encoder, agg, out, label=out.name, space=space))
                       for row, out in queries] for space in ("pooled", "frame")}  # fmt: skip
    for space, rerank, cands in [(sp, r, 100) for sp in ("pooled", "frame")
                                 for r in ("none", "frames", "cliprerank")] + [
                                     ("frame", "frames", len(index))]:  # fmt: skip
        r1 = r5 = twin = 0.0
        errs = []
        for row, ex in encoded[space]:
            hits = rank_example(index, ex, k=10, rerank=rerank, candidates=cands)
            rank, credit = rank_of(hits, row)
            r1 += rank == 1
            r5 += rank <= 5
            twin += credit
            start = float(Path(ex.example["video"]).stem.split("_")[1])
            errs += [abs(h.moment.start - start) for h in hits if h.id == row]
        n = len(queries)
        lines.append(f"| 2 s sub-clip | {space} | {rerank} ({cands} candidates) | "
                     f"{100 * r1 / n:.1f} | {100 * twin / n:.1f} | "
                     f"{100 * r5 / n:.1f} | {np.median(errs):.2f} |")  # fmt: skip
        print(lines[-1], flush=True)
    return lines


def serve_latency(index, work: Path, n: int) -> list[str]:
    """p50/p99 of POST /api/search with one JPEG frame, through a `vr serve` subprocess."""
    import socket

    import httpx

    from video_retrieval.media.decode import load_frames

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "video_retrieval.cli", "serve", "--index", str(index.dir),
           "--port", str(port), "--cache-dir", str(work / "serve_cache")]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        rng = np.random.default_rng(3)
        bodies = []
        for _ in range(min(n, 50)):
            v = index.videos[int(rng.integers(len(index)))]
            img = load_frames(v["path"], num_frames=1, start=1.0, end=1.01).pixels[0]
            from PIL import Image

            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=90)
            bodies.append(buf.getvalue())
        lat, server = [], []
        with httpx.Client(base_url=base, timeout=60) as c:
            for i in range(n + 5):
                t0 = time.perf_counter()
                r = c.post("/api/search", files={"image": ("f.jpg", bodies[i % len(bodies)],
                                                           "image/jpeg")}, data={"k": "10"})  # fmt: skip
                r.raise_for_status()
                if i >= 5:  # warm-up
                    lat.append((time.perf_counter() - t0) * 1e3)
                    server.append(r.json()["took_ms"])
    finally:
        proc.terminate()
        proc.wait(30)
    p = np.percentile
    return [
        "| requests | client p50 | client p99 | server took_ms p50 | server took_ms p99 |",
        "|---|---|---|---|---|",
        f"| {n} | {p(lat, 50):.1f} ms | {p(lat, 99):.1f} ms | {p(server, 50):.1f} ms | "
        f"{p(server, 99):.1f} ms |",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="data/example_bench")
    ap.add_argument("--frames-per-video", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--serve", type=int, default=0, help="image queries through vr serve (0: skip)")
    ap.add_argument("--skip-frames", action="store_true")
    ap.add_argument("--skip-clips", action="store_true")
    ap.add_argument("--skip-text", action="store_true")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    print(f"# {platform.processor() or platform.machine()}, load average {os.getloadavg()}")
    index = world(work)
    print(f"# {len(index)} test videos indexed, {index.manifest['counts']['frames']} frames")
    if not args.skip_frames:
        print("\n".join(frame_table(index, frame_queries(index, args.frames_per_video, args.seed))))
    if not args.skip_clips:
        print("\n".join(clip_table(index, work, args.seed)))
    if not args.skip_text:
        print("\n".join(text_image_table(index, work, args.seed)))
    if args.serve:
        print("\n".join(serve_latency(index, work, args.serve)))
    print(f"# load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
