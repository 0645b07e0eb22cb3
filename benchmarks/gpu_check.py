"""GPU check: the figures a CUDA machine should give, in one run (< 8 minutes on one GPU).

    bash benchmarks/gpu_check.sh            # on a CUDA machine; prints a table and writes JSON
    .venv/bin/python benchmarks/gpu_check.py --smoke --device cpu   # the same code, tiny, on CPU

Parts (each timed after a warm-up, each skippable with --skip NAME):

  encode    images/s of the CLIP image tower at batch 256 in fp16 and bf16 autocast, for
            ViT-B-32 and ViT-L-14 (random weights: speed does not depend on them)
  index     `vr index` frames/s on generated 720p test videos (decode in DataLoader workers
            overlapped with encoding on the GPU), ViT-B-32 at 1 fps
  train     seconds per optimizer step of configs/msrvtt_seq_transformer.yaml (global batch 128,
            12 frames, bf16-mixed) on a generated MSR-VTT layout: two fits of K1 and K2 steps,
            (t2 - t1) / (K2 - K1), so start-up and the first steps' compilation cancel out
  search    FAISS top-10 latency (p50/p99, one query at a time and batched) at 100k and 1M
            vectors, faiss-cpu exact and IVF; GPU FAISS too when it is installed

Nothing needs a network: the models use random weights (`--random-weights` for `vr index`,
`pretrained: null` for training) and every video is generated with the bundled ffmpeg.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def machine(device: str) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1),
                    cuda=torch.version.cuda)  # fmt: skip
    info["cpus"] = os.cpu_count()
    return info


# -- encode ---------------------------------------------------------------------------------------
@torch.no_grad()
def bench_encode(models, device, batch, iters) -> list[dict]:
    from video_retrieval.encoders.factory import create_encoder

    rows = []
    for name in models:
        enc = create_encoder(name, precision="fp32", device=device).eval()
        x = torch.randn(batch, 3, enc.image_size, enc.image_size, device=device)
        for dtype_name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
            with torch.autocast(device_type=torch.device(device).type, dtype=dtype):
                enc._encode_images(x, False)  # warm-up (kernels, cudnn autotune)
                sync(device)
                t0 = time.perf_counter()
                for _ in range(iters):
                    enc._encode_images(x, False)
                sync(device)
                dt = time.perf_counter() - t0
            rows.append({"model": name, "dtype": dtype_name, "batch": batch,
                         "images_per_s": round(batch * iters / dt, 1)})  # fmt: skip
            print(f"encode {name:10s} {dtype_name} batch {batch}: {rows[-1]['images_per_s']:.0f} img/s",
                  flush=True)  # fmt: skip
        del enc
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return rows


# -- index ----------------------------------------------------------------------------------------
def make_videos(folder: Path, n: int, seconds: float, size: tuple[int, int]) -> list[Path]:
    from video_retrieval.media.write import write_test_pattern

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = folder / f"v{i:03d}.mp4"
        if not p.exists():
            write_test_pattern(p, seconds=seconds, width=size[1], height=size[0], fps=25)
        out.append(p)
    return out


def bench_index(work: Path, device, model, videos, seconds, size, workers) -> dict:
    from video_retrieval.index.build import run_indexing
    from video_retrieval.index.config import IndexConfig

    vids = make_videos(work / "videos", videos, seconds, size)
    d = work / "index"
    shutil.rmtree(d, ignore_errors=True)
    cfg = IndexConfig(model=model, random_weights=True, fps=1.0, device=device, workers=workers,
                      batch_size=256, progress=False, precision="auto")  # fmt: skip
    s = run_indexing([str(v) for v in vids], d, cfg)
    row = {"model": model, "videos": len(vids), "frames": s["frames_encoded"],
           "frames_per_s": s["frames_per_s"], "seconds": s["seconds"], "autocast": s["autocast"],
           "video_size": f"{size[1]}x{size[0]}"}  # fmt: skip
    print(f"index {model}: {row['frames_per_s']:.0f} frames/s over {row['videos']} videos "
          f"({row['frames']} frames, autocast {row['autocast']})", flush=True)  # fmt: skip
    return row


# -- train ----------------------------------------------------------------------------------------
def msrvtt_layout(work: Path, videos: int) -> Path:
    """A generated MSR-VTT folder: the synthetic world's files under MSR-VTT's names (64-px
    videos: the step time is the model's, the decoder is measured by the index part)."""
    from video_retrieval.datasets.synth_retrieval import generate_retrieval

    root = work / "msrvtt"
    if not (root / "MSRVTT_JSFUSION_test.csv").exists():
        generate_retrieval(root, seed=0, num_train=videos, num_test=max(16, videos // 8),
                           num_compositional=0)  # fmt: skip
        shutil.copy(root / "train.csv", root / "MSRVTT_train.9k.csv")
        shutil.copy(root / "test.csv", root / "MSRVTT_JSFUSION_test.csv")
    return root


def _fit_seconds(config: str, root: Path, out: Path, steps: int, extra: list[str]) -> float:
    cmd = [sys.executable, "-m", "video_retrieval.cli", "train", "fit", "--config", config,
           f"--data.root={root}", f"--trainer.default_root_dir={out}",
           f"--trainer.max_steps={steps}", "--trainer.limit_val_batches=0",
           "--trainer.enable_checkpointing=false", "--trainer.logger=false",
           "--trainer.callbacks=null", "--model.init_args.pretrained=null", *extra]  # fmt: skip
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"training failed: {res.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - t0


def bench_train(work: Path, config: str, steps: tuple[int, int], videos: int, extra) -> dict:
    root = msrvtt_layout(work, videos)
    t1 = _fit_seconds(config, root, work / "train1", steps[0], extra)
    t2 = _fit_seconds(config, root, work / "train2", steps[1], extra)
    diff = (t2 - t1) / (steps[1] - steps[0])
    # the difference of two whole fits: start-up noise on a busy machine can exceed the steps
    per_step = round(diff, 3) if diff > 0 else None
    row = {"config": config, "steps": list(steps), "seconds_per_step": per_step,
           "fit_seconds": [round(t1, 1), round(t2, 1)], "extra": extra}  # fmt: skip
    shown = f"{per_step:.3f} s/step" if per_step else "s/step below start-up noise"
    print(f"train {Path(config).name}: {shown} "
          f"(fits of {steps[0]} and {steps[1]} steps: {t1:.1f} s, {t2:.1f} s)", flush=True)  # fmt: skip
    return row


# -- search ---------------------------------------------------------------------------------------
def bench_search(sizes, dim, queries, gpu_faiss: bool) -> list[dict]:
    import faiss

    from video_retrieval.index.ann import ann_search, build_ann

    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    rows = []
    for n in sizes:
        x = rng.standard_normal((n, dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        q = x[rng.choice(n, queries, replace=False)] + 0.05 * rng.standard_normal(
            (queries, dim), dtype=np.float32
        )
        for kind in ("flat", "ivf"):
            t0 = time.perf_counter()
            index = build_ann(x, kind)
            build = time.perf_counter() - t0
            lat = []
            for i in range(queries):
                t = time.perf_counter()
                ann_search(index, q[i : i + 1], 10)
                lat.append((time.perf_counter() - t) * 1e3)
            t = time.perf_counter()
            ann_search(index, q, 10)
            batched = (time.perf_counter() - t) * 1e3 / queries
            rows.append({"faiss": "cpu", "kind": kind, "n": n, "build_s": round(build, 1),
                         "p50_ms": round(float(np.percentile(lat, 50)), 3),
                         "p99_ms": round(float(np.percentile(lat, 99)), 3),
                         "batched_ms_per_query": round(batched, 4)})  # fmt: skip
            print(f"search cpu {kind:4s} n={n:>8}: p50 {rows[-1]['p50_ms']} ms, p99 "
                  f"{rows[-1]['p99_ms']} ms, batched {rows[-1]['batched_ms_per_query']} ms/query",
                  flush=True)  # fmt: skip
        if gpu_faiss and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
            res = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(res, 0, build_ann(x, "flat"))
            index.search(q[:1], 10)
            t = time.perf_counter()
            index.search(q, 10)
            rows.append({"faiss": "gpu", "kind": "flat", "n": n, "batched_ms_per_query":
                         round((time.perf_counter() - t) * 1e3 / queries, 4)})  # fmt: skip
            print(f"search gpu flat n={n}: {rows[-1]['batched_ms_per_query']} ms/query batched")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny sizes and vr-tiny models: checks the script itself, on any machine")  # fmt: skip
    ap.add_argument("--skip", nargs="*", default=[], choices=["encode", "index", "train", "search"])
    ap.add_argument("--work", default=None, help="scratch folder (default: a temp dir)")
    ap.add_argument("--json", default="gpu_check.json", help="where to write the figures")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "error: no CUDA device (use --device cpu --smoke to check the script)", file=sys.stderr
        )
        return 2
    if args.smoke:
        enc = dict(models=["vr-tiny"], batch=8, iters=2)
        idx = dict(model="vr-tiny", videos=2, seconds=3.0, size=(120, 160), workers=1)
        trn = dict(config=str(REPO / "configs" / "synth_seq_transformer.yaml"), steps=(1, 2),
                   videos=8, extra=["--model.init_args.model=vr-tiny",
                                    "--data.init_args.global_batch_size=4",
                                    "--data.init_args.num_workers=0",
                                    "--data.init_args.frame_cache_dir=null",
                                    "--trainer.precision=32", "--trainer.accelerator=cpu"])  # fmt: skip
        srch = dict(sizes=[2000], dim=64, queries=20)
    else:
        enc = dict(models=["ViT-B-32", "ViT-L-14"], batch=256, iters=10)
        idx = dict(model="ViT-B-32", videos=32, seconds=30.0, size=(720, 1280),
                   workers=min(8, os.cpu_count() or 1))  # fmt: skip
        trn = dict(config=str(REPO / "configs" / "msrvtt_seq_transformer.yaml"), steps=(3, 13),
                   videos=256, extra=["--trainer.accelerator=gpu", "--trainer.devices=1"])  # fmt: skip
        srch = dict(sizes=[100_000, 1_000_000], dim=512, queries=200)
    work = Path(args.work or tempfile.mkdtemp(prefix="vr_gpu_check_"))
    report = {"machine": machine(args.device), "smoke": args.smoke}
    t0 = time.perf_counter()
    print(json.dumps(report["machine"]), flush=True)
    if "encode" not in args.skip:
        report["encode"] = bench_encode(enc["models"], args.device, enc["batch"], enc["iters"])
    if "index" not in args.skip:
        report["index"] = bench_index(work, args.device, **idx)
    if "train" not in args.skip:
        report["train"] = bench_train(work, **trn)
    if "search" not in args.skip:
        report["search"] = bench_search(**srch, gpu_faiss=args.device.startswith("cuda"))
    report["seconds"] = round(time.perf_counter() - t0, 1)
    Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    print(f"done in {report['seconds']} s; figures in {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
