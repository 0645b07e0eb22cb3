"""Lightning wrappers for Moment-DETR: ``MomentDataModule`` (annotations -> cached CLIP clip
features + query token features -> padded batches with span and saliency targets) and
``MomentDETRModule`` (model, Hungarian criterion, QVHighlights metrics at validation/test).

Config (``vr train fit --config configs/moments_synth.yaml``)::

    model: {class_path: video_retrieval.train.moment_module.MomentDETRModule, init_args: {...}}
    data:  {class_path: video_retrieval.train.moment_module.MomentDataModule, init_args: {...}}

Feature widths are read from the data at ``setup`` (``v_feat_dim: 0`` = infer) and recorded in
the checkpoint, together with the encoder that produced the features (``moment_meta``), so
``MomentPredictor.from_checkpoint`` can rebuild everything with ``weights_only=True``.
"""

from __future__ import annotations

import json
import logging
import math
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
from video_retrieval.metrics.moments import charades_metrics, didemo_metrics, evaluate
from video_retrieval.moments.features import (
    FeatureCache,
    MotionCache,
    add_temporal_differences,
    check_pooling_aggregator,
    normalize_clip_features,
)
from video_retrieval.moments.predictor import MOMENT_HEADS, build_head, postprocess
from video_retrieval.temporal.cheap_dropout import use_cheap_dropout
from video_retrieval.temporal.moment_loss import MomentCriterion
from video_retrieval.temporal.moment_matcher import HungarianMatcher

log = logging.getLogger(__name__)

CLIP_POOLINGS = ("frame", "aggregator")
LR_SCHEDULES = ("step", "cosine")


