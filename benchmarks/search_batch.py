"""Batch queries: ``Index.search_batch`` (queries encoded in batches, one FAISS batch search per
batch) against ``Index.search`` one query at a time, on a real index: the synthetic world's
1,500 videos indexed with the demo model (built by ``benchmarks/ann_structured.py`` under
``runs/ann_structured/world_index``, or ``--index DIR``), queries = the world's captions.

Prints queries/s for each reranker, and the share of time in text encoding, stage 1 and stage 2
for the batch path.

    .venv/bin/python benchmarks/search_batch.py --queries 1000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from video_retrieval.index.api import Index
from video_retrieval.index.queries import encode_queries
from video_retrieval.index.rerank import uniform_indices
from video_retrieval.index.search import get_reranker

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--index", type=Path, default=ROOT / "runs" / "ann_structured" / "world_index")
    ap.add_argument("--captions", type=Path, default=ROOT / "data" / "synth" / "captions.jsonl")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--single", type=int, default=200, help="queries searched one at a time")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    caps = [json.loads(x)["caption"] for x in open(args.captions) if x.strip()]
    caps = [caps[i] for i in uniform_indices(len(caps), args.queries)]
    idx = Index.open(args.index)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}, "
          f"torch threads {torch.get_num_threads()}; index {len(idx)} videos, "
          f"ANN {idx.ann_info['type']}")  # fmt: skip
    idx.models()
    idx.ann()
    for rerank in ("none", "cliprerank"):
        get_reranker(idx, rerank, 0.4)
        idx.search(caps[0], rerank=rerank)  # warm-up
        t0 = time.perf_counter()
        for q in caps[: args.single]:
            idx.search(q, k=10, rerank=rerank)
        one = args.single / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        out = idx.search_batch(caps, k=10, rerank=rerank, batch_size=args.batch_size)
        batch = len(caps) / (time.perf_counter() - t0)
        assert len(out) == len(caps)
        print(f"rerank {rerank:>10}: one at a time {one:7.1f} queries/s, search_batch "
              f"{batch:7.1f} queries/s ({batch / one:.1f}x)")  # fmt: skip
    # where the batch path spends its time
    enc, agg = idx.models()
    t0 = time.perf_counter()
    qf = encode_queries(enc, agg, caps, batch_size=args.batch_size)
    t_enc = time.perf_counter() - t0
    t0 = time.perf_counter()
    idx.ann_search(np.stack([q.embedding for q in qf]), 100)
    t_ann = time.perf_counter() - t0
    t0 = time.perf_counter()
    for q in caps[:50]:
        enc.encode_text(enc.tokenize([q]))
    t_one = (time.perf_counter() - t0) / 50
    print(f"text encoding: {len(caps) / t_enc:.0f} queries/s in batches of {args.batch_size}, "
          f"{1 / t_one:.0f} queries/s one at a time; stage 1 (top 100 of {len(idx)}): "
          f"{len(caps) / t_ann:.0f} queries/s as one batch")  # fmt: skip


if __name__ == "__main__":
    main()
