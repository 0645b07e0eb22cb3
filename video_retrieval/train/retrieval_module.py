"""LightningModule for text-video retrieval: a CLIP encoder + a temporal aggregator.

Both are plain ``nn.Module``s (``self.encoder``, ``self.aggregator``); this class only wires the
training recipe (CLIP4Clip, refs/retrieval.md section 1):

* symmetric InfoNCE: ``(CE(S) + CE(S^T)) / 2`` on the aggregator's logits ``S`` (temperature folded
  into the logit scale), with text/frame features all-gathered across processes *with gradients*
  before the aggregator similarity (``all_gather(sync_grads=True)``, flattened; a cross-encoder,
  ``gather_in_training = False``, scores only its local batch, as CLIP4Clip's tightTransf);
* AdamW with two learning-rate groups (CLIP towers + logit scale: ``lr_clip``; new modules:
  ``lr_new``), no weight decay on biases, norms, embeddings and the logit scale; cosine schedule
  with linear warm-up stepped per optimiser step; logit scale clamped to <= 100 after each step;
* ``freeze_backbone``: the encoder gets no gradient (and runs in eval mode);
* ``bf16``: bf16 autocast around the encoders (master weights stay fp32).

Evaluation (features of the whole val/test set, R@K / MdR / MnR, dual-softmax, Sinkhorn, the
temporal-pair accuracy) is the ``retrieval_eval.RetrievalEvaluation`` half of the class.
"""

from __future__ import annotations

import contextlib
import logging
import math

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from video_retrieval.errors import UserError
from video_retrieval.temporal.features import TextFeatures, VideoFeatures
from video_retrieval.train.retrieval_eval import RetrievalEvaluation, to_float_text

log = logging.getLogger(__name__)

_NO_DECAY_KEYS = ("embedding", "logit_scale", "logit_bias", "class_embedding")


