"""``vr search --image / --video / --like``: queries by example (``index.examples``), the
flags and the printing; ``cli.search`` hands them here.

    vr search --image frame.png --index idx                  # the video a frame came from
    vr search "a red circle" --image frame.png --image-weight 0.3 --index idx
    vr search --video clip.mp4 --start 2 --end 4 --index idx # the source of a clip
    vr search --like 17 --index idx                           # more like indexed video 17
    vr search --like 17:2-4 --include-self --index idx
"""

from __future__ import annotations

import json
import sys

from video_retrieval.cli.common import bounded, shown, shown_path


def add_arguments(parser) -> None:
    g = parser.add_argument_group("search by example (README: Search by example)")
    g.add_argument(
        "--image",
        action="append",
        default=None,
        metavar="PATH",
        help="an image (PNG, JPEG, WebP, ...): find the videos it looks like; repeat it for a "
        "query set (averaged); with a QUERY too, text and image are combined",
    )
    g.add_argument(
        "--image-weight",
        type=bounded("image_weight"),
        default=0.5,
        metavar="W",
        help="text + image: the query is normalise((1 - W) * text + W * image) of the two "
        "normalised embeddings (0: the text alone, 1: the image alone)",
    )
    g.add_argument("--video", default=None, metavar="PATH", help="a video clip: find its source and "
                   "videos like it (--start/--end: seconds of it)")  # fmt: skip
    g.add_argument(
        "--like",
        default=None,
        metavar="ID[:S-E]",
        help="more like this: an indexed video's id (from vr search --json), or S-E seconds of "
        "it; uses its stored vectors (nothing is decoded)",
    )
    g.add_argument("--start", type=bounded("seconds"), default=None, metavar="S",
                   help="--video/--like: start of the clip (seconds)")  # fmt: skip
    g.add_argument("--end", type=bounded("seconds"), default=None, metavar="E",
                   help="--video/--like: end of the clip (seconds)")  # fmt: skip
    g.add_argument(
        "--include-self",
        action="store_true",
        help="--video/--like: keep the query video in its own results (left out by default)",
    )


def wanted(args) -> bool:
    """Does the command line ask for a query by example?"""
    return any(getattr(args, n, None) is not None for n in ("image", "video", "like"))


def check_args(args) -> None:
    """Refuse what does not make sense before any model loads (one line each)."""
    from video_retrieval.errors import UserError
    from video_retrieval.limits import check_query

    given = [f for f, v in (("--image", args.image), ("--video", args.video),
                            ("--like", args.like)) if v is not None]  # fmt: skip
    if len(given) > 1:
        raise UserError(f"give one of --image, --video, --like, not {' and '.join(given)}")
    if args.queries is not None:
        raise UserError(f"--queries searches sentences; {given[0]} is one query by example")
    if args.query is not None and args.image is None:
        raise UserError(f"a text QUERY combines with --image only, not with {given[0]}")
    if args.query is not None:
        check_query(args.query)
    if args.image is not None and (args.start is not None or args.end is not None):
        raise UserError("--start/--end are seconds of a --video or --like clip, not of an image")
    if getattr(args, "server", None) or not args.index:
        raise UserError(f"{given[0]} searches a local index: give --index DIR")
    if len(args.index) > 1:
        raise UserError(f"{given[0]} searches one --index")
    if args.rerank_model is not None:
        raise UserError(f"--rerank-model is for text queries, not {given[0]}")


def _print(hits, out: dict) -> None:
    print(f"query ({out['query_kind']}): {shown(out['query'])}")
    if not hits:
        print("no results (the index is empty, or it holds only the query video)")
        return
    print(f"rank  score ({out['score_kind']}, {out['rerank']})  video  moment  matched frame")
    for h in hits:
        print(
            f"{h.rank:>4}  {h.score:+.4f}  {shown_path(h.video)}  "
            f"{h.moment.start:.2f}-{h.moment.end:.2f} s  {h.matched_frame_time:.2f} s"
        )


def run(args) -> int:
    check_args(args)
    from video_retrieval.index.api import Index
    from video_retrieval.index.example_search import example_results_json, resolve_example_rerank
    from video_retrieval.models.weights import warn_if_random

    index = Index.open(args.index[0])
    warn_if_random(index.weights)
    ex = index.example(
        args.query, image=args.image, image_weight=args.image_weight, video=args.video,
        start=args.start, end=args.end, like=args.like,
    )  # fmt: skip
    rerank = resolve_example_rerank(ex, args.rerank)
    hits = index.search_example(
        ex, k=args.k, candidates=args.candidates, rerank=rerank, alpha=args.alpha,
        include_self=args.include_self,
    )  # fmt: skip
    out = {**example_results_json(ex, hits, index, rerank), "weights": index.weights}
    if args.json:
        json.dump(out, sys.stdout, indent=1)
        print()
        return 0
    _print(hits, out)
    return 0
