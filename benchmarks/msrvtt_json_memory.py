"""Memory and time of reading ``MSRVTT_data.json``: ``json.load`` vs the streaming reader.

Writes a file of the real structure and size (``info``, 10,000 ``videos`` with category / url /
video_id / start time / end time / split / id, 200,000 ``sentences`` with caption / video_id /
sen_id in shuffled order, ~25 MB), then, each in a fresh process:

* ``json.load`` of the whole file + the captions of the 9k train list (what the loader did),
* ``read_msrvtt_captions(path, ids)`` (ijson, one sentence at a time; what it does now),

and prints the peak Python heap (tracemalloc) and the growth of the process's peak RSS, with the
time of an untraced run.

    .venv/bin/python benchmarks/msrvtt_json_memory.py [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import subprocess
import sys
import tempfile
from pathlib import Path

WORDS = (
    "a man woman person people car dog cat is are playing talking cooking driving singing "
    "running shown on in the of with and video clip someone game kitchen road stage music"
).split()


def write_data_json(path: Path, n_videos: int = 10000, per_video: int = 20, seed: int = 0):
    rng = random.Random(seed)
    videos = [
        {
            "category": rng.randrange(20),
            "url": f"https://www.youtube.com/watch?v={rng.getrandbits(40):011x}",
            "video_id": f"video{i}",
            "start time": round(rng.uniform(0, 300), 2),
            "end time": round(rng.uniform(300, 330), 2),
            "split": "train" if i < 6513 else ("validate" if i < 7010 else "test"),
            "id": i,
        }
        for i in range(n_videos)
    ]
    sentences = [
        {"caption": " ".join(rng.choices(WORDS, k=rng.randint(5, 14))), "video_id": f"video{v}"}
        for v in range(n_videos)
        for _ in range(per_video)
    ]
    rng.shuffle(sentences)
    for k, s in enumerate(sentences):
        s["sen_id"] = k
    info = {"contributor": "generated", "version": "1.0", "year": "2016"}
    with open(path, "w") as f:
        json.dump({"info": info, "videos": videos, "sentences": sentences}, f)


CHILD = r"""
import json, sys, time, tracemalloc
path, method, traced = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
from video_retrieval.datasets.msrvtt import read_msrvtt_captions
ids = {f"video{i}" for i in range(9000)}
def hwm_kb():  # this process's peak RSS (VmHWM; ru_maxrss would carry the parent's over exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
base = hwm_kb()
if traced:
    tracemalloc.start()
t = time.perf_counter()
if method == "json.load":
    with open(path) as f:
        data = json.load(f)
    caps = {}
    for s in data["sentences"]:
        if s["video_id"] in ids:
            caps.setdefault(s["video_id"], []).append(s["caption"].strip())
else:
    caps = read_msrvtt_captions(path, ids)
dt = time.perf_counter() - t
peak = tracemalloc.get_traced_memory()[1] if traced else 0
rss = hwm_kb() - base
print(json.dumps({"seconds": dt, "heap_peak_mb": peak / 2**20, "rss_growth_mb": rss / 1024,
                  "captions": sum(len(v) for v in caps.values())}))
"""


def measure(path: Path, method: str, traced: bool) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), method, "1" if traced else "0"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "MSRVTT_data.json"
        write_data_json(path)
        size_mb = path.stat().st_size / 2**20
        res = {}
        for method in ("json.load", "streaming"):
            timed = measure(path, method, traced=False)
            traced = measure(path, method, traced=True)
            res[method] = {
                "seconds": round(timed["seconds"], 2),
                "rss_growth_mb": round(timed["rss_growth_mb"], 1),
                "heap_peak_mb": round(traced["heap_peak_mb"], 1),
                "captions": timed["captions"],
            }
    report = {"machine": platform.processor() or platform.machine(), "file_mb": round(size_mb, 1)}
    report.update(res)
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(f"MSRVTT_data.json of the real structure: {size_mb:.1f} MB, 200,000 sentences")
    for m, r in res.items():
        print(
            f"{m:10s} {r['seconds']:6.2f} s  heap peak {r['heap_peak_mb']:7.1f} MB  "
            f"peak RSS growth {r['rss_growth_mb']:7.1f} MB  ({r['captions']} captions kept)"
        )


if __name__ == "__main__":
    main()
