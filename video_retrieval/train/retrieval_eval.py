"""Evaluation of the retrieval LightningModule: text and video features of the whole val/test set
are cached, gathered across processes (padded gather, de-duplicated by dataset index, since
DistributedSampler pads), and scored block-wise with the aggregator: t2v / v2t R@1/5/10, MdR,
MnR; the transductive dual-softmax (``*_dsl_*``); UCoFiA's Sinkhorn-normalised scores
(``*_sk_t2v_*`` with a bank of training captions, ``*_sk_v2t_*`` with a bank of training
videos); the synthetic world's temporal-pair accuracy. Every rank computes the same numbers from
the same gathered features.
"""

from __future__ import annotations

import torch
from lightning.pytorch.utilities import rank_zero_warn

from video_retrieval.metrics.retrieval import (
    dsl_metrics,
    flatten_metrics,
    retrieval_metrics,
    temporal_pair_accuracy,
)
from video_retrieval.temporal.features import TextFeatures, VideoFeatures


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


def to_float_text(t: TextFeatures) -> TextFeatures:
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


class RetrievalEvaluation:
    """The validation/test half of ``RetrievalModule`` (it provides ``encode_text``,
    ``encode_video``, ``_cached``, ``_world``, ``aggregator`` and ``hparams``)."""

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
                return to_float_text(dm.caption_bank_features(self.hparams.sinkhorn_bank_size))
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
