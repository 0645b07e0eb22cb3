"""An index for the ``vr serve`` tests: a small synthetic collection (captions with a known
video) plus one video per held-out codec whose frames carry their own index in their colour."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from _video_util import write_index_video

# name -> (codec, extension, plays in browsers as it is)
HELD_OUT = {
    "h264_mp4": ("h264", "mp4", True),
    "vp9_webm": ("vp9", "webm", True),
    "mpeg4_avi": ("mpeg4", "avi", False),
    "mjpeg_mkv": ("mjpeg", "mkv", False),
    "hevc_mp4": ("hevc", "mp4", False),
}
CODEC_FPS = 25
CODEC_FRAMES = 100  # 4 s: seeks to 2 s land mid-file


def build_serve_index(root: Path, num_videos: int = 8, seed: int = 11) -> dict:
    """Write the collection and index it with the committed demo model (a few seconds)."""
    from video_retrieval.datasets.synth_retrieval import generate_retrieval

    from video_retrieval.index.api import Index
    from video_retrieval.models.assets import DEMO_RETRIEVAL

    coll = root / "collection"
    generate_retrieval(
        coll, seed=seed, num_train=0, num_test=num_videos, num_compositional=0,
        min_captions=1, max_captions=2,
    )  # fmt: skip
    codecs = root / "codecs"
    paths = {}
    for name, (codec, ext, _) in HELD_OUT.items():
        extra = {"x265-params": "log-level=error:keyint=25"} if codec == "hevc" else None
        paths[name] = write_index_video(
            codecs / f"{name}.{ext}", n=CODEC_FRAMES, fps=CODEC_FPS, codec=codec, h=96, w=128,
            gop=25, extra_args=extra,
        ).resolve()  # fmt: skip
    index = Index.build(
        [coll / "videos", codecs], root / "index", checkpoint=str(DEMO_RETRIEVAL),
        num_frames=8, progress=False,
    )  # fmt: skip
    rows = {v["path"]: i for i, v in enumerate(index.videos)}
    captions = [json.loads(line) for line in (coll / "captions.jsonl").read_text().splitlines()]
    for c in captions:
        c["id"] = rows[str((coll / c["video"]).resolve())]
    return {
        "index": root / "index",
        "captions": captions,
        "codec_ids": {name: rows[str(p)] for name, p in paths.items()},
        "codec_paths": paths,
    }


def shared_serve_index(tmp_path_factory) -> dict:
    """``build_serve_index`` once per test session (the API and browser tests share it)."""
    root = tmp_path_factory.getbasetemp() / "serve_index"
    done = root / "built.json"
    if not done.is_file():
        shutil.rmtree(root, ignore_errors=True)  # a half-built one from an interrupted run
        info = build_serve_index(root)
        done.write_text(json.dumps(info, default=str))
    info = json.loads(done.read_text())
    info["index"] = Path(info["index"])
    info["codec_paths"] = {k: Path(v) for k, v in info["codec_paths"].items()}
    return info
