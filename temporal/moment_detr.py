"""Moment-DETR (Lei et al., NeurIPS 2021): a DETR-style head that turns per-clip video features
and query token features into a set of N scored moments plus per-clip saliency.

Shapes: B batch, Lv clips, Lq query tokens, d hidden width (256), N moment queries (10).

* Input projections: two blocks of [LayerNorm(in) -> Dropout(0.5) -> Linear(in, d) -> ReLU],
  the ReLU omitted in the second block; one stack for video, one for text.
* The video input carries the temporal endpoint feature (TEF) [i/L, (i+1)/L] of clip i of L
  valid clips, appended here from the mask (so training and inference cannot disagree).
* Positions: 1-D sine embedding (DETR, normalised cumulative mask in (0, 2pi]) for video, zeros
  for text; added to attention queries/keys only.
* Transformer: post-norm encoder over [video; text] (2 layers), post-norm decoder (2 layers) with
  N learned query position embeddings, zero target input, a shared final LayerNorm whose output
  of every decoder layer feeds the (shared) heads.
* Heads: class Linear(d, 2) (index 0 = foreground), span MLP d-d-d-2 + sigmoid -> normalised
  (centre, width), saliency Linear(d, 1) over the encoder memory at video positions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn


def temporal_endpoint_features(mask: torch.Tensor) -> torch.Tensor:
    """[B, Lv] bool -> [B, Lv, 2] with [i/L, (i+1)/L] for valid clip i of L, 0 on padding."""
    m = mask.float()
    length = m.sum(1, keepdim=True).clamp(min=1)
    idx = torch.arange(mask.shape[1], device=mask.device, dtype=torch.float32)[None]
    tef = torch.stack([idx / length, (idx + 1) / length], dim=-1)
    return tef * m[..., None]


class LinearLayer(nn.Module):
    """LayerNorm(in) -> Dropout -> Linear(in, out) -> optional ReLU."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.5, relu: bool = True):
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(in_dim, out_dim)
        self.relu = relu

    def forward(self, x):
        x = self.linear(self.dropout(self.norm(x)))
        return F.relu(x) if self.relu else x


class MLP(nn.Module):
    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_layers: int):
        super().__init__()
        dims = [in_dim] + [hidden] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


def sine_position_embedding(mask: torch.Tensor, dim: int, temperature: float = 10000.0):
    """DETR 1-D sine positions: [B, L] bool -> [B, L, dim], channels interleaved sin/cos."""
    x = mask.float().cumsum(1)
    x = x / (x[:, -1:] + 1e-6) * (2 * math.pi)
    k = torch.arange(dim, device=mask.device, dtype=torch.float32)
    inv = temperature ** (2 * torch.div(k, 2, rounding_mode="floor") / dim)
    pos = x[..., None] / inv  # [B, L, dim]
    # channel 2i is sin(pos_2i), channel 2i + 1 is cos(pos_2i+1)
    return rearrange(
        [pos[..., 0::2].sin(), pos[..., 1::2].cos()], "sincos b l half -> b l (half sincos)"
    )


