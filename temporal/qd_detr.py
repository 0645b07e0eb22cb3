"""QD-DETR (Moon et al., CVPR 2023): Moment-DETR with query-dependent video tokens.

What changes against ``moment_detr.MomentDETR`` (same input projections, TEF, sine positions,
heads' conventions; foreground is class index 0):

* **T2V encoder.** Before self-attention, ``enc_layers`` cross-attention layers let every video
  token (query: token + its sine position) attend to the query's words (keys: words, no position;
  values: words); each is followed by a ReLU-family FFN (PReLU, as the published code builds it).
  The layer's normalisation is the published one (``T2V_FORMS``, ``T2VLayer``); heads trained here
  before 2026-12-08 used a plain post-norm form, which their checkpoints keep. The words are then
  dropped: the self-attention encoder (``enc_layers`` post-norm layers) runs over
  ``[global token; video]`` only, and the decoder attends to video only.
* **Input-adaptive saliency.** A learned global token (with a learned position) is prepended to
  the video; clip i's saliency is ``<W1 m_i, W2 g> / sqrt(d)`` with ``m_i`` the encoder output at
  clip i and ``g`` at the global token.
* **Negative pairs.** In training, the same video is encoded again with the words of another
  sample of the batch (the batch's texts rolled by one), giving ``saliency_scores_neg``; the
  criterion pushes those towards "not salient" and uses them in a rank-aware contrastive loss
  (``moment_loss.MomentCriterion``).
* **Anchor decoder (DAB-DETR style).** Each of the N queries is a learned 2-d anchor (centre,
  width) instead of a free embedding. Per decoder layer: the anchor's sine embedding (d/2 channels
  for the centre, d/2 for the width) gives the query position through an MLP; from the second
  layer on the sine embedding is scaled element-wise by an MLP of the current content
  (``query_scale``); it is modulated by a predicted width ratio (``ref_anchor_head``); cross-
  attention concatenates content and position per head (conditional DETR: queries
  ``[content; sine]``, keys ``[content; position]``), the first layer also adding the projected
  query position to the content. After each layer an MLP refines the anchor in logit space
  (the refined anchor is detached for the next layer). The span head predicts a delta on the
  layer's input anchor: ``sigmoid(MLP(h) + logit(anchor))``.

Attention inside the anchor decoder has no input projections of its own (the layer's
``*_proj`` linears are them), as in the DAB-DETR/QD-DETR code; everything else uses
``nn.MultiheadAttention``. Transformer weights with more than one dimension are Xavier-uniform
initialised (the published code does this after the anchor-refinement MLP's zero init, so only
that MLP's last bias stays zero); every attention output projection's bias starts at zero
(``nn.MultiheadAttention`` does it itself; the anchor decoder's own ``sa_out`` / ``ca_out``, the
published code's attention ``out_proj``, are zeroed here).

Deliberate difference from the published code: it builds the T2V attention mask as
``(video pad x word pad).repeat(nhead, 1, 1)`` (head-major), while ``nn.MultiheadAttention``
expects ``[batch * heads, ...]`` batch-major, so on padded batches a head sees another sample's
mask. Here the words' padding goes in as ``key_padding_mask``, which is what that mask intends
(padded video tokens attend to the words too; they are masked out downstream).
"""

from __future__ import annotations

import math

import torch
from einops import rearrange, repeat
from torch import nn
from video_retrieval.temporal.cheap_dropout import heads_attention
from video_retrieval.temporal.moment_detr import (
    MLP,
    LinearLayer,
    sine_position_embedding,
    temporal_endpoint_features,
)


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """logit(x) with x clamped to [eps, 1 - eps] (DAB-DETR's convention)."""
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def anchor_sine_embedding(anchors: torch.Tensor, dim: int) -> torch.Tensor:
    """[..., 2] anchors (centre, width) in [0, 1] -> [..., dim]: ``dim/2`` sine channels for the
    centre then ``dim/2`` for the width, each interleaved sin/cos at DETR's frequencies
    (``10000 ** (2 floor(k/2) / (dim/2))``) of ``2 pi x``."""
    half = dim // 2
    k = torch.arange(half, device=anchors.device, dtype=torch.float32)
    inv = 10000.0 ** (2 * torch.div(k, 2, rounding_mode="floor") / half)
    parts = []
    for c in range(2):
        p = anchors[..., c : c + 1].float() * (2 * math.pi) / inv
        parts.append(rearrange([p[..., 0::2].sin(), p[..., 1::2].cos()], "sc ... h -> ... (h sc)"))
    return torch.cat(parts, -1)


