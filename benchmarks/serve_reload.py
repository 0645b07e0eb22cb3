"""What an index update costs a running `vr serve`: reload time and search latency meanwhile.

Builds (once, cached under ``--work``) an index of ``--videos`` synthetic videos with the
committed demo model, 8 frames per video, as ``vr demo`` does, but leaves the last ``--add`` of
them out. Then loads the server's state (``load_state``: the models, the ANN, the rerankers),
starts a thread that searches captions of the collection one after another
(``SearchService.search``, the code behind ``GET /api/search``), runs ``vr index`` again to add
the held-back videos (``Index.build``), and reloads (``ServiceState.reload_if_changed``, what the
watcher and ``POST /api/reload`` call). Prints one JSON line: indexing and reload seconds, search
latency p50/p99 before, during indexing, during the reload and after, and the searches that
failed (must be 0)::

    .venv/bin/python benchmarks/serve_reload.py --work data/serve_reload --videos 500 --add 50
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import threading
import time
from pathlib import Path

import numpy as np


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="data/serve_reload")
    ap.add_argument("--videos", type=int, default=500, help="at most 1400 (one synthetic world)")
    ap.add_argument("--add", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch
    from video_retrieval.datasets.synth_retrieval import generate_retrieval

    from video_retrieval.index.api import Index
    from video_retrieval.models.assets import DEMO_RETRIEVAL
    from video_retrieval.web.config import ServeConfig
    from video_retrieval.web.state import load_state

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    world = work / "world"
    if not (world / "captions.jsonl").is_file():
        generate_retrieval(
            world, seed=3000, num_train=0, num_test=args.videos, num_compositional=0,
            min_captions=1, max_captions=2, workers=2,
        )  # fmt: skip
    videos = sorted((world / "videos").iterdir())
    first, rest = videos[: -args.add], videos
    index_dir = work / "index"
    shutil.rmtree(index_dir, ignore_errors=True)

    def index(paths):
        return Index.build(
            [str(p) for p in paths], index_dir, checkpoint=str(DEMO_RETRIEVAL), num_frames=8,
            progress=False,
        )  # fmt: skip

    index(first)
    state = load_state(ServeConfig(index=index_dir, cache_dir=work / "cache", reload_interval=0))
    captions = [json.loads(x)["caption"] for x in (world / "captions.jsonl").open()]
    phase = ["before"]
    lat: dict[str, list[float]] = {}
    errors: list[str] = []
    stop = threading.Event()

    def searcher():
        i = 0
        while not stop.is_set():
            name = phase[0]
            t0 = time.perf_counter()
            try:
                state.search.search(captions[i % len(captions)], k=10)
            except Exception as exc:  # noqa: BLE001  (counted, not raised: that is the figure)
                errors.append(f"{type(exc).__name__}: {exc}")
            lat.setdefault(name, []).append((time.perf_counter() - t0) * 1e3)
            i += 1

    thread = threading.Thread(target=searcher, daemon=True)
    thread.start()
    time.sleep(3)
    phase[0] = "indexing"
    t0 = time.perf_counter()
    index(rest)
    t1 = time.perf_counter()
    phase[0] = "reload"
    reloaded = state.reload_if_changed()
    t2 = time.perf_counter()
    phase[0] = "after"
    time.sleep(3)
    stop.set()
    thread.join()

    def pct(xs):
        return {
            "searches": len(xs),
            "p50_ms": round(float(np.percentile(xs, 50)), 2),
            "p99_ms": round(float(np.percentile(xs, 99)), 2),
        }

    print(
        json.dumps(
            {
                "cpu": cpu_name(),
                "threads": args.threads,
                "videos_before": len(first),
                "videos_after": len(state.index),
                "reloaded": reloaded,
                "index_add_seconds": round(t1 - t0, 2),
                "reload_seconds": round(t2 - t1, 3),
                "latency": {k: pct(v) for k, v in lat.items()},
                "failed_searches": len(errors),
                "first_error": errors[0] if errors else None,
            }
        )
    )


if __name__ == "__main__":
    main()
