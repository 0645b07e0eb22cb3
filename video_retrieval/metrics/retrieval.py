"""Standard text<->video retrieval metrics (CLIP4Clip protocol, `metrics.py`).

``sim`` is ``[N_text, N_video]`` (higher = more similar), ``text_to_video[i]`` is the column of
caption ``i``'s video.

* **t2v**: every caption is a query over all videos.
* **v2t**: every video that has at least one caption is a query; the gallery is the caption groups
  (one per video) and a group's score is the *max* over its captions (CLIP4Clip multi-sentence V2T).
* ``R@K`` = % of queries whose ground-truth rank is ``<= K`` (1-based), ``MdR`` = median of the
  1-based ranks (``numpy.median``: the mean of the two middle values for an even count),
  ``MnR`` = their mean.

**Ties (pessimistic, deterministic):** the 1-based rank of the ground truth is the number of gallery
items whose score is ``>=`` the ground-truth score (the ground truth itself included). A gallery
where every score is equal therefore ranks every ground truth last, so a collapsed model can never
look good. NaN scores count as ``-inf``.
"""

from __future__ import annotations

import numpy as np

KS = (1, 5, 10)


def _as_numpy(x) -> np.ndarray:
    """float64 array of ``x`` (a numpy array, a list, or a torch tensor: anything with ``.numpy``),
    NaN as ``-inf``."""
    if hasattr(x, "detach"):  # a torch tensor, without importing torch here
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    return np.where(np.isnan(x), -np.inf, x)


def ranks_of_targets(sim, targets) -> np.ndarray:
    """1-based pessimistic rank of column ``targets[i]`` in row ``i`` of ``sim``."""
    s = _as_numpy(sim)
    t = np.asarray(targets, dtype=np.int64)
    gt = s[np.arange(s.shape[0]), t]
    return (s >= gt[:, None]).sum(axis=1).astype(np.int64)


def metrics_from_ranks(ranks) -> dict[str, float]:
    r = np.asarray(ranks, dtype=np.float64)
    if r.size == 0:
        return {f"R{k}": float("nan") for k in KS} | {"MdR": float("nan"), "MnR": float("nan")}
    out = {f"R{k}": float(100.0 * np.mean(r <= k)) for k in KS}
    out["MdR"] = float(np.median(r))
    out["MnR"] = float(np.mean(r))
    return out


def video_to_text_matrix(sim, text_to_video, num_videos: int | None = None) -> np.ndarray:
    """``[N_video, N_video]`` V2T scores: entry (v, w) = max over captions c of w of sim[c, v]."""
    s = _as_numpy(sim)
    t2v = np.asarray(text_to_video, dtype=np.int64)
    nv = s.shape[1] if num_videos is None else num_videos
    out = np.full((nv, nv), -np.inf)
    for w in np.unique(t2v):
        out[:, w] = s[t2v == w].max(axis=0)
    return out


def retrieval_metrics(sim, text_to_video) -> dict[str, dict[str, float]]:
    """``{"t2v": {R1,R5,R10,MdR,MnR}, "v2t": {...}}`` with R in percent (see module docstring)."""
    s = _as_numpy(sim)
    t2v = np.asarray(text_to_video, dtype=np.int64)
    if s.ndim != 2 or s.shape[0] != t2v.shape[0]:
        raise ValueError(f"sim {s.shape} does not match text_to_video {t2v.shape}")
    if t2v.size and (t2v.min() < 0 or t2v.max() >= s.shape[1]):
        raise ValueError("text_to_video index out of range")
    res = {"t2v": metrics_from_ranks(ranks_of_targets(s, t2v))}
    v2t = video_to_text_matrix(s, t2v)
    queries = np.unique(t2v)  # videos without a caption are not queries
    res["v2t"] = metrics_from_ranks(ranks_of_targets(v2t[queries], queries))
    return res


def dual_softmax(sim, temperature: float = 1.0, dim: int = 0) -> np.ndarray:
    """Test-time DSL (CAMoE / TS2-Net): ``S * softmax(S / temp, dim)``.

    ``dim=0`` (text-to-video): each video column is normalised over *all* test queries;
    ``dim=1`` (video-to-text): each text row is normalised over all videos, i.e. TS2-Net / DRL's
    ``sim.T * softmax(sim.T, axis=0)`` on the transposed matrix, returned in ``[N_text, N_video]``
    layout. Results using either are transductive."""
    s = _as_numpy(sim)
    s = np.where(np.isfinite(s), s, -1e9)
    z = s / temperature
    e = np.exp(z - z.max(axis=dim, keepdims=True))
    return s * (e / e.sum(axis=dim, keepdims=True))


def dsl_metrics(sim, text_to_video, temperature: float = 1.0) -> dict[str, dict[str, float]]:
    """``retrieval_metrics`` with dual softmax, each direction with its own normalisation: t2v
    from ``dual_softmax(dim=0)``, v2t from ``dual_softmax(dim=1)`` (the transposed matrix
    normalised separately, as the TS2-Net / DRL evaluation does; reusing the t2v prior for v2t
    would normalise the wrong axis)."""
    t2v = retrieval_metrics(dual_softmax(sim, temperature, dim=0), text_to_video)["t2v"]
    v2t = retrieval_metrics(dual_softmax(sim, temperature, dim=1), text_to_video)["v2t"]
    return {"t2v": t2v, "v2t": v2t}


def temporal_pair_accuracy(sim, text_to_video, pairs, tol: float = 1e-4) -> float:
    """Fraction of (pair, caption) trials where the caption's own video outscores the other one.

    ``pairs`` are ``(a, b)`` video columns; every caption of ``a`` and every caption of ``b`` is one
    trial. A tie (``|s_own - s_other| <= tol``) counts 0.5, so an order-blind model whose paired
    videos get the same embedding scores exactly 0.5. Returns NaN when there is no trial.
    """
    s = _as_numpy(sim)
    t2v = np.asarray(text_to_video, dtype=np.int64)
    scores = []
    for a, b in pairs:
        for own, other in ((a, b), (b, a)):
            for c in np.flatnonzero(t2v == own):
                d = s[c, own] - s[c, other]
                scores.append(0.5 if abs(d) <= tol else float(d > 0))
    return float(np.mean(scores)) if scores else float("nan")


def flatten_metrics(res: dict, prefix: str = "") -> dict[str, float]:
    """``{"t2v": {"R1": x}}`` -> ``{"<prefix>t2v_R1": x}`` (for ``self.log_dict``)."""
    out = {}
    for k, v in res.items():
        if isinstance(v, dict):
            out.update(flatten_metrics(v, f"{prefix}{k}_"))
        else:
            out[f"{prefix}{k}"] = float(v)
    return out
