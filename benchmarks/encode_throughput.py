"""Frame-encoding throughput: decode only, preprocess only, encode only, and the whole path.

Writes (once, cached in the temp dir) a 60 s 1280x720 25 fps H.264 test video with the bundled
ffmpeg (``testsrc2``), samples it at 1 fps (60 frames) with ``video_retrieval.media.decode.load_frames``,
and times, in frames/s:

  decode      load_frames(path, fps=1)                       -> uint8 [60,720,1280,3]
  preprocess  encoder.preprocess (batched bicubic resize/crop/normalise to 224 px)
  encode      encoder.encode_images on already preprocessed frames
  end-to-end  load_frames + encoder.encode_frames (decode + preprocess + encode)

for an open_clip ViT-B-32 with random weights (pretrained=None; speed does not depend on the
weights) in fp32 and with bf16 autocast. Each figure is the best of --repeat runs after one
warm-up; the machine is shared, so the figures are pessimistic.

    python benchmarks/encode_throughput.py [--video PATH] [--model ViT-B-32] [--repeat 2]
        [--batch-size 32] [--threads N] [--precisions fp32,bf16] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import torch
from video_retrieval.encoders.factory import create_encoder
from video_retrieval.encoders.precision import cpu_has_fast_bf16

from video_retrieval.media.decode import load_frames
from video_retrieval.media.write import write_test_pattern


def make_video(path: str, seconds: int = 60) -> str:
    if not os.path.exists(path):
        write_test_pattern(path, seconds, 1280, 720, 25, codec="libx264", preset="veryfast",
                           pix_fmt="yuv420p")  # fmt: skip
    return path


def best_time(fn, repeat: int) -> float:
    fn()  # warm-up (allocations, kernel selection, file cache)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--video", default=os.path.join(tempfile.gettempdir(), "vr_bench_720p_60s.mp4"))
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--fps", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    video = make_video(args.video)
    frames = load_frames(video, fps=args.fps)
    n = len(frames.pixels)
    rows = []

    def record(stage, precision, seconds):
        rows.append((stage, precision, n / seconds, seconds))
        if not args.json:  # progress, as the whole run can take minutes on a busy machine
            print(f"  measured {stage} {precision}: {n / seconds:.1f} frames/s", flush=True)

    t = best_time(lambda: load_frames(video, fps=args.fps), args.repeat)
    record("decode", "-", t)

    for precision in args.precisions.split(","):
        enc = create_encoder(args.model, precision=precision)
        t = best_time(lambda enc=enc: enc.preprocess(frames.pixels), args.repeat)
        if precision == args.precisions.split(",")[0]:
            record("preprocess", "-", t)
        images = enc.preprocess(frames.pixels)

        def encode(enc=enc, images=images):
            with torch.no_grad():
                for i in range(0, n, args.batch_size):
                    enc.encode_images(images[i : i + args.batch_size])

        t = best_time(encode, args.repeat)
        record("encode", precision, t)

        def end_to_end(enc=enc):
            pixels = load_frames(video, fps=args.fps).pixels
            enc.encode_frames(pixels, batch_size=args.batch_size)

        t = best_time(end_to_end, args.repeat)
        record("end-to-end", precision, t)

    machine = {
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "cpu_fast_bf16": cpu_has_fast_bf16(),
        "torch": torch.__version__,
        "decode_backend": frames.backend,
    }
    if args.json:
        print(
            json.dumps(
                {
                    "model": args.model,
                    "frames": n,
                    "video": "1280x720 25fps H.264 60s",
                    "machine": machine,
                    "rows": [
                        {
                            "stage": s,
                            "precision": p,
                            "frames_per_s": round(f, 2),
                            "seconds": round(t, 3),
                        }
                        for s, p, f, t in rows
                    ],
                }
            )
        )
        return 0
    print(
        f"model={args.model} (random init)  video=1280x720 H.264 60 s, {n} frames at {args.fps} fps"
    )
    print(f"machine: {machine}")
    print(f"{'stage':<12} {'precision':<9} {'frames/s':>9} {'seconds':>8}")
    for stage, precision, fps, t in rows:
        print(f"{stage:<12} {precision:<9} {fps:>9.1f} {t:>8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
