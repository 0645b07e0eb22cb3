"""UCoFiA: unified coarse-to-fine alignment (Wang et al., ICCV 2023; refs §2).

Three levels, each a [N_t, N_v] matrix (``level_similarities``):

* ``video_sentence``: s · (ŝ W_g)(v̂ W_g')ᵀ, v̂ the CLIP4Clip seqTransf video vector (this class
  *is* a ``SeqTransformer``: same frame position embeddings, transformer and ``init_from_clip``),
  W_g, W_g' D x D identity-initialised.
* ``frame_sentence``: s · ISA_{W_F}(ŝ · f̂_i) over the valid raw (L2-normalised) frame features,
  W_F max_frames x max_frames.
* ``patch_word``: A[t,w,v,p] = (ŵ_{t,w} W_l)(p_{v,p} W_l')ᵀ between L2-normalised words and the
  (un-normalised, as in the code) selected patch tokens p (per frame CLS + top-k patches,
  ``PatchSelector``); word-level = ISA over words (W max_words²) then ISA over patches
  (pixel_mat_weight2); patch-level = ISA over patches (pixel_mat_weight, (T(k+1))²) then ISA over
  words (word_mat_weight2); S_pw = mean of the two. No logit scale on this level.

``similarity`` (training logits) = mean of the three. For test-time SK normalisation, apply
``sinkhorn.apply_sinkhorn`` to each entry of ``level_similarities`` (with the matching bank
level) and average the results (refs §2.4).

Deviations from the reference code (deliberate): text padding, padded frames and the patches of
padded frames are masked in every ISA (the reference uses all 32 word positions and every frame);
patch selection is deterministic at evaluation; the parameters the reference declares but never
uses (word_logit_weight, frame_mat_weight(2), word_mat_weight_for_pixel) are not created.
``patch_projection=False`` gives the eval-tree variant without W_l' (refs §2.3 note).
The patch-word level is computed in chunks of at most ``chunk_elems`` elements of A.
"""

from __future__ import annotations

import einops
import torch
from einops import rearrange
from torch import nn
from video_retrieval.temporal.base import l2norm, normalized_masked_mean, zero_padding
from video_retrieval.temporal.features import TextFeatures, VideoFeatures
from video_retrieval.temporal.isa import ISA_TAU, isa
from video_retrieval.temporal.patch_select import PatchSelector
from video_retrieval.temporal.seq_transformer import SeqTransformer

LEVELS = ("video_sentence", "frame_sentence", "patch_word")


