"""Load test of `vr serve`: concurrent clients searching over loopback.

Starts `vr serve` as a user would (a subprocess bound to 127.0.0.1 on a free port), then runs
``--clients`` concurrent httpx/asyncio clients, each sending ``GET /api/search?q=...&k=10`` with
captions of the collection, one request after another, for ``--seconds`` (at most
``--max-requests`` in all). Prints requests/s, p50/p95/p99 latency, errors (non-200 or transport
failures) and the server's resident memory (VmRSS) after start-up, after the first 1,000
requests and at the end.

The collection (``--build N``, once, cached under ``--work``): N real synthetic videos written by
``generate_retrieval`` (several seeds, the world's vocabulary holds ~1,400 distinct videos per
seed) and indexed with the committed demo model, 8 frames per video, as ``vr demo`` does::

    .venv/bin/python benchmarks/serve_load.py --build 10000 --work data/serve_load
    .venv/bin/python benchmarks/serve_load.py --work data/serve_load --clients 4 --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PER_SEED = 1400


def build(work: Path, n: int, workers: int) -> None:
    from video_retrieval.datasets.synth_retrieval import generate_retrieval

    from video_retrieval.index.api import Index
    from video_retrieval.models.assets import DEMO_RETRIEVAL

    t0 = time.perf_counter()
    folders, made, seed = [], 0, 0
    while made < n:
        take = min(PER_SEED, n - made)
        out = work / f"world{seed:02d}"
        if not (out / "captions.jsonl").is_file():
            generate_retrieval(
                out, seed=1000 + seed, num_train=0, num_test=take, num_compositional=0,
                min_captions=1, max_captions=2, workers=2,
            )  # fmt: skip
        folders.append(out / "videos")
        made += take
        seed += 1
    t1 = time.perf_counter()
    print(f"generated {n} videos in {len(folders)} worlds: {t1 - t0:.0f} s", flush=True)
    index = Index.build(
        folders, work / "index", checkpoint=str(DEMO_RETRIEVAL), num_frames=8, workers=workers,
    )  # fmt: skip
    print(f"indexed {len(index)} videos: {time.perf_counter() - t1:.0f} s", flush=True)
    caps = []
    for f in folders:
        caps += [json.loads(x)["caption"] for x in (f.parent / "captions.jsonl").open()]
    (work / "queries.json").write_text(json.dumps(sorted(set(caps))))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(index: Path, port: int, extra: list[str]) -> subprocess.Popen:
    import httpx

    cmd = [sys.executable, "-m", "video_retrieval.cli", "serve", "--index", str(index),
           "--host", "127.0.0.1", "--port", str(port), *extra]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.perf_counter()
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"vr serve exited: {proc.stderr.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                print(f"server up in {time.perf_counter() - t0:.1f} s (process start included)")
                return proc
        except httpx.TransportError:
            pass
        if time.perf_counter() - t0 > 300:
            proc.kill()
            raise SystemExit("vr serve did not come up in 300 s")
        time.sleep(0.2)


async def load(base, queries, clients: int, seconds: float, cap: int, pid: int, rerank: str):
    import httpx

    lat: list[float] = []
    errors: list[str] = []
    rss_at_1000: list[float] = []
    deadline = time.perf_counter() + seconds
    sent = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(i: int, http: httpx.AsyncClient) -> None:
        nonlocal sent
        j = i
        while time.perf_counter() < deadline and sent < cap:
            sent += 1
            q = queries[j % len(queries)]
            j += clients
            t0 = time.perf_counter()
            try:
                r = await http.get("/api/search", params={"q": q, "k": 10, "rerank": rerank})
                ok = r.status_code == 200 and len(r.json()["results"]) == 10
                if not ok:
                    errors.append(f"{r.status_code} {r.text[:200]}")
            except httpx.HTTPError as exc:
                errors.append(type(exc).__name__)
            lat.append(time.perf_counter() - t0)
            if len(lat) == 1000:
                rss_at_1000.append(rss_mb(pid))

    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(i, http) for i in range(clients)))
        wall = time.perf_counter() - t0
    return np.array(lat) * 1e3, errors, wall, (rss_at_1000 or [float("nan")])[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("data/serve_load"))
    ap.add_argument("--build", type=int, default=0, help="generate and index N videos first")
    ap.add_argument("--workers", type=int, default=1, help="decode workers while indexing")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--max-requests", type=int, default=20_000)
    ap.add_argument("--rerank", default="auto", help="auto (as vr search) | none | cliprerank")
    ap.add_argument("--threads", type=int, default=1, help="vr serve --threads (default 1)")
    args = ap.parse_args()
    if args.build:
        build(args.work, args.build, args.workers)
    index = args.work / "index"
    queries = json.loads((args.work / "queries.json").read_text())
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
          f"load {os.getloadavg()[0]:.1f}; python {platform.python_version()}")  # fmt: skip
    port = free_port()
    proc = start_server(index, port, ["--threads", str(args.threads)])
    try:
        base = f"http://127.0.0.1:{port}"
        import httpx

        info = httpx.get(f"{base}/api/info").json()
        rss0 = rss_mb(proc.pid)
        lat, errors, wall, rss1k = asyncio.run(
            load(
                base, queries, args.clients, args.seconds, args.max_requests, proc.pid, args.rerank
            )
        )
        rss_end = rss_mb(proc.pid)
        timings = httpx.get(f"{base}/api/info").json()["timings"]
    finally:
        proc.terminate()
        proc.wait(30)
    n = len(lat)
    print(f"index: {info['videos']} videos, {info['frames']} frames, ann {info['ann']}")
    print(f"clients {args.clients}, rerank {args.rerank}, threads {args.threads}: {n} requests in {wall:.1f} s = "
          f"{n / wall:.1f} req/s; errors {len(errors)}")  # fmt: skip
    print(f"latency ms: p50 {np.percentile(lat, 50):.1f}  p95 {np.percentile(lat, 95):.1f}  "
          f"p99 {np.percentile(lat, 99):.1f}  max {lat.max():.1f}")  # fmt: skip
    steps = "  ".join(f"{k} {v['mean_ms']:.2f}" for k, v in timings.items())
    print(f"server ms per step (mean): {steps}")
    print(f"server RSS MB: after start-up {rss0:.0f}, after 1000 requests {rss1k:.0f}, "
          f"at the end {rss_end:.0f}")  # fmt: skip
    if errors:
        print("first errors:", errors[:5])


if __name__ == "__main__":
    main()
