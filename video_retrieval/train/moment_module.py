"""The moment-head LightningModule: ``MomentDETRModule`` (a Moment-DETR or QD-DETR head, the
Hungarian criterion, QVHighlights / DiDeMo / Charades-STA metrics at validation and test, the
step or warm-up + cosine schedule), ``predict_split`` (a split's predictions without a Trainer)
and ``load_module``.

Config (``vr train fit --config configs/moments_synth.yaml``)::

    model: {class_path: video_retrieval.train.moment_module.MomentDETRModule, init_args: {...}}
    data:  {class_path: video_retrieval.train.moment_data.MomentDataModule, init_args: {...}}

Feature widths are read from the data at ``setup`` (``v_feat_dim: 0`` = infer) and recorded in
the checkpoint, together with the encoder that produced the features (``moment_meta``), so
``MomentPredictor.from_checkpoint`` can rebuild everything with ``weights_only=True``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import torch

from video_retrieval.errors import UserError
from video_retrieval.metrics.moment_protocols import charades_metrics, didemo_metrics
from video_retrieval.metrics.moments import evaluate
from video_retrieval.models.checkpoints import read_moment_checkpoint
from video_retrieval.moments.predictor import MOMENT_HEADS, build_head, postprocess
from video_retrieval.temporal.cheap_dropout import use_cheap_dropout
from video_retrieval.temporal.moment_loss import MomentCriterion
from video_retrieval.temporal.moment_matcher import HungarianMatcher
from video_retrieval.temporal.qd_detr import LEGACY_T2V_FORM
from video_retrieval.train.moment_data import MomentDataModule

LR_SCHEDULES = ("step", "cosine")


def cosine_lr_factor(step: int, total: int, warmup: int, min_ratio: float = 0.0) -> float:
    """Learning-rate multiplier at optimizer step ``step`` of ``total``: linear warm-up from
    ``1/warmup`` to 1 over ``warmup`` steps, then a half cosine from 1 to ``min_ratio``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    t = min(1.0, (step - warmup) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


class MomentDETRModule(L.LightningModule):
    """A DETR moment head with its Hungarian criterion, AdamW + a schedule, QVHighlights metrics.

    ``head``: ``moment_detr`` (Moment-DETR, the published recipe) or ``qd_detr`` (QD-DETR:
    query-dependent video tokens, input-adaptive saliency, negative-pair and rank-contrastive
    saliency losses, anchor decoder; ``t2v_layers`` defaults to ``enc_layers``; ``t2v_form``:
    ``published`` or ``post_norm``, ``temporal.qd_detr.T2V_FORMS``).
    ``lr_schedule``: ``step`` (StepLR every ``lr_drop`` epochs, x0.1: Moment-DETR's; with
    ``lr_drop`` past ``max_epochs`` the rate is constant) or ``cosine`` (linear warm-up over
    ``warmup_epochs``, then cosine decay to ``lr * min_lr_ratio`` at ``max_epochs``; per step).
    ``cheap_dropout``: draw the training dropout masks on CPU from int16 random numbers
    (``temporal/cheap_dropout.py``; the same model, about a third cheaper a step on CPU).
    """

    #: 0 in a config = taken from the data module at setup (a resume does not conflict)
    INFERRED_HPARAMS = ("v_feat_dim", "t_feat_dim")
    #: what a checkpoint that does not record these was trained with (it predates them)
    CHECKPOINT_DEFAULTS = {"t2v_form": LEGACY_T2V_FORM}

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
        t2v_form: str = "published",
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
            kw["t2v_form"] = h.get("t2v_form", LEGACY_T2V_FORM)
        return kw

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """A checkpoint from before a setting existed was trained with its old value
        (``CHECKPOINT_DEFAULTS``): rebuild the head with it before its weights are loaded."""
        stored = checkpoint.get("hyper_parameters") or {}
        old = {k: v for k, v in self.CHECKPOINT_DEFAULTS.items() if k not in stored}
        if any(self.hparams.get(k) != v for k, v in old.items()):
            self.hparams.update(old)
            if self.model is not None:
                self._build()

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
    ckpt, meta = read_moment_checkpoint(ckpt_path)
    hp = {**MomentDETRModule.CHECKPOINT_DEFAULTS, **dict(ckpt.get("hyper_parameters", {}))}
    hp.update(meta["model_kwargs"])
    hp["head"] = meta.get("head", "moment_detr")
    allowed = MomentDETRModule.__init__.__code__.co_varnames
    module = MomentDETRModule(**{k: v for k, v in hp.items() if k in allowed})
    module.load_state_dict(ckpt["state_dict"])
    module.meta_extra = {k: v for k, v in meta.items() if k not in ("model_kwargs", "format")}
    return module.eval()
