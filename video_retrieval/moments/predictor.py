"""Moment-DETR inference: post-processing and a small predictor API.

>>> p = MomentPredictor.from_checkpoint("moments.ckpt")        # doctest: +SKIP
>>> p.predict("video.mp4", "a red circle moves left", top=5)   # doctest: +SKIP
{"moments": [[start_s, end_s, score], ...], "saliency": [per-clip floats], "clip_len": 2.0, ...}

Spans are decoded with the same convention as the training targets: normalised by
``num_clips * clip_len`` (not the annotation's duration), then clamped to ``[0, duration]``,
optionally rounded to a multiple of ``round_multiple`` seconds (QVHighlights: 2 s), sorted by the
foreground probability, optionally passed through temporal NMS.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from video_retrieval.errors import UserError
from video_retrieval.models.checkpoints import read_moment_checkpoint
from video_retrieval.temporal.moment_matcher import FOREGROUND, span_cxw_to_se, temporal_nms


def postprocess(
    pred_logits: torch.Tensor,
    pred_spans: torch.Tensor,
    num_clips: int,
    clip_len: float,
    duration: float,
    round_multiple: float = 0.0,
    nms_iou: float = -1.0,
    top: int | None = None,
) -> np.ndarray:
    """One sample: logits [N,2], spans [N,2] cxw -> rows (start, end, score) sorted by score."""
    prob = pred_logits.float().softmax(-1)[:, FOREGROUND]
    se = span_cxw_to_se(pred_spans.float()) * (num_clips * clip_len)
    se = se.clamp(min=0.0, max=float(duration))
    if round_multiple and round_multiple > 0:
        se = torch.round(se / round_multiple) * round_multiple
        se = se.clamp(min=0.0, max=float(duration))
    rows = torch.cat([se, prob[:, None]], 1).detach().cpu().double().numpy()
    rows = rows[np.argsort(-rows[:, 2], kind="stable")]
    if nms_iou is not None and nms_iou >= 0:
        rows = temporal_nms(rows, nms_iou)
    if top is not None:
        rows = rows[:top]
    return rows


#: the DETR moment heads a checkpoint can name (``moment_meta["head"]``; absent = Moment-DETR)
MOMENT_HEADS = ("moment_detr", "qd_detr")


def build_head(head: str, model_kwargs: dict):
    """The ``nn.Module`` of a moment head from its name and constructor arguments (arguments
    the head does not take, or values it refuses, are one ``UserError``)."""
    if head == "moment_detr":
        from video_retrieval.temporal.moment_detr import MomentDETR as cls

        kwargs = dict(model_kwargs)
    elif head == "qd_detr":
        from video_retrieval.temporal.qd_detr import LEGACY_T2V_FORM
        from video_retrieval.temporal.qd_detr import QDDETR as cls

        # a head recorded before the T2V form was a choice used the old form
        kwargs = {"t2v_form": LEGACY_T2V_FORM, **model_kwargs}
    else:
        raise UserError(f"unknown moment head {head!r} (known: {', '.join(MOMENT_HEADS)})")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise UserError(f"the {head} head cannot be built from these settings ({exc})") from None


def build_feature_models(source: dict, clip_pooling: str = "frame"):
    """``(encoder, pooling aggregator or None)`` recorded in a moment checkpoint."""
    kind = source.get("kind")
    if kind == "features_dir":
        streams = "+".join(source.get("streams") or ["clip"])
        raise UserError(
            f"this moment head was trained on pre-extracted features ({streams} from "
            f"{source.get('path')}), not on an encoder this tool can run on a video: it scores "
            "those features only (vr eval moments on its predictions); for vr localize train a "
            "head on videos (configs/moments_synth.yaml, or features_dir unset)"
        )
    if kind == "retrieval_checkpoint":
        from video_retrieval.models.checkpoints import load_retrieval_model

        enc, agg, _meta = load_retrieval_model(source["path"])
        return enc, (agg if clip_pooling == "aggregator" else None)
    if clip_pooling == "aggregator":
        raise UserError("clip_pooling=aggregator needs the features of a retrieval checkpoint")
    from video_retrieval.encoders.factory import create_encoder

    if kind == "encoder_file":
        enc = create_encoder(checkpoint=source["path"], precision=source.get("precision", "fp32"))
        return enc, None
    return create_encoder(**dict(source["spec"])), None


class MomentPredictor:
    def __init__(self, model, encoder, meta: dict, device: str = "cpu", pool_aggregator=None):
        self.model = model.eval().to(device)
        self.encoder = encoder.eval()
        self.clip_pooling = str(meta.get("clip_pooling", "frame"))
        self.clip_context = float(meta.get("clip_context", 0.0))
        if self.clip_pooling == "aggregator" and pool_aggregator is None:
            raise UserError("this moment head pools clips with an aggregator: pass pool_aggregator")
        self.pool_aggregator = pool_aggregator.eval() if pool_aggregator is not None else None
        self.meta = meta
        self.device = device
        self.clip_len = float(meta.get("clip_len", 2.0))
        self.max_v_l = int(meta.get("max_v_l", 75))
        self.max_q_l = int(meta.get("max_q_l", 32))
        self.round_multiple = float(meta.get("round_multiple", 0.0))
        self.nms_iou = float(meta.get("nms_iou", -1.0))
        self.frames_per_clip = int(meta.get("frames_per_clip", 1))
        self.video_feature_norm = str(meta.get("video_feature_norm", "none"))
        self.video_feature_diff = bool(meta.get("video_feature_diff", False))
        self.motion_grid = int(meta.get("motion_grid", 0))

    @classmethod
    def from_checkpoint(
        cls, path, device: str = "cpu", encoder=None, pool_aggregator=None
    ) -> MomentPredictor:
        path = Path(path)
        ckpt, meta = read_moment_checkpoint(path)
        model = build_head(str(meta.get("head", "moment_detr")), dict(meta["model_kwargs"]))
        state = {
            k[len("model.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")
        }
        model.load_state_dict(state)
        pooling = str(meta.get("clip_pooling", "frame"))
        source = dict(meta["encoder_source"])
        if source.get("relative"):  # written by models.checkpoints.slim_moment_checkpoint
            source["path"] = str(path.resolve().parent / source["path"])
        if encoder is None:
            encoder, agg = build_feature_models(source, pooling)
            pool_aggregator = pool_aggregator if pool_aggregator is not None else agg
            fp = meta.get("encoder_fingerprint")
            if fp and hasattr(encoder, "fingerprint") and encoder.fingerprint() != fp:
                raise UserError(
                    f"{path}: the rebuilt encoder differs from the one the head was trained on "
                    f"({encoder.fingerprint()} != {fp})"
                )
        return cls(model, encoder, meta, device, pool_aggregator=pool_aggregator)

    def encode_video(self, video_path) -> dict:
        from video_retrieval.moments.features import clip_features

        feats, times, duration = clip_features(
            self.encoder,
            video_path,
            self.clip_len,
            self.frames_per_clip,
            aggregator=self.pool_aggregator,
            context=self.clip_context,
        )
        video = {"feats": feats, "clip_times": times, "duration": duration}
        if self.motion_grid:
            from video_retrieval.moments.features import motion_features

            video["motion"] = motion_features(
                video_path, len(feats), self.clip_len, self.frames_per_clip / self.clip_len,
                self.clip_context, self.motion_grid,
            )  # fmt: skip
        return video

    def window_starts(self, n: int) -> list[int]:
        """First clip of each sliding window over ``n`` clips: windows of the trained length
        ``max_v_l``, half overlapping, the last one ending at the last clip."""
        length = self.max_v_l
        if n <= length:
            return [0]
        stride = max(1, length // 2)
        starts = list(range(0, n - length, stride))
        return starts + [n - length]

    @torch.no_grad()
    def predict(self, video_path, query: str, top: int = 5, video: dict | None = None) -> dict:
        """Moments ``[[start, end, score], ...]`` (seconds, best first, no duplicates) and the
        saliency of every clip of the whole video.

        A video longer than the head's trained length (``max_v_l`` clips, 150 s for Moment-DETR)
        is scored over sliding windows of that length with half overlap; the windows' moments
        are shifted to video time and merged by score-aware temporal NMS, and each clip's
        saliency is the mean over the windows that contain it. A video no longer than one clip
        gets one moment covering it.
        """
        from video_retrieval.moments.features import (
            add_temporal_differences,
            normalize_clip_features,
            text_token_features,
        )

        if not isinstance(query, str) or not query.strip():
            raise UserError("the query is empty")
        video = video or self.encode_video(video_path)
        feats = normalize_clip_features(video["feats"], self.video_feature_norm)
        if self.video_feature_diff:
            feats = add_temporal_differences(feats)
        if self.motion_grid:
            feats = np.concatenate([feats, video["motion"]], 1)
        n = len(feats)
        duration = float(video["duration"]) or n * self.clip_len
        starts = self.window_starts(n)
        length = min(n, self.max_v_l)
        txt = text_token_features(self.encoder, [query], self.max_q_l)[0]
        v = torch.from_numpy(np.stack([feats[a : a + length] for a in starts])).to(self.device)
        t = torch.from_numpy(txt)[None].expand(len(starts), -1, -1).to(self.device)
        out = self.model(
            v,
            torch.ones(len(starts), length, dtype=torch.bool, device=self.device),
            t,
            torch.ones(len(starts), len(txt), dtype=torch.bool, device=self.device),
        )
        rows, sal_sum, sal_cnt = [], np.zeros(n), np.zeros(n)
        for j, a in enumerate(starts):
            offset = a * self.clip_len
            win = postprocess(
                out["pred_logits"][j],
                out["pred_spans"][j],
                length,
                self.clip_len,
                min(duration - offset, length * self.clip_len),
                self.round_multiple,
            )
            win[:, :2] += offset
            rows.append(win)
            sal_sum[a : a + length] += out["saliency_scores"][j, :length].float().cpu().numpy()
            sal_cnt[a : a + length] += 1
        rows = merge_windows(
            np.concatenate(rows), duration, self.clip_len, self.nms_iou, len(starts)
        )
        return {
            "moments": [[float(s), float(e), float(sc)] for s, e, sc in rows[:top]],
            "saliency": [float(x) for x in sal_sum / np.maximum(sal_cnt, 1)],
            "clip_len": self.clip_len,
            "duration": duration,
            "windows": len(starts),
        }


#: IoU above which moments from overlapping sliding windows count as the same moment
WINDOW_MERGE_IOU = 0.7


def merge_windows(
    rows: np.ndarray, duration: float, clip_len: float, nms_iou: float, windows: int
) -> np.ndarray:
    """Rows (start, end, score) -> best first, without zero-length or repeated windows.

    Identical windows (rounding makes many) keep their best score; predictions of several
    sliding windows are merged by temporal NMS (``nms_iou`` when the head has one, else
    ``WINDOW_MERGE_IOU``). A video no longer than one clip has one moment: the whole video.
    """
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, 3)
    rows = rows[np.argsort(-rows[:, 2], kind="stable")]
    if duration <= clip_len + 1e-6:
        best = float(rows[0, 2]) if len(rows) else 0.0
        return np.array([[0.0, float(duration), best]])
    keep = rows[:, 1] - rows[:, 0] > 1e-6
    rows = rows[keep]
    _, first = np.unique(np.round(rows[:, :2], 6), axis=0, return_index=True)
    rows = rows[np.sort(first)]
    if nms_iou is not None and nms_iou >= 0:
        rows = temporal_nms(rows, nms_iou)
    elif windows > 1:
        rows = temporal_nms(rows, WINDOW_MERGE_IOU)
    if not len(rows):  # every prediction rounded to nothing: the whole video, honestly scored
        return np.array([[0.0, float(duration), 0.0]])
    return rows
