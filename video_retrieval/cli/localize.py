"""``vr localize VIDEO "QUERY"``: moments [start, end, score] of a query inside one video.

Batch mode: ``vr localize [VIDEO] --queries FILE --out preds.jsonl`` localizes many queries,
encoding each video once, and writes the QVHighlights prediction format (one JSON line per query:
``qid``, ``query``, ``vid``, ``pred_relevant_windows`` ``[[start, end, score], ...]``,
``pred_saliency_scores``) that ``vr eval moments --pred`` reads. FILE holds one query per line
(with VIDEO), or JSON lines ``{"qid", "query", "vid" or "video"}`` (a ``vid`` is looked up as
``--video-dir/<vid>.<ext>``; QVHighlights annotation files work as they are).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from video_retrieval.cli.common import add_model_arguments, add_progress_flag, bounded, shown_path
from video_retrieval.datasets.text_files import json_line, text_lines
from video_retrieval.errors import UserError
from video_retrieval.media.atomic import atomic_path


def add_arguments(parser) -> None:
    parser.add_argument("video", nargs="?", help="the video file")
    parser.add_argument("query", nargs="?", help="the sentence to localize")
    add_model_arguments(
        parser,
        "a trained moment-head checkpoint (vr train fit --config configs/moments_*.yaml); "
        "default: the zero-shot baseline with --model/--pretrained",
    )
    parser.add_argument(
        "--clip-encoder",
        default=None,
        metavar="CKPT",
        help="zero-shot with a retrieval checkpoint pooling each 2 s clip +-1 s "
        "(configs/moments_synth_clips.yaml); replaces --model",
    )
    parser.add_argument(
        "--top", type=bounded("top"), default=5, help="moments to return (default 5)"
    )
    parser.add_argument(
        "--plot", default=None, metavar="OUT.png", help="write a PNG of similarity over time"
    )
    parser.add_argument(
        "--nms",
        type=bounded("nms_iou"),
        default=None,
        metavar="IOU",
        help="drop a moment that overlaps a better one by more than this IoU (default 0.5; 1 "
        "keeps every window; batch mode writes a head's windows unsuppressed unless given, as "
        "the QVHighlights evaluator expects)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_progress_flag(parser)
    parser.add_argument(
        "--queries",
        default=None,
        metavar="FILE",
        help="batch mode: one query per line, or JSON lines {qid, query, vid|video}",
    )
    parser.add_argument(
        "--out", default=None, metavar="PREDS.jsonl", help="batch mode: predictions file"
    )
    parser.add_argument(
        "--video-dir",
        default=None,
        metavar="DIR",
        help="batch mode: folder where a query's vid is looked up as <vid>.<ext>",
    )


def _model_kwargs(args) -> dict:  # the model flags as localize() takes them
    return {
        "checkpoint": args.checkpoint,
        "model": args.model,
        "pretrained": args.pretrained,
        "clip_encoder": args.clip_encoder,
        "random_weights": args.random_weights,
    }


def run(args) -> int:
    if args.queries is not None:
        return run_batch(args)
    if args.video is None or args.query is None:
        raise UserError("give VIDEO and QUERY (or --queries FILE --out PREDS.jsonl)")
    if args.out:
        raise UserError("--out is for batch mode (--queries FILE)")
    from video_retrieval.moments.localize import DEFAULT_NMS_IOU, localize

    nms = DEFAULT_NMS_IOU if args.nms is None else args.nms
    res = localize(args.video, args.query, top=args.top, plot=args.plot, nms_iou=nms,
                   **_model_kwargs(args))  # fmt: skip
    if args.json:
        json.dump(res, sys.stdout, indent=1)
        print()
        return 0
    how = f"{res['head']} head" if res["method"] == "head" else f"zero-shot ({res['features']})"
    print(f'{shown_path(res["video"])} ({res["duration"]:.1f} s): "{res["query"]}", {how}')
    print("rank  start - end        score (0-1)")
    for i, m in enumerate(res["moments"], start=1):
        print(f"{i:>4}  {m['start']:7.2f} - {m['end']:7.2f} s  {m['score']:.3f}")
    if args.plot:
        print(f"plot written to {args.plot}")
    return 0


def read_queries(path, video: str | None, video_dir: str | None) -> list[dict]:
    """``[{"qid", "query", "vid", "video"}]`` from a queries file (see the module doc)."""
    from video_retrieval.media.files import VIDEO_EXTENSIONS

    p = Path(path)
    if not p.is_file():
        raise UserError(f"no such queries file: {path}")
    if video_dir is not None and not Path(video_dir).is_dir():
        raise UserError(f"--video-dir {video_dir}: no such folder")
    rows = []
    for n, line in text_lines(p, str(path)):
        text = line.strip()
        if not text:
            continue
        if text.startswith("{"):
            row = json_line(text, str(path), n)
            if not isinstance(row, dict):
                raise UserError(f"{path}:{n}: expected a JSON object")
            query = row.get("query")
            vid = row.get("vid")
            where = row.get("video") or video
        else:
            row, query, vid, where = {}, text, None, video
        if not isinstance(query, str) or not query.strip():
            raise UserError(f"{path}:{n}: no query text")
        if where is None and vid is not None and video_dir is not None:
            hits = [Path(video_dir) / f"{vid}{ext}" for ext in sorted(VIDEO_EXTENSIONS)]
            found = [h for h in hits if h.is_file()]
            where = str(found[0]) if found else None
        if where is None:
            raise UserError(
                f"{path}:{n}: no video for this query (give VIDEO, a 'video' field, or "
                "--video-dir for its 'vid')"
            )
        vid = vid if vid is not None else Path(where).stem
        rows.append({"qid": row.get("qid", n), "query": query.strip(), "vid": vid, "video": where})
    if not rows:
        raise UserError(f"{path}: no queries")
    return rows


def run_batch(args) -> int:
    import numpy as np

    from video_retrieval.moments.localize import check_whole_video
    from video_retrieval.moments.predictor import MomentPredictor
    from video_retrieval.temporal.moment_matcher import temporal_nms

    if args.query is not None:
        raise UserError("give QUERY or --queries FILE, not both")
    if not args.out:
        raise UserError("batch mode needs --out PREDS.jsonl")
    if args.plot:
        raise UserError("--plot is for one query, not batch mode")
    rows = read_queries(args.queries, args.video, args.video_dir)
    if args.checkpoint:
        predictor = MomentPredictor.from_checkpoint(args.checkpoint)
        encoded: dict[str, dict] = {}

        def predict(video, query):
            if video not in encoded:  # encode each video once, query it many times
                encoded.clear()
                encoded[video] = predictor.encode_video(video)
            pred = predictor.predict(video, query, top=max(args.top, 10), video=encoded[video])
            windows = pred["moments"]
            if args.nms is not None:
                windows = temporal_nms(np.asarray(windows, float).reshape(-1, 3), args.nms)
            return list(windows)[: args.top], pred["saliency"]
    else:
        from video_retrieval.moments.localize import ZeroShotLocalizer

        zero_shot = ZeroShotLocalizer.build(
            args.model, args.pretrained, args.clip_encoder, random_weights=args.random_weights
        )

        def predict(video, query):
            nms = 0.5 if args.nms is None else args.nms  # the zero-shot recipe's own NMS
            rows, sims, _ = zero_shot.predict(video, query, args.top, nms)
            return rows.tolist(), sims.tolist()

    rows.sort(key=lambda r: str(r["video"]))  # queries of one video together
    for video in dict.fromkeys(r["video"] for r in rows):  # refused before anything is written
        check_whole_video(video)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from tqdm import tqdm

    bar = tqdm(total=len(rows), unit="query", desc="localizing", file=sys.stderr,
               disable=True if args.no_progress else None)  # fmt: skip
    with bar, atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            windows, saliency = predict(r["video"], r["query"])
            bar.update(1)
            line = {
                "qid": r["qid"],
                "query": r["query"],
                "vid": r["vid"],
                "pred_relevant_windows": [[round(float(x), 4) for x in w] for w in windows],
                "pred_saliency_scores": [round(float(x), 6) for x in saliency],
            }
            f.write(json.dumps(line) + "\n")
    print(f"{len(rows)} queries localized; predictions written to {out}")
    return 0