#: the T2V layer's normalisation: ``published`` (QD-DETR's code, the default for new heads) or
#: ``post_norm`` (the form of heads trained here before 2026-12-08)
T2V_FORMS = ("published", "post_norm")
#: the form of a checkpoint that does not record one (it was written before the choice existed)
LEGACY_T2V_FORM = "post_norm"


class T2VLayer(nn.Module):
    """Video tokens ``v`` attend to the words; residual on the video, PReLU FFN.

    ``published`` (QD-DETR ``T2V_TransformerEncoderLayer.forward_post``): ``x = v + attn``, then
    ``norm2(x + FFN(norm1(x)))``: the FFN reads the normalised ``x`` but its residual adds the
    un-normalised one. ``post_norm``: ``x = norm1(v + attn)``, then ``norm2(x + FFN(x))``.
    """

    def __init__(self, d: int, heads: int, ffn: int, dropout: float, form: str = "published"):
        super().__init__()
        if form not in T2V_FORMS:
            raise ValueError(f"t2v_form must be one of {T2V_FORMS}, not {form!r}")
        self.form = form
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.lin1, self.lin2 = nn.Linear(d, ffn), nn.Linear(ffn, d)
        self.act = nn.PReLU()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.drop, self.drop1, self.drop2 = (nn.Dropout(dropout) for _ in range(3))

    def forward(self, vid, vid_pos, txt, txt_pad):
        att = self.attn(vid + vid_pos, txt, txt, key_padding_mask=txt_pad)[0]
        x = vid + self.drop1(att)
        if self.form == "post_norm":
            x = h = self.norm1(x)
        else:
            h = self.norm1(x)
        return self.norm2(x + self.drop2(self.lin2(self.drop(self.act(self.lin1(h))))))