def cosine_lr_factor(step: int, total: int, warmup: int, min_ratio: float = 0.0) -> float:
    """Learning-rate multiplier at optimizer step ``step`` of ``total``: linear warm-up from
    ``1/warmup`` to 1 over ``warmup`` steps, then a half cosine from 1 to ``min_ratio``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    t = min(1.0, (step - warmup) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


ASSETS = Path(__file__).resolve().parent / "assets"
DEMO_CKPTS = (ASSETS / "demo_retrieval.ckpt", ASSETS / "demo_model.ckpt")


def demo_retrieval_checkpoint() -> str | None:
    """The committed demo retrieval model (vr-tiny CLIP trained on the synthetic world), if any."""
    return next((str(p) for p in DEMO_CKPTS if p.exists()), None)


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
            from video_retrieval.encoders import create_encoder

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


class MomentDETRModule(L.LightningModule):
    """A DETR moment head with its Hungarian criterion, AdamW + a schedule, QVHighlights metrics.

    ``head``: ``moment_detr`` (Moment-DETR, the published recipe) or ``qd_detr`` (QD-DETR:
    query-dependent video tokens, input-adaptive saliency, negative-pair and rank-contrastive
    saliency losses, anchor decoder; ``t2v_layers`` defaults to ``enc_layers``).
    ``lr_schedule``: ``step`` (StepLR every ``lr_drop`` epochs, x0.1: Moment-DETR's; with
    ``lr_drop`` past ``max_epochs`` the rate is constant) or ``cosine`` (linear warm-up over
    ``warmup_epochs``, then cosine decay to ``lr * min_lr_ratio`` at ``max_epochs``; per step).
    ``cheap_dropout``: draw the training dropout masks on CPU from int16 random numbers
    (``temporal/cheap_dropout.py``; the same model, about a third cheaper a step on CPU).
    """

    #: 0 in a config = taken from the data module at setup (a resume does not conflict)
    INFERRED_HPARAMS = ("v_feat_dim", "t_feat_dim")

    def __init__(
        self,
        head: str = "moment_detr",
        v_feat_dim: int = 0,
        t_feat_dim: int = 0,
        hidden_dim: int = 256,
        num_queries: int = 10,
        enc_layers: int = 2,
        dec_layers: int = 2,
        nheads: int = 8,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        input_dropout: float = 0.5,
        n_input_proj: int = 2,
        use_tef: bool = True,
        aux_loss: bool = True,
        t2v_layers: int | None = None,
        lr: float = 1e-4,
        weight_decay: float = 1e-4,
        lr_drop: int = 400,
        lr_schedule: str = "step",
        warmup_epochs: float = 0.0,
        min_lr_ratio: float = 0.0,
        w_span: float = 10.0,
        w_giou: float = 1.0,
        w_label: float = 4.0,
        w_saliency: float = 1.0,
        eos_coef: float = 0.1,
        saliency_margin: float = 0.2,
        round_multiple: float = 0.0,
        nms_iou: float = -1.0,
        max_pred_windows: int = 10,
        predictions_dir: str | None = None,
        cheap_dropout: bool = False,
    ):
        super().__init__()
        if head not in MOMENT_HEADS:
            raise UserError(f"head must be one of {sorted(MOMENT_HEADS)}, not {head!r}")
        if lr_schedule not in LR_SCHEDULES:
            raise UserError(f"lr_schedule must be one of {LR_SCHEDULES}, not {lr_schedule!r}")
        self.save_hyperparameters()
        self.model: torch.nn.Module | None = None
        self.criterion = MomentCriterion(
            HungarianMatcher(w_span, w_giou, w_label),
            w_span,
            w_giou,
            w_label,
            w_saliency,
            eos_coef,
            saliency_margin,
        )
        self._eval_rows: list[dict] = []
        self.meta_extra: dict = {}
        if v_feat_dim and t_feat_dim:
            self._build()

    def model_kwargs(self) -> dict:
        """The head's constructor arguments (recorded in checkpoints as ``model_kwargs``)."""
        h = self.hparams
        keys = (
            "v_feat_dim t_feat_dim hidden_dim num_queries enc_layers dec_layers nheads "
            "dim_feedforward dropout input_dropout n_input_proj use_tef aux_loss"
        ).split()
        kw = {k: h[k] for k in keys}
        if h.head == "qd_detr":
            kw["t2v_layers"] = h.t2v_layers
        return kw

    def _build(self):
        self.model = build_head(self.hparams.head, self.model_kwargs())
        if self.hparams.get("cheap_dropout"):
            use_cheap_dropout(self.model)

    def setup(self, stage: str | None = None) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and hasattr(dm, "v_feat_dim"):
            for k in ("v_feat_dim", "t_feat_dim"):
                have, got = self.hparams[k], getattr(dm, k)
                if have and got and have != got:
                    raise UserError(f"{k}={have} in the model config but the data has {got}")
                if not have:
                    self.hparams[k] = got
            self.meta_extra = {
                "encoder_source": dm.encoder_source,
                "encoder_fingerprint": dm.encoder_fingerprint(),
                "clip_len": float(dm.hparams.clip_len),
                "frames_per_clip": int(dm.hparams.frames_per_clip),
                "max_v_l": int(dm.hparams.max_v_l),
                "max_q_l": int(dm.hparams.max_q_l),
                "video_feature_norm": str(dm.hparams.video_feature_norm),
                "video_feature_diff": bool(dm.hparams.video_feature_diff),
                "clip_pooling": str(dm.hparams.clip_pooling),
                "clip_context": float(dm.hparams.clip_context),
                "motion_grid": int(dm.hparams.motion_grid),
            }
        if self.model is None:
            if not (self.hparams.v_feat_dim and self.hparams.t_feat_dim):
                raise UserError("v_feat_dim / t_feat_dim unknown: use MomentDataModule or set them")
            self._build()

    # ----------------------------------------------------------------- steps
    def forward(self, batch):
        return self.model(
            batch["vid_feats"], batch["vid_mask"], batch["txt_feats"], batch["txt_mask"]
        )

    def training_step(self, batch, batch_idx):
        out = self(batch)
        losses = self.criterion(out, batch)
        bsz = batch["vid_feats"].shape[0]
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=bsz)
        for k in ("loss_span", "loss_giou", "loss_label", "loss_saliency"):
            if k in losses:
                self.log(f"train/{k}", losses[k], batch_size=bsz)
        return losses["loss"]

    def _items(self, stage: str) -> list[dict]:
        return self.trainer.datamodule.items[stage]

    def _clip_len(self) -> float:
        return float(self.meta_extra.get("clip_len", 2.0))

    def _predict_rows(self, batch, out, items) -> list[dict]:
        rows = []
        for b, idx in enumerate(batch["index"].tolist()):
            it = items[idx]
            n = it["num_clips"]
            windows = postprocess(
                out["pred_logits"][b],
                out["pred_spans"][b],
                n,
                self._clip_len(),
                it["duration"],
                self.hparams.round_multiple,
                self.hparams.nms_iou,
                self.hparams.max_pred_windows,
            )
            rows.append(
                {
                    "qid": it["row"]["qid"],
                    "query": it["row"]["query"],
                    "vid": it["row"]["vid"],
                    "pred_relevant_windows": [[round(float(x), 4) for x in w] for w in windows],
                    "pred_saliency_scores": [
                        round(float(x), 4) for x in out["saliency_scores"][b, :n].cpu()
                    ],
                }
            )
        return rows

    def _eval_step(self, batch, stage):
        out = self(batch)
        losses = self.criterion(out, batch)
        self.log(f"{stage}/loss", losses["loss"], batch_size=batch["vid_feats"].shape[0])
        self._eval_rows.extend(self._predict_rows(batch, out, self._items(stage)))

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def predict_step(self, batch, batch_idx):
        dm = self.trainer.datamodule
        split = "test" if "test" in dm.items else "val"
        return self._predict_rows(batch, self(batch), dm.items[split])

    def _eval_end(self, stage):
        rows, self._eval_rows = self._eval_rows, []
        if not rows or self.trainer.sanity_checking:
            return
        gts = [it["row"] for it in self._items(stage)]
        seen = {str(r["qid"]) for r in rows}
        gts = [g for g in gts if str(g["qid"]) in seen]
        metrics = evaluate(rows, gts, match_number=False, clip_len=self._clip_len())
        brief = dict(metrics["brief"])
        fmt = getattr(getattr(self.trainer.datamodule, "hparams", {}), "get", lambda *_: None)(
            "fmt"
        )
        if fmt == "didemo":  # the official protocol beside the QVHighlights-style figures
            dm_metrics = didemo_metrics(rows, gts)
            metrics["didemo"] = dm_metrics
            brief.update({f"DiDeMo-{k}": dm_metrics[k] for k in ("R@1", "R@5", "mIoU")})
        elif fmt == "charades":
            ch = charades_metrics(rows, gts)
            metrics["charades"] = ch
            brief.update({f"Charades-{k}": v for k, v in ch.items() if k != "num_queries"})
        for k, v in brief.items():
            self.log(f"{stage}/{k}", float(v), sync_dist=True)
        if self.hparams.predictions_dir and stage == "test":
            d = Path(self.hparams.predictions_dir)
            d.mkdir(parents=True, exist_ok=True)
            with open(d / f"{stage}_preds.jsonl", "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
            (d / f"{stage}_metrics.json").write_text(json.dumps(metrics, indent=2))

    def on_validation_epoch_end(self):
        self._eval_end("val")

    def on_test_epoch_end(self):
        self._eval_end("test")

    # ----------------------------------------------------------------- optim / ckpt
    def configure_optimizers(self):
        h = self.hparams
        opt = torch.optim.AdamW(self.parameters(), lr=h.lr, weight_decay=h.weight_decay)
        if h.lr_schedule == "step":
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=h.lr_drop)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        total = max(1, int(self.trainer.estimated_stepping_batches))
        epochs = max(1, int(self.trainer.max_epochs or 1))
        warmup = int(round(h.warmup_epochs * total / epochs))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: cosine_lr_factor(step, total, warmup, h.min_lr_ratio)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["moment_meta"] = {
            "format": "video_retrieval.moment_detr/1",
            "head": self.hparams.head,
            "model_kwargs": self.model_kwargs(),
            "round_multiple": float(self.hparams.round_multiple),
            "nms_iou": float(self.hparams.nms_iou),
            **self.meta_extra,
        }


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


