"""Measured recall of the approximate indexes (issue "Search at a million videos"): tuning to
the smallest parameter reaching the target (checked against recall computed here with numpy),
the fallback to exact search, the compressed kinds' exact re-rank, the memory-budget choice,
the manifest / --json record, the recorded parameter in use at search time, old manifests, and
one-line errors through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from video_retrieval.cli import main
from video_retrieval.errors import UserError
from video_retrieval.index.ann import (
    ann_search,
    auto_kind,
    build_ann,
    describe,
    memory_estimate,
    parse_memory,
    set_search_params,
)
from video_retrieval.index.ann_recall import (
    AnnOptions,
    RecallSample,
    build_measured,
    ladder,
    measure_recall,
    recall_sample,
    rerank_ladder,
)
from video_retrieval.index.api import Index
from video_retrieval.media.write import write_video

TINY = ["--model", "vr-tiny", "--random-weights"]


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n=3000, d=32, centres=60, spread=0.35, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d))
    return unit(c[rng.integers(0, centres, n)] + spread * rng.standard_normal((n, d)))


def numpy_recall(x, ids, k=10) -> float:
    """recall@k of neighbour lists ``ids`` [N, >=k+1] for every row of ``x`` as a query, its
    own row excluded, against exact numpy search; a returned row counts when its cosine is at
    least the exact k-th best (ties with equal vectors are not misses)."""
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    kth = -np.sort(-sims, axis=1)[:, k - 1]
    total = 0.0
    for i in range(len(x)):
        got = [j for j in ids[i] if j >= 0 and j != i][:k]
        total += sum(sims[i, j] >= kth[i] - 1e-5 for j in got) / k
    return total / len(x)


@pytest.mark.parametrize("kind", ["hnsw", "ivf", "sq8", "ivf-sq8", "ivf-pq"])
def test_tuning_takes_the_smallest_setting_that_reaches_the_target(kind):
    x = clustered()
    opts = AnnOptions(kind=kind, target_recall=0.97, sample=len(x))  # every row is a query
    index, info = build_measured(x, opts)
    assert info["type"] == kind and info["target_recall"] == 0.97
    # every row is a query, so the quantizers (all but HNSW's) had to train on the queries too
    assert info["sample"] == {"video_queries": 3000, "text_queries": 0, "k": 10,
                              "recall_video": info["recall_at_10"], "recall_text": None,
                              "queries_in_training": None if kind == "hnsw" else 1.0}  # fmt: skip
    tuned = {k: v for k, v in info["params"].items() if k in ("efSearch", "nprobe", "rerank")}

    def recall_at(step):
        set_search_params(index, step)
        if step.get("rerank"):
            _, ids = ann_search(index, x, 11, rerank_from=x, rerank=step["rerank"])
        else:
            _, ids = ann_search(index, x, 11)
        return numpy_recall(x, ids)

    got = recall_at(tuned)
    assert got == pytest.approx(info["recall_at_10"], abs=1e-4)  # what it recorded is true
    assert got >= 0.97
    # the search parameter below it misses the target, even with the deepest re-rank ...
    steps, depths = ladder(kind, index), rerank_ladder(kind)
    search = {k: v for k, v in tuned.items() if k != "rerank"}
    pos = steps.index(search)
    deepest = {"rerank": depths[-1]} if depths else {}
    if pos > 0:
        assert recall_at({**steps[pos - 1], **deepest}) < 0.97
    # ... and so does the re-rank depth below it with that parameter
    if depths and depths.index(tuned["rerank"]) > 0:
        assert recall_at({**search, "rerank": depths[depths.index(tuned["rerank"]) - 1]}) < 0.97
    assert pos > 0 or (depths and depths.index(tuned["rerank"]) > 0) or kind == "hnsw"


def test_an_unreachable_target_falls_back_to_exact_search_and_says_so():
    rng = np.random.default_rng(0)
    x = unit(rng.standard_normal((20_000, 256)))  # no structure: IVF cannot reach 0.95
    said = []
    index, info = build_measured(x, AnnOptions(kind="ivf", sample=300), log=said.append)
    assert isinstance(index, faiss.IndexFlatIP) and index.ntotal == 20_000
    assert info["type"] == "flat" and info["recall_at_10"] == 1.0 and info["requested"] == "ivf"
    fb = info["fallback"]
    assert fb["type"] == "ivf" and fb["recall_at_10"] < 0.95
    assert fb["params"]["nprobe"] == fb["params"]["nlist"] // 4  # the whole ladder was tried
    assert len(said) == 1 and "\n" not in said[0]
    assert said[0].startswith("ivf does not reach the target recall: recall@10 0.")
    assert "searching exactly (flat" in said[0]


def test_recall_counts_equal_vectors_as_ties_not_misses():
    x = clustered(n=200)
    x = np.concatenate([x, x[:50]])  # 50 exact duplicates
    rs = recall_sample(x, sample=len(x))
    assert measure_recall(build_ann(x, "flat"), x, rs) == {"all": 1.0, "video": 1.0, "text": None}
    # by hand: 12 unit vectors at 0, 10, ..., 110 degrees
    ang = np.deg2rad(np.arange(12) * 10.0)
    a = np.stack([np.cos(ang), np.sin(ang)], 1).astype(np.float32)
    rs = recall_sample(a, sample=12)
    c = np.cos(np.deg2rad([100.0, 50.0]))
    # the 10th nearest other vector: 100 degrees away from the ends, 50 from the 50-degree one
    np.testing.assert_allclose(rs.threshold[[0, 11, 5]], [c[0], c[0], c[1]], atol=1e-6)
    # an index whose row 11 holds the 0-degree vector: query 0 finds row 11 among its top 10,
    # whose true cosine (110 degrees) is below the 10th best: 9 of 10
    wrong = a.copy()
    wrong[11] = a[0]
    one = RecallSample(a[[0]], np.array([0]), np.array([10]), rs.threshold[[0]], 1, 0)
    assert measure_recall(build_ann(wrong, "flat"), a, one)["all"] == pytest.approx(0.9)


def test_compressed_kinds_return_exact_scores_after_the_rerank():
    x = clustered(n=4000, d=64)
    q = unit(np.random.default_rng(5).standard_normal((20, 64)))
    exact_s, exact_i = ann_search(build_ann(x, "flat"), q, 10)
    for kind in ("sq8", "fp16"):
        index = build_ann(x, kind)
        s, i = ann_search(index, q, 10, rerank_from=x, rerank=8)
        np.testing.assert_allclose(s, np.take_along_axis(q @ x.T, i, 1), atol=1e-6)
        assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(i, exact_i)]) >= 0.99
    s, i = ann_search(build_ann(x, "sq8"), q, 10)  # without the re-rank: quantised scores
    assert not np.allclose(s, np.take_along_axis(q @ x.T, i, 1), atol=1e-6)


def test_text_queries_are_measured_too():
    x = clustered(n=2000)
    t = unit(x[:30] + 0.8 * np.random.default_rng(3).standard_normal((30, 32)))
    _, info = build_measured(x, AnnOptions(kind="hnsw", text_queries=t, sample=500))
    s = info["sample"]
    assert (s["video_queries"], s["text_queries"]) == (500, 30)
    assert s["recall_text"] >= 0.95 and s["recall_video"] >= 0.95
    assert info["recall_at_10"] == pytest.approx(
        (500 * s["recall_video"] + 30 * s["recall_text"]) / 530, abs=1e-3
    )


@pytest.mark.parametrize("kind", ["ivf", "ivf-sq8"])
def test_text_recall_is_what_a_top_10_search_returns(kind):
    """The recorded text recall equals recall@10 of ``ann_search(..., k=10)`` with the recorded
    parameters, computed here with numpy (no extra candidate in the measurement)."""
    x = clustered(n=3000, d=32)
    t = unit(x[:200] + 0.6 * np.random.default_rng(4).standard_normal((200, 32)))
    index, info = build_measured(x, AnnOptions(kind=kind, text_queries=t, sample=100))
    depth = info["params"].get("rerank", 0)
    if depth:
        _, ids = ann_search(index, t, 10, rerank_from=x, rerank=depth)
    else:
        _, ids = ann_search(index, t, 10)
    sims = t @ x.T
    kth = -np.sort(-sims, axis=1)[:, 9]
    mine = np.mean([np.sum(sims[j, ids[j]] >= kth[j] - 1e-5) / 10 for j in range(len(t))])
    assert info["sample"]["recall_text"] == pytest.approx(mine, abs=1e-4)


def test_auto_chooses_by_size_and_memory_budget():
    assert memory_estimate("flat", 1000, 512) == 1000 * 2048
    assert memory_estimate("sq8", 1000, 512) == 1000 * 512
    assert memory_estimate("hnsw", 100_000, 512) == 100_000 * (2048 + 266)
    assert auto_kind(10_000, 512, 1 << 30)[0] == "flat"
    assert auto_kind(10_000, 512, 12 << 20)[0] == "fp16"  # flat needs 19.5 MiB
    assert auto_kind(100_000, 512, 1 << 30)[0] == "ivf"  # 198.5 MiB
    assert auto_kind(100_000, 512, 100 << 20)[0] == "ivf-sq8"  # 52.1 MiB
    assert auto_kind(100_000, 512, 20 << 20)[0] == "ivf-pq"  # 9.8 MiB
    assert auto_kind(5_000_000, 512, 64 << 30)[0] == "ivf"
    kind, why = auto_kind(5_000_000, 512, 1 << 20)
    assert kind == "ivf-pq" and "needs" in why  # nothing fits: the smallest, said
    assert parse_memory("512M") == 512 << 20 and parse_memory("1.5GB") == int(1.5 * (1 << 30))
    assert parse_memory("200000") == 200_000
    for bad in ("lots", "-1G", "0"):
        with pytest.raises(UserError, match="--max-memory"):
            parse_memory(bad)


def test_old_manifest_entries_still_read():
    assert describe("flat") == {"type": "flat", "params": {}, "recall_at_10": 1.0, "sample": None}
    assert describe("hnsw")["recall_at_10"] is None
    assert describe({"type": "ivf", "params": {"nprobe": 3}})["params"] == {"nprobe": 3}


# -- through vr index / vr search -----------------------------------------------------------------
def box_video(path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    x = np.full((20, 48, 64, 3), 20, np.uint8)
    colour = rng.integers(60, 255, 3).astype(np.uint8)
    for t in range(20):
        pos = int(48 * t / 19)
        pos = pos if seed % 2 else 48 - pos
        x[t, 16:32, pos : pos + 16] = colour
    return write_video(path, x, fps=10, gop=5)


@pytest.fixture(scope="module")
def vids(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("recall_vids")
    for i in range(6):
        box_video(d / f"v{i}.mp4", i)
    (d.parent / "recall_caps.jsonl").write_text(
        "".join(json.dumps({"video": f"v{i}.mp4", "caption": c}) + "\n"
                for i, c in enumerate(["a red box", "a box moving left", "a green square"]))
    )  # fmt: skip
    return d


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


def test_vr_index_records_the_measured_ann_and_vr_search_uses_it(vids, tmp_path, capsys):
    d = tmp_path / "idx"
    caps = vids.parent / "recall_caps.jsonl"
    rc, out, err = run_cli(capsys, "index", vids, "--index", d, *TINY, "--workers", "0",
                           "--ann", "hnsw", "--recall-captions", caps, "--json")  # fmt: skip
    assert rc == 0, err
    summary = json.loads(out)
    manifest = json.loads((d / "manifest.json").read_text())
    assert summary["ann"] == manifest["ann"]
    ann = manifest["ann"]
    assert ann["type"] == "hnsw" and ann["requested"] == "hnsw"
    # 6 vectors: HNSW is exact, so the cheapest efSearch already reaches the target
    assert ann["params"] == {"M": 32, "efConstruction": 80, "efSearch": 16}
    assert ann["recall_at_10"] == 1.0
    assert ann["sample"] == {"video_queries": 6, "text_queries": 3, "k": 5, "recall_video": 1.0,
                             "recall_text": 1.0, "queries_in_training": None}  # fmt: skip
    # the recorded parameter is the one searches use (edit it: the loaded index follows)
    manifest["ann"]["params"]["efSearch"] = 48
    (d / "manifest.json").write_text(json.dumps(manifest))
    assert Index.open(d).ann().hnsw.efSearch == 48
    rc, out, _ = run_cli(capsys, "index", vids, "--index", d, "--workers", "0")
    assert rc == 0 and "ANN hnsw (efSearch 16, recall@10 1.000 on 6 sampled videos)" in out


def test_compressed_index_searches_like_the_exact_one(vids, tmp_path, capsys):
    results = {}
    for kind in ("flat", "sq8", "hnsw-sq8"):
        d = tmp_path / kind
        rc, out, err = run_cli(capsys, "index", vids, "--index", d, *TINY, "--workers", "0",
                               "--ann", kind, "--json")  # fmt: skip
        assert rc == 0, err
        assert json.loads(out)["ann"]["type"] == kind
        rc, out, _ = run_cli(
            capsys, "search", "a box", "--index", d, "--rerank", "none", "-k", "6", "--json"
        )
        results[kind] = json.loads(out)["results"]
    # the same hits in the same order; scores equal up to the float order of the exact re-rank
    # (numpy's matmul over the pooled vectors vs FAISS's flat kernel: last digit on some CPUs)
    for kind in ("sq8", "hnsw-sq8"):
        strip = [{k: v for k, v in r.items() if k != "score"} for r in results[kind]]
        assert strip == [{k: v for k, v in r.items() if k != "score"} for r in results["flat"]]
        got = [r["score"] for r in results[kind]]
        assert got == pytest.approx([r["score"] for r in results["flat"]], abs=2e-6)
    assert json.loads((tmp_path / "sq8" / "manifest.json").read_text())["ann"]["params"] == {
        "rerank": 1
    }


def test_ivf_pq_on_too_few_videos_falls_back_in_one_line(vids, tmp_path, capsys):
    d = tmp_path / "pq"
    rc, out, err = run_cli(
        capsys, "index", vids, "--index", d, *TINY, "--workers", "0", "--ann", "ivf-pq"
    )
    assert rc == 0
    said = [x for x in err.splitlines() if "target recall" in x]
    assert said == ["warning: ivf-pq does not reach the target recall: 6 vectors are too few to "
                    "train its codebooks (needs 1024); searching exactly (flat, 3.0 KiB) instead"]  # fmt: skip
    m = json.loads((d / "manifest.json").read_text())["ann"]
    assert m["type"] == "flat" and m["fallback"]["type"] == "ivf-pq"
    assert "ANN flat (exact); ivf-pq missed the target" in out


def test_old_string_manifest_still_searches(vids, tmp_path, capsys):
    d = tmp_path / "old"
    assert run_cli(capsys, "index", vids, "--index", d, *TINY, "--workers", "0")[0] == 0
    m = json.loads((d / "manifest.json").read_text())
    m["ann"] = "flat"  # as written before recall was measured
    (d / "manifest.json").write_text(json.dumps(m))
    rc, out, _ = run_cli(capsys, "search", "a box", "--index", d, "--json", "-k", "2")
    assert rc == 0 and len(json.loads(out)["results"]) == 2
    assert Index.open(d).ann_info["type"] == "flat"


@pytest.mark.parametrize(
    "extra, needles",
    [
        (["--target-recall", "1.5"], ["--target-recall: must be in 0.01..1.0", "got 1.5"]),
        (["--target-recall", "0"], ["--target-recall: must be in 0.01..1.0", "got 0"]),
        (["--max-memory", "lots"], ["--max-memory 'lots'"]),
        (["--recall-captions", "/nonexistent.jsonl"], ["--recall-captions: no such file"]),
        (["--recall-captions", "BAD"], ["line 2: not valid JSON"]),
        (["--recall-sample", "0"], ["--recall-sample: must be in 1..", "got 0"]),
    ],
)
def test_ann_flag_errors_are_one_line(extra, needles, vids, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"caption": "fine"}\n{"caption": \n')
    extra = [str(bad) if a == "BAD" else a for a in extra]
    d = tmp_path / "i"
    rc, _, err = run_cli(capsys, "index", vids, "--index", d, *TINY, "--workers", "0", *extra)
    assert rc == 2
    one_line_error(err, *needles)
    assert not d.exists()  # refused before anything was written


@pytest.mark.parametrize("kind", ["ivf", "sq8", "ivf-pq"])
def test_recall_queries_are_kept_out_of_the_quantizer_training(kind):
    """Recall is measured on vectors the quantizer never trained on (when enough rows are left
    to train it), and the manifest says so."""
    from video_retrieval.index.ann import build_ann, train_rows

    x = clustered()
    _, info = build_measured(x, AnnOptions(kind=kind, target_recall=0.9, sample=500))
    assert info["sample"]["queries_in_training"] == 0.0
    # the same rows by hand: 500 queries drawn from 3000, the training rows are the others
    holdout = np.arange(0, 3000, 6)
    rows = train_rows(3000, 100_000, 0, holdout, need=39)
    assert len(rows) == 2500 and not np.isin(holdout, rows).any()
    trained: list = []
    build_ann(x, kind, holdout=holdout, trained_on=trained)
    assert not np.isin(holdout, trained[0]).any()
    # too few rows left to train (every row a query): all rows train it, as recorded above
    assert len(train_rows(100, 100_000, 0, np.arange(100), need=39)) == 100
