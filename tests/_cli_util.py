"""Helpers shared by the tests that drive the real ``vr`` command in-process."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from video_retrieval.cli import main
from video_retrieval.media.write import write_video

TINY = ["--model", "vr-tiny", "--random-weights"]


def box_video(path, seed: int, seconds: float = 2.0, fps: float = 10.0) -> Path:
    """A coloured box sliding left or right; ``seed`` picks colour and direction."""
    rng = np.random.default_rng(seed)
    n = int(seconds * fps)
    x = np.full((n, 48, 64, 3), 20, np.uint8)
    colour = rng.integers(60, 255, 3).astype(np.uint8)
    for t in range(n):
        pos = int(48 * t / max(n - 1, 1))
        pos = pos if seed % 2 else 48 - pos
        x[t, 16:32, pos : pos + 16] = colour
    return write_video(path, x, fps=fps, gop=5)


def one_line_error(err: str, *needles: str) -> str:
    """The single stderr line of a failed command (warnings aside), which contains ``needles``."""
    lines = [x for x in err.strip().splitlines() if not x.startswith("warning:")]
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """``vr ARGV`` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def tiny_index(vids, d, *extra) -> Path:
    """An index of ``vids`` with the random ``vr-tiny`` model, 2 fps, no DataLoader workers."""
    assert main(["index", str(vids), "--index", str(d), *TINY, "--fps", "2", "--workers", "0",
                 "--json", *extra]) == 0  # fmt: skip
    return d