def predict_split(module: MomentDETRModule, dm: MomentDataModule, split: str) -> list[dict]:
    """Head predictions for a split without a Trainer (eval mode, no grad)."""
    meta = getattr(module, "meta_extra", {})
    feature_keys = (
        ("video_feature_norm", "none"),
        ("video_feature_diff", False),
        ("clip_pooling", "frame"),
        ("clip_context", 0.0),
        ("motion_grid", 0),
    )
    for key, default in feature_keys:
        trained, given = meta.get(key, default), dm.hparams[key]
        if meta and trained != given:
            raise UserError(
                f"the head was trained on {key}={trained!r} features but the data module "
                f"gives {given!r}"
            )
    module.eval()
    rows = []
    loader = dm._loader(split, False)
    with torch.no_grad():
        for batch in loader:
            rows.extend(module._predict_rows(batch, module(batch), dm.items[split]))
    return rows


def load_module(ckpt_path) -> MomentDETRModule:
    """A ``MomentDETRModule`` with its weights from a checkpoint (``weights_only=True``)."""
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    meta = ckpt.get("moment_meta")
    if not meta:
        raise UserError(f"{ckpt_path}: not a moment checkpoint (no moment_meta)")
    hp = dict(ckpt.get("hyper_parameters", {}))
    hp.update(meta["model_kwargs"])
    hp["head"] = meta.get("head", "moment_detr")
    allowed = MomentDETRModule.__init__.__code__.co_varnames
    module = MomentDETRModule(**{k: v for k, v in hp.items() if k in allowed})
    module.load_state_dict(ckpt["state_dict"])
    module.meta_extra = {k: v for k, v in meta.items() if k not in ("model_kwargs", "format")}
    return module.eval()
