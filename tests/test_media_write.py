"""The ffmpeg layer: every ffmpeg run goes through ffmpeg-python with the bundled binary
(``videowrite.run``), failures are one line naming the file and ffmpeg's cause, and no module
hands ffmpeg a command line it assembled itself."""

from __future__ import annotations

import ast
from pathlib import Path

import av
import ffmpeg
import numpy as np
import pytest
from _video_util import frame_ids, index_frames

from video_retrieval.errors import UserError
from video_retrieval.media.decode import load_frames, probe_video
from video_retrieval.media.write import (
    CODECS,
    FFmpegError,
    last_stderr_line,
    option_pairs,
    run,
    write_test_pattern,
    write_video,
)

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "codec,ext", [("h264", "mp4"), ("h264_lossless", "mp4"), ("vp9", "webm"), ("mpeg4", "avi"),
                  ("hevc", "mkv"), ("mjpeg", "mkv")],
)  # fmt: skip
def test_every_codec_round_trips_its_frames(tmp_path, codec, ext):
    assert codec in CODECS
    p = write_video(tmp_path / f"v.{ext}", index_frames(12), fps=10, codec=codec, gop=4)
    f = load_frames(p, backend="pyav")
    np.testing.assert_array_equal(frame_ids(f.pixels), np.arange(12))
    assert probe_video(p).codec == {"h264_lossless": "h264"}.get(codec, codec)
    assert [x.name for x in tmp_path.iterdir()] == [f"v.{ext}"]  # no temporary file left


def test_extra_args_as_pairs_or_dict_give_the_same_file(tmp_path):
    frames = index_frames(6)
    same = {"map_metadata": "-1", "fflags": "+bitexact", "threads": "1"}
    pairs = [x for k, v in same.items() for x in (f"-{k}", v)]  # ["-map_metadata", "-1", ...]
    a = write_video(tmp_path / "a.mp4", frames, extra_args=pairs)
    b = write_video(tmp_path / "b.mp4", frames, extra_args=same)
    assert a.read_bytes() == b.read_bytes()
    assert option_pairs(["-movflags", "+faststart", "-g", "5"]) == {
        "movflags": "+faststart",
        "g": "5",
    }
    for bad in (["-movflags"], ["movflags", "+faststart"]):
        with pytest.raises(ValueError, match="pairs"):
            option_pairs(bad)


def test_odd_sizes_are_padded_after_the_callers_filter(tmp_path):
    frames = np.zeros((3, 61, 97, 3), np.uint8)
    frames[:, :, :10, 0] = 255  # a red stripe on the left
    p = write_video(tmp_path / "odd.mp4", frames, extra_args={"vf": "hflip"})
    info = probe_video(p)
    assert (info.height, info.width) == (62, 98)
    px = load_frames(p, backend="pyav").pixels[0]
    assert px[30, 90, 0] > 200 and px[30, 5, 0] < 50  # flipped first, then padded


def test_ffmpeg_failures_are_one_line_with_the_file_and_the_cause(tmp_path):
    frames = np.zeros((2, 61, 97, 3), np.uint8)
    cases = {
        "nosuch": ({"codec": "nosuch"}, "Unknown encoder 'nosuch'"),
        # libx264 refuses odd sizes in 4:2:0 (write_video pads only its own CODECS names)
        "x264": ({"codec": "libx264", "extra_args": {"pix_fmt": "yuv420p"}},
                 "width not divisible by 2 (97x61)"),
    }  # fmt: skip
    for name, (kw, cause) in cases.items():
        out = tmp_path / f"{name}.mp4"
        with pytest.raises(FFmpegError) as e:
            write_video(out, frames, **kw)
        assert str(e.value) == f"ffmpeg failed on {out}: {cause}"
        assert isinstance(e.value, UserError)  # the CLI prints it as one line
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind
    src = tmp_path / "missing.avi"
    with pytest.raises(FFmpegError, match=r"missing\.avi: Error opening input: No such file"):
        run(ffmpeg.input(str(src)).output(str(tmp_path / "o.mp4")), src)


def test_last_stderr_line_skips_ffmpegs_closing_boilerplate():
    err = (
        b"[in#0 @ 0x55bf3f672cc0] Error opening input: Invalid data found when processing input\n"
        b"Error opening input file /v/x.avi.\n"
        b"Error opening input files: Invalid data found when processing input\n"
        b"Conversion failed!\n"
    )
    assert last_stderr_line(err) == "Error opening input: Invalid data found when processing input"
    assert last_stderr_line(b"") == "no error output"
    assert last_stderr_line("only\n\n") == "only"


def test_a_stuck_ffmpeg_is_killed_after_the_timeout(tmp_path):
    endless = ffmpeg.input("testsrc2=size=320x240:rate=25", f="lavfi", re=None)
    out = tmp_path / "o.mp4"
    with pytest.raises(FFmpegError, match="timed out after 0.5 s"):
        run(endless.output(str(out), **{"c:v": "libx264"}), out, timeout=0.5)


def test_test_pattern_with_sound(tmp_path):
    p = write_test_pattern(tmp_path / "t.mp4", 1.5, 160, 120, fps=20, audio=True)
    with av.open(str(p)) as c:
        assert c.streams.video[0].codec_context.name == "h264"
        assert c.streams.audio[0].codec_context.name == "aac"
    info = probe_video(p)
    assert (info.num_frames, info.width, info.height) == (30, 160, 120)


def _spawns_ffmpeg(tree: ast.AST) -> list[int]:
    """Lines where subprocess/os starts a process whose arguments mention ffmpeg."""
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
        name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
        spawns = (
            (owner == "subprocess")
            or (owner == "os" and name in ("system", "popen"))
            or (name in ("Popen", "check_call", "check_output"))
        )
        if spawns and "ffmpeg" in ast.unparse(node).lower():
            lines.append(node.lineno)
    return lines


def test_no_hand_assembled_ffmpeg_command_lines_anywhere():
    offenders = {}
    for folder in ("video_retrieval", "encoders", "temporal", "datasets", "tests", "benchmarks"):
        for path in (REPO / folder).rglob("*.py"):
            lines = _spawns_ffmpeg(ast.parse(path.read_text(), str(path)))
            if lines:
                offenders[str(path.relative_to(REPO))] = lines
    assert offenders == {}
    # and the checker does find one
    bad = "import subprocess\nsubprocess.run([exe, '-i', 'a.avi', 'b.mp4'], check=True)  # ffmpeg"
    assert _spawns_ffmpeg(ast.parse(bad)) == []  # a comment is not an argument
    bad = "import subprocess\nsubprocess.run([ffmpeg_exe(), '-i', 'a.avi', 'b.mp4'])"
    assert _spawns_ffmpeg(ast.parse(bad)) == [2]
