"""Moment-retrieval data for training: ``MomentDataModule`` (annotations -> cached per-clip CLIP
features, optionally the motion stream, + query token features -> padded batches with span and
saliency targets), its dataset and collate, and the zero-shot baseline of a split.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from video_retrieval.datasets.moments import (
    load_moments,
    relevant_clip_ids,
    sample_saliency_pairs,
    video_paths,
)
from video_retrieval.errors import UserError
from video_retrieval.models.assets import demo_retrieval_checkpoint
from video_retrieval.moments.features import (
    FeatureCache,
    MotionCache,
    add_temporal_differences,
    check_pooling_aggregator,
    normalize_clip_features,
)

log = logging.getLogger(__name__)

CLIP_POOLINGS = ("frame", "aggregator")


def saliency_labels(row: dict, clip_len: float, num_clips: int) -> np.ndarray:
    """Per-clip saliency label [num_clips] for QD-DETR's rank-aware contrastive loss: the summed
    annotator scores of each relevant clip (QVHighlights: 0-12), 0 elsewhere; without scores,
    1 on every clip of the windows (as lighthouse does for moment-only datasets)."""
    labels = np.zeros(num_clips, dtype=np.float32)
    scores = row.get("saliency_scores")
    if scores and row.get("relevant_clip_ids"):
        for c, s in zip(row["relevant_clip_ids"], scores):
            if 0 <= int(c) < num_clips:
                labels[int(c)] = float(sum(s))
    else:
        labels[relevant_clip_ids(row, clip_len, num_clips)] = 1.0
    return labels


class MomentItems(Dataset):
    """Items: ``{"v": [Lv,D], "t": [Lq,D], "row": annotation, "num_clips", "duration"}``."""

    def __init__(
        self, items: list[dict], clip_len: float, train: bool, max_windows: int, seed: int
    ):
        self.items = items
        self.clip_len = clip_len
        self.train = train
        self.max_windows = max_windows
        self.rng = random.Random(seed)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        it = self.items[i]
        n = it["num_clips"]
        span_len = n * self.clip_len  # target normalisation = decoding convention
        windows = list(it["row"].get("relevant_windows") or [])
        if self.train and len(windows) > self.max_windows:
            windows = self.rng.sample(windows, self.max_windows)
        se = torch.tensor(windows, dtype=torch.float32).reshape(-1, 2) / span_len
        se = se.clamp(0, 1)
        cxw = torch.stack([(se[:, 0] + se[:, 1]) / 2, se[:, 1] - se[:, 0]], -1)
        cxw = cxw[cxw[:, 1] > 0]
        pos, neg = sample_saliency_pairs(it["row"], self.clip_len, n, self.rng)
        return {
            "v": torch.from_numpy(it["v"]),
            "t": torch.from_numpy(it["t"]),
            "spans": cxw,
            "pos": torch.tensor(pos),
            "neg": torch.tensor(neg),
            "labels": torch.from_numpy(saliency_labels(it["row"], self.clip_len, n)),
            "index": i,
        }


def collate_moments(batch: list[dict]) -> dict:
    bsz = len(batch)
    lv = max(len(b["v"]) for b in batch)
    lq = max(len(b["t"]) for b in batch)
    dv, dt = batch[0]["v"].shape[1], batch[0]["t"].shape[1]
    v = torch.zeros(bsz, lv, dv)
    vm = torch.zeros(bsz, lv, dtype=torch.bool)
    t = torch.zeros(bsz, lq, dt)
    tm = torch.zeros(bsz, lq, dtype=torch.bool)
    labels = torch.zeros(bsz, lv)
    for i, b in enumerate(batch):
        labels[i, : len(b["labels"])] = b["labels"]
        v[i, : len(b["v"])] = b["v"]
        vm[i, : len(b["v"])] = True
        t[i, : len(b["t"])] = b["t"]
        tm[i, : len(b["t"])] = True
    return {
        "vid_feats": v,
        "vid_mask": vm,
        "txt_feats": t,
        "txt_mask": tm,
        "span_labels": [b["spans"] for b in batch],
        "saliency_pos_labels": torch.stack([b["pos"] for b in batch]),
        "saliency_neg_labels": torch.stack([b["neg"] for b in batch]),
        "saliency_all_labels": labels,
        "index": torch.tensor([b["index"] for b in batch]),
    }


class MomentDataModule(L.LightningDataModule):
    """Moment annotations + per-clip features read through an npz cache.

    Args:
        train_path / val_path / test_path: annotation files (``fmt`` decides the reader).
        fmt: ``qvhighlights`` (also lighthouse / synthetic jsonl), ``charades``, ``didemo``.
        video_dir: where ``<vid>[.ext]`` live (default: ``videos/`` next to the annotations).
        durations_csv: Charades ``Charades_v1_*.csv`` for durations (else read from the videos).
        cache_dir: feature cache root (``<cache_dir>/<encoder+clip key>/<vid>.npz``).
        encoder_model / encoder_pretrained / encoder_checkpoint / encoder_seed / precision: the
            CLIP encoder (``create_encoder``); ``retrieval_checkpoint``: a ``vr train`` retrieval
            checkpoint whose encoder is used instead (``"auto"``: the committed demo model when it
            exists, else the encoder args).
        video_feature_norm: ``none`` (Moment-DETR) or ``center`` (per-video mean removed, then
            L2; for near-constant features of a randomly initialised encoder).
        video_feature_diff: append each clip's backward/forward feature differences (a motion
            stream standing in for Moment-DETR's SlowFast features; ``add_temporal_differences``).
        clip_pooling: ``frame`` (mean of the clip's L2-normalised frame embeddings, Moment-DETR's
            CLIP stream) or ``aggregator`` (the ``retrieval_checkpoint``'s query-independent
            aggregator over the frames of each clip window: a temporal model fine-tuned on moment
            clips, ``configs/moments_synth_clips.yaml``). clip_context: seconds added each side
            of a clip's window before pooling (``moment_features.clip_windows``).
        features_dir: the released QVHighlights features (``features/`` of Moment-DETR's
            ``moment_detr_features.tar.gz``: ``clip_features/<vid>.npz``,
            ``slowfast_features/<vid>.npz``, ``clip_text_features/qid<qid>.npz``; see
            ``datasets.qvh_features``) instead of videos + an encoder.
            feature_streams: which video streams, concatenated in this order (``[clip]``: the
            CLIP-only run; ``[slowfast, clip]``: Moment-DETR's default).
        motion_grid: append the RGB-difference motion map of each clip window
            (``moment_features.motion_features``: ``motion_grid^2 x 3`` values, the same windows
            as the clip features) to the clip features; 0 = off. The head then sees where
            things moved, which a CLIP-style clip encoder does not keep.
        allow_missing: at setup every video (or feature file) of every split must exist and be
            non-empty, else training stops naming the count and the first missing paths; with
            ``allow_missing`` the queries of missing videos are left out and the count is logged.
    """

    def __init__(
        self,
        train_path: str | None = None,
        val_path: str | None = None,
        test_path: str | None = None,
        fmt: str = "qvhighlights",
        video_dir: str | None = None,
        durations_csv: str | None = None,
        cache_dir: str = ".cache/moment_features",
        encoder_model: str = "vr-tiny",
        encoder_pretrained: str | None = None,
        encoder_checkpoint: str | None = None,
        encoder_seed: int = 0,
        retrieval_checkpoint: str | None = None,
        precision: str = "fp32",
        clip_len: float = 2.0,
        frames_per_clip: int = 1,
        max_v_l: int = 75,
        max_q_l: int = 32,
        max_windows: int = 5,
        video_feature_norm: str = "none",
        video_feature_diff: bool = False,
        clip_pooling: str = "frame",
        clip_context: float = 0.0,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 2018,
        features_dir: str | None = None,
        feature_streams: list[str] | None = None,
        allow_missing: bool = False,
        motion_grid: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.paths = {"train": train_path, "val": val_path, "test": test_path}
        self.items: dict[str, list[dict]] = {}
        if clip_pooling not in CLIP_POOLINGS:
            raise UserError(f"clip_pooling must be one of {CLIP_POOLINGS}, not {clip_pooling!r}")
        if clip_pooling == "aggregator" and not retrieval_checkpoint:
            raise UserError("clip_pooling=aggregator needs a retrieval_checkpoint (its aggregator)")
        if motion_grid and features_dir:
            raise UserError("motion_grid needs the videos: it cannot be used with features_dir")
        if motion_grid < 0:
            raise UserError(f"motion_grid must be >= 0, got {motion_grid}")
        if features_dir and clip_pooling != "frame":
            raise UserError(
                "features_dir gives pre-extracted clip features: clip_pooling must be 'frame'"
            )
        self.features = None
        self.motion = None
        self.missing: dict[str, int] = {}
        self.encoder = None
        self.pool_aggregator = None
        self.encoder_source: dict | None = None
        self.v_feat_dim = 0
        self.t_feat_dim = 0

    # ----------------------------------------------------------------- encoder
    def build_encoder(self):
        h = self.hparams
        rc = h.retrieval_checkpoint
        if rc == "auto":
            rc = demo_retrieval_checkpoint()
        if rc:
            from video_retrieval.models.checkpoints import load_retrieval_model

            if not Path(rc).exists():
                raise UserError(f"retrieval checkpoint not found: {rc}")
            enc, agg, _meta = load_retrieval_model(rc)
            if h.clip_pooling == "aggregator":
                check_pooling_aggregator(agg, rc)
                self.pool_aggregator = agg
            source = {"kind": "retrieval_checkpoint", "path": str(Path(rc).resolve())}
        else:
            from video_retrieval.encoders.factory import create_encoder

            enc = create_encoder(
                h.encoder_model,
                pretrained=h.encoder_pretrained,
                checkpoint=h.encoder_checkpoint,
                precision=h.precision,
                seed=h.encoder_seed,
            )
            if h.encoder_checkpoint:
                source = {
                    "kind": "encoder_file",
                    "path": str(Path(h.encoder_checkpoint).resolve()),
                    "precision": h.precision,
                }
            else:
                source = {"kind": "spec", "spec": dict(enc.spec)}
        enc.eval()
        return enc, source

    # ----------------------------------------------------------------- data
    def _video_dir(self, ann_path: str) -> str:
        return self.hparams.video_dir or str(Path(ann_path).parent / "videos")

    def _available(self, split: str, rows: list[dict]) -> tuple[list[dict], dict]:
        """Rows whose video (or feature files) exist and are non-empty, and ``{vid: path}``;
        missing ones stop the run unless ``allow_missing`` (then they are left out, logged)."""
        path = self.paths[split]
        if self.features is not None:
            missing, keep = self.features.check(rows)
            paths: dict = {}
            what = "feature file"
        else:
            paths = video_paths(rows, self._video_dir(path), self.hparams.fmt)
            missing = []
            for vid, p in paths.items():
                if p is None or os.path.getsize(p) == 0:
                    missing.append(p or str(Path(self._video_dir(path)) / vid))
                    paths[vid] = None
            keep = [r for r in rows if paths[r["vid"]] is not None]
            what = "video"
        if missing:
            dropped = len(rows) - len(keep)
            if not self.hparams.allow_missing:
                shown = ", ".join(missing[:3])
                raise UserError(
                    f"{len(missing)} {what}(s) of the {split} split ({path}) are missing or empty "
                    f"(first: {shown}); check the folder with `vr data check`, or leave their "
                    f"{dropped} queries out with --data.init_args.allow_missing true"
                )
            log.warning(
                "%s split: %d %s(s) missing or empty, %d of %d queries left out (allow_missing)",
                split,
                len(missing),
                what,
                dropped,
                len(rows),
            )
            self.missing[split] = len(missing)
            if not keep:
                raise UserError(f"every {what} of the {split} split ({path}) is missing")
        return keep, paths

    def _load_split(self, split: str, cache: FeatureCache | None) -> list[dict]:
        path = self.paths[split]
        h = self.hparams
        kwargs = {"durations": h.durations_csv} if h.fmt == "charades" else {}
        rows, paths = self._available(split, load_moments(path, h.fmt, **kwargs))
        video_feats: dict[str, tuple] = {}
        motion: dict[str, np.ndarray] = {}
        for r in rows:
            if r["vid"] not in video_feats:
                if self.features is not None:
                    video_feats[r["vid"]] = (self.features.video(r["vid"]), None, None)
                else:
                    video_feats[r["vid"]] = cache.get(r["vid"], paths[r["vid"]])
                if self.motion is not None:
                    n_all = len(video_feats[r["vid"]][0])
                    motion[r["vid"]] = self.motion.get(r["vid"], paths[r["vid"]], n_all)
        if self.features is not None:
            texts = [self.features.text(r["qid"]) for r in rows]
        else:
            texts = cache.get_text(split, [r["query"] for r in rows], h.max_q_l)
        items = []
        for r, t in zip(rows, texts):
            feats, _times, vdur = video_feats[r["vid"]]
            feats = normalize_clip_features(feats[: h.max_v_l], h.video_feature_norm)
            if h.video_feature_diff:
                feats = add_temporal_differences(feats)
            if self.motion is not None:
                feats = np.concatenate([feats, motion[r["vid"]][: h.max_v_l]], 1)
            n = len(feats)
            dur = r["duration"] if r.get("duration") else vdur
            if dur is None:  # features without a duration: the clips' span
                dur = n * h.clip_len
            dur = min(float(dur), n * h.clip_len)
            if r.get("duration") is None:
                r = {**r, "duration": dur}
            items.append({"v": feats, "t": t, "row": r, "num_clips": n, "duration": dur})
        return items

    def setup(self, stage: str | None = None) -> None:
        h = self.hparams
        if h.features_dir:
            from video_retrieval.datasets.qvh_features import OfficialFeatures

            if self.features is None:
                self.features = OfficialFeatures(
                    h.features_dir, h.feature_streams or ["clip"], h.max_v_l, h.max_q_l
                )
                self.encoder_source = self.features.describe()
            cache = None
        else:
            if self.encoder is None:
                self.encoder, self.encoder_source = self.build_encoder()
            cache = FeatureCache(
                h.cache_dir,
                self.encoder,
                h.clip_len,
                h.frames_per_clip,
                aggregator=self.pool_aggregator,
                context=h.clip_context,
            )
            if h.motion_grid and self.motion is None:
                self.motion = MotionCache(
                    h.cache_dir, h.clip_len, h.frames_per_clip / h.clip_len, h.clip_context,
                    h.motion_grid,
                )  # fmt: skip
        for split, path in self.paths.items():
            if path and split not in self.items:
                self.items[split] = self._load_split(split, cache)
        any_items = next((v for v in self.items.values() if v), None)
        if any_items is None:
            raise UserError("no moment annotations: give train_path / val_path / test_path")
        self.v_feat_dim = int(any_items[0]["v"].shape[1])
        self.t_feat_dim = int(any_items[0]["t"].shape[1])

    def encoder_fingerprint(self) -> str | None:
        return self.encoder.fingerprint() if hasattr(self.encoder, "fingerprint") else None

    def _loader(self, split: str, train: bool) -> DataLoader:
        if split not in self.items:
            raise UserError(f"no {split}_path given for the moment data")
        h = self.hparams
        ds = MomentItems(self.items[split], h.clip_len, train, h.max_windows, h.seed)
        return DataLoader(
            ds,
            batch_size=h.batch_size if train else h.eval_batch_size,
            shuffle=train,
            num_workers=h.num_workers,
            collate_fn=collate_moments,
            persistent_workers=h.num_workers > 0,
        )

    def train_dataloader(self):
        return self._loader("train", True)

    def val_dataloader(self):
        return self._loader("val", False)

    def test_dataloader(self):
        return self._loader("test", False)

    def predict_dataloader(self):
        return self._loader("test" if "test" in self.items else "val", False)


def zero_shot_split(dm: MomentDataModule, split: str, top: int = 10) -> list[dict]:
    """Zero-shot baseline predictions for a split of a set-up ``MomentDataModule``."""
    from video_retrieval.moments.zero_shot import clip_similarities, zero_shot_windows

    items = dm.items[split]
    enc = dm.encoder
    queries = [it["row"]["query"] for it in items]
    sents = []
    with torch.no_grad():
        for i in range(0, len(queries), 256):
            tok = enc.tokenize(queries[i : i + 256])
            sents.append(enc.encode_text(tok).sentence.float().cpu().numpy())
    sents = np.concatenate(sents) if sents else np.zeros((0, 1))
    rows = []
    for it, s in zip(items, sents):
        sims = clip_similarities(it["v"][:, : len(s)], s)  # the clip stream (no motion map)
        w = zero_shot_windows(sims, dm.hparams.clip_len, it["duration"], top=top)
        rows.append(
            {
                "qid": it["row"]["qid"],
                "vid": it["row"]["vid"],
                "pred_relevant_windows": [[float(a), float(b), float(c)] for a, b, c in w],
                "pred_saliency_scores": [float(x) for x in sims],
            }
        )
    return rows
