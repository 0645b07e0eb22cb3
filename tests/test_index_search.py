"""Two-stage search: CLIPRerank formula, best moment, ANN choice and recall, JSON schema,
refusals (empty query, other model), aggregator rerankers, vr eval retrieval/moments."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from video_retrieval.cli import main
from video_retrieval.errors import UserError
from video_retrieval.index.ann import (
    ann_search,
    build_ann,
    choose_kind,
    index_kind,
    load_ann,
    save_ann,
)
from video_retrieval.index.api import Index
from video_retrieval.index.rerank import CLIPRerank, best_moment, build_reranker, frame_similarities
from video_retrieval.media.write import write_video


def test_cliprerank_formula_on_a_hand_made_case():
    q = np.array([3.0, 0.0, 0.0])  # not normalised on purpose
    frames = [
        np.array([[0.0, 2.0, 0.0], [1.0, 1.0, 0.0]]),  # max cos = 1/sqrt(2)
        np.array([[5.0, 0.0, 0.0]]),  # max cos = 1
        np.array([[-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]),  # max cos = 0
    ]
    base = np.array([0.9, 0.1, 0.5])
    got = CLIPRerank(alpha=0.4).score(q, base, frames)
    want = [0.4 * 0.9 + 0.6 / np.sqrt(2), 0.4 * 0.1 + 0.6 * 1.0, 0.4 * 0.5 + 0.0]
    np.testing.assert_allclose(got, want, atol=1e-6)
    # alpha = 1 keeps the base ranking; alpha = 0 is pure max-over-frames CLIP
    np.testing.assert_allclose(CLIPRerank(1.0).score(q, base, frames), base)
    np.testing.assert_allclose(
        CLIPRerank(0.0).score(q, base, frames), [1 / np.sqrt(2), 1, 0], atol=1e-6
    )
    with pytest.raises(UserError):
        CLIPRerank(1.5)


def test_best_moment_is_the_run_around_the_best_frame():
    ts = np.arange(10) + 0.5  # frames at 0.5, 1.5, ... 9.5 s of a 10 s video
    sims = np.array([0.0, 0.1, 0.0, 0.7, 0.9, 1.0, 0.85, 0.2, 0.95, 0.0])
    start, end, thumb = best_moment(sims, ts, 10.0, margin=0.25)  # threshold 0.75
    assert (start, end, thumb) == (4.0, 7.0, 5.5)  # frames 4..6; frame 8 is not contiguous
    assert best_moment(sims, ts, 10.0, margin=1.0)[:2] == (0.0, 10.0)
    assert best_moment(np.array([0.3]), np.array([1.0]), 2.0) == (0.0, 2.0, 1.0)
    np.testing.assert_allclose(
        frame_similarities(np.array([2.0, 0]), np.array([[1.0, 1.0], [0, 3.0]])),
        [2**-0.5, 0],
        atol=1e-6,
    )


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_ann_kind_by_size_and_recall(tmp_path):
    assert (choose_kind(1000), choose_kind(60_000), choose_kind(5_000_000)) == (
        "flat",
        "hnsw",
        "ivf",
    )
    rng = np.random.default_rng(0)
    centres = _unit(rng, 50, 32)
    x = centres[rng.integers(0, 50, 4000)] + 0.15 * rng.standard_normal((4000, 32)).astype(
        np.float32
    )
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[:50] + 0.05 * rng.standard_normal((50, 32)).astype(np.float32)
    exact = np.argsort(-(q @ x.T), axis=1)[:, :10]
    flat = build_ann(x)
    assert index_kind(flat) == "flat"
    np.testing.assert_array_equal(ann_search(flat, q, 10)[1], exact)
    for kind in ("hnsw", "ivf"):
        idx = build_ann(x, kind)
        save_ann(idx, tmp_path / f"{kind}.faiss")
        idx = load_ann(tmp_path / f"{kind}.faiss")
        assert index_kind(idx) == kind
        ids = ann_search(idx, q, 10)[1]
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact)])
        assert recall >= 0.9, (kind, recall)


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("search")
    for i, colour in enumerate([(230, 20, 20), (20, 220, 20), (20, 20, 230)]):
        x = np.full((30, 48, 64, 3), 15, np.uint8)
        x[10:20, 8:40, 8:56] = colour  # the box is only there from 1 s to 2 s
        write_video(root / "videos" / f"v{i}.mp4", x, fps=10, gop=5)
    (root / "captions.jsonl").write_text(
        "".join(json.dumps({"video": f"videos/v{i}.mp4", "caption": c}) + "\n"
                for i, c in enumerate(["a red box", "a green box", "a blue box"]))
        + json.dumps({"video": "videos/not_indexed.mp4", "caption": "nothing"}) + "\n"
    )  # fmt: skip
    Index.build(
        [root / "videos"], root / "idx", model="vr-tiny", random_weights=True, fps=5.0, workers=0,
        progress=False,
    )  # fmt: skip
    return root


def test_search_scores_follow_the_two_stages(index_dir):
    idx = Index.open(index_dir / "idx")
    encoder, pool = idx.models()
    from video_retrieval.index.queries import encode_query

    q = encode_query(encoder, pool, "a red box").embedding
    base = np.asarray(idx.pooled) @ q
    plain = idx.search("a red box", k=3, rerank="none")
    assert [h.rank for h in plain] == [1, 2, 3]
    for h in plain:  # rerank none: score = cosine with the pooled vector
        assert h.score == pytest.approx(base[idx.row_of(h.video)], abs=1e-5)
    hits = idx.search("  a red box ", k=3, rerank="cliprerank", alpha=0.4)
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    for h in hits:
        row = idx.row_of(h.video)
        frames, ts = idx.frames(row)
        f = frames / np.linalg.norm(frames, axis=1, keepdims=True)
        assert h.score == pytest.approx(0.4 * base[row] + 0.6 * (f @ q).max(), abs=1e-5)
        assert 0.0 <= h.moment.start <= h.thumbnail_time <= h.moment.end <= 3.0 + 1e-6
        assert h.thumbnail_time in set(np.round(ts, 6)) or np.isclose(ts, h.thumbnail_time).any()
    assert len(idx.search("a red box", k=2, candidates=1)) == 2  # candidates >= k


def test_ucofia_checkpoint_reranks_from_stored_patch_tokens(index_dir, tmp_path):
    import torch
    from video_retrieval.temporal.features import VideoFeatures

    from video_retrieval.index.queries import encode_query
    from video_retrieval.models.checkpoints import load_retrieval_model
    from video_retrieval.train.retrieval_module import RetrievalModule

    torch.manual_seed(0)
    m = RetrievalModule(model="vr-tiny", aggregator="ucofia", num_frames=4, max_words=32)
    ckpt = tmp_path / "ucofia.ckpt"  # the layout vr train writes (hyper-parameters + vr_meta)
    torch.save(
        {"hyper_parameters": dict(m.hparams), "state_dict": m.state_dict(),
         "vr_meta": {"encoder_spec": dict(m.encoder.spec), "aggregator": "ucofia"}},
        ckpt,
    )  # fmt: skip
    videos = index_dir / "videos"
    no_patches = Index.build([videos], tmp_path / "plain", checkpoint=str(ckpt), num_frames=4,
                             workers=0, progress=False)  # fmt: skip
    with pytest.raises(UserError, match="--patches"):
        no_patches.search("a red box", rerank=str(ckpt))
    idx = Index.build([videos], tmp_path / "idx", checkpoint=str(ckpt), num_frames=4, patches=8,
                      workers=0, progress=False)  # fmt: skip
    assert idx.patch_topk == 8 and idx.patches(0).shape == (4, 8, 128)
    hits = idx.search("a red box", k=3, rerank=str(ckpt))
    enc, agg, _ = load_retrieval_model(ckpt)
    q = encode_query(enc, agg, "a red box", words=True)
    for h in hits:  # the UCoFiA score of the stored frames and patch tokens, by hand
        row = idx.row_of(h.video)
        video = VideoFeatures(
            torch.from_numpy(idx.frames(row)[0])[None], torch.ones(1, 4, dtype=torch.bool),
            torch.from_numpy(idx.patches(row))[None],
        )  # fmt: skip
        with torch.no_grad():
            want = agg.similarity(q.features, video)[0, 0].item() / agg.scale().item()
        assert h.score == pytest.approx(want, abs=1e-4)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_query_scored_reranker_plugs_in(index_dir):
    hits = Index.open(index_dir / "idx").search("a green box", k=3, rerank="query_scored")
    assert len(hits) == 3 and all(np.isfinite(h.score) for h in hits)
    with pytest.raises(UserError, match="unknown reranker"):
        build_reranker("no_such_thing", 128)
    for name in ("tight_transformer", "ucofia", "seq_transformer"):  # untrained: refused
        with pytest.raises(UserError, match="learned weights"):
            build_reranker(name, 128)


def test_search_cli_json_schema_and_refusals(index_dir, capsys):
    rc = main(["search", "a blue box", "--index", str(index_dir / "idx"), "-k", "2", "--json"])
    cap = capsys.readouterr()
    out = json.loads(cap.out)
    assert rc == 0 and set(out) == {
        "query",
        "query_kind",
        "example",
        "results",
        "weights",
        "rerank",
        "score_kind",
        "generation",
    }
    assert out["query_kind"] == "text" and out["example"] is None
    assert out["score_kind"] == "cosine" and out["generation"] == 1
    assert out["query"] == "a blue box" and out["rerank"] == "none"  # auto: short videos
    assert out["weights"] == {"kind": "random", "model": "vr-tiny", "seed": 0}
    assert "RANDOM weights" in cap.err  # said loudly, on stderr
    assert len(out["results"]) == 2
    for r in out["results"]:
        assert set(r) == {"rank", "id", "video", "score", "base_score", "moment", "thumbnail_time",
                          "duration", "matched_frame_time"}  # fmt: skip
        assert r["matched_frame_time"] is None  # a text query matches no image
        assert r["score"] == r["base_score"]  # no reranking: the stage-1 cosine
        assert set(r["moment"]) == {"start", "end"} and Path(r["video"]).is_absolute()
    assert main(["search", "   ", "--index", str(index_dir / "idx")]) == 2
    assert "query is empty" in capsys.readouterr().err
    assert main(["search", "x", "--index", str(index_dir / "videos")]) == 2
    assert "not an index" in capsys.readouterr().err


def test_index_from_another_model_is_refused(index_dir, tmp_path):
    import shutil

    d = tmp_path / "idx"
    shutil.copytree(index_dir / "idx", d)
    m = json.loads((d / "manifest.json").read_text())
    m["fingerprint"]["encoder"] = "ViT-B-32:openai:0123456789abcdef"
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UserError, match="was built with model"):
        Index.open(d).search("a red box")
    assert main(["search", "a red box", "--index", str(d)]) == 2


def test_eval_retrieval_and_moments(index_dir, capsys, tmp_path):
    rc = main(["eval", "retrieval", "--index", str(index_dir / "idx"), "--captions",
               str(index_dir / "captions.jsonl"), "--json"])  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["queries"] == 3 and out["skipped"] == 1 and out["videos"] == 3
    assert out["weights"] == {"kind": "random", "model": "vr-tiny", "seed": 0}
    t = out["t2v"]
    assert set(t) >= {"R1", "R5", "R10", "MdR", "MnR"}
    assert 0 <= t["R1"] <= t["R5"] == t["R10"] == 100.0 and 1 <= t["MdR"] <= 3
    rc = main(["eval", "retrieval", "--index", str(index_dir / "idx"), "--captions",
               str(index_dir / "captions.jsonl"), "--rerank", "cliprerank", "--json"])  # fmt: skip
    assert rc == 0 and json.loads(capsys.readouterr().out)["rerank"] == "cliprerank"
    assert (
        main(
            ["eval", "moments", "--pred", str(tmp_path / "nope.jsonl"), "--gt", str(tmp_path / "x")]
        )
        == 2
    )
    assert "no such file" in capsys.readouterr().err
