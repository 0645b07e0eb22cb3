"""``vr synth {retrieval,moments}``: generate the synthetic video world."""

from __future__ import annotations

import argparse
import json

from video_retrieval.cli.common import add_progress_flag
from video_retrieval.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="synth_kind", metavar="{retrieval,moments}")
    r = sub.add_parser("retrieval", help="Short captioned videos in MSR-VTT layout")
    m = sub.add_parser("moments", help="Long videos with QVHighlights-style moment queries")
    for p in (r, m):
        p.add_argument("--out", required=True, help="output directory")
        p.add_argument("--seed", type=int, default=0, help="random seed of the world")
        add_progress_flag(p)
        p.add_argument("--workers", type=int, default=2, help="parallel encoders (default 2)")
        p.add_argument("--json", action="store_true", help="print a JSON summary")
        p.add_argument(
            "--codec",
            default="h264",
            choices=["h264", "h264_lossless", "mpeg4", "vp9", "hevc", "mjpeg"],
            help="video codec (default h264; h264_lossless keeps temporal pairs exact when decoded)",
        )
    r.add_argument("--num-train", type=int, default=None, help="train videos (default 1200)")
    r.add_argument("--num-test", type=int, default=None, help="test videos (default 200)")
    r.add_argument(
        "--num-compositional", type=int, default=None, help="compositional test videos (100)"
    )
    r.add_argument("--frames", type=int, default=None, help="frames per video (default 32)")
    r.add_argument("--fps", type=float, default=None, help="frames per second (default 8)")
    r.add_argument("--direction-pairs", type=int, default=None, help="test direction pairs")
    r.add_argument("--order-pairs", type=int, default=None, help="test order pairs")
    r.add_argument(
        "--partial",
        type=int,
        default=0,
        metavar="N",
        help="add N long multi-shot videos whose captions each describe one shot "
        "(the test_partial split; at most ~40: shots are unique per (colour, shape, axis))",
    )
    r.add_argument("--partial-fps", type=float, default=None, help="partial videos' fps (1)")
    r.add_argument(
        "--partial-min-duration", type=int, default=None, help="partial videos, seconds (30)"
    )
    r.add_argument(
        "--partial-max-duration", type=int, default=None, help="partial videos, seconds (120)"
    )
    m.add_argument("--num-videos", type=int, default=None, help="videos in all splits")
    m.add_argument("--fps", type=float, default=None, help="frames per second (default 2)")
    m.add_argument("--min-duration", type=int, default=None, help="seconds (default 30)")
    m.add_argument("--max-duration", type=int, default=None, help="seconds (default 150)")
    m.add_argument(
        "--queries-per-video",
        type=int,
        default=None,
        help="queries per video, one per (object, event) at most (default 5)",
    )


def run(args: argparse.Namespace) -> int:
    kind = getattr(args, "synth_kind", None)
    if kind is None:
        raise UserError("choose what to generate: vr synth retrieval|moments --out DIR")
    if kind == "retrieval":
        from video_retrieval.datasets.synth_retrieval import generate_retrieval

        params = {
            "num_train": args.num_train,
            "num_test": args.num_test,
            "num_compositional": args.num_compositional,
            "num_frames": args.frames,
            "fps": args.fps,
            "test_direction_pairs": args.direction_pairs,
            "test_order_pairs": args.order_pairs,
        }
        try:
            partial = {
                "fps": args.partial_fps,
                "min_duration": args.partial_min_duration,
                "max_duration": args.partial_max_duration,
            }
            summary = generate_retrieval(
                args.out,
                seed=args.seed,
                workers=args.workers,
                codec=args.codec,
                num_partial=args.partial,
                partial=partial,
                progress=not args.no_progress,
                **params,
            )
        except (ValueError, RuntimeError) as exc:
            raise UserError(str(exc)) from exc
        if args.json:
            print(json.dumps(summary))
        else:
            v, c, tp = summary["videos"], summary["captions"], summary["temporal_pairs"]
            print(
                f"synth retrieval: {v['train']} train / {v['test']} test / "
                f"{v['test_compositional']} compositional videos, "
                f"{sum(c.values())} captions, {tp['direction']} direction + {tp['order']} order "
                f"pairs -> {summary['out']} ({summary['seconds']:.1f} s)"
            )
            if "partial" in summary:
                pa = summary["partial"]
                print(
                    f"partial relevance: {pa['videos']} videos of {pa['duration_s']['min']:g}-"
                    f"{pa['duration_s']['max']:g} s at {pa['fps']:g} fps, {pa['events']} shots, "
                    f"{c['test_partial']} captions (one shot each)"
                )
        return 0
    from video_retrieval.datasets.synth_moments import generate_moments

    params = {
        "num_videos": args.num_videos,
        "fps": args.fps,
        "min_duration": args.min_duration,
        "max_duration": args.max_duration,
        "queries_per_video": args.queries_per_video,
    }
    try:
        summary = generate_moments(
            args.out, seed=args.seed, workers=args.workers, codec=args.codec,
            progress=not args.no_progress, **params,
        )  # fmt: skip
    except (ValueError, RuntimeError) as exc:
        raise UserError(str(exc)) from exc
    if args.json:
        print(json.dumps(summary))
    else:
        v, q = summary["videos"], summary["queries"]
        print(
            f"synth moments: {sum(v.values())} videos, queries train {q['train']} / "
            f"val {q['val']} / test {q['test']} -> {summary['out']} ({summary['seconds']:.1f} s)"
        )
    return 0
