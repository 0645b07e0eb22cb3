"""Frozen-backbone training: feature cache vs decoding + encoding on the fly.

On a small synthetic world (``generate_retrieval``), times
  1. building the feature cache of the train split (``build_cache``),
  2. one epoch of training a ``seq_transformer`` aggregator (symmetric InfoNCE + AdamW) that reads
     the cache (``pair_loader``),
  3. the same epoch when every batch is decoded (``load_frames``) and encoded by the same frozen
     encoder on the fly,
and prints the figures (and the number of epochs after which the cache has paid for itself).

    .venv/bin/python benchmarks/cache_vs_e2e.py --num-train 64 [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from video_retrieval.encoders.factory import create_encoder
from video_retrieval.temporal import build_aggregator
from video_retrieval.temporal.features import TextFeatures, VideoFeatures

from video_retrieval.media.decode import load_frames
from video_retrieval.train.cache_build import build_cache
from video_retrieval.train.cache_data import pair_loader
from video_retrieval.train.cache_items import items_from_captions_jsonl
from video_retrieval.train.cache_reader import FeatureCache
from video_retrieval.train.cache_settings import CacheSettings


def infonce(sim: torch.Tensor) -> torch.Tensor:
    target = torch.arange(sim.shape[0])
    return 0.5 * (F.cross_entropy(sim, target) + F.cross_entropy(sim.t(), target))


def train_epoch(agg, opt, batches) -> tuple[float, int, float]:
    """One epoch; ``batches`` yields (TextFeatures, VideoFeatures). Returns (seconds, steps, loss)."""
    agg.train()
    t0 = time.perf_counter()
    steps, last = 0, float("nan")
    for text, video in batches:
        loss = infonce(agg.similarity(text, video))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        agg.clamp_logit_scale()
        steps, last = steps + 1, loss.item()
    return time.perf_counter() - t0, steps, last


class _OnTheFly(Dataset):
    """One item per video: decoded frames + one random caption (same sampling as the cache)."""

    def __init__(self, videos, captions, num_frames):
        self.videos, self.num_frames = videos, num_frames
        self.caps = [[] for _ in videos]
        for c in captions:
            self.caps[c.video_index].append(c.text)

    def __len__(self):
        return len(self.videos)

    def __getitem__(self, i):
        fr = load_frames(self.videos[i].path, num_frames=self.num_frames)
        cap = self.caps[i][int(torch.randint(len(self.caps[i]), (1,)))]
        return fr.pixels, fr.mask, cap


def e2e_batches(encoder, loader, max_words):
    for items in loader:
        pixels = np.concatenate([p for p, _, _ in items])
        mask = torch.from_numpy(np.stack([m for _, m, _ in items]))
        cls, _ = encoder.encode_frames(pixels)
        frames = cls.reshape(len(items), -1, cls.shape[-1])
        with torch.no_grad():
            tf = encoder.encode_text(
                encoder.tokenize([c for _, _, c in items], context_length=max_words)
            )
        yield TextFeatures(tf.sentence), VideoFeatures(frames, mask)


def cached_batches(loader):
    for batch in loader:
        yield batch["text"], batch["video"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-train", type=int, default=64)
    ap.add_argument("--num-frames", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--model", default="vr-tiny")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers of the e2e loop")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--world", default=None, help="reuse an existing synthetic world folder")
    ap.add_argument("--epochs", type=int, default=2, help="epochs per variant (min is reported)")
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: no OpenMP spinning on busy CPUs)"
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    tmp = Path(tempfile.mkdtemp(prefix="vr_cache_bench_"))
    try:
        world = Path(args.world) if args.world else tmp / "world"
        if not args.world:
            from video_retrieval.datasets.synth_retrieval import generate_retrieval

            t0 = time.perf_counter()
            generate_retrieval(
                world, seed=args.seed, num_train=args.num_train, num_test=8, num_compositional=4
            )
            print(f"generated world: {time.perf_counter() - t0:.1f} s", flush=True)
        videos, captions = items_from_captions_jsonl(world / "captions.jsonl", split="train")
        videos, captions = (
            videos[: args.num_train],
            [c for c in captions if c.video_index < args.num_train],
        )
        encoder = create_encoder(args.model)
        encoder.eval()
        d = encoder.embed_dim

        t0 = time.perf_counter()
        build_cache(
            encoder, videos, captions, tmp / "cache", CacheSettings(num_frames=args.num_frames)
        )
        build_s = time.perf_counter() - t0
        cache = FeatureCache.open(tmp / "cache", encoder=encoder)
        size_mb = sum(f.stat().st_size for f in (tmp / "cache").iterdir()) / 2**20

        def fresh():
            torch.manual_seed(args.seed)
            agg = build_aggregator("seq_transformer", d, max_frames=args.num_frames)
            return agg, torch.optim.AdamW(agg.parameters(), lr=1e-4, weight_decay=0.2)

        agg, opt = fresh()
        loader = pair_loader(
            cache, batch_size=args.batch_size, shuffle=True, words=False, patches=False
        )
        runs = [train_epoch(agg, opt, cached_batches(loader)) for _ in range(args.epochs)]
        cached_s, cached_steps, cached_loss = min(r[0] for r in runs), runs[-1][1], runs[-1][2]
        cached_all = [round(r[0], 3) for r in runs]

        agg, opt = fresh()
        ds = _OnTheFly(videos, captions, args.num_frames)
        e2e_loader = DataLoader(
            ds, batch_size=args.batch_size, shuffle=True, num_workers=args.workers, collate_fn=list
        )
        runs = [
            train_epoch(agg, opt, e2e_batches(encoder, e2e_loader, 32)) for _ in range(args.epochs)
        ]
        e2e_s, e2e_steps, e2e_loss = min(r[0] for r in runs), runs[-1][1], runs[-1][2]
        e2e_all = [round(r[0], 3) for r in runs]

        res = {
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}, threads {torch.get_num_threads()}",
            "load_avg_1min": os.getloadavg()[0],
            "model": args.model,
            "videos": len(videos),
            "captions": len(captions),
            "num_frames": args.num_frames,
            "batch_size": args.batch_size,
            "cache_build_s": round(build_s, 2),
            "cache_size_mb": round(size_mb, 2),
            "cached_epoch_s": round(cached_s, 3),
            "e2e_epoch_s": round(e2e_s, 3),
            "cached_epochs_s": cached_all,
            "e2e_epochs_s": e2e_all,
            "steps_per_epoch": cached_steps,
            "speedup_per_epoch": round(e2e_s / cached_s, 1),
            "break_even_epochs": round(build_s / max(e2e_s - cached_s, 1e-9), 2),
            "final_loss": {"cached": round(cached_loss, 4), "e2e": round(e2e_loss, 4)},
        }
        assert cached_steps == e2e_steps
        if args.json:
            print(json.dumps(res))
        else:
            print(
                f"{res['videos']} videos / {res['captions']} captions, T={args.num_frames}, {args.model}, "
                f"batch {args.batch_size} ({cached_steps} steps/epoch), {res['machine']}, load {res['load_avg_1min']:.1f}\n"
                f"  build cache     : {build_s:8.2f} s  ({size_mb:.2f} MB on disk)\n"
                f"  epoch from cache: {cached_s:8.3f} s  (min of {cached_all})\n"
                f"  epoch on the fly: {e2e_s:8.3f} s  (min of {e2e_all}; decode + frozen encode every step)\n"
                f"  speed-up/epoch  : {res['speedup_per_epoch']}x; cache pays for itself after {res['break_even_epochs']} epochs"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
