import numpy as np
import pytest

from video_retrieval.moments.zero_shot import clip_similarities, zero_shot_windows


def test_zero_shot_finds_the_bump():
    rng = np.random.default_rng(0)
    scores = rng.normal(0, 0.02, size=40)
    scores[10:18] += 1.0  # clips 10..17 -> [20 s, 36 s]
    w = zero_shot_windows(scores, clip_len=2.0, duration=80.0, top=5)
    assert w.shape[1] == 3 and 1 <= len(w) <= 5
    assert np.all(np.diff(w[:, 2]) <= 0)  # sorted by score
    s, e = w[0, :2]
    inter = max(0.0, min(e, 36) - max(s, 20))
    iou = inter / (max(e, 36) - min(s, 20))
    assert iou >= 0.7, w[0]
    assert np.all(w[:, 0] >= 0) and np.all(w[:, 1] <= 80.0)
    assert np.all((w[:, 2] > 0) & (w[:, 2] < 1))  # calibrated: sigmoid of the contrast
    # the top window's score by hand: sigmoid(mean z inside - mean z outside)
    sm = np.convolve(np.pad(scores, 3, mode="edge"), _gauss(1.0), mode="valid")
    z = (sm - sm.mean()) / sm.std()
    a, b = int(s / 2), int(round(e / 2))
    contrast = z[a:b].mean() - np.concatenate([z[:a], z[b:]]).mean()
    assert w[0, 2] == pytest.approx(1 / (1 + np.exp(-contrast)))


def test_zero_shot_clamps_to_duration_and_handles_flat_scores():
    w = zero_shot_windows(np.ones(5), clip_len=2.0, duration=9.0)
    np.testing.assert_allclose(w, [[0.0, 9.0, 0.5]])  # no contrast: sigmoid(0)
    scores = np.zeros(5)
    scores[4] = 1.0
    w = zero_shot_windows(scores, clip_len=2.0, duration=9.0)
    assert w[:, 1].max() <= 9.0
    assert len(zero_shot_windows(np.zeros(0), 2.0, 0.0)) == 0


def test_clip_similarities_is_cosine():
    v = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    np.testing.assert_allclose(clip_similarities(v, [3.0, 0.0]), [1.0, 0.0, np.sqrt(0.5)])


def _gauss(sigma: float) -> np.ndarray:
    x = np.arange(-3, 4) / sigma
    k = np.exp(-0.5 * x**2)
    return k / k.sum()
