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

Evaluation caches text and video features over the whole val/test set, gathers them across
processes (padded gather, de-duplicated by dataset index: DistributedSampler pads), computes the
similarity block-wise with the aggregator, and logs t2v / v2t R@1/5/10, MdR, MnR; separately the
transductive dual-softmax (``*_dsl_*``), UCoFiA's Sinkhorn-normalised scores (``*_sk_t2v_*`` with
a bank of training captions, ``*_sk_v2t_*`` with a bank of training videos) and the synthetic world's temporal-pair accuracy. Every rank computes the same
numbers from the same gathered features.
"""

from __future__ import annotations

import contextlib
import logging
import math

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn

from video_retrieval.errors import UserError
from video_retrieval.metrics.retrieval import (
    dsl_metrics,
    flatten_metrics,
    retrieval_metrics,
    temporal_pair_accuracy,
)
from video_retrieval.temporal.features import TextFeatures, VideoFeatures

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


class RetrievalModule(pl.LightningModule):
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
        from video_retrieval.encoders import create_encoder
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
        so ``load_from_checkpoint`` and ``model_io.load_retrieval_model`` rebuild it."""
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
        return _to_float(t)

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
        return _to_float(text), VideoFeatures(
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
        """Plain-JSON metadata for ``model_io.load_retrieval_model`` (no Lightning needed)."""
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

    # -- evaluation: cache features ----------------------------------------------------------
    def _note_failures(self, batch):
        for f in batch.get("failed", []):
            self.failures.append(tuple(f))
            rank_zero_warn(f"video skipped: {f[0]} ({f[1]})")

    def _eval_step(self, batch, dataloader_idx: int):
        self._note_failures(batch)
        cache = self._eval_cache.setdefault(
            dataloader_idx, {k: [] for k in ("video", "vid", "text", "cid", "cvid")}
        )
        cached = self._cached(batch)
        if cached is not None:
            text, video = cached
            caption_ids = batch["text_index"]
        elif batch["frames"] is None:
            return
        else:
            video = self.encode_video(batch["frames"], batch["mask"])
            text = self.encode_text(batch["captions"])
            caption_ids = batch["caption_ids"]
        cache["video"].append(_to_cpu(video))
        cache["vid"].append(batch["video_index"].cpu())
        cache["text"].append(_to_cpu(text))
        cache["cid"].append(caption_ids.cpu())
        cache["cvid"].append(batch["video_index"][batch["caption_video"]].cpu())

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        self._eval_step(batch, dataloader_idx)

    def test_step(self, batch, batch_idx, dataloader_idx: int = 0):
        self._eval_step(batch, dataloader_idx)

    def on_validation_epoch_start(self):
        self._eval_cache = {}
        self.eval_similarity = {}

    def on_test_epoch_start(self):
        self._eval_cache = {}
        self.eval_similarity = {}

    def on_validation_epoch_end(self):
        self._finish_eval("validate")

    def on_test_epoch_end(self):
        self._finish_eval("test")

    def _gather_rows(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate a CPU tensor's rows over all processes (row counts may differ)."""
        if self._world() == 1:
            return x
        n = torch.tensor([x.shape[0]], device=self.device)
        counts = self.all_gather(n).reshape(-1).tolist()
        pad = max(counts) - x.shape[0]
        xp = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))]) if pad else x
        g = self.all_gather(xp.to(self.device)).cpu()  # [W, max, ...]
        return torch.cat([g[r, :c] for r, c in enumerate(counts)])

    def _collect(self, cache: dict):
        """Gathered, de-duplicated, index-sorted (TextFeatures, VideoFeatures, text_to_video,
        video dataset indices)."""

        def cat(items, attr):
            vals = [getattr(i, attr) for i in items]
            return None if vals[0] is None else torch.cat(vals)

        if not cache["video"]:
            # this rank saw nothing (all failed): contribute empty tensors of the right width
            raise RuntimeError("no evaluation features")
        v_frames = self._gather_rows(cat(cache["video"], "frames"))
        v_mask = self._gather_rows(cat(cache["video"], "mask"))
        v_patch = cat(cache["video"], "patches")
        v_patch = None if v_patch is None else self._gather_rows(v_patch)
        vid = self._gather_rows(torch.cat(cache["vid"]))
        t_sent = self._gather_rows(cat(cache["text"], "sentence"))
        t_words = cat(cache["text"], "words")
        t_wmask = cat(cache["text"], "word_mask")
        t_words = None if t_words is None else self._gather_rows(t_words)
        t_wmask = None if t_wmask is None else self._gather_rows(t_wmask)
        cid = self._gather_rows(torch.cat(cache["cid"]))
        cvid = self._gather_rows(torch.cat(cache["cvid"]))
        # de-duplicate (DistributedSampler repeats samples to even out ranks), sort by index
        vkeep = _first_unique(vid)
        ckeep = _first_unique(cid)
        vid, cid, cvid = vid[vkeep], cid[ckeep], cvid[ckeep]
        video = VideoFeatures(
            v_frames[vkeep].float(),
            v_mask[vkeep],
            None if v_patch is None else v_patch[vkeep].float(),
        )
        text = TextFeatures(
            t_sent[ckeep].float(),
            None if t_words is None else t_words[ckeep].float(),
            None if t_wmask is None else t_wmask[ckeep],
        )
        col = {int(v): i for i, v in enumerate(vid.tolist())}
        text_to_video = torch.tensor([col[int(v)] for v in cvid.tolist()], dtype=torch.long)
        return text, video, text_to_video, vid

    @torch.no_grad()
    def similarity_matrix(self, text: TextFeatures, video: VideoFeatures, fn=None) -> torch.Tensor:
        """[Nt, Nv] logits computed block by block on this module's device (CPU result)."""
        fn = fn or self.aggregator.similarity
        bs = self.hparams.eval_block_size
        rows = []
        for i in range(0, len(text), bs):
            t = text[i : i + bs].to(self.device)
            cols = [
                fn(t, video[j : j + bs].to(self.device)).float().cpu()
                for j in range(0, len(video), bs)
            ]
            rows.append(torch.cat(cols, dim=1))
        return torch.cat(rows, dim=0)

    def _bank_text(self) -> TextFeatures | None:
        dm = getattr(self._trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "caption_bank"):
            return None
        try:
            if hasattr(dm, "caption_bank_features"):  # a feature cache: no text encoding
                return _to_float(dm.caption_bank_features(self.hparams.sinkhorn_bank_size))
            caps = dm.caption_bank(self.hparams.sinkhorn_bank_size)
        except Exception as exc:  # noqa: BLE001 - no training split: skip SK, say why
            rank_zero_warn(f"Sinkhorn evaluation skipped: no training captions ({exc})")
            return None
        feats = []
        with torch.no_grad():
            for i in range(0, len(caps), 256):
                feats.append(_to_cpu(self.encode_text(caps[i : i + 256])))
        return TextFeatures(
            torch.cat([f.sentence for f in feats]).float(),
            None if feats[0].words is None else torch.cat([f.words for f in feats]).float(),
            None if feats[0].word_mask is None else torch.cat([f.word_mask for f in feats]),
        )

    def _bank_video(self) -> VideoFeatures | None:
        dm = getattr(self._trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "video_bank_loader"):
            return None
        try:
            loader = dm.video_bank_loader(self.hparams.sinkhorn_video_bank_size)
        except Exception as exc:  # noqa: BLE001 - no training split: skip SK v2t, say why
            rank_zero_warn(f"Sinkhorn v2t evaluation skipped: no training videos ({exc})")
            return None
        parts = []
        with torch.no_grad():
            for batch in loader:
                self._note_failures(batch)
                cached = self._cached(batch)
                if cached is not None:
                    parts.append(_to_cpu(cached[1]))
                elif batch["frames"] is not None:
                    parts.append(_to_cpu(self.encode_video(batch["frames"], batch["mask"])))
        if not parts:
            return None
        patches = None if parts[0].patches is None else torch.cat([p.patches for p in parts])
        return VideoFeatures(
            torch.cat([p.frames for p in parts]).float(),
            torch.cat([p.mask for p in parts]),
            None if patches is None else patches.float(),
        )

    def sinkhorn_matrix(self, text, video, bank, dim: str = "t2v") -> torch.Tensor:
        """UCoFiA SK-norm, per level then averaged over the levels.

        ``dim="t2v"``: ``bank`` holds training captions; the Sinkhorn prior over test videos
        (from bank x test-video logits) is added to every row. ``dim="v2t"``: ``bank`` holds
        training videos; the prior over test texts (from test-text x bank-video logits) is added
        to every column."""
        from video_retrieval.temporal.sinkhorn import apply_sinkhorn

        test = self.level_matrices(text, video)
        bank_l = (
            self.level_matrices(bank, video) if dim == "t2v" else self.level_matrices(text, bank)
        )
        out = [apply_sinkhorn(test[k], bank_l[k], dim=dim) for k in sorted(test)]
        return torch.stack(out).mean(0)

    @torch.no_grad()
    def level_matrices(self, text, video) -> dict[str, torch.Tensor]:
        """``aggregator.level_similarities`` computed block-wise: {level: [Nt, Nv]} (CPU)."""
        bs = self.hparams.eval_block_size
        rows: dict[str, list] = {}
        for i in range(0, len(text), bs):
            t = text[i : i + bs].to(self.device)
            blocks = [
                self.aggregator.level_similarities(t, video[j : j + bs].to(self.device))
                for j in range(0, len(video), bs)
            ]
            for k in blocks[0]:
                rows.setdefault(k, []).append(torch.cat([b[k].float().cpu() for b in blocks], 1))
        return {k: torch.cat(v, 0) for k, v in rows.items()}

    def _finish_eval(self, stage: str):
        dm = getattr(self._trainer, "datamodule", None)
        names = dm.eval_sets(stage) if dm is not None and hasattr(dm, "eval_sets") else None
        prefix_stage = "val" if stage == "validate" else "test"
        results = {}
        for idx in sorted(self._eval_cache):
            name = names[idx] if names and idx < len(names) else str(idx)
            prefix = f"{prefix_stage}/" if name in ("val", "test") else f"{prefix_stage}_{name}/"
            text, video, t2v, vid = self._collect(self._eval_cache[idx])
            sim = self.similarity_matrix(text, video)
            self.eval_similarity[prefix] = (sim, t2v)  # raw [Nt, Nv] logits, for analysis
            res = flatten_metrics(retrieval_metrics(sim, t2v))
            if self.hparams.eval_dsl:
                res.update(flatten_metrics(dsl_metrics(sim, t2v), "dsl_"))
            if self.hparams.eval_sinkhorn and hasattr(self.aggregator, "level_similarities"):
                # each direction has its own bank and prior: t2v reads the t2v metrics of the
                # caption-bank matrix, v2t the v2t metrics of the video-bank matrix
                for dim, bank in (("t2v", self._bank_text()), ("v2t", self._bank_video())):
                    if bank is not None:
                        sk = self.sinkhorn_matrix(text, video, bank, dim)
                        sk_res = retrieval_metrics(sk, t2v)[dim]
                        res.update(flatten_metrics({dim: sk_res}, "sk_"))
            pairs = _pairs_for(dm, name, vid)
            if pairs:
                res["temporal_pair_acc"] = temporal_pair_accuracy(sim, t2v, [p[:2] for p in pairs])
                for kind in sorted({p[2] for p in pairs if p[2]}):
                    sub = [p[:2] for p in pairs if p[2] == kind]
                    res[f"temporal_pair_acc_{kind}"] = temporal_pair_accuracy(sim, t2v, sub)
            res["num_videos"] = float(len(video))
            res["num_captions"] = float(len(text))
            res["num_failed"] = float(len(self.failures))
            results[prefix] = res
            # identical on every rank: no reduction needed
            self.log_dict({f"{prefix}{k}": v for k, v in res.items()}, sync_dist=False)
        self.eval_results = results
        self._eval_cache = {}