def symmetric_infonce(sim: torch.Tensor) -> torch.Tensor:
    """CLIP4Clip loss: mean of CrossEn over rows (t2v) and over columns (v2t); GT on the diagonal."""
    target = torch.arange(sim.shape[0], device=sim.device)
    sim = sim.float()
    return 0.5 * (F.cross_entropy(sim, target) + F.cross_entropy(sim.t(), target))


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """LR multiplier: linear warm-up to 1 over ``warmup`` steps, then cosine to 0 at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _no_decay(name: str, p: torch.nn.Parameter, embedding_params: set[int]) -> bool:
    return p.ndim < 2 or id(p) in embedding_params or any(k in name for k in _NO_DECAY_KEYS)


class RetrievalModule(RetrievalEvaluation, pl.LightningModule):
    """Args (all plain values, saved as JSON-able hyper-parameters):
    model / pretrained / checkpoint: open_clip model name, pretrained tag, or local weights file.
    aggregator / aggregator_kwargs: ``video_retrieval.temporal.build_aggregator`` name + kwargs.
    num_frames: the aggregator's ``max_frames``; max_words: text tokens (SOT + words + EOT).
    lr_clip / lr_new: learning rates of the CLIP towers (+ logit scale) and of the new modules.
    weight_decay, betas, eps: AdamW; warmup_proportion: share of all steps used for warm-up.
    freeze_backbone: no gradient through the encoder. bf16: bf16 autocast in the encoders.
    init_aggregator_from_clip: call ``aggregator.init_from_clip(encoder)`` (seqTransf/tight).
    eval_dsl: also report dual-softmax metrics (transductive). eval_sinkhorn: also report
    Sinkhorn-normalised metrics for aggregators with ``level_similarities`` (UCoFiA).
    sinkhorn_bank_size: at most this many training captions in the t2v Sinkhorn bank (a seeded
        random sample); sinkhorn_video_bank_size: training videos in the v2t bank (UCoFiA uses
        all; every evaluation decodes and encodes them, so the default is a sample of 1000).
    eval_block_size: similarity is computed in blocks of this many texts x videos.
    init_from: a ``vr train`` retrieval checkpoint whose encoder and aggregator weights start
        this run (fine-tuning, e.g. the demo model on moment clips); unlike ``--ckpt_path`` the
        optimizer, schedule and epoch count start fresh. Its architecture must match.
    init_from_parts: ``all`` (encoder and aggregator; the aggregators must match) or ``encoder``
        (only the CLIP towers, from a checkpoint of any aggregator: CLIP4Clip starts every head,
        tightTransf included, from trained towers; the aggregator keeps its own init).
    """

    def __init__(
        self,
        model: str = "vr-tiny",
        pretrained: str | None = None,
        checkpoint: str | None = None,
        aggregator: str = "mean",
        aggregator_kwargs: dict | None = None,
        num_frames: int = 12,
        max_words: int = 32,
        lr_clip: float = 1e-5,
        lr_new: float = 1e-4,
        weight_decay: float = 0.2,
        betas: tuple[float, float] = (0.9, 0.98),
        eps: float = 1e-6,
        warmup_proportion: float = 0.1,
        freeze_backbone: bool = False,
        bf16: bool = False,
        init_aggregator_from_clip: bool = True,
        eval_dsl: bool = True,
        eval_sinkhorn: bool = True,
        sinkhorn_bank_size: int = 10000,
        sinkhorn_video_bank_size: int | None = 1000,
        eval_block_size: int = 256,
        init_from: str | None = None,
        init_from_parts: str = "all",
    ):
        super().__init__()
        self.save_hyperparameters()
        from video_retrieval.encoders.factory import create_encoder
        from video_retrieval.temporal import build_aggregator

        self.encoder = create_encoder(
            model, pretrained=pretrained, checkpoint=checkpoint, precision="fp32"
        )
        self.aggregator = build_aggregator(
            aggregator, self.encoder.embed_dim, max_frames=num_frames, **(aggregator_kwargs or {})
        )
        # CLIP4Clip initialises seqTransf / tightTransf from the CLIP text tower: do it for any
        # trained CLIP, from a pretrained tag or a local weights file (the offline route). The
        # copied blocks take the tower's MLP activation (GELU for LAION towers, QuickGELU for
        # OpenAI's); it is recorded in aggregator_kwargs so that checkpoints rebuild it.
        if init_aggregator_from_clip and (checkpoint is not None or pretrained is not None):
            self.aggregator.init_from_clip(self.encoder)
        if init_from:
            self._init_from_checkpoint(init_from)
        self._record_activation()
        # The encoder's own CLIP logit scale/bias are unused (the aggregator owns the scale):
        # exclude them from training so DDP does not see parameters without gradient.
        for name, p in self.encoder.named_parameters():
            if name.rsplit(".", 1)[-1] in ("logit_scale", "logit_bias"):
                p.requires_grad_(False)
        if freeze_backbone:
            self.encoder.requires_grad_(False)
        self.train()  # create_encoder returns eval-mode modules; Lightning keeps module modes
        self.failures: list[tuple[str, str]] = []
        self._eval_cache: dict[int, dict[str, list]] = {}
        self.eval_results: dict[str, dict[str, float]] = {}
        #: prefix -> (raw similarity [Nt, Nv], text_to_video [Nt]) of the last evaluation
        self.eval_similarity: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    # -- encoding --------------------------------------------------------------------------------
    def _autocast(self):
        if not self.hparams.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _grad_ctx(self):
        return torch.no_grad() if self.hparams.freeze_backbone else contextlib.nullcontext()

    def _init_from_checkpoint(self, path: str) -> None:
        from video_retrieval.models.checkpoints import read_checkpoint

        ckpt = read_checkpoint(path)
        hp = ckpt.get("hyper_parameters") or {}
        state = ckpt.get("state_dict")
        if state is None or "aggregator" not in hp:
            raise UserError(f"{path}: not a retrieval checkpoint written by vr train")
        parts = self.hparams.get("init_from_parts", "all")
        if parts not in ("all", "encoder"):
            raise UserError(f"init_from_parts must be 'all' or 'encoder', not {parts!r}")
        if parts == "encoder":
            self._init_encoder_from(path, state)
            if self.hparams.init_aggregator_from_clip and hasattr(
                self.aggregator, "init_from_clip"
            ):
                self.aggregator.init_from_clip(self.encoder)  # CLIP4Clip: from the trained towers
            return
        if hp["aggregator"] != self.hparams.aggregator:
            raise UserError(
                f"{path}: init_from holds a {hp['aggregator']!r} aggregator, this run trains "
                f"{self.hparams.aggregator!r}"
            )
        own = {k: v for k, v in state.items() if k.startswith(("encoder.", "aggregator."))}
        self._use_recorded_activation(hp)
        try:
            missing, unexpected = self.load_state_dict(
                {k: v.float() if v.is_floating_point() else v for k, v in own.items()},
                strict=False,
            )
        except RuntimeError as exc:
            raise UserError(f"{path}: weights do not match this model ({exc})") from None
        missing = [k for k in missing if k.startswith(("encoder.", "aggregator."))]
        if missing or unexpected:
            raise UserError(
                f"{path}: weights do not match this model (missing {missing[:3]}, "
                f"unexpected {unexpected[:3]})"
            )

    def _init_encoder_from(self, path: str, state: dict) -> None:
        """Load only the ``encoder.*`` weights (the CLIP towers) of a retrieval checkpoint."""
        own = {
            k[len("encoder.") :]: v.float() if v.is_floating_point() else v
            for k, v in state.items()
            if k.startswith("encoder.")
        }
        try:
            self.encoder.load_state_dict(own, strict=True)
        except RuntimeError as exc:
            raise UserError(f"{path}: encoder weights do not match this model ({exc})") from None

    def _record_activation(self) -> None:
        """Keep the temporal blocks' MLP activation in the hyper-parameters (aggregator kwargs),
        so ``load_from_checkpoint`` and ``models.checkpoints.load_retrieval_model`` rebuild it."""
        act = getattr(self.aggregator, "activation", None)
        if act is not None:
            kwargs = dict(self.hparams.get("aggregator_kwargs") or {})
            self.hparams["aggregator_kwargs"] = {**kwargs, "activation": act}

    def _use_recorded_activation(self, hparams: dict) -> None:
        """Weights from a checkpoint run with the activation they were trained with: the one
        recorded in its aggregator kwargs, QuickGELU for checkpoints from before the record."""
        if hasattr(self.aggregator, "set_activation"):
            from video_retrieval.temporal.seq_transformer import recorded_activation

            self.aggregator.set_activation(recorded_activation(hparams.get("aggregator_kwargs")))
            self._record_activation()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._use_recorded_activation(checkpoint.get("hyper_parameters") or {})

    def encode_text(self, captions: list[str]) -> TextFeatures:
        tokens = self.encoder.tokenize(captions, context_length=self.hparams.max_words)
        with self._grad_ctx(), self._autocast():
            t = self.encoder.encode_text(
                tokens.to(self.device), return_words=self.aggregator.needs_words
            )
        return to_float_text(t)

    def encode_video(self, frames: torch.Tensor, mask: torch.Tensor) -> VideoFeatures:
        """uint8 [B,T,H,W,3] + bool [B,T] -> VideoFeatures (float32)."""
        b, t = frames.shape[:2]
        with self._grad_ctx(), self._autocast():
            images = self.encoder.preprocess(frames.reshape(b * t, *frames.shape[2:]))
            cls, patches = self.encoder.encode_images(
                images.to(self.device), return_patches=self.aggregator.needs_patches
            )
        cls = cls.float().reshape(b, t, -1)
        if patches is not None:
            patches = patches.float().reshape(b, t, *patches.shape[1:])
        return VideoFeatures(cls, mask.to(self.device).bool(), patches)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.hparams.freeze_backbone:
            self.encoder.eval()
        return self

    # -- training --------------------------------------------------------------------------------
    def _world(self) -> int:
        return self._trainer.world_size if self._trainer is not None else 1

    def _gather(self, x: torch.Tensor | None) -> torch.Tensor | None:
        if x is None or self._world() == 1 or not self.aggregator.gather_in_training:
            return x
        g = self.all_gather(x, sync_grads=True)  # [W, B, ...]
        return g.reshape(-1, *g.shape[2:])

    def _cached(self, batch) -> tuple[TextFeatures, VideoFeatures] | None:
        """(text, video) features of a feature-cache batch (``CachedRetrievalDataModule``), or
        None for a batch of frames and captions. Cached features come from a frozen encoder."""
        if "video" not in batch:
            return None
        if not self.hparams.freeze_backbone:
            raise UserError(
                "feature-cache batches hold features of a frozen encoder: set "
                "--model.init_args.freeze_backbone=true (or train from videos)"
            )
        text, video = batch["text"].to(self.device), batch["video"].to(self.device)
        return to_float_text(text), VideoFeatures(
            video.frames.float(),
            video.mask.bool(),
            None if video.patches is None else video.patches.float(),
        )

    def setup(self, stage: str) -> None:
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and hasattr(dm, "check_encoder"):
            dm.check_encoder(self.encoder)  # a cache built by another model is refused

    def training_step(self, batch, batch_idx):
        self._note_failures(batch)
        cached = self._cached(batch)
        if cached is not None:
            text, video = cached
        elif batch["frames"] is None or len(batch["captions"]) * self._world() < 2:
            # a contrastive loss needs two pairs in the *global* batch; the training dataset
            # replaces undecodable videos, so under DDP every rank skips together or none does
            return None
        else:
            text = self.encode_text(batch["captions"])
            video = self.encode_video(batch["frames"], batch["mask"])
        text = TextFeatures(
            self._gather(text.sentence), self._gather(text.words), self._gather(text.word_mask)
        )
        video = VideoFeatures(
            self._gather(video.frames), self._gather(video.mask), self._gather(video.patches)
        )
        sim = self.aggregator.similarity(text, video)
        loss = symmetric_infonce(sim)
        bs = len(text)
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/logit_scale", self.aggregator.logit_scale.exp().detach(), batch_size=bs)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.aggregator.clamp_logit_scale()

    def configure_optimizers(self):
        hp = self.hparams
        emb = {
            id(m.weight)
            for m in self.modules()
            if isinstance(m, torch.nn.Embedding) and m.weight is not None
        }
        groups = {(k, d): [] for k in ("clip", "new") for d in (True, False)}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            kind = "clip" if name.startswith("encoder.") or name.endswith("logit_scale") else "new"
            groups[(kind, not _no_decay(name, p, emb))].append(p)
        params = []
        for (kind, decay), ps in groups.items():
            if ps:
                params.append(
                    {
                        "params": ps,
                        "lr": hp.lr_clip if kind == "clip" else hp.lr_new,
                        "weight_decay": hp.weight_decay if decay else 0.0,
                        "name": f"{kind}{'' if decay else '_no_decay'}",
                    }
                )
        opt = torch.optim.AdamW(params, betas=tuple(hp.betas), eps=hp.eps)
        total = max(1, int(self.trainer.estimated_stepping_batches)) if self._trainer else 1
        warmup = int(round(hp.warmup_proportion * total))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: warmup_cosine(step, total, warmup)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Plain-JSON metadata for ``models.checkpoints.load_retrieval_model`` (no Lightning needed)."""
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        checkpoint["vr_meta"] = {
            "format": "vr-retrieval-1",
            "encoder_spec": dict(self.encoder.spec),
            "aggregator": self.hparams.aggregator,
            "data_num_frames": getattr(dm, "num_frames", None),
            "frame_size": getattr(dm, "frame_size", None),
            "symmetric_window": bool(
                getattr(getattr(dm, "reader", None), "symmetric_window", False)
            ),
        }
