"""``vr search "QUERY" --index DIR``: two-stage search (ANN over pooled vectors + rerank).

``--queries FILE`` searches many queries in one pass (one per line, or captions.jsonl lines);
``--index`` given several times searches every index (one model) and merges the hits by score.
``--image``, ``--video`` and ``--like`` search by example (``cli.search_examples``).
"""

from __future__ import annotations

import json

from video_retrieval.cli import search_examples
from video_retrieval.cli.common import bounded, shown_path


def add_arguments(parser) -> None:
    parser.add_argument("query", nargs="?", help="the sentence to search for")
    parser.add_argument(
        "--queries",
        default=None,
        metavar="FILE",
        help="search every query of FILE (one per line, or captions.jsonl lines with "
        '"caption"); --json prints one JSON object per query and line',
    )
    parser.add_argument(
        "--index",
        action="append",
        metavar="DIR",
        help="index directory built by vr index; repeat it to search several indexes built "
        "with one model (hits merged by score); required unless --server",
    )
    parser.add_argument(
        "--server",
        default=None,
        metavar="URL",
        help="send the search to a running vr serve (e.g. http://127.0.0.1:8000; default: "
        "$VR_SERVER) and print its answer as a local search would, without loading any model; "
        "its token from $VR_SERVE_TOKEN; the server's --candidates and CLIPRerank settings apply",
    )
    parser.add_argument("-k", type=bounded("k"), default=10, help="results to return (default 10)")
    parser.add_argument(
        "--candidates",
        type=bounded("candidates"),
        default=100,
        help="stage-1 ANN candidates to rerank (default 100)",
    )
    parser.add_argument(
        "--rerank",
        default="auto",
        help="auto | none | cliprerank | query_scored (or another aggregator name) | a checkpoint "
        "path (default auto: query_scored for long videos, none for short ones, cliprerank with "
        "--rerank-model; see BENCHMARKS.md)",
    )
    parser.add_argument(
        "--rerank-model",
        default=None,
        metavar="CKPT",
        help="CLIPRerank's frame-level CLIP, independent of the index's model: a vr train "
        "checkpoint (e.g. the clip encoder trained on clips.jsonl); candidates are decoded again",
    )
    parser.add_argument(
        "--alpha",
        type=bounded("alpha"),
        default=0.4,
        help="CLIPRerank weight of the base score (default 0.4)",
    )
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    search_examples.add_arguments(parser)


def print_answer(out: dict, args, line: int | None = None) -> None:
    """One query's answer (``results_json``'s dict, the HTTP answer's too) as ``vr search``
    prints it: JSON, indented for one query and one line each for a queries file; or text, each
    hit a line under a header that says what the columns are."""
    if args.json:
        print(json.dumps(out if line is None else {**out, "line": line},
                         indent=None if args.queries else 1))  # fmt: skip
        return
    if args.queries:
        print(f"query (line {line}): {out['query']}")
    if not out["results"]:
        print("no results (the index is empty)")
        return
    print(f"rank  score ({out['score_kind']})  video  best moment  thumbnail")
    for h in out["results"]:
        print(
            f"{h['rank']:>4}  {h['score']:+.4f}  {shown_path(h['video'])}  "
            f"{h['moment']['start']:.2f}-{h['moment']['end']:.2f} s  {h['thumbnail_time']:.2f} s"
        )


def run_many(args, indexes) -> int:
    """``--queries FILE`` and/or several ``--index``: ``search.search_batch``."""
    from video_retrieval.index.queries import read_query_file
    from video_retrieval.index.search import (
        resolve_rerank,
        results_json,
        search_batch,
    )
    from video_retrieval.index.store import GenerationGone
    from video_retrieval.limits import check_query

    if args.queries:
        lines = read_query_file(args.queries)
    else:
        lines = [(None, check_query(args.query))]
    texts = [q for _, q in lines]

    def search():
        return search_batch(
            indexes, texts, k=args.k, candidates=args.candidates, rerank=args.rerank,
            alpha=args.alpha, rerank_model=args.rerank_model,
        )  # fmt: skip

    try:
        results = search()
    except GenerationGone:  # an update removed what an index had opened: its newest version
        for index in indexes:
            index.refresh()
        results = search()
    weights = indexes[0].weights
    rerank = resolve_rerank(indexes[0], args.rerank, args.rerank_model)
    for (line, query), hits in zip(lines, results):
        out = {**results_json(query, hits, indexes[0], rerank), "weights": weights}
        if len(indexes) > 1:
            out["generation"] = None  # hits come from several indexes (each hit's "index")
        print_answer(out, args, line)
    return 0


def run(args) -> int:
    from video_retrieval.cli import remote
    from video_retrieval.errors import UserError
    from video_retrieval.limits import check_query, check_rerank

    url = remote.server_url(args)
    if url is None and not args.index:
        raise UserError("--index DIR is required (or --server URL: a running vr serve)")
    if search_examples.wanted(args):  # --image, --video, --like
        if url is not None:
            raise UserError(
                "--server sends text queries; --image, --video and --like search an --index"
            )
        return search_examples.run(args)
    if args.start is not None or args.end is not None or args.include_self:
        raise UserError("--start, --end and --include-self go with --video or --like")
    # what can be refused without a model is refused before torch is imported (~1.5 s)
    if (args.query is None) == (args.queries is None):
        raise UserError('give one query ("QUERY") or --queries FILE, not both' if args.queries
                        else 'give a query to search for ("QUERY") or --queries FILE')  # fmt: skip
    if args.queries is None:
        check_query(args.query)
    if url is not None:
        return remote.search(args, url, print_answer)
    check_rerank(args.rerank)
    from video_retrieval.index.api import Index
    from video_retrieval.index.search import resolve_rerank, results_json
    from video_retrieval.models.weights import warn_if_random

    indexes = [Index.open(d) for d in args.index]
    warn_if_random(indexes[0].weights)
    if args.queries or len(indexes) > 1:
        return run_many(args, indexes)
    index = indexes[0]
    query = check_query(args.query)
    hits = index.search(
        query,
        k=args.k,
        candidates=args.candidates,
        rerank=args.rerank,
        alpha=args.alpha,
        rerank_model=args.rerank_model,
    )
    rerank = resolve_rerank(index, args.rerank, args.rerank_model)
    print_answer({**results_json(query, hits, index, rerank), "weights": index.weights}, args)
    return 0
