"""Search latency: stage-1 ANN over pooled vectors (exact vs HNSW vs IVF) and stage-2 rerank.

Random unit vectors (D=512 by default) stand in for pooled video vectors; queries are other random
unit vectors, searched one at a time (the `vr search` case). For each size: build time, p50/p99
latency of a single-query top-10 search, and recall@10 of HNSW/IVF against the exact result.
Random high-dimensional vectors have no cluster structure, the hardest case for ANN recall.
Rerank: CLIPRerank over 100 candidates x T frames, from in-memory arrays and from fp16 shards
memory-mapped the way `Index.frames` reads them.

    .venv/bin/python benchmarks/search_latency.py --sizes 10000 100000 1000000
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np

from video_retrieval.index.ann import ann_search, build_ann
from video_retrieval.index.rerank import CLIPRerank


def unit(rng, n, d, chunk=100_000):
    out = np.empty((n, d), np.float32)
    for s in range(0, n, chunk):
        x = rng.standard_normal((min(chunk, n - s), d), dtype=np.float32)
        out[s : s + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def latencies(fn, queries) -> np.ndarray:
    fn(queries[:1])  # warm-up
    t = []
    for q in queries:
        t0 = time.perf_counter()
        fn(q[None])
        t.append(time.perf_counter() - t0)
    return np.array(t) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--kinds", nargs="+", default=["flat", "hnsw", "ivf"])
    ap.add_argument("--hnsw-max", type=int, default=1_000_000, help="skip HNSW above this size")
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--frames", type=int, default=32, help="frames per candidate video (rerank)")
    ap.add_argument("--threads", type=int, default=1, help="FAISS OpenMP threads (single queries)")
    ap.add_argument("--ef-search", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--nprobe-fractions", type=float, nargs="+", default=[1 / 16, 1 / 4])
    args = ap.parse_args()
    import faiss

    faiss.omp_set_num_threads(args.threads)

    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}, "
          f"faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads)")  # fmt: skip
    rng = np.random.default_rng(0)
    q = unit(rng, args.queries, args.dim)
    print(f"{'N':>9} {'kind':>5} {'build s':>8} {'p50 ms':>8} {'p99 ms':>8} {'recall@10':>9}")
    for n in args.sizes:
        x = unit(rng, n, args.dim)
        exact_ids = None
        for kind in args.kinds:
            if kind == "hnsw" and n > args.hnsw_max:
                print(f"{n:>9} {kind:>5}   skipped (--hnsw-max)")
                continue
            t0 = time.perf_counter()
            index = build_ann(x, kind)
            build_s = time.perf_counter() - t0
            settings = [("", None)]
            if kind == "hnsw":
                settings = [(f"ef={e}", e) for e in args.ef_search]
            elif kind == "ivf":
                settings = [(f"nprobe={max(1, round(index.nlist * f))}", max(1, round(index.nlist * f)))
                            for f in args.nprobe_fractions]  # fmt: skip
            for label, value in settings:
                if kind == "hnsw":
                    index.hnsw.efSearch = value
                elif kind == "ivf":
                    index.nprobe = value
                lat = latencies(lambda v, index=index: ann_search(index, v, 10), q)
                ids = ann_search(index, q, 10)[1]
                if kind == "flat":
                    exact_ids = ids
                recall = (
                    np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact_ids)])
                    if exact_ids is not None
                    else float("nan")
                )
                print(f"{n:>9} {kind:>5} {build_s:8.1f} {np.percentile(lat, 50):8.3f} "
                      f"{np.percentile(lat, 99):8.3f} {recall:9.3f}  {label}", flush=True)  # fmt: skip
            del index
        del x

    # stage 2: CLIPRerank over the candidates' stored frames
    c, t, d = args.candidates, args.frames, args.dim
    frames = [unit(rng, t, d) for _ in range(c)]
    base = rng.uniform(-1, 1, c)
    rr = CLIPRerank(0.4)
    lat = latencies(lambda v: rr.score(v[0], base, frames), q[:50])
    print(f"CLIPRerank {c} candidates x {t} frames (in memory): p50 {np.percentile(lat, 50):.3f} ms, "
          f"p99 {np.percentile(lat, 99):.3f} ms")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        shards = []
        for s in range(0, c, 10):
            path = os.path.join(tmp, f"{s:06d}.npy")
            np.save(path, np.concatenate(frames[s : s + 10]).astype(np.float16))
            shards.append(path)

        def from_shards(v):
            maps = [np.load(p, mmap_mode="r") for p in shards]
            fr = [
                np.asarray(maps[i // 10][(i % 10) * t : (i % 10 + 1) * t], np.float32)
                for i in range(c)
            ]
            return rr.score(v[0], base, fr)

        lat = latencies(from_shards, q[:50])
        print(f"CLIPRerank {c} candidates x {t} frames (fp16 shards, mmap): p50 "
              f"{np.percentile(lat, 50):.3f} ms, p99 {np.percentile(lat, 99):.3f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
