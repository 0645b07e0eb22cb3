"""Oracles of the partial-relevance split: what reading a caption's words alone is worth.

An oracle reads some facts of each caption and picks uniformly at random among the videos of the
split that show a matching object in some shot; its expected R@1 is the mean over captions of
1 / (number of matching videos) (the caption's own video always matches). Two oracles:

* ``appearance``: colour and shape;
* ``appearance+size+background``: also the size word (small / big) and the background word
  (plain, noisy, striped) when the caption says them (60% and 25% of captions).

Everything a single frame shows is in the second; what is left to it is the motion. The split is
planned from its seed (no video is rendered), the same as ``vr synth retrieval --partial N``::

    python benchmarks/partial_oracles.py --seed 0 --partial 36
"""

from __future__ import annotations

import argparse
import json

from video_retrieval.datasets.synth_captions import parse_caption
from video_retrieval.datasets.synth_retrieval import plan_retrieval

ORACLES = ("appearance", "appearance+size+background")


def matches(facts: dict, video: dict, oracle: str) -> bool:
    """Does some shot of ``video`` show an object with the caption's ``facts`` (``oracle``'s)?"""
    colour, shape = facts["colours"][0], facts["shapes"][0]
    size = facts["sizes"][0] if facts["sizes"] else None
    for obj in video["objects"]:
        if (obj["colour"], obj["shape"]) != (colour, shape):
            continue
        if oracle == "appearance":
            return True
        if size is not None and obj["size"] != size:
            continue
        if facts["background"] is not None and facts["background"] != video["background"]["kind"]:
            continue
        return True
    return False


def oracle_r1(videos: dict[str, dict], oracle: str) -> float:
    """Expected t2v R@1 (percent) of ``oracle`` over every caption of ``videos`` (id -> spec
    with ``captions``, ``objects``, ``background``)."""
    scores = []
    for vid, spec in videos.items():
        for caption in spec["captions"]:
            facts = parse_caption(caption)
            hits = [v for v, s in videos.items() if matches(facts, s, oracle)]
            assert vid in hits, (vid, caption)
            scores.append(1.0 / len(hits))
    return 100.0 * sum(scores) / len(scores)


def partial_videos(seed: int, n: int) -> dict[str, dict]:
    world = plan_retrieval(seed, num_partial=n, num_train=0, num_test=0, num_compositional=0)
    return {v: s for v, s in world["videos"].items() if s.get("split") == "test_partial"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--partial", type=int, default=36, help="videos in the split (default 36)")
    args = ap.parse_args()
    videos = partial_videos(args.seed, args.partial)
    captions = sum(len(s["captions"]) for s in videos.values())
    out = {"videos": len(videos), "captions": captions, "chance_R1": 100.0 / len(videos)}
    for oracle in ORACLES:
        out[f"{oracle}_R1"] = round(oracle_r1(videos, oracle), 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
