"""The released QVHighlights features (Moment-DETR's ``moment_detr_features.tar.gz``; lighthouse
ships the same layout), read as Moment-DETR's ``StartEndDataset`` reads them.

Layout under ``features_dir`` (the ``features/`` folder of the archive)::

    clip_features/<vid>.npz        key "features": [L, 512]  CLIP ViT-B/32 image features, one per 2-s clip
    slowfast_features/<vid>.npz    key "features": [L, 2304] SlowFast R50 features, one per 2-s clip
    clip_text_features/qid<qid>.npz
                                   key "last_hidden_state": [Lq, 512] CLIP text token features
                                   (SOT..EOT), key "pooler_output": [512] (not used)

Per video, each stream is cut to ``max_v_l`` clips and L2-normalised per clip separately
(``x / (|x| + 1e-5)``), the streams are cut to the shortest, then concatenated in the order
given (Moment-DETR's ``train.sh`` order is SlowFast then CLIP: ``("slowfast", "clip")``, 2816
wide; the CLIP-only run of the released checkpoint is ``("clip",)``, 512 wide). Query features
are ``last_hidden_state[:max_q_l]``, L2-normalised per token. The model appends the temporal
endpoint feature itself (``MomentDETR(use_tef=True)``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from video_retrieval.errors import UserError

STREAM_DIRS = {"clip": "clip_features", "slowfast": "slowfast_features"}
STREAM_DIMS = {"clip": 512, "slowfast": 2304}
TEXT_DIR = "clip_text_features"
TEXT_KEY = "last_hidden_state"
VIDEO_KEY = "features"
EPS = 1e-5


def l2_normalize(x: np.ndarray) -> np.ndarray:
    return x / (np.linalg.norm(x, axis=-1, keepdims=True) + EPS)


class OfficialFeatures:
    """Reader of the released features (see the module docstring)."""

    def __init__(
        self,
        features_dir,
        streams=("clip",),
        max_v_l: int = 75,
        max_q_l: int = 32,
        text_dir: str = TEXT_DIR,
    ):
        self.root = Path(features_dir)
        if not self.root.is_dir():
            raise UserError(f"features_dir not found: {self.root}")
        self.streams = tuple(streams)
        unknown = [s for s in self.streams if s not in STREAM_DIRS]
        if unknown or not self.streams:
            raise UserError(
                f"feature_streams must be a non-empty list of {sorted(STREAM_DIRS)}, not "
                f"{list(streams)}"
            )
        for s in self.streams:
            if not (self.root / STREAM_DIRS[s]).is_dir():
                raise UserError(f"{self.root}: no {STREAM_DIRS[s]}/ folder for the {s} stream")
        self.text_root = self.root / text_dir
        if not self.text_root.is_dir():
            raise UserError(f"{self.root}: no {text_dir}/ folder (query features)")
        self.max_v_l = int(max_v_l)
        self.max_q_l = int(max_q_l)

    def video_files(self, vid: str) -> list[Path]:
        return [self.root / STREAM_DIRS[s] / f"{vid}.npz" for s in self.streams]

    def text_file(self, qid) -> Path:
        return self.text_root / f"qid{qid}.npz"

    def check(self, rows: list[dict]) -> tuple[list[str], list[dict]]:
        """(feature files the rows need that are missing or empty, the rows that have all of
        theirs)."""
        missing: list[str] = []
        bad_vid: dict[str, bool] = {}
        keep = []
        for r in rows:
            vid = r["vid"]
            if vid not in bad_vid:
                absent = [str(p) for p in self.video_files(vid) if not _nonempty(p)]
                missing += absent
                bad_vid[vid] = bool(absent)
            t = self.text_file(r["qid"])
            text_ok = _nonempty(t)
            if not text_ok:
                missing.append(str(t))
            if text_ok and not bad_vid[vid]:
                keep.append(r)
        return missing, keep

    def video(self, vid: str) -> np.ndarray:
        feats = []
        for p in self.video_files(vid):
            x = _load(p, VIDEO_KEY)
            if x.ndim != 2:
                raise UserError(f"{p}: '{VIDEO_KEY}' has shape {x.shape}, expected [clips, dim]")
            feats.append(l2_normalize(x[: self.max_v_l].astype(np.float32)))
        n = min(len(f) for f in feats)
        if n == 0:
            raise UserError(f"{self.video_files(vid)[0]}: no clip features")
        return np.ascontiguousarray(np.concatenate([f[:n] for f in feats], axis=1))

    def text(self, qid) -> np.ndarray:
        p = self.text_file(qid)
        x = _load(p, TEXT_KEY)
        if x.ndim != 2 or len(x) == 0:
            raise UserError(f"{p}: '{TEXT_KEY}' has shape {x.shape}, expected [tokens, dim]")
        return np.ascontiguousarray(l2_normalize(x[: self.max_q_l].astype(np.float32)))

    def describe(self) -> dict:
        return {
            "kind": "features_dir",
            "path": str(self.root.resolve()),
            "streams": list(self.streams),
            "dims": [STREAM_DIMS[s] for s in self.streams],
        }


def _nonempty(p: Path) -> bool:
    try:
        return p.stat().st_size > 0
    except OSError:
        return False


def _load(p: Path, key: str) -> np.ndarray:
    try:
        with np.load(p) as z:
            if key not in z.files:
                raise UserError(f"{p}: no '{key}' array (has {z.files})")
            return np.asarray(z[key])
    except FileNotFoundError:
        raise UserError(f"feature file not found: {p}") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{p}: not a readable .npz ({e})") from None
