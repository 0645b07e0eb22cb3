"""Indexing throughput: end-to-end `vr index` frames/s vs encode-only frames/s, same model.

Writes N test videos (moving shapes, 320x240, 25 fps), then measures
* encode-only: the same sampled frames, already decoded and resized in memory, through the same
  preprocess + batched `encode_images` path the indexer uses (`BatchingEncoder`);
* end to end: `run_indexing` into a fresh index (decode in DataLoader workers overlapped with
  encoding in the main process, shard writes, journal), frames/s over the encoding phase, and
  also over the whole run (model load, pooling, FAISS build included).
The target is end-to-end >= 85% of encode-only for an encode-bound model (ViT-B-32). With the
64-px `vr-tiny` test model, encoding is so cheap that decoding dominates.

    .venv/bin/python benchmarks/index_throughput.py --model ViT-B-32 --videos 8 --workers 1
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def make_videos(d: Path, n: int, seconds: float, fps: int = 25):
    from video_retrieval.media.write import write_video

    rng = np.random.default_rng(0)
    t = int(seconds * fps)
    for i in range(n):
        x = np.full((t, 240, 320, 3), rng.integers(0, 60), np.uint8)
        c = rng.integers(60, 255, 3).astype(np.uint8)
        for k in range(t):
            p = int(240 * k / t)
            x[k, 80:160, p : p + 80] = c
        write_video(d / f"v{i:03d}.mp4", x, fps=fps, gop=fps)
    return sorted(d.glob("*.mp4"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="vr-tiny")
    ap.add_argument("--videos", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--fps", type=float, default=2.0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()

    from video_retrieval.encoders.factory import create_encoder

    from video_retrieval.index.build import run_indexing
    from video_retrieval.index.config import IndexConfig
    from video_retrieval.index.pipeline import BatchingEncoder
    from video_retrieval.media.decode import load_frames

    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads)")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = make_videos(tmp / "videos", args.videos, args.seconds)
        encoder = create_encoder(args.model).eval()
        print(f"model {args.model}: {encoder.fingerprint()}, autocast {encoder.autocast_dtype}")
        decoded = [load_frames(str(p), fps=args.fps, size=encoder.image_size) for p in paths]
        items = [
            {"path": str(p), "pixels": torch.from_numpy(f.pixels[f.mask])}
            for p, f in zip(paths, decoded)
        ]
        n_frames = sum(len(i["pixels"]) for i in items)
        # warm-up, then encode-only
        BatchingEncoder(encoder, args.batch_size).add(dict(items[0])) or None
        be = BatchingEncoder(encoder, args.batch_size)
        t0 = time.perf_counter()
        for it in items:
            be.add(dict(it))
        be.flush()
        enc_s = time.perf_counter() - t0
        enc_fps = n_frames / enc_s
        print(f"encode-only : {n_frames} frames in {enc_s:.2f} s = {enc_fps:.1f} frames/s")

        cfg = IndexConfig(model=args.model, fps=args.fps, batch_size=args.batch_size,
                          workers=args.workers, progress=False)  # fmt: skip
        t0 = time.perf_counter()
        s = run_indexing([tmp / "videos"], tmp / "index", cfg)
        wall = time.perf_counter() - t0
        assert s["frames_encoded"] == n_frames, (s["frames_encoded"], n_frames)
        print(f"end-to-end  : {s['frames_per_s']:.1f} frames/s over the encoding phase "
              f"(workers={args.workers}) = {100 * s['frames_per_s'] / enc_fps:.0f}% of encode-only")  # fmt: skip
        print(f"whole run   : {n_frames} frames, {s['videos']} videos in {wall:.2f} s = "
              f"{n_frames / wall:.1f} frames/s (model load, pooling, FAISS included)")  # fmt: skip


if __name__ == "__main__":
    main()
