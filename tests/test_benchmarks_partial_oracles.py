"""benchmarks/partial_oracles.py: the oracles' expected R@1, by hand on a three-video world, and the
figures BENCHMARKS.md quotes for the seed-0 split."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location(
    "partial_oracles", REPO / "benchmarks" / "partial_oracles.py"
)
oracles = importlib.util.module_from_spec(spec)
spec.loader.exec_module(oracles)


def _video(objects, background, captions):
    objs = [{"colour": c, "shape": s, "size": z} for c, s, z in objects]
    return {"objects": objs, "background": {"kind": background}, "captions": captions}


def test_oracles_by_hand():
    videos = {
        # a red disc (small) on a plain background, and a blue square
        "a": _video([("red", "circle", "small"), ("blue", "square", "big")], "plain",
                    ["the small red disc moves left", "a blue box grows on a dark background"]),
        # a red circle too, but big and on stripes
        "b": _video([("red", "circle", "big")], "stripes", ["the red ball sinks"]),
        # a blue square, small, on noise
        "c": _video([("blue", "square", "small")], "noise",
                    ["a small blue block shrinks on a noisy background"]),
    }  # fmt: skip
    # appearance: "red circle" -> a, b (1/2); "blue square" -> a, c (1/2); "red ball" -> a, b
    # (1/2); "blue block" -> a, c (1/2)
    assert oracles.oracle_r1(videos, "appearance") == pytest.approx(50.0)
    # + size and background: "small red disc" -> a (1); "blue box ... dark" -> a (plain: 1);
    # "red ball" (no size, no background) -> a, b (1/2); "small blue block ... noisy" -> c (1)
    assert oracles.oracle_r1(videos, "appearance+size+background") == pytest.approx(87.5)


def test_the_seed_zero_split_as_quoted():
    videos = oracles.partial_videos(0, 36)
    assert len(videos) == 36 and sum(len(v["captions"]) for v in videos.values()) == 328
    assert round(oracles.oracle_r1(videos, "appearance"), 1) == 29.3
    assert round(oracles.oracle_r1(videos, "appearance+size+background"), 1) == 48.2
