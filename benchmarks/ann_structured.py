"""Approximate search on vectors with the structure of real video embeddings, 10k to 1M.

The base set is real: the synthetic world's videos (``vr synth retrieval --seed 0``, 1,500
videos) pooled by the trained demo model (``video_retrieval/assets/demo_retrieval.ckpt``, vr-tiny
+ seqTransf, D=128), and 1,000 of the world's captions through the same model's text tower (the
text queries). Larger collections are the base videos *replicated with noise*: each new vector
is ``normalise(b + sigma * g)`` for a random base vector ``b`` and Gaussian ``g``, with ``sigma``
set so that a new vector is as close to its base as a real video is to its nearest other real
video (mean cosine). The script prints the check: mean cosine of the 1st / 5th / 10th nearest
neighbour in the real set and in a replicated set of the same size. For the cost of CLIP
ViT-B/32-sized vectors, every vector is then mapped into ``--dim`` (512) dimensions by a random
orthonormal map, which keeps every inner product (the neighbour structure) unchanged.

Per size and kind: the index is built and tuned as ``vr index`` does it (``ann.build_measured``:
recall@10 measured on 1,000 collection vectors held out from their own results + the text
queries, the search parameter raised until the target recall), then measured on *other*
queries: 1,000 new replicated vectors never indexed, and the text queries. Latency is one query
at a time through the production stage-1 path (``ann.ann_search``, exact re-rank of compressed
kinds from the float vectors) with one FAISS thread; throughput is one batch of 1,000 queries
with all threads. Memory is the FAISS index (serialised size up to 100k, the estimate of
``ann.memory_estimate`` beside the measured RSS growth at 1M).

    .venv/bin/python benchmarks/ann_structured.py --sizes 10000 100000
    .venv/bin/python benchmarks/ann_structured.py --sizes 1000000 --kinds flat ivf ivf-sq8 ivf-pq hnsw-sq8 hnsw
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
from search_latency import latencies  # benchmarks/ is the script's folder: on sys.path

from video_retrieval.index.ann import (
    ann_search,
    format_bytes,
    memory_estimate,
    search_params,
    set_search_params,
)
from video_retrieval.index.ann_recall import AnnOptions, build_measured

ROOT = Path(__file__).resolve().parents[1]


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def base_vectors(world: Path, work: Path, n_text: int) -> tuple[np.ndarray, np.ndarray]:
    """(video vectors [N0,D], caption vectors [n_text,D]) of the world under the demo model."""
    cache = work / "base.npz"
    if cache.exists():
        z = np.load(cache)
        return z["videos"], z["texts"]
    from video_retrieval.index.api import Index
    from video_retrieval.index.queries import encode_queries
    from video_retrieval.index.rerank import uniform_indices
    from video_retrieval.models.assets import DEMO_RETRIEVAL

    if not (world / "videos").is_dir():
        import subprocess
        import sys

        subprocess.run([sys.executable, "-m", "video_retrieval.cli", "synth", "retrieval",
                        "--out", str(world), "--seed", "0"], check=True)  # fmt: skip
    t0 = time.perf_counter()
    idx = Index.build([world / "videos"], work / "world_index", checkpoint=str(DEMO_RETRIEVAL),
                      workers=1, progress=False)  # fmt: skip
    print(
        f"indexed {len(idx)} world videos with the demo model in {time.perf_counter() - t0:.0f} s"
    )
    caps = [json.loads(x)["caption"] for x in open(world / "captions.jsonl") if x.strip()]
    caps = [caps[i] for i in uniform_indices(len(caps), n_text)]
    enc, agg = idx.models()
    texts = np.stack([q.embedding for q in encode_queries(enc, agg, caps)])
    videos = np.asarray(idx.pooled, np.float32)
    np.savez(cache, videos=videos, texts=texts)
    return videos, texts


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def kth_nn_cos(x: np.ndarray, ks=(1, 5, 10)) -> list[float]:
    """Mean cosine of the k-th nearest other vector, for each k."""
    import faiss

    s, i = faiss.knn(x, x, max(ks) + 1, metric=faiss.METRIC_INNER_PRODUCT)
    s = s[:, 1:]  # drop self (unit vectors: self is the top)
    return [float(s[:, k - 1].mean()) for k in ks]


def calibrate_sigma(base: np.ndarray, target_cos: float, seed: int = 0) -> float:
    """sigma with mean cos(normalise(b + sigma g), b) == target_cos (bisection)."""
    rng = np.random.default_rng(seed)
    g = rng.standard_normal(base.shape).astype(np.float32)
    lo, hi = 0.0, 10.0
    for _ in range(60):
        mid = (lo + hi) / 2
        c = float(np.mean(np.sum(unit(base + mid * g) * base, axis=1)))
        lo, hi = (mid, hi) if c > target_cos else (lo, mid)
    return (lo + hi) / 2


def replicate(base, n, sigma, lift, seed, chunk=100_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, lift.shape[1] if lift is not None else base.shape[1]), np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        b = base[rng.integers(0, len(base), m)]
        y = unit(b + sigma * rng.standard_normal(b.shape).astype(np.float32))
        out[s : s + m] = y @ lift if lift is not None else y
    return out


def recall(ids, x, q, thr, k=10) -> float:
    hits = []
    for j in range(len(q)):
        got = ids[j][ids[j] >= 0][:k]
        hits.append(np.count_nonzero(x[got] @ q[j] >= thr[j] - 1e-5) / k)
    return float(np.mean(hits))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--kinds", nargs="+",
                    default=["flat", "hnsw", "ivf", "fp16", "sq8", "hnsw-sq8", "ivf-sq8", "ivf-pq"])  # fmt: skip
    ap.add_argument("--world", type=Path, default=ROOT / "data" / "synth")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "ann_structured")
    ap.add_argument("--dim", type=int, default=512, help="lift to this many dims (0: native)")
    ap.add_argument("--target-recall", type=float, default=0.95)
    ap.add_argument("--queries", type=int, default=1000, help="held-out video queries")
    ap.add_argument("--text-queries", type=int, default=1000)
    ap.add_argument("--latency-queries", type=int, default=300)
    ap.add_argument("--json", type=Path, default=None, help="append result rows (JSON lines)")
    args = ap.parse_args()
    import faiss

    args.work.mkdir(parents=True, exist_ok=True)
    threads = faiss.omp_get_max_threads()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, load "
          f"{os.getloadavg()[0]:.1f}, faiss {faiss.__version__}")  # fmt: skip
    videos, texts = base_vectors(args.world, args.work, args.text_queries)
    d0 = videos.shape[1]
    real = kth_nn_cos(videos)
    sigma = calibrate_sigma(videos, real[0])
    synth = kth_nn_cos(replicate(videos, len(videos), sigma, None, seed=7))
    print(f"base: {len(videos)} world videos, D={d0}; sigma={sigma:.4f}")
    print("mean cosine of the 1st/5th/10th nearest neighbour: real "
          + "/".join(f"{c:.3f}" for c in real) + ", replicated (same size) "
          + "/".join(f"{c:.3f}" for c in synth))  # fmt: skip
    lift = None
    if args.dim and args.dim != d0:
        q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((args.dim, d0)))
        lift = np.ascontiguousarray(q.T, dtype=np.float32)  # [d0, dim], orthonormal rows
    text_q = texts @ lift if lift is not None else texts
    print(f"{'N':>8} {'kind':>8} {'build s':>8} {'memory':>10} {'params':>28} {'tuned r@10':>10} "
          f"{'video r@10':>10} {'text r@10':>9} {'p50 ms':>7} {'p99 ms':>7} {'batch q/s':>9}")  # fmt: skip
    for n in args.sizes:
        x = replicate(videos, n, sigma, lift, seed=11)
        held = replicate(videos, args.queries, sigma, lift, seed=12)
        queries = np.concatenate([held, text_q]).astype(np.float32)
        t0 = time.perf_counter()
        s_exact, _ = faiss.knn(queries, x, 10, metric=faiss.METRIC_INNER_PRODUCT)
        gt_s = time.perf_counter() - t0
        thr = s_exact[:, 9]
        nv = len(held)
        print(f"# N={n}: exact top-10 of {len(queries)} queries in {gt_s:.1f} s", flush=True)
        for kind in args.kinds:
            gc.collect()
            r0 = rss()
            faiss.omp_set_num_threads(threads)
            t0 = time.perf_counter()
            index, info = build_measured(
                x, AnnOptions(kind=kind, target_recall=args.target_recall, text_queries=text_q),
                log=lambda m: print(f"  ({m})"),
            )  # fmt: skip
            build_s = time.perf_counter() - t0
            grown = rss() - r0
            if n <= 100_000:
                mem = len(faiss.serialize_index(index))
                mem_s = format_bytes(mem)
            else:
                mem = memory_estimate(info["type"], n, x.shape[1])
                mem_s = f"{format_bytes(mem)} (rss +{format_bytes(max(grown, 0))})"
            params, depth = search_params(info)
            set_search_params(index, params)

            def stage1(q, k=10, index=index, depth=depth, x=x):
                if depth:
                    return ann_search(index, q, k, rerank_from=x, rerank=depth)
                return ann_search(index, q, k)

            _, ids = stage1(queries)
            r_video = recall(ids[:nv], x, queries[:nv], thr[:nv])
            r_text = recall(ids[nv:], x, queries[nv:], thr[nv:])
            t0 = time.perf_counter()
            stage1(queries)
            qps = len(queries) / (time.perf_counter() - t0)
            faiss.omp_set_num_threads(1)
            lq = np.concatenate([held[: args.latency_queries // 2],
                                 text_q[: args.latency_queries // 2]])  # fmt: skip
            lat = latencies(stage1, lq)
            faiss.omp_set_num_threads(threads)
            shown = info["type"] if info["type"] == kind else f"{kind}->{info['type']}"
            ptxt = ",".join(f"{k}={v}" for k, v in info["params"].items()
                            if k in ("efSearch", "nprobe", "rerank", "nlist"))  # fmt: skip
            print(f"{n:>8} {shown:>8} {build_s:8.1f} {mem_s:>10} {ptxt:>28} "
                  f"{info['recall_at_10']:10.3f} {r_video:10.3f} {r_text:9.3f} "
                  f"{np.percentile(lat, 50):7.3f} {np.percentile(lat, 99):7.3f} {qps:9.0f}",
                  flush=True)  # fmt: skip
            if args.json:
                row = {"n": n, "kind": kind, "info": info, "build_s": build_s, "memory": mem,
                       "recall_video": r_video, "recall_text": r_text,
                       "p50_ms": float(np.percentile(lat, 50)),
                       "p99_ms": float(np.percentile(lat, 99)), "batch_qps": qps,
                       "load": os.getloadavg()[0]}  # fmt: skip
                with open(args.json, "a") as f:
                    f.write(json.dumps(row) + "\n")
            del index
        del x


if __name__ == "__main__":
    main()
