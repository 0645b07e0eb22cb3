"""The partial-relevance split (``vr synth retrieval --partial N``), rerankers over every frame of
long videos, CLIPRerank's own frame encoder (``--rerank-model``), the ``auto`` reranker rule and
``init_from_parts``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from video_retrieval.datasets.synth_captions import parse_caption
from video_retrieval.datasets.synth_partial import AXIS, max_partial_shots, shot_lengths
from video_retrieval.datasets.synth_render import COLOURS, MOVE_DELTA
from video_retrieval.datasets.synth_retrieval import generate_retrieval

from video_retrieval.cli import main
from video_retrieval.errors import UserError
from video_retrieval.media.decode import load_frames

ASSETS = Path(__file__).resolve().parents[1] / "video_retrieval" / "assets"
DEMO = ASSETS / "demo_retrieval.ckpt"
CLIPS = ASSETS / "demo_clips.ckpt"
SMALL = {
    "num_train": 6,
    "num_test": 8,
    "num_compositional": 2,
    "min_captions": 2,
    "max_captions": 3,
}
needs_demo = pytest.mark.skipif(not DEMO.is_file(), reason="no bundled demo model")


@pytest.fixture(scope="module")
def pworld(tmp_path_factory):
    base = tmp_path_factory.mktemp("partial")
    out = base / "with"
    summary = generate_retrieval(out, seed=3, num_partial=5, codec="h264_lossless", **SMALL)
    plain = base / "without"
    generate_retrieval(plain, seed=3, codec="h264_lossless", **SMALL)
    world = json.loads((out / "world.json").read_text())
    return out, plain, summary, world


def _partial(world) -> dict:
    return {k: v for k, v in world["videos"].items() if v["split"] == "test_partial"}


def test_partial_split_files_and_counts(pworld):
    out, plain, summary, world = pworld
    part = _partial(world)
    assert sorted(part) == [f"partial{k}" for k in range(5)]
    assert summary["videos"]["test_partial"] == 5
    assert summary["partial"]["events"] == sum(len(s["events"]) for s in part.values())
    rows = list(csv.DictReader((out / "test_partial.csv").open()))
    want = [(vid, cap) for vid, s in part.items() for cap in s["captions"]]
    assert [(r["video_id"], r["sentence"]) for r in rows] == want
    assert summary["captions"]["test_partial"] == len(want)
    lines = [json.loads(x) for x in (out / "captions.jsonl").read_text().splitlines()]
    got = [(x["video"], x["caption"]) for x in lines if x["split"] == "test_partial"]
    assert got == [(f"videos/{vid}.mp4", cap) for vid, cap in want]
    # the rest of the world is exactly the world generated without the split
    for name in ("train.csv", "test.csv", "test_compositional.csv", "temporal_pairs.json"):
        assert (out / name).read_bytes() == (plain / name).read_bytes(), name
    other = json.loads((plain / "world.json").read_text())
    assert {k: v for k, v in world["videos"].items() if k not in part} == other["videos"]
    assert not (plain / "test_partial.csv").exists() and "partial" not in other


def test_partial_videos_are_long_multi_shot_with_one_event_per_shot(pworld):
    _, _, _, world = pworld
    for s in _partial(world).values():
        assert s["kind"] == "partial" and s["fps"] == 1.0
        assert 30 <= s["duration"] <= 120 and s["num_frames"] == s["duration"]
        shots = s["shots"]
        assert shots[0][0] == 0 and shots[-1][1] == s["num_frames"]
        assert all(a[1] == b[0] for a, b in zip(shots, shots[1:]))
        assert all(10 <= e - b <= 24 + 9 for b, e in shots)  # a short remainder joins a shot
        assert len(shots) == len(s["events"]) == len(s["objects"]) >= 2
        for (b, e), ev in zip(shots, s["events"]):
            assert b < ev["start_frame"] < ev["end_frame"] < e  # inside its shot, before the cut
            alpha = np.asarray(s["objects"][ev["object"]]["track"]["alpha"])
            assert np.all(alpha[:b] == 0) and np.all(alpha[e:] == 0)  # visible in its shot only
        # captions describe one shot each: its object's colour, shape, event
        assert sorted(set(s["caption_events"])) == list(range(len(shots)))
        for cap, k in zip(s["captions"], s["caption_events"]):
            ev = s["events"][k]
            obj = s["objects"][ev["object"]]
            p = parse_caption(cap)
            assert (p["colours"], p["shapes"], p["events"]) == (
                [obj["colour"]],
                [obj["shape"]],
                [ev["event"]],
            ), cap
            assert set(p["sizes"]) <= {obj["size"]}


def test_partial_shots_unique_per_colour_shape_axis(pworld):
    _, _, _, world = pworld
    keys = [
        (s["objects"][e["object"]]["colour"], s["objects"][e["object"]]["shape"], AXIS[e["event"]])
        for s in _partial(world).values()
        for e in s["events"]
    ]
    assert len(keys) == len(set(keys))  # even an order-blind model can tell every caption apart
    assert max_partial_shots() == 8 * 6 * 4


def test_shot_lengths_fill_the_video():
    rng = np.random.default_rng(0)
    for total in (12, 30, 47, 120):
        n = shot_lengths(rng, total, 10, 24)
        assert sum(n) == total
        assert all(x >= 10 for x in n) or n == [total]


def _blob(frames, rgb, tol=60.0):
    d = np.linalg.norm(frames.astype(np.float32) - np.asarray(rgb, np.float32), axis=-1)
    m = d < tol
    area = m.sum(axis=(1, 2)).astype(float)
    xx = np.arange(frames.shape[2]) + 0.5
    yy = np.arange(frames.shape[1]) + 0.5
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = (m * xx[None, None, :]).sum(axis=(1, 2)) / area
        cy = (m * yy[None, :, None]).sum(axis=(1, 2)) / area
    return area, cx, cy


def test_decoded_partial_video_shows_each_shot_and_its_event(pworld):
    out, _, _, world = pworld
    vid, s = next(iter(_partial(world).items()))
    frames = np.asarray(load_frames(out / "videos" / f"{vid}.mp4", fps=1.0).pixels)
    assert frames.shape == (s["num_frames"], 64, 64, 3)
    for (b, e), ev in zip(s["shots"], s["events"]):
        obj = s["objects"][ev["object"]]
        area, cx, cy = _blob(frames, COLOURS[obj["colour"]])
        assert area[:b].max(initial=0) < 3 and area[e:].max(initial=0) < 3, (vid, obj["colour"])
        before, after = ev["start_frame"] - 1, ev["end_frame"] - 1
        if ev["event"] in MOVE_DELTA:
            dx, dy = MOVE_DELTA[ev["event"]]
            assert abs((cx[after] - cx[before]) - dx * 20) < 2.5
            assert abs((cy[after] - cy[before]) - dy * 20) < 2.5
        elif ev["event"] == "appear":
            assert area[before] < 3 and area[after] > 20
        elif ev["event"] == "disappear":
            assert area[before] > 20 and area[after] < 3


def test_partial_split_too_large_is_a_one_line_error(tmp_path, capsys):
    rc = main(
        [
            "synth", "retrieval", "--out", str(tmp_path / "w"), "--num-train", "0",
            "--num-test", "0", "--num-compositional", "0", "--partial", "80",
        ]
    )  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err
    assert err.startswith("error:") and "192" in err and "--partial" in err


def test_cli_partial_prints_the_split(tmp_path, capsys):
    rc = main(
        [
            "synth", "retrieval", "--out", str(tmp_path / "w"), "--num-train", "0",
            "--num-test", "0", "--num-compositional", "0", "--partial", "2", "--json",
        ]
    )  # fmt: skip
    s = json.loads(capsys.readouterr().out)
    assert rc == 0 and s["videos"]["test_partial"] == 2 and s["partial"]["fps"] == 1.0
    assert s["videos"]["train"] == s["videos"]["test"] == 0


# -- rerankers over long videos ---------------------------------------------------------------
def test_order_free_aggregators_rerank_over_every_frame():
    from video_retrieval.temporal import build_aggregator
    from video_retrieval.temporal.features import TextFeatures, VideoFeatures

    from video_retrieval.index.rerank import AggregatorRerank, QueryFeatures, frame_limit

    qs = build_aggregator("query_scored", 16, max_frames=8)
    seq = build_aggregator("seq_transformer", 16, max_frames=8)
    assert frame_limit(qs) is None and frame_limit(build_aggregator("mean", 16)) is None
    assert frame_limit(seq) == 8
    rng = np.random.default_rng(1)
    frames = [rng.standard_normal((t, 16)).astype(np.float32) for t in (30, 45)]
    text = torch.from_numpy(rng.standard_normal((1, 16)).astype(np.float32))
    q = QueryFeatures("x", text[0].numpy(), TextFeatures(text))
    got = AggregatorRerank(qs).score(q, np.zeros(2), frames)
    for f, g in zip(frames, got):  # every one of the 30 / 45 frames, by hand
        t = text[0].numpy() / np.linalg.norm(text[0].numpy())
        cos = (f / np.linalg.norm(f, axis=1, keepdims=True)) @ t
        w = np.exp(cos / 0.1) / np.exp(cos / 0.1).sum()
        u = (w[:, None] * f).sum(0)
        assert g == pytest.approx(float(u @ t / np.linalg.norm(u)), abs=1e-5)
    video = VideoFeatures(torch.from_numpy(frames[0][None]), torch.ones(1, 30, dtype=torch.bool))
    full = (qs.similarity(TextFeatures(text), video) / qs.scale()).item()
    assert got[0] == pytest.approx(full, abs=1e-5)


@pytest.fixture(scope="module")
def pindex(pworld, tmp_path_factory):
    from video_retrieval.index.api import Index

    out, _, _, world = pworld
    vids = [out / "videos" / f"{v}.mp4" for v in list(_partial(world))[:3]]
    return Index.build(vids, tmp_path_factory.mktemp("pidx") / "i", checkpoint=str(DEMO), fps=1.0)


@needs_demo
def test_rerank_model_equal_to_the_index_model_reproduces_the_index(pindex):
    from video_retrieval.index.queries import encode_query
    from video_retrieval.index.rerank import CLIPRerank, FrameModel
    from video_retrieval.index.search import rerank_scores

    fm = FrameModel(DEMO, cache_videos=2)
    for r in range(len(pindex)):
        stored, ts = pindex.frames(r)
        mine = fm.frames(pindex, r)
        assert mine.shape == stored.shape and len(ts) == len(mine) >= 30
        np.testing.assert_allclose(mine, stored, atol=2e-2, rtol=2e-3)  # the index keeps fp16
    assert len(fm._frames) == 2  # the oldest video left the bounded cache
    encoder, pool = pindex.models()
    q = encode_query(encoder, pool, "the red disc slides left")
    np.testing.assert_allclose(fm.embed_query(q.text), q.embedding, atol=1e-5)
    rows = np.arange(len(pindex))
    base = np.linspace(0.1, 0.3, len(rows))
    own = rerank_scores(pindex, CLIPRerank(0.4), q, base, rows)
    other = rerank_scores(pindex, CLIPRerank(0.4, fm), q, base, rows)
    np.testing.assert_allclose(own, other, atol=2e-3)


@needs_demo
def test_rerank_model_through_search_and_eval(pindex, pworld, capsys):
    out, _, _, _ = pworld
    hits = pindex.search("a red box grows", k=2, rerank_model=str(CLIPS))
    assert len(hits) == 2
    rc = main(
        [
            "eval", "retrieval", "--index", str(pindex.dir), "--captions",
            str(out / "captions.jsonl"), "--split", "test_partial", "--rerank-model",
            str(CLIPS), "--json",
        ]
    )  # fmt: skip
    res = json.loads(capsys.readouterr().out)
    assert rc == 0 and res["rerank"] == "cliprerank" and res["rerank_model"] == str(CLIPS)
    assert res["queries"] > 0 and 0 <= res["t2v"]["R1"] <= 100
    rc = main(["search", "a red box", "--index", str(pindex.dir), "--rerank", "none",
               "--rerank-model", str(CLIPS)])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "--rerank cliprerank" in err


def test_rerank_model_refusals(tmp_path):
    from video_retrieval.index.rerank import build_reranker

    with pytest.raises(UserError, match="no such file"):
        build_reranker("cliprerank", 128, rerank_model=str(tmp_path / "missing.ckpt"))
    with pytest.raises(UserError, match="with --rerank cliprerank"):
        build_reranker("query_scored", 128, rerank_model=str(CLIPS))
    moments = ASSETS / "demo_moments.ckpt"
    if moments.is_file():
        with pytest.raises(UserError, match="not a vr train retrieval checkpoint"):
            build_reranker("cliprerank", 128, rerank_model=str(moments))


# -- init_from_parts ------------------------------------------------------------------------
@needs_demo
def test_init_from_parts_encoder_starts_another_aggregator_from_the_towers():
    from video_retrieval.models.checkpoints import load_retrieval_model
    from video_retrieval.train.retrieval_module import RetrievalModule

    enc, _, _ = load_retrieval_model(DEMO)
    torch.manual_seed(0)
    m = RetrievalModule(
        model="vr-tiny",
        aggregator="tight_transformer",
        num_frames=8,
        init_from=str(DEMO),
        init_from_parts="encoder",
    )
    for k, v in enc.state_dict().items():
        torch.testing.assert_close(m.encoder.state_dict()[k], v)
    torch.manual_seed(0)
    fresh = RetrievalModule(model="vr-tiny", aggregator="tight_transformer", num_frames=8)
    for k, v in fresh.aggregator.state_dict().items():  # the cross-encoder keeps its own init
        torch.testing.assert_close(m.aggregator.state_dict()[k], v)
    with pytest.raises(UserError, match="init_from_parts"):
        RetrievalModule(model="vr-tiny", init_from=str(DEMO), init_from_parts="towers")


@needs_demo
def test_default_reranker_follows_video_length(pindex, pworld, tmp_path):
    from video_retrieval.index.api import Index
    from video_retrieval.index.search import (
        LONG_VIDEO_S,
        default_rerank,
        median_duration,
        resolve_rerank,
    )

    assert median_duration(pindex) >= LONG_VIDEO_S  # the partial split: 30-120 s
    assert default_rerank(pindex) == "query_scored" == resolve_rerank(pindex, "auto")
    assert resolve_rerank(pindex, "auto", str(CLIPS)) == "cliprerank"
    assert resolve_rerank(pindex, "none") == "none"
    out, _, _, world = pworld
    short = [
        out / "videos" / f"{v}.mp4" for v, s in world["videos"].items() if s["split"] == "test"
    ]
    idx = Index.build(short[:3], tmp_path / "short", checkpoint=str(DEMO))
    assert median_duration(idx) == 4.0 and default_rerank(idx) == "none"
    hits = idx.search("a red box", k=2)  # auto: stage 1 alone
    assert [h.score for h in hits] == [h.base_score for h in hits]
