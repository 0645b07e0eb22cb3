"""Feature containers passed between encoders, aggregators, training, indexing and search.

Shapes use B for batch, T frames, P patch tokens per frame, L words, D joint embedding width.
Features are *not* assumed L2-normalised; every aggregator normalises what its method normalises.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class VideoFeatures:
    frames: torch.Tensor  # [B, T, D] frame CLS embeddings in the joint space
    mask: torch.Tensor  # [B, T] bool, False for padding frames
    patches: torch.Tensor | None = None  # [B, T, P, D] projected patch tokens (CLS excluded)

    def __len__(self) -> int:
        return self.frames.shape[0]

    def to(self, device) -> VideoFeatures:
        return VideoFeatures(
            self.frames.to(device),
            self.mask.to(device),
            None if self.patches is None else self.patches.to(device),
        )

    def __getitem__(self, idx) -> VideoFeatures:
        return VideoFeatures(
            self.frames[idx], self.mask[idx], None if self.patches is None else self.patches[idx]
        )


@dataclass
class TextFeatures:
    sentence: torch.Tensor  # [B, D] sentence (EOT) embedding in the joint space
    words: torch.Tensor | None = None  # [B, L, D] projected word tokens
    word_mask: torch.Tensor | None = None  # [B, L] bool, True for real tokens (SOT..EOT)

    def __len__(self) -> int:
        return self.sentence.shape[0]

    def to(self, device) -> TextFeatures:
        return TextFeatures(
            self.sentence.to(device),
            None if self.words is None else self.words.to(device),
            None if self.word_mask is None else self.word_mask.to(device),
        )

    def __getitem__(self, idx) -> TextFeatures:
        return TextFeatures(
            self.sentence[idx],
            None if self.words is None else self.words[idx],
            None if self.word_mask is None else self.word_mask[idx],
        )
