"""Decoding: exact frame indices per sampling mode, backend agreement, padding, VFR, rotation, errors.

Every test video encodes each frame's index in its colour (tests/_video_util.py), so the tests
check which physical frame came back, not just shapes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _video_util import (
    ffmpeg,
    ffmpeg_decode_first,
    frame_ids,
    garble_copy,
    index_frames,
    marker_frames,
    rotate_copy,
    truncate_copy,
    write_audio_only,
    write_index_video,
    write_vfr_video,
)

from video_retrieval.errors import UserError, VideoDecodeError
from video_retrieval.media.decode import (
    Frames,
    SamplingError,
    load_frames,
    probe_video,
    resize_frames,
    sample_indices,
)
from video_retrieval.media.pyav_backend import decode_pts, scan_video
from video_retrieval.media.write import write_video

BACKENDS = ["decord", "pyav"]
CODECS = {  # name -> (codec, extension)
    "h264_mp4": ("h264", "mp4"),
    "vp9_webm": ("vp9", "webm"),
    "mpeg4_avi": ("mpeg4", "avi"),
    "hevc_mkv": ("hevc", "mkv"),
    "lossless_mp4": ("h264_lossless", "mp4"),
}


@pytest.fixture(scope="module")
def vids(tmp_path_factory):
    """All test videos, written once per module."""
    d = tmp_path_factory.mktemp("decode")
    v = {}
    for name, (codec, ext) in CODECS.items():
        # 50 frames at 25 fps = 2 s; short GOP so seeks land mid-file; closed GOPs (see below)
        extra = ["-x265-params", "log-level=error:open-gop=0"] if codec == "hevc" else None
        v[name] = write_index_video(
            d / f"{name}.{ext}", n=50, fps=25, codec=codec, gop=10, extra_args=extra
        )
    # open GOP (leading pictures): x265's default, x264 with open-gop=1
    v["hevc_open"] = write_index_video(d / "hevc_open.mkv", n=50, codec="hevc", gop=10)
    v["h264_open"] = write_index_video(
        d / "h264_open.mp4",
        n=50,
        codec="h264",
        gop=10,
        extra_args=["-x264-params", "open-gop=1:bframes=3"],
    )
    v["short"] = write_index_video(d / "short.mp4", n=5, fps=25)
    v["slow"] = write_index_video(d / "slow.mp4", n=10, fps=5)
    v["one"] = write_index_video(d / "one.mp4", n=1)
    v["odd_lossless"] = write_index_video(d / "odd.mp4", n=10, codec="h264_lossless", h=61, w=97)
    v["odd_mjpeg"] = write_index_video(d / "odd.avi", n=10, codec="mjpeg", h=61, w=97)
    v["vfr"], v["vfr_times"] = write_vfr_video(d / "vfr.mp4", [(10, 0.04), (10, 0.1), (5, 0.02)])
    v["marker"] = write_video(d / "marker.mp4", marker_frames(), codec="h264_lossless")
    for deg in (90, 180, 270):
        v[f"rot{deg}"] = rotate_copy(v["marker"], d / f"rot{deg}.mp4", deg)
    v["moov_end"] = write_index_video(d / "moov_end.mp4", n=100, gop=10)
    v["faststart"] = write_index_video(
        d / "fs.mp4", n=100, gop=10, extra_args=["-movflags", "+faststart"]
    )
    base = v["h264_mp4"]
    ffmpeg("-i", str(base), "-c", "copy", str(d / "copy.ts"))
    v["ts"] = d / "copy.ts"
    ffmpeg(
        "-i",
        str(base),
        "-f",
        "lavfi",
        "-i",
        "sine=duration=2",
        "-c:v",
        "copy",
        "-c:a",
        "aac",
        "-shortest",
        str(d / "av.mp4"),
    )
    v["with_audio"] = d / "av.mp4"
    ffmpeg("-itsoffset", "1.5", "-i", str(base), "-c", "copy", str(d / "offset.mkv"))
    v["offset"] = d / "offset.mkv"
    # AV1: decord's bundled FFmpeg has no AV1 decoder, so auto mode must fall back to PyAV
    v["av1"] = write_index_video(
        d / "av1.mkv", n=20, codec="libaom-av1", extra_args=["-cpu-used", "8", "-crf", "20"]
    )
    v["dir"] = d
    return v


def _check(f: Frames, ids, backend=None):
    ids = np.asarray(ids)
    assert f.pixels.dtype == np.uint8 and f.pixels.ndim == 4 and f.pixels.shape[-1] == 3
    assert f.pixels.shape[0] == len(f.timestamps) == len(f.mask) == len(f.indices)
    np.testing.assert_array_equal(frame_ids(f.pixels), ids)
    np.testing.assert_array_equal(f.indices, ids)
    assert np.isfinite(f.timestamps).all()
    if backend is not None:
        assert f.backend == backend


# ---------------------------------------------------------------- sampling on ordinary files


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(CODECS))
def test_num_frames_takes_segment_midpoints(vids, name, backend):
    f = load_frames(vids[name], num_frames=8, backend=backend)
    # segments of 0.25 s: midpoints 0.125 + k*0.25 s -> frames floor(25 * t)
    ids = [3, 9, 15, 21, 28, 34, 40, 46]
    _check(f, ids, backend)
    np.testing.assert_allclose(f.timestamps, np.array(ids) / 25, atol=1e-9)
    assert f.mask.all()
    assert (f.duration, f.fps, f.num_frames) == (pytest.approx(2.0), pytest.approx(25.0), 50)
    assert f.path == str(vids[name])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["h264_mp4", "vp9_webm", "hevc_mkv"])
def test_fps_mode_samples_midpoints_of_steps(vids, name, backend):
    f = load_frames(vids[name], fps=2, backend=backend)
    _check(f, [6, 18, 31, 43], backend)  # t = 0.25, 0.75, 1.25, 1.75
    np.testing.assert_allclose(f.timestamps, [0.24, 0.72, 1.24, 1.72], atol=1e-9)
    assert f.mask.all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_start_end_window(vids, backend):
    v = vids["h264_mp4"]
    f = load_frames(v, num_frames=4, start=0.4, end=1.2, backend=backend)
    _check(f, [12, 17, 22, 27], backend)  # midpoints 0.5, 0.7, 0.9, 1.1
    f = load_frames(v, fps=5, start=1.0, end=1.6, backend=backend)
    _check(f, [27, 32, 37], backend)  # 1.1, 1.3, 1.5
    f = load_frames(v, start=1.0, end=1.2, backend=backend)
    _check(f, [25, 26, 27, 28, 29], backend)  # all frames with PTS in [1.0, 1.2)
    assert f.mask.all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_frames_when_no_mode(vids, backend):
    f = load_frames(vids["hevc_mkv"], backend=backend)
    _check(f, np.arange(50), backend)
    np.testing.assert_allclose(f.timestamps, np.arange(50) / 25, atol=1e-9)


@pytest.mark.parametrize("name", list(CODECS))
def test_backends_give_identical_pixels(vids, name):
    a = load_frames(vids[name], num_frames=6, backend="decord")
    b = load_frames(vids[name], num_frames=6, backend="pyav")
    np.testing.assert_array_equal(a.pixels, b.pixels)
    np.testing.assert_array_equal(a.timestamps, b.timestamps)
    np.testing.assert_array_equal(a.mask, b.mask)


def test_lossless_matches_source_pixels(vids):
    f = load_frames(vids["lossless_mp4"], num_frames=5, backend="pyav")
    src = index_frames(50)[f.indices]
    assert np.abs(f.pixels.astype(int) - src).max() <= 2  # yuv444 round trip, rgb conversion only


def test_auto_uses_decord_on_ordinary_files(vids):
    assert load_frames(vids["h264_mp4"], num_frames=3).backend == "decord"


@pytest.mark.parametrize("name", ["hevc_open", "h264_open"])
def test_open_gop_goes_to_pyav(vids, name):
    # decord returns frames several positions off after seeking into open GOPs (measured)
    for kwargs in [{"num_frames": 8}, {"fps": 3}, {}]:
        f = load_frames(vids[name], **kwargs)
        assert f.backend == "pyav"
        np.testing.assert_array_equal(frame_ids(f.pixels), f.indices)
    f = load_frames(vids[name], num_frames=8)
    _check(f, [3, 9, 15, 21, 28, 34, 40, 46], "pyav")
    with pytest.raises(VideoDecodeError, match="open-GOP"):
        load_frames(vids[name], num_frames=8, backend="decord")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["with_audio", "offset"])
def test_audio_track_and_start_offset(vids, name, backend):
    f = load_frames(vids[name], num_frames=8, backend=backend)
    ids = [3, 9, 15, 21, 28, 34, 40, 46]
    _check(f, ids, backend)
    np.testing.assert_allclose(f.timestamps, np.array(ids) / 25, atol=1e-9)  # from the first frame


def test_decord_failure_falls_back_to_pyav(vids):
    f = load_frames(vids["av1"], num_frames=4)
    _check(f, [2, 7, 12, 17], "pyav")
    with pytest.raises(VideoDecodeError, match="decord failed"):
        load_frames(vids["av1"], num_frames=4, backend="decord")


def test_mpegts_goes_to_pyav(vids):
    f = load_frames(vids["ts"], num_frames=8)  # decord returned frames 10 positions late here
    _check(f, [3, 9, 15, 21, 28, 34, 40, 46], "pyav")
    with pytest.raises(VideoDecodeError, match="not trusted"):
        load_frames(vids["ts"], num_frames=8, backend="decord")


def test_sparse_sampling_decodes_only_needed_gops(vids):
    # 100 frames, keyframe every 10: two samples need two GOPs, not the whole file
    index = scan_video(str(vids["moov_end"]))
    assert len(index.key_pts) >= 10
    stats = {}
    ids, _ = sample_indices(index.times, index.duration, num_frames=2)
    np.testing.assert_array_equal(ids, [25, 75])
    out = decode_pts(str(vids["moov_end"]), index, index.pts[ids], stats=stats)
    assert len(out) == 2 and stats["seeks"] == 2
    assert stats["packets"] <= 2 * 10 + 8  # at most a GOP each, plus B-frame reordering slack
    # dense sampling inside one GOP continues decoding without seeking again
    key_pos = np.searchsorted(index.pts, index.key_pts)
    gap = int(np.argmax(np.diff(key_pos)))
    inside = np.arange(key_pos[gap] + 1, key_pos[gap + 1])[::2]  # frames between two keyframes
    assert len(inside) >= 3
    stats = {}
    out = decode_pts(str(vids["moov_end"]), index, index.pts[inside], stats=stats)
    assert len(out) == len(inside) and stats["seeks"] == 1


# ---------------------------------------------------------------- short videos and padding


@pytest.mark.parametrize("backend", BACKENDS)
def test_num_frames_beyond_length_pads_with_last_frame(vids, backend):
    f = load_frames(vids["short"], num_frames=12, backend=backend)
    _check(f, [0, 1, 2, 3, 4] + [4] * 7, backend)
    np.testing.assert_array_equal(f.mask, [True] * 5 + [False] * 7)
    np.testing.assert_allclose(f.timestamps, [0, 0.04, 0.08, 0.12, 0.16] + [0.16] * 7, atol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fps_beyond_end_and_above_video_rate_pad(vids, backend):
    f = load_frames(vids["h264_mp4"], fps=1, end=4.0, backend=backend)
    _check(f, [12, 37, 37, 37], backend)  # t = 0.5, 1.5 real; 2.5, 3.5 past the 2 s video
    np.testing.assert_array_equal(f.mask, [True, True, False, False])
    f = load_frames(vids["slow"], fps=10, backend=backend)  # 5 fps video sampled at 10 fps
    _check(f, list(range(10)) + [9] * 10, backend)
    assert f.mask.sum() == 10 and not f.mask[10:].any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_frame_video(vids, backend):
    f = load_frames(vids["one"], num_frames=4, backend=backend)
    _check(f, [0, 0, 0, 0], backend)
    np.testing.assert_array_equal(f.mask, [True, False, False, False])
    f = load_frames(vids["one"], fps=1, backend=backend)
    _check(f, [0], backend)
    assert f.num_frames == 1 and f.mask.all() and f.timestamps[0] == 0.0


# ---------------------------------------------------------------- VFR, sizes, rotation


@pytest.mark.parametrize("backend", BACKENDS)
def test_vfr_true_timestamps(vids, backend):
    f = load_frames(vids["vfr"], backend=backend)
    _check(f, np.arange(25), backend)
    np.testing.assert_allclose(f.timestamps, vids["vfr_times"], atol=1e-9)
    # times: 0..0.36 step 0.04, 0.4..1.3 step 0.1, 1.4..1.48 step 0.02
    f = load_frames(vids["vfr"], num_frames=4, end=1.4, backend=backend)
    _check(f, [4, 11, 14, 18], backend)  # midpoints 0.175, 0.525, 0.875, 1.225
    f = load_frames(vids["vfr"], fps=2, end=1.5, backend=backend)
    _check(f, [6, 13, 18], backend)  # 0.25, 0.75, 1.25


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["odd_lossless", "odd_mjpeg"])
def test_odd_size_and_resize(vids, name, backend):
    f = load_frames(vids[name], num_frames=4, backend=backend)
    assert f.pixels.shape == (4, 61, 97, 3)
    _check(f, [1, 3, 6, 8], backend)
    f = load_frames(vids[name], num_frames=2, size=32, backend=backend)
    assert f.pixels.shape == (2, 32, 50, 3)  # short side 32, 97*32/61 = 50.9 truncated (CLIP)
    _check(f, [2, 7], backend)
    # decoding at the CLIP size then preprocessing == preprocessing the full-size frames
    from video_retrieval.encoders.preprocess import clip_preprocess

    full = load_frames(vids[name], num_frames=2, backend=backend)
    assert torch.equal(clip_preprocess(f.pixels, 32), clip_preprocess(full.pixels, 32))
    f = load_frames(vids[name], num_frames=2, size=(24, 40), backend=backend)
    assert f.pixels.shape == (2, 24, 40, 3)


def test_write_video_pads_odd_sizes_also_with_a_filter(tmp_path):
    p = write_index_video(tmp_path / "odd_vf.mp4", n=4, h=61, w=97, extra_args=["-vf", "hflip"])
    info = probe_video(p)
    assert (info.width, info.height, info.num_frames) == (98, 62, 4)
    _check(load_frames(p), [0, 1, 2, 3])


def test_resize_frames_keeps_flat_colours():
    x = index_frames(3, 60, 80)
    y = resize_frames(x, 30)
    assert y.shape == (3, 30, 40, 3) and y.dtype == np.uint8
    np.testing.assert_array_equal(y[:, 0, 0], x[:, 0, 0])


@pytest.mark.parametrize("deg", [90, 180, 270])
def test_rotation_is_applied(vids, deg):
    p = vids[f"rot{deg}"]
    info = probe_video(p)
    assert info.rotation == deg
    expect_shape = (64, 48, 3) if deg in (90, 270) else (48, 64, 3)
    assert (info.height, info.width, 3) == expect_shape
    f = load_frames(p)
    assert f.backend == "pyav"  # decord mangles rotated files
    assert f.pixels.shape == (3, *expect_shape)
    ref = ffmpeg_decode_first(p, expect_shape)  # the ffmpeg CLI auto-rotates
    assert np.abs(f.pixels[0].astype(int) - ref).max() <= 2
    upright = load_frames(vids["marker"]).pixels[0]
    np.testing.assert_array_equal(f.pixels[0], np.rot90(upright, deg // 90))
    small = load_frames(p, num_frames=1, size=24)
    assert small.pixels.shape[1:3] == ((32, 24) if deg in (90, 270) else (24, 32))


# ---------------------------------------------------------------- probe


def test_probe_video(vids):
    info = probe_video(vids["vp9_webm"])
    assert info.num_frames == 50 and info.header_frames == 0  # webm has no count in the header
    assert (info.width, info.height, info.rotation) == (64, 48, 0)
    assert info.duration == pytest.approx(2.0) and info.fps == pytest.approx(25.0)
    assert probe_video(vids["h264_mp4"]).header_frames == 50
    for name in ("h264_mp4", "vp9_webm", "rot90"):
        exact, quick = probe_video(vids[name]), probe_video(vids[name], exact=False)
        assert (quick.width, quick.height, quick.rotation) == (
            exact.width,
            exact.height,
            exact.rotation,
        )
        assert quick.duration == pytest.approx(exact.duration, abs=0.05)
        assert quick.fps == pytest.approx(exact.fps)
        assert abs(quick.num_frames - exact.num_frames) <= 1


def test_scan_cache_follows_file_changes(tmp_path):
    p = write_index_video(tmp_path / "v.mp4", n=10)
    assert probe_video(p).num_frames == 10
    assert scan_video(str(p)) is scan_video(str(p))  # probe + load scan once
    write_index_video(p, n=20)  # rewritten in place: a new scan
    assert probe_video(p).num_frames == 20
    _check(load_frames(p, num_frames=2), [5, 15])


# ---------------------------------------------------------------- errors and damaged files


def _bad_files(vids, d):
    (d / "notes.txt").write_text("not a video\n" * 50)
    (d / "empty.mp4").write_bytes(b"")
    (d / "junk.mp4").write_bytes(
        np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    )
    # an AVI whose FourCC names no known codec (FFmpeg then has no decoder for the stream)
    avi = vids["mpeg4_avi"].read_bytes()
    assert avi.count(b"FMP4") == 2
    (d / "unknown_codec.avi").write_bytes(avi.replace(b"FMP4", b"ZZZZ"))
    return {
        "missing": (d / "nope.mp4", "no such file"),
        "directory": (d, "directory"),
        "text": (d / "notes.txt", "not a video"),
        "audio_only": (write_audio_only(d / "tone.m4a"), "no video stream"),
        "zero_length": (d / "empty.mp4", "empty"),
        "garbage": (d / "junk.mp4", "not a readable video"),
        "half_mp4_moov_at_end": (
            truncate_copy(vids["moov_end"], d / "half.mp4"),
            "not a readable video",
        ),
        "unknown_codec": (d / "unknown_codec.avi", "unknown or unsupported video codec"),
    }


@pytest.mark.parametrize(
    "kind",
    [
        "missing",
        "directory",
        "text",
        "audio_only",
        "zero_length",
        "garbage",
        "half_mp4_moov_at_end",
        "unknown_codec",
    ],
)
@pytest.mark.parametrize("backend", ["auto", "pyav", "decord"])
def test_bad_inputs_raise_video_decode_error(vids, tmp_path, kind, backend):
    path, reason = _bad_files(vids, tmp_path)[kind]
    with pytest.raises(VideoDecodeError) as err:
        load_frames(path, num_frames=4, backend=backend)
    assert err.value.path == str(path) and reason in err.value.reason
    assert str(path) in str(err.value)
    assert isinstance(err.value, UserError)
    with pytest.raises(VideoDecodeError):
        probe_video(path)
    with pytest.raises(VideoDecodeError):
        probe_video(path, exact=False)


def test_truncated_faststart_returns_decodable_part(vids, tmp_path):
    p = truncate_copy(vids["faststart"], tmp_path / "half_fs.mp4")
    info = probe_video(p)
    assert info.header_frames == 100 and 0 < info.num_frames < 100
    f = load_frames(p, num_frames=10)
    assert f.backend == "pyav"  # decord's header frame count disagrees with the packet scan
    real = f.mask
    assert real.any() and f.num_frames == info.num_frames
    np.testing.assert_array_equal(frame_ids(f.pixels[real]), f.indices[real])
    assert f.indices.max() < info.num_frames


def test_garbage_inside_file_drops_undecodable_frames(vids, tmp_path):
    p = garble_copy(vids["moov_end"], tmp_path / "garbled.mp4")
    for backend in ("auto", "pyav"):
        f = load_frames(p, num_frames=10, backend=backend)
        assert f.pixels.shape[0] == 10 and f.mask[0] and not f.mask.all()
        real = f.mask
        # frames that are returned as real are the right ones, with their own timestamps
        np.testing.assert_array_equal(frame_ids(f.pixels[real]), f.indices[real])
        np.testing.assert_allclose(f.timestamps[real], f.indices[real] / 25, atol=1e-9)


def test_invalid_sampling_arguments(vids):
    v = vids["h264_mp4"]
    for kwargs in [
        {"num_frames": 4, "fps": 1},
        {"start": 1.0, "end": 1.0},
        {"start": 5.0},
        {"start": -1.0},
        {"num_frames": 0},
        {"fps": 0},
        {"backend": "opencv"},
        {"size": 0},
    ]:
        with pytest.raises(SamplingError):
            load_frames(v, **kwargs)
    assert issubclass(SamplingError, ValueError) and issubclass(SamplingError, UserError)


# ---------------------------------------------------------------- pure index selection


def test_sample_indices_pure():
    times = np.arange(10) * 0.1  # 10 frames, 1 s
    ids, mask = sample_indices(times, 1.0, num_frames=4)
    np.testing.assert_array_equal(ids, [1, 3, 6, 8])  # 0.125, 0.375, 0.625, 0.875
    assert mask.all()
    ids, mask = sample_indices(times, 1.0, num_frames=25)
    np.testing.assert_array_equal(ids, list(range(10)) + [9] * 15)
    assert mask.sum() == 10
    ids, mask = sample_indices(times, 1.0, fps=4, start=0.5)
    np.testing.assert_array_equal(ids, [6, 8])  # 0.625, 0.875
    ids, mask = sample_indices(times, 1.0, start=0.95)
    np.testing.assert_array_equal(ids, [9])  # no PTS in [0.95, 1.0): the frame shown at 0.95
    # a sample exactly on a PTS takes that frame (last PTS <= t, float-safe)
    ids, _ = sample_indices(times, 1.0, fps=5, start=0.2)
    np.testing.assert_array_equal(ids, [3, 5, 7, 9])  # 0.3, 0.5, 0.7, 0.9
    ids, mask = sample_indices(times, 1.0, fps=1, start=0.2, end=0.45)
    np.testing.assert_array_equal(ids, [3])  # window shorter than half a step: its midpoint 0.325
    ids, mask = sample_indices(times, 1.0, fps=2, start=0.1, end=0.9)
    np.testing.assert_array_equal(ids, [3, 8])  # 0.35, 0.85
    ids, mask = sample_indices(times, 1.0, fps=2, start=0.1, end=0.85)
    np.testing.assert_array_equal(ids, [3])  # 0.85 is not inside [0.1, 0.85)
