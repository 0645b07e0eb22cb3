"""Cold start of the CLI: a new `vr search` process against an index on disk, the same search
through a running `vr serve` (`--server`), a usage error, and `--help`. Wall seconds per command
(median of --repeat runs), each a fresh process, as a user's shell starts it.

    python benchmarks/cli_cold.py                  # builds a small demo collection under build/
    python benchmarks/cli_cold.py --repeat 5

Prints one line per command and the machine (CPU, load average: the figures move with both).
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VR = str(Path(sys.executable).with_name("vr"))
QUERY = "the white ball sinks"


def timed(argv: list[str], repeat: int, ok=(0,)) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        r = subprocess.run(argv, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if r.returncode not in ok:
            raise SystemExit(f"{argv} exited {r.returncode}: {r.stderr}")
    return statistics.median(times)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "build" / "bench_cli"))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    out = Path(args.out)
    index = out / "index"
    if not (index / "manifest.json").is_file():
        subprocess.run([VR, "demo", "--out", str(out), "--searches", "0"], check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
    port = free_port()
    server = subprocess.Popen([VR, "serve", "--index", str(index), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"{url}/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        rows = [
            ("vr search (cold process, index on disk)", [VR, "search", QUERY, "--index", str(index)], (0,)),
            ("vr search --server (a running vr serve)", [VR, "search", QUERY, "--server", url], (0,)),
            ("vr search '' (usage error)", [VR, "search", "", "--index", str(index)], (2,)),
            ("vr search --rerank foo (usage error)", [VR, "search", "x", "--index", str(index), "--rerank", "foo"], (2,)),
            ("vr --help", [VR, "--help"], (0,)),
            ("vr train --help", [VR, "train", "--help"], (0,)),
            ("python -c 'import torch' (for scale)", [sys.executable, "-c", "import torch"], (0,)),
        ]  # fmt: skip
        print(f"# {cpu_name()}, {os.cpu_count()} cores, load average "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; median of {args.repeat}")  # fmt: skip
        for name, argv, ok in rows:
            print(f"{name:<45} {timed(argv, args.repeat, ok):6.2f} s", flush=True)
    finally:
        server.terminate()
        server.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