class EncoderLayer(nn.Module):
    def __init__(self, d: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.lin1, self.lin2 = nn.Linear(d, ffn), nn.Linear(ffn, d)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.drop, self.drop1, self.drop2 = (
            nn.Dropout(dropout),
            nn.Dropout(dropout),
            nn.Dropout(dropout),
        )

    def forward(self, src, pad_mask, pos):
        q = k = src + pos
        src = self.norm1(src + self.drop1(self.attn(q, k, src, key_padding_mask=pad_mask)[0]))
        src2 = self.lin2(self.drop(F.relu(self.lin1(src))))
        return self.norm2(src + self.drop2(src2))


class DecoderLayer(nn.Module):
    def __init__(self, d: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.lin1, self.lin2 = nn.Linear(d, ffn), nn.Linear(ffn, d)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)
        self.drop1, self.drop2, self.drop3 = (
            nn.Dropout(dropout),
            nn.Dropout(dropout),
            nn.Dropout(dropout),
        )

    def forward(self, tgt, memory, mem_pad_mask, mem_pos, query_pos):
        q = k = tgt + query_pos
        tgt = self.norm1(tgt + self.drop1(self.self_attn(q, k, tgt)[0]))
        t2 = self.cross_attn(
            tgt + query_pos, memory + mem_pos, memory, key_padding_mask=mem_pad_mask
        )[0]
        tgt = self.norm2(tgt + self.drop2(t2))
        t2 = self.lin2(self.drop(F.relu(self.lin1(tgt))))
        return self.norm3(tgt + self.drop3(t2))


class MomentDETR(nn.Module):
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
    ):
        super().__init__()
        self.use_tef = use_tef
        self.aux_loss = aux_loss
        self.num_queries = num_queries
        self.hidden_dim = hidden_dim
        vin = v_feat_dim + (2 if use_tef else 0)

        def proj(in_dim):
            dims = [in_dim] + [hidden_dim] * n_input_proj
            blocks = [
                LinearLayer(a, b, input_dropout, relu=(i < n_input_proj - 1))
                for i, (a, b) in enumerate(zip(dims[:-1], dims[1:]))
            ]
            return nn.Sequential(*blocks)

        self.input_vid_proj = proj(vin)
        self.input_txt_proj = proj(t_feat_dim)
        self.encoder = nn.ModuleList(
            EncoderLayer(hidden_dim, nheads, dim_feedforward, dropout) for _ in range(enc_layers)
        )
        self.decoder = nn.ModuleList(
            DecoderLayer(hidden_dim, nheads, dim_feedforward, dropout) for _ in range(dec_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        for p in list(self.encoder.parameters()) + list(self.decoder.parameters()):
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.class_embed = nn.Linear(hidden_dim, 2)
        self.span_embed = MLP(hidden_dim, hidden_dim, 2, 3)
        self.saliency_proj = nn.Linear(hidden_dim, 1)

    def forward(self, src_vid, src_vid_mask, src_txt, src_txt_mask) -> dict:
        """src_vid [B,Lv,Dv], src_vid_mask [B,Lv] bool (True = valid), src_txt [B,Lq,Dt],
        src_txt_mask [B,Lq] bool. Returns pred_logits [B,N,2], pred_spans [B,N,2] (cxw in 0..1),
        saliency_scores [B,Lv] (raw), aux_outputs (one dict per earlier decoder layer)."""
        vid_mask = src_vid_mask.bool()
        txt_mask = src_txt_mask.bool()
        if self.use_tef:
            src_vid = torch.cat([src_vid, temporal_endpoint_features(vid_mask).to(src_vid)], -1)
        v = self.input_vid_proj(src_vid)
        t = self.input_txt_proj(src_txt)
        src = torch.cat([v, t], 1)
        mask = torch.cat([vid_mask, txt_mask], 1)
        pos = torch.cat(
            [sine_position_embedding(vid_mask, self.hidden_dim).to(v), torch.zeros_like(t)], 1
        )
        pad = ~mask
        memory = src
        for layer in self.encoder:
            memory = layer(memory, pad, pos)
        query_pos = repeat(self.query_embed.weight, "n d -> b n d", b=src.shape[0])
        tgt = torch.zeros_like(query_pos)
        hs = []
        for layer in self.decoder:
            tgt = layer(tgt, memory, pad, pos, query_pos)
            hs.append(self.decoder_norm(tgt))
        hs = torch.stack(hs)  # [layers, B, N, d]
        logits = self.class_embed(hs)
        spans = self.span_embed(hs).sigmoid()
        lv = src_vid.shape[1]
        saliency = self.saliency_proj(memory[:, :lv]).squeeze(-1)
        out = {
            "pred_logits": logits[-1],
            "pred_spans": spans[-1],
            "saliency_scores": saliency,
            "video_mask": vid_mask,
        }
        if self.aux_loss:
            out["aux_outputs"] = [
                {"pred_logits": a, "pred_spans": b} for a, b in zip(logits[:-1], spans[:-1])
            ]
        return out