def _pairs_for(dm, name: str, vid: torch.Tensor) -> list[tuple[int, int, str]]:
    """Temporal pairs (a, b, kind) of eval set ``name`` mapped to gallery columns."""
    pairs = getattr(dm, "pairs", {}).get(name) if dm is not None else None
    if not pairs:
        return []
    col = {int(v): i for i, v in enumerate(vid.tolist())}
    out = []
    for p in pairs:
        a, b = p[0], p[1]
        if a in col and b in col:
            out.append((col[a], col[b], p[2] if len(p) > 2 else ""))
    return out


def _first_unique(idx: torch.Tensor) -> torch.Tensor:
    """Positions of the first occurrence of each value, ordered by value."""
    order = torch.argsort(idx, stable=True)
    s = idx[order]
    first = torch.ones_like(s, dtype=torch.bool)
    first[1:] = s[1:] != s[:-1]
    return order[first]


def _to_float(t: TextFeatures) -> TextFeatures:
    return TextFeatures(
        t.sentence.float(),
        None if t.words is None else t.words.float(),
        t.word_mask,
    )


def _to_cpu(f):
    def h(x):
        if x is None:
            return None
        return x.detach().cpu()

    if isinstance(f, VideoFeatures):
        # patch tokens dominate memory (N x T x P x D): keep them in fp16
        return VideoFeatures(
            h(f.frames), h(f.mask), None if f.patches is None else h(f.patches).half()
        )
    return TextFeatures(h(f.sentence), h(f.words), h(f.word_mask))
