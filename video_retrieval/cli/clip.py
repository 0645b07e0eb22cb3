"""``vr clip SOURCE START END OUT.mp4``: cut a moment out of a video (``media.cut``).

SOURCE is an index id (with ``--index DIR``: the ``id`` of ``vr search --json``) or a video
file. The default cut is exact (re-encoded H.264, the clip is END - START long within one
frame); ``--copy`` copies the packets from the keyframe at or before START and says how far the
start moved.
"""

from __future__ import annotations

import json

from video_retrieval.cli.common import bounded, shown

#: the longest clip ``vr clip`` cuts unless told otherwise (seconds)
DEFAULT_MAX_SECONDS = 600.0


def add_arguments(parser) -> None:
    parser.add_argument(
        "source", metavar="SOURCE", help="an index id (with --index) or a video file"
    )
    parser.add_argument("start", type=bounded("seconds"), metavar="START", help="seconds")
    parser.add_argument("end", type=bounded("seconds"), metavar="END", help="seconds")
    parser.add_argument("out", metavar="OUT.mp4", help="the MP4 to write (replaced if it exists)")
    parser.add_argument("--index", default=None, metavar="DIR",
                        help="the index SOURCE is an id of")  # fmt: skip
    parser.add_argument(
        "--copy",
        action="store_true",
        help="stream copy (no re-encoding: fast, lossless) from the keyframe at or before START; "
        "says how far the start moved",
    )
    parser.add_argument(
        "--max-seconds",
        type=bounded("max_seconds"),
        default=DEFAULT_MAX_SECONDS,
        help="refuse a longer range",
    )
    parser.add_argument("--json", action="store_true", help="print what was written as JSON")


def source_path(source: str, index_dir: str | None) -> tuple[str, int | None]:
    """(video path, index id or None) of SOURCE."""
    from pathlib import Path

    from video_retrieval.errors import UserError

    if index_dir is None:
        if source.strip().isdigit() and not Path(source).is_file():
            raise UserError(f"SOURCE {source} is an index id: give --index DIR (or a video file)")
        if not Path(source).is_file():
            raise UserError(f"no such video file: {source}")
        return source, None
    if not source.strip().isdigit():
        if Path(source).is_file():
            return source, None
        raise UserError(f"SOURCE {source!r} is neither an index id nor a video file")
    from video_retrieval.index.store import IndexStore

    index = IndexStore.open(index_dir)
    row = int(source)
    if not 0 <= row < len(index):
        raise UserError(f"no video {row} in index {index_dir} (ids are 0..{len(index) - 1})")
    path = index.videos[row]["path"]
    if not Path(path).is_file():
        raise UserError(f"video {row} ({shown(path)}) is no longer on disk")
    return path, row


def run(args) -> int:
    from video_retrieval.media.cut import cut_clip

    path, row = source_path(args.source, args.index)
    cut = cut_clip(path, args.start, args.end, args.out, copy=args.copy,
                   max_seconds=args.max_seconds)  # fmt: skip
    if args.json:
        print(json.dumps({**cut.to_dict(), "video": path, "id": row}, indent=1))
    else:
        print(shown(cut.line()))
    return 0
