"""The moment head's optional motion stream: RGB-difference maps per clip window (exact cells on a
square that jumps between known frames), its cache, and the data module / predictor wiring."""

import numpy as np
import pytest

from video_retrieval.errors import UserError
from video_retrieval.media.write import write_video
from video_retrieval.moments.features import MotionCache, motion_features
from video_retrieval.train.moment_data import MomentDataModule


@pytest.fixture(scope="module")
def jump(tmp_path_factory):
    """8 s at 2 fps, 64x64: a white 16x16 square in the top-left corner for frames 0-4 (0-2.0 s),
    in the bottom-right corner from frame 5 (2.5 s) on; black elsewhere. Lossless."""
    frames = np.zeros((16, 64, 64, 3), np.uint8)
    frames[:5, :16, :16] = 255
    frames[5:, 48:, 48:] = 255
    return write_video(tmp_path_factory.mktemp("motion") / "jump.mp4", frames, 2.0, "h264_lossless")


def test_motion_map_cells_are_exact(jump):
    m = motion_features(jump, 4, clip_len=2.0, fps=2.0, context=0.0, grid=8)
    assert m.shape == (4, 8 * 8 * 3) and m.dtype == np.float32
    cells = m.reshape(4, 8, 8, 3)
    # clips 0, 2, 3 see a still square: no motion
    for i in (0, 2, 3):
        assert np.abs(cells[i]).max() < 0.02, i
    # clip 1 = frames 4..7; first half (4: top-left, 5: bottom-right), last half (6, 7: bottom-
    # right): mean(last) - mean(first) = +0.5 where it arrived, -0.5 where it left, 0 elsewhere
    want = np.zeros((8, 8, 3), np.float32)
    want[6:, 6:] = 0.5
    want[:2, :2] = -0.5
    np.testing.assert_allclose(cells[1], want, atol=0.02)


def test_motion_window_context_and_grid(jump):
    # with 1 s of context clip 0 spans frames 0..5 (-1..3 s): first 3 top-left, last 3 holding
    # frame 5 (bottom-right) once: +1/3 at the arrival, -1/3 at the departure
    m = motion_features(jump, 4, clip_len=2.0, fps=2.0, context=1.0, grid=4).reshape(4, 4, 4, 3)
    want = np.zeros((4, 4, 3), np.float32)
    want[3, 3] = 1 / 3
    want[0, 0] = -1 / 3
    np.testing.assert_allclose(m[0], want, atol=0.02)


def test_motion_cache_reuses_and_keys(jump, tmp_path):
    cache = MotionCache(tmp_path, 2.0, 2.0, 0.0, 8)
    a = cache.get("jump", jump, 4)
    files = list(cache.root.glob("*.npz"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    np.testing.assert_array_equal(cache.get("jump", jump, 4), a)
    assert files[0].stat().st_mtime_ns == stamp  # read back, not recomputed
    assert MotionCache(tmp_path, 2.0, 2.0, 1.0, 8).root != cache.root  # other windows


def test_motion_grid_needs_videos():
    with pytest.raises(UserError, match="motion_grid needs the videos"):
        MomentDataModule(features_dir="x", motion_grid=8)
    with pytest.raises(UserError, match="motion_grid must be >= 0"):
        MomentDataModule(motion_grid=-1)
