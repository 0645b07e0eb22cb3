"""Search by example and export, from Python and the CLI (issue 30): a frame grabbed from an
indexed video finds that video first (as it is and re-encoded as JPEG), text + image weighs both,
a 2 s sub-clip finds its source and where it is, "more like this" leaves its source out, an
exported clip is as long as asked within one frame and starts on the asked frame; bad images,
ranges and combinations are refused in one line."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from _cli_util import one_line_error, run_cli
from _serve_util import CODEC_FPS, shared_serve_index
from _video_util import frame_ids

from video_retrieval.errors import UserError
from video_retrieval.index.api import Index
from video_retrieval.index.example_search import align
from video_retrieval.index.rerank import l2n
from video_retrieval.media.decode import load_frames, probe_video


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return shared_serve_index(tmp_path_factory)


@pytest.fixture(scope="module")
def index(world):
    return Index.open(world["index"])


def single_videos(world, index) -> list[int]:
    """Rows of synthetic videos that are not half of a temporal pair (a twin shows the same
    frames in another order, so a single frame cannot tell them apart)."""
    coll = Path(world["index"]).parent / "collection"
    pairs = json.loads((coll / "temporal_pairs.json").read_text())
    twins = {f"{p[x]}.mp4" for p in pairs for x in ("a", "b")}
    rows = [i for i, v in enumerate(index.videos)
            if "/collection/" in v["path"] and Path(v["path"]).name not in twins]  # fmt: skip
    assert len(rows) >= 3
    return rows


def grab(path, t: float) -> np.ndarray:
    return load_frames(path, num_frames=1, start=t, end=t + 0.005).pixels[0]


def save(img: np.ndarray, path: Path, fmt: str = "PNG") -> Path:
    from PIL import Image

    Image.fromarray(img).save(path, format=fmt, quality=80)
    return path


def test_a_grabbed_frame_finds_its_video_first_from_the_cli(world, index, tmp_path, capsys):
    rng = np.random.default_rng(5)
    for row in single_videos(world, index)[:3]:
        v = index.videos[row]
        t = float(rng.uniform(0.2, v["duration"] - 0.2))  # between the stored frames, mostly
        for fmt in ("PNG", "JPEG"):
            img = save(grab(v["path"], t), tmp_path / f"f{row}.{fmt.lower()}", fmt)
            rc, out, err = run_cli(capsys, "search", "--image", img, "--index", world["index"],
                                   "--json", "-k", "3")  # fmt: skip
            assert rc == 0, err
            ans = json.loads(out)
            assert ans["query_kind"] == "image" and ans["example"] == {"images": [img.name]}
            assert ans["rerank"] == "frames" and ans["score_kind"] == "cosine"
            top = ans["results"][0]
            assert top["id"] == row, (row, fmt, ans["results"])
            # the matched frame is the stored frame most like the image (a shape that stands
            # still looks the same at other times, so it need not be the nearest in time)
            frames, ts = index.frames(row)
            sims = l2n(frames) @ index.example(image=img).frames[0]
            assert top["matched_frame_time"] == pytest.approx(float(ts[np.argmax(sims)]))
            assert top["score"] == pytest.approx(float(sims.max()), abs=1e-5)
            assert top["moment"]["start"] <= top["matched_frame_time"] <= top["moment"]["end"]
    # the text output says what matched
    rc, out, _ = run_cli(capsys, "search", "--image", img, "--index", world["index"], "-k", "2")
    assert rc == 0 and out.startswith(f"query (image): image {img.name}\n")
    assert "matched frame" in out.splitlines()[1]


def test_python_image_query_sets_and_text_plus_image(world, index):
    row = single_videos(world, index)[0]
    v = index.videos[row]
    a, b = grab(v["path"], 1.0), grab(v["path"], 3.0)
    one = index.search(image=a, k=3)
    both = index.search(image=[a, b], k=3)
    assert one[0].id == both[0].id == row
    # a query set is the normalised mean of the normalised image embeddings
    enc = index.models()[0]
    ea, eb = (l2n(enc.encode_frames(x[None])[0].numpy()[0]) for x in (a, b))
    np.testing.assert_allclose(index.example(image=[a, b]).embedding, l2n(ea + eb), atol=1e-5)
    # text + image: normalise((1 - w) * text + w * image); w = 0 is the text search's ranking
    cap = next(c for c in world["captions"] if c["id"] != row)
    text = index.example(cap["caption"], image=a, image_weight=0.0)
    assert text.kind == "text+image"
    from video_retrieval.index.queries import encode_query

    t = encode_query(*index.models(), cap["caption"]).embedding
    np.testing.assert_allclose(text.embedding, t, atol=1e-5)
    mixed = index.example(cap["caption"], image=a, image_weight=0.3)
    np.testing.assert_allclose(mixed.embedding, l2n(0.7 * t + 0.3 * ea), atol=1e-5)
    assert index.search(cap["caption"], image=a, image_weight=1.0, k=1)[0].id == row
    assert index.search(cap["caption"], image=a, image_weight=0.0, k=1, rerank="none")[0].id == (
        index.search(cap["caption"], k=1, rerank="none")[0].id
    )
    with pytest.raises(UserError, match="image-weight must be in 0.0..1.0"):
        index.example("x", image=a, image_weight=1.5)


def test_a_sub_clip_finds_its_source_and_where_it_is(world, index, tmp_path, capsys):
    row = single_videos(world, index)[1]
    clip = tmp_path / "sub.mp4"
    rc, out, err = run_cli(capsys, "clip", row, 1.0, 3.0, clip, "--index", world["index"])
    assert rc == 0 and out.startswith(f"wrote {clip} (2.00 s: 1.00-3.00 s"), (out, err)
    rc, out, err = run_cli(capsys, "search", "--video", clip, "--index", world["index"], "--json")
    assert rc == 0, err
    ans = json.loads(out)
    assert ans["query_kind"] == "video" and ans["results"][0]["id"] == row
    moment = ans["results"][0]["moment"]
    assert abs(moment["start"] - 1.0) <= 0.25 and abs(moment["end"] - 3.0) <= 0.25
    # --start/--end of the whole source: the same stretch, and the source is left out unless
    # asked (it is the query video)
    src = index.videos[row]["path"]
    rc, out, _ = run_cli(capsys, "search", "--video", src, "--start", 1, "--end", 3, "--index",
                         world["index"], "--json")  # fmt: skip
    assert rc == 0 and row not in [r["id"] for r in json.loads(out)["results"]]
    rc, out, _ = run_cli(capsys, "search", "--video", src, "--start", 1, "--end", 3,
                         "--include-self", "--index", world["index"], "--json")  # fmt: skip
    assert json.loads(out)["results"][0]["id"] == row


def test_more_like_this_leaves_the_source_out(world, index, capsys):
    row = single_videos(world, index)[2]
    hits = index.search(like=row, k=len(index))
    assert row not in [h.id for h in hits] and len(hits) == len(index) - 1
    # its stored pooled vector is the query: the scores are the pooled cosines
    pooled = np.asarray(index.pooled, np.float64)
    for h in hits[:3]:
        assert h.base_score == pytest.approx(float(pooled[h.id] @ pooled[row]), abs=1e-5)
    mine = index.search(like=row, k=2, include_self=True)
    assert mine[0].id == row and mine[0].score == pytest.approx(1.0, abs=1e-4)
    rc, out, err = run_cli(capsys, "search", "--like", f"{row}:1-3", "--include-self", "--index",
                           world["index"], "--json", "-k", "3")  # fmt: skip
    ans = json.loads(out)
    assert rc == 0 and ans["query_kind"] == "like", err
    assert ans["example"]["start"] == 1.0 and ans["example"]["end"] == 3.0
    assert ans["results"][0]["id"] == row


def test_alignment_places_a_clip_where_it_happens():
    d = 8
    rng = np.random.default_rng(0)
    frames = l2n(rng.standard_normal((10, d)))  # a video: 10 frames at 0.25, 0.75, ... 4.75 s
    ts = np.arange(10) * 0.5 + 0.25
    clip = frames[4:8]  # its frames at 2.25 .. 3.75 s, i.e. the clip is 2.0-4.0 s
    score, start, end, matched = align(clip, ts[4:8] - 2.0, 2.0, frames, ts, 5.0)
    assert score == pytest.approx(1.0) and (start, end, matched) == (2.0, 4.0, 2.25)
    # a clip longer than the video is placed at 0
    assert align(frames, ts, 9.0, frames[:3], ts[:3], 1.5)[1:3] == (0.0, 1.5)


@pytest.mark.parametrize("copy", [False, True])
def test_exported_clip_has_the_asked_duration_and_first_frame(world, tmp_path, capsys, copy):
    """The h264 test video: 25 fps, each frame shows its own index, a keyframe every second."""
    row = world["codec_ids"]["h264_mp4"]
    out = tmp_path / "moment.mp4"
    argv = ["clip", row, 1.5, 3.0, out, "--index", world["index"], "--json"]
    rc, text, err = run_cli(capsys, *argv, *(["--copy"] if copy else []))
    assert rc == 0, err
    got = json.loads(text)
    info = probe_video(out)
    fr = load_frames(out)
    first = int(frame_ids(fr.pixels[:1])[0])
    if not copy:  # exact: 1.5 s long within one frame, from the frame shown at 1.5 s
        assert got["mode"] == "exact" and got["moved_by"] == 0.0
        assert abs(info.duration - 1.5) <= 1 / CODEC_FPS + 1e-6
        assert first == round(1.5 * CODEC_FPS)
        assert info.codec == "h264"
        assert out.read_bytes().find(b"moov") < out.read_bytes().find(b"mdat")  # faststart
    else:  # stream copy: from the last keyframe at or before 1.5 s, and it says so
        import av

        with av.open(str(world["codec_paths"]["h264_mp4"])) as c:
            s = c.streams.video[0]
            keys = sorted(float(p.pts * s.time_base) for p in c.demux(s) if p.is_keyframe)
        key = max(k for k in keys if k <= 1.5 + 1e-9)
        assert got["mode"] == "copy" and got["moved_by"] == pytest.approx(1.5 - key)
        assert got["start"] == pytest.approx(key) and first == round(key * CODEC_FPS)
        assert info.duration >= 3.0 - key - 1 / CODEC_FPS
        rc, text, _ = run_cli(capsys, *argv[:-1], "--copy")
        assert f"the start moved {1.5 - key:.2f} s back to the keyframe at {key:.2f} s" in text


def test_bad_examples_and_ranges_are_refused_in_one_line(world, index, tmp_path, capsys):
    idx = str(world["index"])
    notimg = tmp_path / "notes.png"
    notimg.write_text("not an image")
    bomb = tmp_path / "bomb.png"
    from PIL import Image

    Image.new("L", (9000, 9000)).save(bomb)  # 81 MP of zeros: a few hundred kB
    half = tmp_path / "half.jpg"
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 10, 10)).save(buf, format="JPEG")
    half.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    vid = str(index.videos[0]["path"])
    cases = [
        (["search", "--image", tmp_path / "none.png", "--index", idx], "no such image file"),
        (["search", "--image", notimg, "--index", idx], "not an image"),
        (["search", "--image", bomb, "--index", idx], "over the 50 MP limit"),
        (["search", "--image", half, "--index", idx], "damaged or truncated"),
        (["search", "--like", "2", "--video", vid, "--index", idx], "not --video and --like"),
        (["search", "a cat", "--like", "2", "--index", idx], "combines with --image only"),
        (["search", "--like", "999", "--index", idx], "no such video in the index"),
        (["search", "--like", "x7", "--index", idx], "give an index id"),
        (["search", "--like", "0:3-99", "--index", idx], "is outside video 0"),
        (["search", "--like", "0", "--rerank", "query_scored", "--index", idx], "reranks with"),
        (["search", "--image", notimg, "--start", "1", "--index", idx], "not of an image"),
        (["search", "--image", notimg, "--queries", notimg, "--index", idx], "--queries"),
        (["search", "a cat", "--start", "1", "--index", idx], "go with --video or --like"),
        (["search", "--video", tmp_path / "gone.mp4", "--index", idx], "no such file"),
        (["search", "--video", vid, "--start", "3", "--end", "2", "--index", idx], "outside"),
        (["clip", "0", "1", "9", tmp_path / "o.mp4", "--index", idx], "outside the video"),
        (["clip", "0", "2", "1", tmp_path / "o.mp4", "--index", idx], "outside the video"),
        (["clip", "0", "0", "3", tmp_path / "o.mp4", "--index", idx, "--max-seconds", "2"],
         "the limit is 2 s"),
        (["clip", "0", "1", "2", tmp_path / "o.avi", "--index", idx], "name it .mp4"),
        (["clip", "0", "1", "2", tmp_path / "o.mp4"], "give --index DIR"),
        (["clip", "99", "1", "2", tmp_path / "o.mp4", "--index", idx], "no video 99"),
        (["clip", tmp_path / "gone.mp4", "1", "2", tmp_path / "o.mp4"], "no such video file"),
        (["clip", vid, "1", "2", tmp_path / "nodir" / "o.mp4"], "no such folder"),
    ]  # fmt: skip
    for argv, needle in cases:
        rc, _, err = run_cli(capsys, *argv)
        assert rc == 2, (argv, err)
        one_line_error(err, needle)
    assert not (tmp_path / "o.mp4").exists()  # nothing half written
