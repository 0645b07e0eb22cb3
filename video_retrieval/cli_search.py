"""``vr search "QUERY" --index DIR``: two-stage search (ANN over pooled vectors + rerank)."""

from __future__ import annotations

import json
import sys


def add_arguments(parser) -> None:
    parser.add_argument("query", help="the sentence to search for")
    parser.add_argument(
        "--index", required=True, metavar="DIR", help="index directory built by vr index"
    )
    parser.add_argument("-k", type=int, default=10, help="results to return (default 10)")
    parser.add_argument(
        "--candidates", type=int, default=100, help="stage-1 ANN candidates to rerank (default 100)"
    )
    parser.add_argument(
        "--rerank",
        default="cliprerank",
        help="none | cliprerank | query_scored (or another aggregator name) | a checkpoint path "
        "(default cliprerank)",
    )
    parser.add_argument(
        "--alpha", type=float, default=0.4, help="CLIPRerank weight of the base score (default 0.4)"
    )
    parser.add_argument("--json", action="store_true", help="print results as JSON")


def run(args) -> int:
    from video_retrieval.index_store import Index
    from video_retrieval.model_weights import warn_if_random
    from video_retrieval.search import check_query, results_json

    query = check_query(args.query)
    index = Index.open(args.index)
    warn_if_random(index.weights)
    hits = index.search(
        query, k=args.k, candidates=args.candidates, rerank=args.rerank, alpha=args.alpha
    )
    if args.json:
        out = {**results_json(query, hits), "weights": index.weights}
        json.dump(out, sys.stdout, indent=1)
        print()
        return 0
    if not hits:
        print("no results (the index is empty)")
    for h in hits:
        print(
            f"{h.rank:>3}  {h.score:+.4f}  {h.video}  [{h.moment[0]:.2f}s - {h.moment[1]:.2f}s]  thumbnail@{h.thumbnail_time:.2f}s"
        )
    return 0
