"""Batch queries (``Index.search_batch``, ``vr search --queries FILE``) and sharded search over
several indexes (``vr search --index A --index B``): equal to one-at-a-time search over one index
holding everything, one-line errors through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from video_retrieval.cli import main
from video_retrieval.errors import UserError
from video_retrieval.index.api import Index
from video_retrieval.index.search import search_batch
from video_retrieval.media.write import write_video

TINY = ["--model", "vr-tiny", "--random-weights"]
QUERIES = ["a red box", "a box moving left", "a green square grows", "blue", "a yellow box"]


def box_video(path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    x = np.full((20, 48, 64, 3), 20, np.uint8)
    colour = rng.integers(60, 255, 3).astype(np.uint8)
    for t in range(20):
        pos = int(48 * t / 19)
        pos = pos if seed % 2 else 48 - pos
        x[t, 16 - seed % 3 : 32, pos : pos + 16] = colour
    return write_video(path, x, fps=10, gop=5)


def run_cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def one_line_error(err: str, *needles: str) -> str:
    lines = [x for x in err.strip().splitlines() if not x.startswith("warning:")]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Eight videos split over two folders; an index of each folder and one of all."""
    root = tmp_path_factory.mktemp("batch")
    for i in range(8):
        box_video(root / ("a" if i < 5 else "b") / f"v{i}.mp4", i)
    for name, inputs in (("A", ["a"]), ("B", ["b"]), ("AB", ["a", "b"])):
        argv = ["index", *[root / x for x in inputs], "--index", root / name, *TINY,
                "--workers", "0", "--json"]  # fmt: skip
        assert main([str(a) for a in argv]) == 0
    (root / "queries.txt").write_text(QUERIES[0] + "\n\n" + "\n".join(QUERIES[1:]) + "\n")
    (root / "captions.jsonl").write_text(
        "".join(json.dumps({"video": "a/v0.mp4", "caption": q}) + "\n" for q in QUERIES)
    )
    return root


def same_hits(a, b, tol=1e-5):
    assert [h.video for h in a] == [h.video for h in b]
    assert [h.rank for h in a] == [h.rank for h in b]
    np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=tol)
    assert [h.moment for h in a] == [h.moment for h in b]


@pytest.mark.parametrize("rerank", ["none", "cliprerank"])
def test_search_batch_equals_one_query_at_a_time(world, rerank):
    idx = Index.open(world / "AB")
    batch = idx.search_batch(QUERIES, k=4, rerank=rerank, batch_size=2)  # 3 encoder batches
    assert len(batch) == len(QUERIES)
    for q, hits in zip(QUERIES, batch):
        assert len(hits) == 4
        same_hits(hits, idx.search(q, k=4, rerank=rerank))


def test_sharded_search_equals_one_index_of_everything(world):
    a, b, ab = (Index.open(world / n) for n in ("A", "B", "AB"))
    assert (len(a), len(b), len(ab)) == (5, 3, 8)
    for rerank in ("none", "cliprerank"):
        merged = search_batch([a, b], QUERIES, k=6, rerank=rerank)
        for q, hits in zip(QUERIES, merged):
            same_hits(hits, ab.search(q, k=6, rerank=rerank))
    # a video in both indexes is listed once
    dup = search_batch([ab, a], QUERIES[:1], k=8, rerank="none")[0]
    assert len(dup) == 8 and len({h.video for h in dup}) == 8


def test_vr_search_queries_file_prints_one_json_line_per_query(world, capsys):
    rc, out, err = run_cli(capsys, "search", "--queries", world / "queries.txt",
                           "--index", world / "AB", "-k", "3", "--json")  # fmt: skip
    assert rc == 0, err
    rows = [json.loads(x) for x in out.splitlines()]
    assert [r["query"] for r in rows] == QUERIES
    assert [r["line"] for r in rows] == [1, 3, 4, 5, 6]  # the blank line 2 is skipped
    assert set(rows[0]) == {
        "query",
        "query_kind",
        "example",
        "results",
        "rerank",
        "score_kind",
        "generation",
        "weights",
        "line",
    }
    assert rows[0]["weights"] == {"kind": "random", "model": "vr-tiny", "seed": 0}
    for r in rows:  # each equals a single vr search of that query
        rc, one, _ = run_cli(
            capsys, "search", r["query"], "--index", world / "AB", "-k", "3", "--json"
        )
        single = json.loads(one)
        assert [h["video"] for h in r["results"]] == [h["video"] for h in single["results"]]
        np.testing.assert_allclose([h["score"] for h in r["results"]],
                                   [h["score"] for h in single["results"]], atol=2e-6)  # fmt: skip
    # captions.jsonl lines work the same way; text output names each query
    rc, out, _ = run_cli(capsys, "search", "--queries", world / "captions.jsonl",
                         "--index", world / "AB", "-k", "2")  # fmt: skip
    assert rc == 0
    lines = out.splitlines()
    # per query: its line, the column header, two hits
    assert lines[0] == f"query (line 1): {QUERIES[0]}" and len(lines) == 5 * 4
    assert lines[1].startswith("rank  score (cosine)  video")


def test_vr_search_several_indexes(world, capsys):
    rc, out, _ = run_cli(capsys, "search", QUERIES[2], "--index", world / "A", "--index",
                         world / "B", "-k", "8", "--json", "--rerank", "none")  # fmt: skip
    assert rc == 0
    merged = json.loads(out)
    rc, out, _ = run_cli(capsys, "search", QUERIES[2], "--index", world / "AB", "-k", "8", "--json",
                         "--rerank", "none")  # fmt: skip
    whole = json.loads(out)
    assert [h["video"] for h in merged["results"]] == [h["video"] for h in whole["results"]]
    assert [h["rank"] for h in merged["results"]] == list(range(1, 9))


def test_errors_are_one_line(world, tmp_path, capsys):
    def refused(*argv, needles):
        rc, _, err = run_cli(capsys, "search", *argv)
        assert rc == 2
        one_line_error(err, *needles)

    ab = world / "AB"
    refused("--index", ab, needles=["give a query to search for", "--queries FILE"])
    refused("a box", "--queries", world / "queries.txt", "--index", ab, needles=["not both"])
    refused("--queries", tmp_path / "none.txt", "--index", ab, needles=["--queries: no such file"])
    (tmp_path / "empty.txt").write_text("\n  \n")
    refused("--queries", tmp_path / "empty.txt", "--index", ab, needles=["no queries"])
    (tmp_path / "bad.jsonl").write_text('{"caption": "ok"}\n{"video": "v.mp4"}\n')
    refused("--queries", tmp_path / "bad.jsonl", "--index", ab,
            needles=["bad.jsonl line 2", 'no "caption"'])  # fmt: skip
    (tmp_path / "blank.jsonl").write_text('{"caption": "  "}\n')
    refused(
        "--queries",
        tmp_path / "blank.jsonl",
        "--index",
        ab,
        needles=["line 1: the caption is empty"],
    )
    refused("a box", "--index", ab, "--index", ab, needles=["is given twice"])
    other = tmp_path / "micro"  # another model: its vectors are not comparable
    assert main(["index", str(world / "b"), "--index", str(other), "--model", "vr-micro",
                 "--random-weights", "--workers", "0", "--json"]) == 0  # fmt: skip
    capsys.readouterr()
    refused("a box", "--index", ab, "--index", other,
            needles=[f"--index {other} was built with another model", "encoder"])  # fmt: skip
    with pytest.raises(UserError, match="query 2 is empty"):
        Index.open(ab).search_batch(["a box", " "])