class UCoFiA(SeqTransformer):
    name = "ucofia"
    query_dependent = True
    needs_words = True
    needs_patches = True

    def __init__(
        self,
        embed_dim: int,
        max_frames: int = 12,
        max_words: int = 32,
        topk: int = 3,
        num_samples: int = 500,
        sigma: float = 0.05,
        estimator: str = "berthet",
        tau: float = ISA_TAU,
        patch_projection: bool = True,
        chunk_elems: int = 1 << 22,
        **kwargs,
    ):
        super().__init__(embed_dim, max_frames, **kwargs)
        d = embed_dim
        self.max_words, self.topk, self.tau = int(max_words), int(topk), float(tau)
        self.chunk_elems = int(chunk_elems)
        n_tok = self.max_frames * (self.topk + 1)
        self.global_mat_weight = nn.Parameter(torch.eye(d))  # W_g (sentence side)
        self.global_mat_weight_1 = nn.Parameter(torch.eye(d))  # W_g' (video side)
        self.frame_logit_weight = nn.Parameter(torch.eye(self.max_frames))  # W_F
        self.local_mat_weight = nn.Parameter(torch.eye(d))  # W_l (word side)
        self.local_mat_weight1 = nn.Parameter(torch.eye(d)) if patch_projection else None  # W_l'
        self.word_mat_weight = nn.Parameter(torch.eye(self.max_words))
        self.word_mat_weight2 = nn.Parameter(torch.eye(self.max_words))
        self.pixel_mat_weight = nn.Parameter(torch.eye(n_tok))
        self.pixel_mat_weight2 = nn.Parameter(torch.eye(n_tok))
        self.visual_token_selector = PatchSelector(d, topk, num_samples, sigma, estimator)

    # -- embeddings ------------------------------------------------------------------------------
    def embed_video(self, video: VideoFeatures) -> torch.Tensor:
        raise NotImplementedError(
            "ucofia is query-dependent; use similarity() or coarse_video_embedding() for a first stage"
        )

    def video_vector(self, video: VideoFeatures) -> torch.Tensor:
        """v̂ [N_v, D]: seqTransf output, normalise -> masked mean -> normalise."""
        return normalized_masked_mean(self.temporal(video.frames, video.mask), video.mask)

    def coarse_text_embedding(self, text: TextFeatures) -> torch.Tensor:
        """ŝ W_g [N_t, D] (not renormalised): video_sentence = scale * this @ coarse_video.T."""
        return self.embed_text(text) @ self.global_mat_weight

    def coarse_video_embedding(self, video: VideoFeatures) -> torch.Tensor:
        """v̂ W_g' [N_v, D] (not renormalised), query-independent: usable as an ANN first stage."""
        return self.video_vector(video) @ self.global_mat_weight_1

    def _words(self, text: TextFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        if text.words is None:
            raise ValueError(
                "ucofia needs word features (TextFeatures.words); encode text with return_words=True"
            )
        words = text.words
        mask = text.word_mask
        if mask is None:
            mask = torch.ones(words.shape[:2], dtype=torch.bool, device=words.device)
        mask = mask.bool()
        if words.shape[1] > self.max_words:
            if mask[:, self.max_words :].any():
                raise ValueError(
                    f"captions longer than max_words={self.max_words} tokens; truncate at tokenisation"
                )
            words, mask = words[:, : self.max_words], mask[:, : self.max_words]
        return words, mask

    def select_patches(self, video: VideoFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        """[N_v, T (k+1), D] tokens (CLS + top-k per frame) and their mask."""
        if video.patches is None:
            raise ValueError(
                "ucofia needs patch features (VideoFeatures.patches); encode with return_patches=True"
            )
        if video.frames.shape[1] > self.max_frames:
            raise ValueError(f"{video.frames.shape[1]} frames > max_frames={self.max_frames}")
        return self.visual_token_selector(video.frames, video.patches, video.mask)

    # -- levels --------------------------------------------------------------------------------------
    def patch_word(
        self,
        words: torch.Tensor,
        word_mask: torch.Tensor,
        tokens: torch.Tensor,
        token_mask: torch.Tensor,
    ) -> torch.Tensor:
        """S_pw [N_t, N_v] from words [N_t, L, D] (any scale) and patch tokens [N_v, P, D]."""
        wq = l2norm(zero_padding(words, word_mask)) @ self.local_mat_weight
        pk = zero_padding(tokens, token_mask)
        if self.local_mat_weight1 is not None:
            pk = pk @ self.local_mat_weight1
        nt, L, _ = wq.shape
        nv, P, _ = pk.shape
        nv_c = max(1, min(nv, self.chunk_elems // max(1, L * P)))
        nt_c = max(1, self.chunk_elems // max(1, L * nv_c * P))
        rows = []
        for i in range(0, nt, nt_c):
            w, wm = wq[i : i + nt_c], word_mask[i : i + nt_c]
            cols = []
            for j in range(0, nv, nv_c):
                p, pm = pk[j : j + nv_c], token_mask[j : j + nv_c]
                A = einops.einsum(w, p, "t word d, v patch d -> t word v patch")
                # word level: ISA over the words of each (text, video, patch), then over patches
                word_level = isa(
                    rearrange(A, "t word v patch -> t v patch word"),
                    self.word_mat_weight,
                    rearrange(wm, "t word -> t 1 1 word"),
                    self.tau,
                )  # [t, v, patch]
                s2p = isa(
                    word_level,
                    self.pixel_mat_weight2,
                    rearrange(pm, "v patch -> 1 v patch"),
                    self.tau,
                )  # [t, v]
                # patch level: ISA over the patches of each (text, word, video), then over words
                patch_level = isa(
                    A, self.pixel_mat_weight, rearrange(pm, "v patch -> 1 1 v patch"), self.tau
                )  # [t, word, v]
                v2w = isa(
                    rearrange(patch_level, "t word v -> t v word"),
                    self.word_mat_weight2,
                    rearrange(wm, "t word -> t 1 word"),
                    self.tau,
                )  # [t, v]
                cols.append((s2p + v2w) / 2)
            rows.append(torch.cat(cols, dim=1))
        return torch.cat(rows, dim=0)

    def level_similarities(
        self, text: TextFeatures, video: VideoFeatures
    ) -> dict[str, torch.Tensor]:
        """{"video_sentence", "frame_sentence", "patch_word"} -> [N_t, N_v] each (the first two
        include the logit scale, the third has none, as in the reference)."""
        scale = self.scale()
        s = self.embed_text(text)
        vs = scale * self.coarse_text_embedding(text) @ self.coarse_video_embedding(video).t()
        f = l2norm(zero_padding(video.frames, video.mask))
        x = einops.einsum(s, f, "text d, video frame d -> text video frame")
        fs = scale * isa(x, self.frame_logit_weight, video.mask[None], self.tau)
        words, word_mask = self._words(text)
        tokens, token_mask = self.select_patches(video)
        pw = self.patch_word(words, word_mask, tokens, token_mask)
        return {"video_sentence": vs, "frame_sentence": fs, "patch_word": pw}

    def similarity(self, text: TextFeatures, video: VideoFeatures) -> torch.Tensor:
        levels = self.level_similarities(text, video)
        return sum(levels[k] for k in LEVELS) / len(LEVELS)
