"""Synthetic world: determinism, formats, caption/content agreement, temporal pairs, moments."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from video_retrieval.datasets.synth_captions import parse_caption
from video_retrieval.datasets.synth_moments import generate_moments
from video_retrieval.datasets.synth_render import COLOURS, GROW_FACTOR, MOVE_DELTA, render_frames
from video_retrieval.datasets.synth_retrieval import generate_retrieval

from video_retrieval.media.decode import load_frames

FIXTURE = Path("/work/shared/fixtures/real/qvhighlights_val_head40.jsonl")
SMALL = dict(
    num_train=20,
    num_test=24,
    num_compositional=8,
    test_direction_pairs=3,
    test_order_pairs=3,
)
ANNOTATIONS = (
    "MSRVTT_data.json",
    "train.csv",
    "test.csv",
    "test_compositional.csv",
    "temporal_pairs.json",
    "train_pairs.json",
    "captions.jsonl",
    "world.json",
)


@pytest.fixture(scope="module")
def rworld(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth_r") / "w"
    summary = generate_retrieval(out, seed=7, **SMALL)
    world = json.loads((out / "world.json").read_text())
    return out, summary, world


@pytest.fixture(scope="module")
def mworld(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth_m") / "w"
    summary = generate_moments(out, seed=5, num_videos=6, min_duration=30, max_duration=60)
    world = json.loads((out / "world.json").read_text())
    return out, summary, world


def decode_all(path) -> np.ndarray:
    return load_frames(path).pixels


def blob(frames: np.ndarray, rgb, tol: float = 60.0):
    """Area, x-centroid, y-centroid of the pixels within ``tol`` of colour ``rgb``, per frame."""
    d = np.linalg.norm(frames.astype(np.float32) - np.asarray(rgb, np.float32), axis=-1)
    m = d < tol
    area = m.sum(axis=(1, 2)).astype(np.float64)
    yy, xx = np.mgrid[0 : frames.shape[1], 0 : frames.shape[2]]
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = (m * (xx + 0.5)).sum(axis=(1, 2)) / area
        cy = (m * (yy + 0.5)).sum(axis=(1, 2)) / area
    return area, cx, cy


def frame_hashes(frames: np.ndarray) -> list[str]:
    return [hashlib.sha1(f.tobytes()).hexdigest() for f in frames]


def read_csv(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------------------- retrieval


def test_retrieval_counts_and_formats(rworld):
    out, summary, world = rworld
    assert summary["videos"] == {"train": 20, "test": 24, "test_compositional": 8}
    assert summary["temporal_pairs"] == {"direction": 3, "order": 3}
    msr = json.loads((out / "MSRVTT_data.json").read_text())
    assert len(msr["videos"]) == 52
    for v in msr["videos"]:
        assert {"video_id", "category", "url", "start time", "end time", "split", "id"} <= set(v)
        assert (out / "videos" / f"{v['video_id']}.mp4").stat().st_size > 0
    caps_by_vid: dict[str, list[str]] = {}
    for s in msr["sentences"]:
        assert set(s) == {"caption", "video_id", "sen_id"}
        caps_by_vid.setdefault(s["video_id"], []).append(s["caption"])
    assert len({s["sen_id"] for s in msr["sentences"]}) == len(msr["sentences"])
    for vid, caps in caps_by_vid.items():
        assert 5 <= len(caps) <= 10 and len(set(caps)) == len(caps), vid
    train = read_csv(out / "train.csv")
    assert list(train[0]) == ["video_id"] and len(train) == 20
    for name, split in (("test.csv", "test"), ("test_compositional.csv", "test_compositional")):
        rows = read_csv(out / name)
        assert list(rows[0]) == ["key", "vid_key", "video_id", "sentence"]
        vids = {vid for vid, s in world["videos"].items() if s["split"] == split}
        assert {r["video_id"] for r in rows} == vids
        assert len(rows) == sum(len(caps_by_vid[v]) for v in vids)  # every caption listed
        assert len({r["key"] for r in rows}) == len(rows)
    lines = [json.loads(x) for x in (out / "captions.jsonl").read_text().splitlines()]
    assert len(lines) == len(msr["sentences"])
    assert all(set(x) == {"video", "caption", "split"} for x in lines)
    assert all((out / x["video"]).exists() for x in lines)
    test_vids = {r["video_id"] for r in read_csv(out / "test.csv")}
    pairs = json.loads((out / "temporal_pairs.json").read_text())
    assert len(pairs) == 6
    for p in pairs:
        assert p["a"] in test_vids and p["b"] in test_vids and p["kind"] in ("direction", "order")
    # the train split holds direction and order pairs too, listed in train_pairs.json
    train_pairs = [
        s["pair"]["kind"] for s in world["videos"].values() if s["split"] == "train" and "pair" in s
    ]
    assert train_pairs.count("direction") >= 2 and train_pairs.count("order") >= 2
    train_vids = {r["video_id"] for r in read_csv(out / "train.csv")}
    listed = json.loads((out / "train_pairs.json").read_text())
    assert 2 * len(listed) == len(train_pairs)
    for p in listed:
        assert p["a"] in train_vids and p["b"] in train_vids
        assert world["videos"][p["a"]]["pair"] == {"with": p["b"], "kind": p["kind"]}


def test_retrieval_semantics_unique_within_split(rworld):
    from video_retrieval.datasets.synth_plan import semantic_key

    _, _, world = rworld
    for split in ("train", "test", "test_compositional"):
        keys = [semantic_key(s) for s in world["videos"].values() if s["split"] == split]
        assert len(keys) == len(set(keys)), split


def test_compositional_combos_held_out(rworld):
    out, _, world = rworld
    held = {tuple(c) for c in world["held_out_combos"]}
    assert len(held) >= 4
    for vid, spec in world["videos"].items():
        combos = {(o["colour"], o["shape"]) for o in spec["objects"]}
        if spec["split"] == "test_compositional":
            assert combos & held, vid
        else:
            assert not combos & held, vid
            for cap in spec["captions"]:
                parsed = parse_caption(cap)
                assert not set(zip(parsed["colours"], parsed["shapes"])) & held, cap


def test_captions_agree_with_ground_truth(rworld):
    _, _, world = rworld
    for vid, spec in world["videos"].items():
        objs = spec["objects"]
        want_col = [objs[e["object"]]["colour"] for e in spec["events"]]
        want_shape = [objs[e["object"]]["shape"] for e in spec["events"]]
        want_ev = [e["event"] for e in spec["events"]]
        for cap in spec["captions"]:
            p = parse_caption(cap)
            assert p["events"] == want_ev, (vid, cap)
            if spec["kind"] == "same2":  # one noun phrase for both events
                assert p["colours"] == want_col[:1] and p["shapes"] == want_shape[:1], cap
            else:
                assert p["colours"] == want_col and p["shapes"] == want_shape, (vid, cap)
            sizes = {objs[e["object"]]["size"] for e in spec["events"]}
            assert set(p["sizes"]) <= sizes, cap
            if len(spec["objects"]) == 1:
                assert set(p["sizes"]) <= {objs[0]["size"]}
            assert p["background"] in (None, spec["background"]["kind"]), cap


def _check_event_in_frames(frames, spec, ev, move_px):
    obj = spec["objects"][ev["object"]]
    area, cx, cy = blob(frames, COLOURS[obj["colour"]])
    before, after = ev["start_frame"] - 1, ev["end_frame"] - 1
    name = ev["event"]
    if name in MOVE_DELTA:
        dx, dy = MOVE_DELTA[name]
        assert area[before] > 20 and area[after] > 20
        assert abs((cx[after] - cx[before]) - dx * move_px) < 2.5, (name, cx[before], cx[after])
        assert abs((cy[after] - cy[before]) - dy * move_px) < 2.5, (name, cy[before], cy[after])
        # monotone along the way
        path = (cx if dx else cy)[before : after + 1] * (dx or dy)
        assert np.all(np.diff(path) > -0.5)
    elif name in ("grow", "shrink"):
        ratio = area[after] / area[before]
        want = GROW_FACTOR**2 if name == "grow" else GROW_FACTOR**-2
        assert abs(np.log(ratio) - np.log(want)) < 0.35, (name, area[before], area[after])
    elif name == "appear":
        assert area[before] < 3 and area[after] > 20, (area[before], area[after])
    elif name == "disappear":
        assert area[before] > 20 and area[after] < 3, (area[before], area[after])
    else:
        raise AssertionError(name)


def test_decoded_videos_show_the_captioned_events(rworld):
    out, _, world = rworld
    move_px = world["params"]["move_px"]
    for vid, spec in world["videos"].items():
        if spec["split"] == "train" and int(vid[5:]) % 3:
            continue  # a sample of train, all of test
        frames = decode_all(out / "videos" / f"{vid}.mp4")
        assert frames.shape == (spec["num_frames"], 64, 64, 3)
        rendered = render_frames(spec)  # world.json reproduces the file
        assert np.abs(frames.astype(int) - rendered).mean() < 3.0
        for ev in spec["events"]:
            _check_event_in_frames(frames, spec, ev, move_px)
        # outside the events (and shot cuts) nothing changes
        changing = np.zeros(spec["num_frames"], dtype=bool)
        for ev in spec["events"]:
            changing[ev["start_frame"] : ev["end_frame"]] = True
        for s, _e in spec["shots"]:
            changing[s] = True
        diffs = np.abs(np.diff(rendered.astype(int), axis=0)).max(axis=(1, 2, 3))
        assert np.all(diffs[~changing[1:]] == 0), vid


def test_temporal_pairs_same_frames_other_order(rworld):
    out, _, world = rworld
    pairs = json.loads((out / "temporal_pairs.json").read_text())
    for p in pairs:
        sa, sb = world["videos"][p["a"]], world["videos"][p["b"]]
        ra, rb = render_frames(sa), render_frames(sb)
        # identical multiset of rendered frames, different order
        assert sorted(frame_hashes(ra)) == sorted(frame_hashes(rb))
        assert frame_hashes(ra) != frame_hashes(rb)
        if p["kind"] == "direction":
            perm = np.arange(len(ra))[::-1]
            assert [e["event"] for e in sb["events"]] != [e["event"] for e in sa["events"]]
        else:
            c = sa["shots"][0][1]
            perm = np.r_[np.arange(c, len(ra)), np.arange(c)]
            assert sa["kind"] == sb["kind"] == "two2"
        assert np.array_equal(rb, ra[perm])
        # decoded: b is a's frames permuted, within codec tolerance; mean pooling cannot tell
        da = decode_all(out / "videos" / f"{p['a']}.mp4").astype(np.float32)
        db = decode_all(out / "videos" / f"{p['b']}.mp4").astype(np.float32)
        assert np.abs(db - da[perm]).mean() < 2.0
        assert np.abs(db.mean(0) - da.mean(0)).mean() < 0.5
        # captions state the difference
        ea = [parse_caption(c)["events"] for c in sa["captions"]]
        eb = [parse_caption(c)["events"] for c in sb["captions"]]
        assert not set(map(tuple, ea)) & set(map(tuple, eb))


def test_retrieval_determinism(rworld, tmp_path):
    out, _, _ = rworld
    again = tmp_path / "again"
    generate_retrieval(again, seed=7, workers=1, **SMALL)
    for name in ANNOTATIONS:
        assert (again / name).read_bytes() == (out / name).read_bytes(), name
    for vid in ("video0", "video21", "video50"):
        a = (out / "videos" / f"{vid}.mp4").read_bytes()
        assert (again / "videos" / f"{vid}.mp4").read_bytes() == a
        assert np.array_equal(
            decode_all(out / "videos" / f"{vid}.mp4"), decode_all(again / "videos" / f"{vid}.mp4")
        )
    other = tmp_path / "other"
    generate_retrieval(other, seed=8, **{**SMALL, "num_train": 2, "num_compositional": 1})
    assert (other / "captions.jsonl").read_bytes() != (out / "captions.jsonl").read_bytes()
    assert (other / "videos" / "video0.mp4").read_bytes() != (
        out / "videos" / "video0.mp4"
    ).read_bytes()


# --------------------------------------------------------------------------------- moments


def _fixture_rows():
    return [json.loads(x) for x in FIXTURE.read_text().splitlines() if x.strip()]


def test_moments_fields_match_qvhighlights(mworld):
    out, summary, world = mworld
    ref = _fixture_rows()[0] if FIXTURE.exists() else None
    rows = {
        s: [json.loads(x) for x in (out / f"{s}.jsonl").read_text().splitlines()]
        for s in ("train", "val", "test")
    }
    assert all(rows.values())
    assert sum(len(r) for r in rows.values()) == sum(summary["queries"].values())
    vids = {s: {r["vid"] for r in rs} for s, rs in rows.items()}
    assert not (vids["train"] & vids["val"]) and not (vids["train"] & vids["test"])
    qids = [r["qid"] for rs in rows.values() for r in rs]
    assert len(set(qids)) == len(qids)
    for r in (r for rs in rows.values() for r in rs):
        if ref is not None:
            assert list(r) == list(ref) or set(r) == set(ref)
            for k, v in ref.items():
                assert type(r[k]) is type(v), k
        assert isinstance(r["qid"], int) and isinstance(r["query"], str) and r["query"].strip()
        assert isinstance(r["duration"], int) and 30 <= r["duration"] <= 60
        assert (out / "videos" / f"{r['vid']}.mp4").exists()
        clip_ids = []
        for s, e in r["relevant_windows"]:
            assert isinstance(s, int) and isinstance(e, int)
            assert 0 <= s < e <= r["duration"] and s % 2 == 0 and e % 2 == 0
            clip_ids.extend(range(s // 2, e // 2))
        assert r["relevant_clip_ids"] == clip_ids
        assert len(r["saliency_scores"]) == len(clip_ids)
        for triple in r["saliency_scores"]:
            assert len(triple) == 3 and all(isinstance(x, int) and 0 <= x <= 4 for x in triple)
        assert max(max(t) for t in r["saliency_scores"]) == 4
    assert summary["multi_window_queries"] >= 1
    # clips.jsonl: one line per relevant clip, the clip +-1 s (clamped), with its query and split
    clips = [json.loads(x) for x in (out / "clips.jsonl").read_text().splitlines()]
    want = [
        (s, r["query"], f"videos/{r['vid']}.mp4", max(0, c * 2 - 1), min(r["duration"], c * 2 + 3))
        for s in ("train", "val", "test")
        for r in rows[s]
        for c in r["relevant_clip_ids"]
    ]
    got = [(c["split"], c["caption"], c["video"], c["start"], c["end"]) for c in clips]
    assert got == want


def test_moment_queries_describe_their_windows(mworld):
    """Decode each video; the queried object changes only inside its windows (or its own other
    events/spins), and does what the query says inside each window."""
    out, _, world = mworld
    move_px = world["params"]["move_px"]
    by_vid: dict[str, list[dict]] = {}
    for s in ("train", "val", "test"):
        for x in (out / f"{s}.jsonl").read_text().splitlines():
            r = json.loads(x)
            by_vid.setdefault(r["vid"], []).append(r)
    for vid, spec in world["videos"].items():
        frames = decode_all(out / "videos" / f"{vid}.mp4")
        fps = spec["fps"]
        assert frames.shape[0] == spec["num_frames"] == int(spec["duration"] * fps)
        rendered = render_frames(spec)
        assert np.abs(frames.astype(int) - rendered).mean() < 3.0
        for r in by_vid.get(vid, []):
            p = parse_caption(r["query"])
            (colour,) = p["colours"]
            (event,) = p["events"]
            k = next(i for i, o in enumerate(spec["objects"]) if o["colour"] == colour)
            assert spec["objects"][k]["shape"] == p["shapes"][0]
            gt = sorted(
                (e["start_s"], e["end_s"])
                for e in spec["events"]
                if e["object"] == k and e["event"] == event
            )
            assert [tuple(w) for w in r["relevant_windows"]] == gt
            # pixels of this object (rendered, exact) change only inside its own events/spins
            own = np.zeros(spec["num_frames"], dtype=bool)
            for e in spec["events"] + spec["distractors"]:
                if e["object"] == k:
                    own[e["start_frame"] : e["end_frame"]] = True
            area, cx, cy = blob(rendered, COLOURS[colour], tol=1.0)
            feats = np.nan_to_num(np.stack([area, cx, cy], 1), nan=-1.0)
            moved = np.abs(np.diff(feats, axis=0)).max(axis=1) > 0
            assert not np.any(moved[~own[1:]]), (vid, r["query"])
            for s, e in r["relevant_windows"]:
                ev = {
                    "object": k,
                    "event": event,
                    "start_frame": int(s * fps),
                    "end_frame": int(e * fps),
                }
                _check_event_in_frames(frames, spec, ev, move_px)


def test_moment_clip_pairs_are_the_same_object_doing_another_event(mworld):
    """clip_pairs.json: each clip of clips.jsonl in at most one pair; both members in one split
    and one video, of queries about the same object; ``reverse`` pairs show the reverse event,
    ``same_object`` ones only for a clip whose object never does it (among the queried events)."""
    from video_retrieval.datasets.synth_moments import REVERSE_EVENT, query_event

    out, _, world = mworld
    pairs = json.loads((out / "clip_pairs.json").read_text())
    clips = [json.loads(x) for x in (out / "clips.jsonl").read_text().splitlines()]
    rows = {
        r["query"] + "|" + r["vid"]: r
        for s in ("train", "val", "test")
        for r in map(json.loads, (out / f"{s}.jsonl").read_text().splitlines())
    }
    clip = {c["video_id"]: c for c in clips}
    members = [x for p in pairs for x in (p["a"], p["b"])]
    assert len(members) == len(set(members)) and set(members) <= set(clip)
    assert {p["kind"] for p in pairs} == {"reverse", "same_object"}
    for p in pairs:
        a, b = clip[p["a"]], clip[p["b"]]
        assert a["split"] == b["split"] == p["split"] and a["video"] == b["video"]
        vid = p["a"].split("@")[0]
        ra, rb = rows[a["caption"] + "|" + vid], rows[b["caption"] + "|" + vid]
        (oa, ea), (ob, eb) = (query_event(world["videos"][vid], r) for r in (ra, rb))
        assert oa == ob and ea != eb
        if p["kind"] == "reverse":
            assert eb == REVERSE_EVENT[ea]
        else:
            queried = {query_event(world["videos"][vid], r) for r in rows.values()
                       if r["vid"] == vid}  # fmt: skip
            assert (oa, REVERSE_EVENT[ea]) not in queried or (ob, REVERSE_EVENT[eb]) not in queried
    # many clips find a partner (5 queries per video here; 79% of the training clips of the
    # recipe's world, 20 per video)
    assert len(members) > 0.25 * len(clips)


def test_moments_determinism(tmp_path):
    kw = dict(num_videos=3, min_duration=30, max_duration=36)
    generate_moments(tmp_path / "a", seed=1, **kw)
    generate_moments(tmp_path / "b", seed=1, workers=1, **kw)
    generate_moments(tmp_path / "c", seed=2, **kw)
    for name in ("train.jsonl", "val.jsonl", "test.jsonl", "world.json", "clip_pairs.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    va = sorted((tmp_path / "a" / "videos").iterdir())
    assert len(va) == 3
    for f in va:
        assert f.read_bytes() == (tmp_path / "b" / "videos" / f.name).read_bytes()
    assert (tmp_path / "a" / "world.json").read_bytes() != (
        tmp_path / "c" / "world.json"
    ).read_bytes()


def test_moment_splits_never_exceed_num_videos(tmp_path):
    """A split asked to be empty stays empty (vr demo's 3 long videos are 3 test videos, not a
    val video more)."""
    out = generate_moments(tmp_path / "d", seed=3, num_videos=3, val_fraction=0.0,
                           test_fraction=1.0, min_duration=30, max_duration=32)  # fmt: skip
    names = sorted(p.name for p in (tmp_path / "d" / "videos").iterdir())
    assert names == ["synmom0000_test.mp4", "synmom0001_test.mp4", "synmom0002_test.mp4"]
    assert out["videos"] == {"train": 0, "val": 0, "test": 3}


# ------------------------------------------------------------------------------------- CLI


def test_cli_synth(tmp_path, capsys):
    from video_retrieval.cli import main

    rc = main(
        ["synth", "retrieval", "--out", str(tmp_path / "r"), "--seed", "1", "--num-train", "6",
         "--num-test", "8", "--num-compositional", "2", "--direction-pairs", "1",
         "--order-pairs", "1", "--json"]
    )  # fmt: skip
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["videos"] == {"train": 6, "test": 8, "test_compositional": 2}
    rc = main(["synth", "moments", "--out", str(tmp_path / "m"), "--num-videos", "3",
               "--min-duration", "30", "--max-duration", "30"])  # fmt: skip
    assert rc == 0
    assert "synth moments: 3 videos" in capsys.readouterr().out
    rc = main(["synth", "retrieval", "--out", str(tmp_path / "x"), "--num-test", "2",
               "--direction-pairs", "2"])  # fmt: skip
    assert rc == 2
    assert "error:" in capsys.readouterr().err


def test_lossless_codec_keeps_pairs_exact_after_decoding(tmp_path):
    out = tmp_path / "ll"
    generate_retrieval(
        out, seed=3, codec="h264_lossless", num_train=2, num_test=8, num_compositional=1,
        test_direction_pairs=2, test_order_pairs=2,
    )  # fmt: skip
    pairs = json.loads((out / "temporal_pairs.json").read_text())
    world = json.loads((out / "world.json").read_text())
    for p in pairs:
        da = decode_all(out / "videos" / f"{p['a']}.mp4")
        db = decode_all(out / "videos" / f"{p['b']}.mp4")
        assert sorted(frame_hashes(da)) == sorted(frame_hashes(db))
        assert np.abs(da.astype(int) - render_frames(world["videos"][p["a"]])).max() <= 2
