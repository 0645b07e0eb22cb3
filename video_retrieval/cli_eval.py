"""``vr eval retrieval --index DIR --captions FILE`` and ``vr eval moments --pred FILE --gt FILE``.

Retrieval: every caption of ``captions.jsonl`` (``{"video": path, "caption": str}``, video paths
relative to the file's folder) whose video is in the index is a text-to-video query against the
whole index; R@1/5/10 (percent), MdR and MnR from ``retrieval_metrics``. With ``--rerank`` the top
``--candidates`` of each query (exact base cosine) are rescored and ranked above the rest, as
``vr search`` does.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from video_retrieval.errors import UserError


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="what", metavar="{retrieval,moments}")
    r = sub.add_parser("retrieval", help="t2v R@K / MdR / MnR of an index against captions.jsonl")
    r.add_argument("--index", required=True, metavar="DIR")
    r.add_argument(
        "--captions", required=True, metavar="FILE", help='captions.jsonl ({"video", "caption"})'
    )
    r.add_argument(
        "--rerank", default="none", help="none | cliprerank | aggregator name | checkpoint"
    )
    r.add_argument("--candidates", type=int, default=100)
    r.add_argument("--alpha", type=float, default=0.4)
    r.add_argument("--split", default=None, help="only captions whose 'split' equals this")
    r.add_argument("--json", action="store_true")
    m = sub.add_parser("moments", help="QVHighlights metrics of predictions against ground truth")
    m.add_argument("--pred", required=True, metavar="FILE")
    m.add_argument("--gt", required=True, metavar="FILE")
    m.add_argument("--json", action="store_true", help="(the default output) the metrics as JSON")
    m.add_argument("--table", action="store_true", help="one 'name value' line per metric instead")


def read_captions(path, split=None) -> list[tuple[str, str]]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"no such captions file: {path}")
    out = []
    with open(p) as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                video, caption = row["video"], row["caption"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise UserError(
                    f'{path}:{n}: expected {{"video", "caption"}} JSON ({exc})'
                ) from None
            if split is not None and row.get("split") != split:
                continue
            out.append((str((p.parent / video).resolve()), str(caption)))
    return out


def evaluate_retrieval(index, captions, rerank="none", candidates=100, alpha=0.4) -> dict:
    """Metrics of ``index`` for ``captions`` [(abs video path, caption)], ranking the videos as
    ``vr search`` does: the top ``candidates`` of the ANN (so its recall counts), reranked if
    asked, then every other video below them by exact cosine."""
    import torch

    from video_retrieval.retrieval_metrics import retrieval_metrics
    from video_retrieval.search import encode_query, get_reranker, stage_one

    targets, texts, skipped = [], [], 0
    for video, caption in captions:
        row = index.row_of(video)
        if row is None or not caption.strip():
            skipped += 1
            continue
        targets.append(row)
        texts.append(caption.strip())
    if not texts:
        raise UserError("none of the captions' videos is in the index")
    encoder, pool = index.models()
    reranker = get_reranker(index, rerank, alpha)
    pooled = np.asarray(index.pooled, dtype=np.float32)
    sim = np.zeros((len(texts), len(index)), dtype=np.float64)
    frames_cache: dict[int, np.ndarray] = {}
    for i, text in enumerate(texts):
        q = encode_query(encoder, pool, text, words=bool(getattr(reranker, "needs_words", False)))
        base = pooled @ q.embedding
        ann_scores, cand = stage_one(index, q.embedding, max(1, candidates))
        sim[i] = base - 1e3  # non-candidates rank below every candidate
        if reranker is None:
            sim[i, cand] = ann_scores
            continue
        for r in cand:
            if int(r) not in frames_cache:
                frames_cache[int(r)] = index.frames(int(r))[0]
        patches = None
        if reranker.needs_patches:
            patches = [index.patches(int(r)) for r in cand]
        with torch.no_grad():
            frames = [frames_cache[int(r)] for r in cand]
            sim[i, cand] = reranker.score(q, ann_scores, frames, patches)
    res = retrieval_metrics(sim, np.asarray(targets))
    return {
        "queries": len(texts),
        "videos": len(index),
        "skipped": skipped,
        "rerank": rerank or "none",
        "t2v": res["t2v"],
    }


def run(args) -> int:
    if args.what is None:
        raise UserError("say what to evaluate: vr eval retrieval ... or vr eval moments ...")
    if args.what == "moments":
        from video_retrieval.moment_metrics import evaluate_files

        for p in (args.pred, args.gt):
            if not Path(p).is_file():
                raise UserError(f"no such file: {p}")
        res = evaluate_files(args.pred, args.gt)
        if args.table:
            for k, v in _flatten(res).items():
                print(f"{k:40s} {v}")
        else:
            json.dump(res, sys.stdout, indent=1)
            print()
        return 0
    from video_retrieval.index_store import Index

    index = Index.open(args.index)
    res = evaluate_retrieval(
        index, read_captions(args.captions, args.split), args.rerank, args.candidates, args.alpha
    )
    res = {"index": str(index.dir), "captions": str(args.captions), **res}
    if args.json:
        json.dump(res, sys.stdout, indent=1)
        print()
    else:
        t = res["t2v"]
        print(
            f"t2v over {res['queries']} captions x {res['videos']} videos (rerank {res['rerank']}): "
            f"R@1 {t['R1']:.1f}  R@5 {t['R5']:.1f}  R@10 {t['R10']:.1f}  MdR {t['MdR']:.1f}  MnR {t['MnR']:.1f}"
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
