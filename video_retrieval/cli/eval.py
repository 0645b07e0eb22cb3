"""``vr eval retrieval --index DIR --captions FILE`` and ``vr eval moments --pred FILE --gt FILE``.

Retrieval: every caption of ``captions.jsonl`` (``{"video": path, "caption": str}``, video paths
relative to the file's folder) whose video is in the index is a text-to-video query against the
whole index; R1/R5/R10 (recall at 1/5/10, percent), MdR and MnR from ``retrieval_metrics``. With ``--rerank`` the top
``--candidates`` of each query (exact base cosine) are rescored and ranked above the rest, as
``vr search`` does. A line whose ``video`` is not a non-empty string or whose ``caption`` is not a
string is refused naming the line; an empty caption is counted as ``invalid`` (and named in a
warning), a video missing from the index as ``skipped``.

Moments: ``--protocol auto`` (default) scores DiDeMo ground truth (the LocalizingMoments JSON list)
with the official 21-moment protocol, Charades-STA ``##`` lines with R@1/R@5 at IoU 0.3/0.5/0.7 and
mIoU, QVHighlights JSON lines with the official QVHighlights evaluator
(``video_retrieval.metrics.moments``). Inputs are validated (``datasets.moment_preds``); warnings go
to stderr and into the JSON; the JSON never holds NaN.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from video_retrieval.cli.common import add_progress_flag, bounded
from video_retrieval.errors import UserError
from video_retrieval.index.evaluate import evaluate_retrieval, read_caption_lines


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="what", metavar="{retrieval,moments}")
    r = sub.add_parser(
        "retrieval", help="t2v R1/R5/R10, MdR, MnR of an index against captions.jsonl"
    )
    r.add_argument(
        "--index", required=True, metavar="DIR", help="index directory built by vr index"
    )
    r.add_argument(
        "--captions", required=True, metavar="FILE", help='captions.jsonl ({"video", "caption"})'
    )
    r.add_argument(
        "--rerank",
        default="auto",
        help="auto | none | cliprerank | aggregator name | checkpoint (default auto, as vr search: "
        "query_scored for long videos, none otherwise, cliprerank with --rerank-model)",
    )
    r.add_argument(
        "--rerank-model",
        default=None,
        metavar="CKPT",
        help="CLIPRerank's frame-level CLIP, independent of the index's model (vr train checkpoint)",
    )
    r.add_argument("--candidates", type=bounded("candidates"), default=100,
                   help="stage-1 ANN candidates to rerank, as vr search")  # fmt: skip
    r.add_argument("--alpha", type=bounded("alpha"), default=0.4,
                   help="CLIPRerank weight of the base score")  # fmt: skip
    r.add_argument("--split", default=None, help="only captions whose 'split' equals this")
    r.add_argument("--json", action="store_true", help="print the metrics as JSON")
    add_progress_flag(r)
    m = sub.add_parser(
        "moments", help="moment metrics (QVHighlights, DiDeMo, Charades-STA) of predictions"
    )
    m.add_argument(
        "--pred",
        default=None,
        metavar="FILE",
        help='predictions, one JSON per line: {"qid", "pred_relevant_windows": [[s, e, score]...]}',
    )
    m.add_argument(
        "--prior",
        default=None,
        metavar="TRAIN.json",
        help="DiDeMo: instead of --pred, score the moment-frequency prior counted from this "
        "training file (every query gets the 21 moments by training frequency; no video, no text)",
    )
    m.add_argument(
        "--gt",
        required=True,
        metavar="FILE",
        help="ground truth: QVHighlights jsonl, DiDeMo {val,test}_data.json or charades_sta_*.txt",
    )
    m.add_argument(
        "--protocol",
        default="auto",
        choices=["auto", "qvhighlights", "didemo", "charades"],
        help="metrics to compute (auto: from the ground-truth format)",
    )
    m.add_argument(
        "--durations",
        metavar="CSV",
        default=None,
        help="Charades_v1_{train,test}.csv: clip ground truth and predictions to the durations",
    )
    m.add_argument("--json", action="store_true", help="(the default output) the metrics as JSON")
    m.add_argument("--table", action="store_true", help="one 'name value' line per metric instead")


def run(args) -> int:
    if args.what is None:
        raise UserError("say what to evaluate: vr eval retrieval ... or vr eval moments ...")
    if args.what == "moments":
        from video_retrieval.moments.evaluate import evaluate_files, json_safe

        if (args.pred is None) == (args.prior is None):
            raise UserError("give --pred FILE (predictions) or --prior TRAIN.json (DiDeMo), one")
        for p in (args.pred or args.prior, args.gt):
            if not Path(p).is_file():
                raise UserError(f"no such file: {p}")
        if args.durations is not None and not Path(args.durations).is_file():
            raise UserError(f"no such file: {args.durations}")
        if args.prior:
            from video_retrieval.moments.evaluate import evaluate_didemo_prior

            res = json_safe(evaluate_didemo_prior(args.prior, args.gt, args.protocol))
        else:
            res = json_safe(
                evaluate_files(args.pred, args.gt, protocol=args.protocol, durations=args.durations)
            )
        for w in res["warnings"]:
            print(f"warning: {w}", file=sys.stderr)
        if args.table:
            for k, v in _flatten({k: v for k, v in res.items() if k != "warnings"}).items():
                print(f"{k:40s} {v}")
        else:
            print(json.dumps(res, indent=1, allow_nan=False))
        return 0
    from video_retrieval.index.api import Index

    index = Index.open(args.index)
    res = evaluate_retrieval(
        index,
        read_caption_lines(args.captions, args.split),
        args.rerank,
        args.candidates,
        args.alpha,
        args.rerank_model,
        progress=not args.no_progress,
    )
    res = {"index": str(index.dir), "captions": str(args.captions), **res, "weights": index.weights}
    if res["invalid"]:
        print(
            f"warning: {res['invalid']} empty caption(s) not scored (lines "
            f"{', '.join(map(str, res['invalid_lines'][:10]))})",
            file=sys.stderr,
        )
    if args.json:
        from video_retrieval.moments.evaluate import json_safe

        print(json.dumps(json_safe(res), indent=1, allow_nan=False))
    else:
        t = res["t2v"]
        print(
            f"t2v over {res['queries']} captions x {res['videos']} videos (rerank {res['rerank']}"
            f"{' with ' + res['rerank_model'] if res['rerank_model'] else ''}): "
            f"R1 {t['R1']:.1f}  R5 {t['R5']:.1f}  R10 {t['R10']:.1f}  MdR {t['MdR']:.1f}  MnR {t['MnR']:.1f}"
        )
        if res["skipped"]:
            print(f"{res['skipped']} caption(s) skipped (video not in the index)")
    return 0


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