class SelfLayer(nn.Module):
    """Post-norm self-attention encoder layer (positions on queries and keys), PReLU FFN."""

    def __init__(self, d: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.lin1, self.lin2 = nn.Linear(d, ffn), nn.Linear(ffn, d)
        self.act = nn.PReLU()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.drop, self.drop1, self.drop2 = (nn.Dropout(dropout) for _ in range(3))

    def forward(self, src, pad, pos):
        q = k = src + pos
        src = self.norm1(src + self.drop1(self.attn(q, k, src, key_padding_mask=pad)[0]))
        return self.norm2(src + self.drop2(self.lin2(self.drop(self.act(self.lin1(src))))))


class AnchorDecoderLayer(nn.Module):
    """Conditional cross-attention decoder layer (content and position concatenated per head)."""

    cheap_dropout = False  # set by ``use_cheap_dropout``

    def __init__(self, d: int, heads: int, ffn: int, dropout: float, first: bool):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        lin = lambda: nn.Linear(d, d)  # noqa: E731
        self.sa_qcontent, self.sa_qpos, self.sa_kcontent, self.sa_kpos, self.sa_v = (
            lin() for _ in range(5)
        )
        self.sa_out = nn.Linear(d, d)
        self.ca_qcontent, self.ca_kcontent, self.ca_kpos, self.ca_v = (lin() for _ in range(4))
        self.ca_qpos = lin() if first else None  # only the first layer adds the query position
        self.ca_qpos_sine = lin()
        self.ca_out = nn.Linear(d, d)
        self.lin1, self.lin2 = nn.Linear(d, ffn), nn.Linear(ffn, d)
        self.act = nn.PReLU()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.drop, self.drop1, self.drop2, self.drop3 = (nn.Dropout(dropout) for _ in range(4))

    def forward(self, tgt, memory, mem_pad, mem_pos, query_pos, query_sine):
        p = self.dropout if self.training else 0.0
        q = self.sa_qcontent(tgt) + self.sa_qpos(query_pos)
        k = self.sa_kcontent(tgt) + self.sa_kpos(query_pos)
        sa = heads_attention(q, k, self.sa_v(tgt), self.heads, None, p, self.cheap_dropout)
        tgt = self.norm1(tgt + self.drop1(self.sa_out(sa)))

        q = self.ca_qcontent(tgt)
        k = self.ca_kcontent(memory)
        k_pos = self.ca_kpos(mem_pos)
        if self.ca_qpos is not None:
            q = q + self.ca_qpos(query_pos)
            k = k + k_pos
        sine = self.ca_qpos_sine(query_sine)
        h = self.heads
        q = rearrange([rearrange(q, "b l (h e) -> b l h e", h=h),
                       rearrange(sine, "b l (h e) -> b l h e", h=h)],
                      "two b l h e -> b l (h two e)")  # fmt: skip
        k = rearrange([rearrange(k, "b l (h e) -> b l h e", h=h),
                       rearrange(k_pos, "b l (h e) -> b l h e", h=h)],
                      "two b l h e -> b l (h two e)")  # fmt: skip
        ca = heads_attention(q, k, self.ca_v(memory), h, mem_pad, p, self.cheap_dropout)
        tgt = self.norm2(tgt + self.drop2(self.ca_out(ca)))
        return self.norm3(tgt + self.drop3(self.lin2(self.drop(self.act(self.lin1(tgt))))))


class QDDETR(nn.Module):
    """QD-DETR head; ``forward`` returns the same keys as ``MomentDETR`` plus, in training
    (or with ``negatives=True``), ``saliency_scores_neg`` of the rolled-text pairs."""

    def __init__(
        self,
        v_feat_dim: int,
        t_feat_dim: int,
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
    ):
        super().__init__()
        d = hidden_dim
        self.use_tef, self.aux_loss = use_tef, aux_loss
        self.num_queries, self.hidden_dim = num_queries, d
        vin = v_feat_dim + (2 if use_tef else 0)

        def proj(in_dim):
            dims = [in_dim] + [d] * n_input_proj
            return nn.Sequential(*[
                LinearLayer(a, b, input_dropout, relu=(i < n_input_proj - 1))
                for i, (a, b) in enumerate(zip(dims[:-1], dims[1:]))
            ])  # fmt: skip

        self.input_vid_proj = proj(vin)
        self.input_txt_proj = proj(t_feat_dim)
        n_t2v = enc_layers if t2v_layers is None else t2v_layers
        self.t2v = nn.ModuleList(
            T2VLayer(d, nheads, dim_feedforward, dropout, t2v_form) for _ in range(n_t2v)
        )
        self.encoder = nn.ModuleList(
            SelfLayer(d, nheads, dim_feedforward, dropout) for _ in range(enc_layers)
        )
        self.decoder = nn.ModuleList(
            AnchorDecoderLayer(d, nheads, dim_feedforward, dropout, first=(i == 0))
            for i in range(dec_layers)
        )
        self.decoder_norm = nn.LayerNorm(d)
        self.query_scale = MLP(d, d, d, 2)
        self.ref_point_head = MLP(d, d, d, 2)
        self.ref_anchor_head = MLP(d, d, 1, 2)
        self.anchor_refine = MLP(d, d, 2, 3)
        nn.init.zeros_(self.anchor_refine.layers[-1].weight)
        nn.init.zeros_(self.anchor_refine.layers[-1].bias)
        transformer = [
            self.t2v, self.encoder, self.decoder, self.decoder_norm, self.query_scale,
            self.ref_point_head, self.ref_anchor_head, self.anchor_refine,
        ]  # fmt: skip
        for part in transformer:
            for p in part.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
        for layer in self.decoder:
            nn.init.zeros_(layer.sa_out.bias)
            nn.init.zeros_(layer.ca_out.bias)
        self.query_embed = nn.Embedding(num_queries, 2)  # anchors before the sigmoid
        self.class_embed = nn.Linear(d, 2)
        self.span_embed = MLP(d, d, 2, 3)
        self.saliency_proj1 = nn.Linear(d, d)
        self.saliency_proj2 = nn.Linear(d, d)
        self.global_token = nn.Parameter(torch.randn(d))
        self.global_pos = nn.Parameter(torch.randn(d))

    def encode(self, v, vid_mask, v_pos, t, txt_mask):
        """T2V + self-attention encoder -> (video memory [B,Lv,d], global [B,d])."""
        txt_pad = ~txt_mask
        for layer in self.t2v:
            v = layer(v, v_pos, t, txt_pad)
        b = v.shape[0]
        src = torch.cat([repeat(self.global_token, "d -> b 1 d", b=b), v], 1)
        pos = torch.cat([repeat(self.global_pos, "d -> b 1 d", b=b), v_pos], 1)
        pad = torch.cat([torch.zeros_like(vid_mask[:, :1]), ~vid_mask], 1)
        for layer in self.encoder:
            src = layer(src, pad, pos)
        return src[:, 1:], src[:, 0]

    def saliency(self, memory, glob):
        s = (self.saliency_proj1(memory) * self.saliency_proj2(glob)[:, None]).sum(-1)
        return s / math.sqrt(self.hidden_dim)

    def decode(self, memory, vid_mask, v_pos):
        """Anchor decoder -> (hs [layers,B,N,d], input anchors of each layer [layers,B,N,2])."""
        b, d = memory.shape[0], self.hidden_dim
        anchors = repeat(self.query_embed.weight, "n two -> b n two", b=b).sigmoid()
        tgt = memory.new_zeros(b, self.num_queries, d)
        pad = ~vid_mask
        hs, refs = [], []
        for i, layer in enumerate(self.decoder):
            refs.append(anchors)
            sine = anchor_sine_embedding(anchors, d).to(memory)
            query_pos = self.ref_point_head(sine)
            if i > 0:
                sine = sine * self.query_scale(tgt)
            width_ratio = self.ref_anchor_head(tgt).sigmoid()  # [B,N,1]
            sine = sine * (width_ratio / anchors[..., 1:2])
            tgt = layer(tgt, memory, pad, v_pos, query_pos, sine)
            new = (self.anchor_refine(tgt) + inverse_sigmoid(anchors)).sigmoid()
            anchors = new.detach()
            hs.append(self.decoder_norm(tgt))
        return torch.stack(hs), torch.stack(refs)

    def forward(self, src_vid, src_vid_mask, src_txt, src_txt_mask, negatives=None) -> dict:
        """Same inputs and outputs as ``MomentDETR.forward``; ``negatives`` (default: in training
        with a batch of more than one) adds ``saliency_scores_neg`` [B,Lv]."""
        vid_mask = src_vid_mask.bool()
        txt_mask = src_txt_mask.bool()
        if self.use_tef:
            src_vid = torch.cat([src_vid, temporal_endpoint_features(vid_mask).to(src_vid)], -1)
        v = self.input_vid_proj(src_vid)
        t = self.input_txt_proj(src_txt)
        v_pos = sine_position_embedding(vid_mask, self.hidden_dim).to(v)
        memory, glob = self.encode(v, vid_mask, v_pos, t, txt_mask)
        hs, refs = self.decode(memory, vid_mask, v_pos)
        logits = self.class_embed(hs)
        spans = (self.span_embed(hs) + inverse_sigmoid(refs)).sigmoid()
        out = {
            "pred_logits": logits[-1],
            "pred_spans": spans[-1],
            "saliency_scores": self.saliency(memory, glob),
            "video_mask": vid_mask,
        }
        if negatives is None:
            negatives = self.training and v.shape[0] > 1
        if negatives:
            # every video with the words of the next sample of the batch (rolled by one)
            mem_neg, glob_neg = self.encode(v, vid_mask, v_pos, t.roll(-1, 0), txt_mask.roll(-1, 0))
            out["saliency_scores_neg"] = self.saliency(mem_neg, glob_neg)
        if self.aux_loss:
            out["aux_outputs"] = [
                {"pred_logits": a, "pred_spans": s} for a, s in zip(logits[:-1], spans[:-1])
            ]
        return out
