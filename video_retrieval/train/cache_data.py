"""Inputs for ``vr cache`` (video lists, captions.jsonl) and torch datasets over a FeatureCache.

Training (frozen backbone): :class:`CachedPairDataset` has one item per video; each time a video is
drawn one of its captions is sampled at random (MSR-VTT training practice), so an epoch sees every
video once. Evaluation: :class:`CachedCaptionDataset` has one item per caption (all captions, in
order). Both yield the same batch from their ``collate``::

    {"video": VideoFeatures (fp32), "text": TextFeatures (fp32),
     "video_index": LongTensor [B] (cache video index), "text_index": LongTensor [B] (cache caption index)}

For evaluation in the layout of ``retrieval_data.collate_retrieval`` (one item per video with all
its captions) use :class:`CachedVideoCaptionsDataset`: its batches add ``caption_video``
(LongTensor [N_captions], row of each caption's video in the batch) and ``text``/``text_index``
hold every caption of the batch's videos. :class:`CachedRetrievalDataModule` wires train/val/test
caches into Lightning.

Videos whose decoding failed (manifest ``failures``) are left out, with their captions, unless
``include_failed=True`` (their features are fully masked).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from video_retrieval.errors import UserError
from video_retrieval.train.cache_reader import FeatureCache


class _CacheBatches(Dataset):
    def __init__(self, cache: FeatureCache | str | os.PathLike, words=None, patches=None):
        self.cache = cache if isinstance(cache, FeatureCache) else FeatureCache.open(cache)
        self.words = self.cache.has_words if words is None else bool(words)
        self.patches = self.cache.has_patches if patches is None else bool(patches)

    def collate(self, items: list[dict]) -> dict:
        """Gather the batch's features from the memmaps in one read per array."""
        vi = torch.as_tensor([it["video_index"] for it in items], dtype=torch.long)
        ti = torch.as_tensor([it["text_index"] for it in items], dtype=torch.long)
        return {
            "video": self.cache.video_features(vi, patches=self.patches),
            "text": self.cache.text_features(ti, words=self.words),
            "video_index": vi,
            "text_index": ti,
        }


class CachedPairDataset(_CacheBatches):
    """One item per video (that has a caption); each access samples one of its captions at
    random with torch's RNG (seeded per DataLoader worker and epoch by torch)."""

    def __init__(
        self,
        cache,
        split: str | None = None,
        video_indices=None,
        words: bool | None = None,
        patches: bool | None = None,
        include_failed: bool = False,
        generator: torch.Generator | None = None,
    ):
        super().__init__(cache, words, patches)
        if video_indices is None:
            video_indices = self.cache.video_indices(split, include_failed=include_failed)
        caps = self.cache.video_captions
        allowed = set(self.cache.text_indices(split, include_failed=True).tolist())
        self.video_ids = []
        self.caption_choices = []
        for v in np.asarray(video_indices, dtype=np.int64).tolist():
            choices = [j for j in caps[v] if j in allowed]
            if choices:
                self.video_ids.append(int(v))
                self.caption_choices.append(choices)
        if not self.video_ids:
            raise UserError(
                f"{self.cache.path}: no captioned videos"
                + (f" in split {split!r}" if split else "")
            )
        self.generator = generator

    def __len__(self) -> int:
        return len(self.video_ids)

    def __getitem__(self, i: int) -> dict:
        choices = self.caption_choices[i]
        k = (
            int(torch.randint(len(choices), (1,), generator=self.generator))
            if len(choices) > 1
            else 0
        )
        return {"video_index": self.video_ids[i], "text_index": choices[k]}


class CachedCaptionDataset(_CacheBatches):
    """One item per caption (every caption, in cache order): for evaluation. Videos repeat when
    they have several captions; deduplicate by ``video_index`` to build the video side."""

    def __init__(
        self,
        cache,
        split: str | None = None,
        text_indices=None,
        words: bool | None = None,
        patches: bool | None = None,
        include_failed: bool = False,
    ):
        super().__init__(cache, words, patches)
        if text_indices is None:
            text_indices = self.cache.text_indices(split, include_failed=include_failed)
        self.text_ids = np.asarray(text_indices, dtype=np.int64).tolist()
        self.t2v = self.cache.text_to_video.tolist()

    def __len__(self) -> int:
        return len(self.text_ids)

    def __getitem__(self, i: int) -> dict:
        t = self.text_ids[i]
        return {"video_index": self.t2v[t], "text_index": t}


class CachedVideoCaptionsDataset(_CacheBatches):
    """One item per video with *all* its captions (evaluation, video side read once)."""

    def __init__(
        self,
        cache,
        split: str | None = None,
        video_indices=None,
        words: bool | None = None,
        patches: bool | None = None,
        include_failed: bool = False,
    ):
        super().__init__(cache, words, patches)
        if video_indices is None:
            video_indices = self.cache.video_indices(split, include_failed=include_failed)
        allowed = set(self.cache.text_indices(split, include_failed=include_failed).tolist())
        caps = self.cache.video_captions
        self.items = []
        for v in np.asarray(video_indices, dtype=np.int64).tolist():
            self.items.append((int(v), [j for j in caps[v] if j in allowed]))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        v, caps = self.items[i]
        return {"video_index": v, "text_indices": caps}

    def collate(self, items: list[dict]) -> dict:
        vi = torch.as_tensor([it["video_index"] for it in items], dtype=torch.long)
        ti = torch.as_tensor([j for it in items for j in it["text_indices"]], dtype=torch.long)
        rows = torch.as_tensor(
            [b for b, it in enumerate(items) for _ in it["text_indices"]], dtype=torch.long
        )
        return {
            "video": self.cache.video_features(vi, patches=self.patches),
            "text": self.cache.text_features(ti, words=self.words),
            "video_index": vi,
            "text_index": ti,
            "caption_video": rows,
        }


def pair_loader(
    cache,
    batch_size: int = 64,
    shuffle: bool = True,
    num_workers: int = 0,
    drop_last: bool = False,
    **kwargs,
) -> DataLoader:
    """Training loader: shuffled videos, one random caption each."""
    ds = CachedPairDataset(cache, **kwargs)
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        drop_last=drop_last,
        collate_fn=ds.collate,
    )


def caption_loader(cache, batch_size: int = 256, num_workers: int = 0, **kwargs) -> DataLoader:
    """Evaluation loader over all captions, in order (not shuffled)."""
    ds = CachedCaptionDataset(cache, **kwargs)
    return DataLoader(
        ds, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=ds.collate
    )


def eval_arrays(cache: FeatureCache, split: str | None = None, words=None, patches=None):
    """Everything a retrieval evaluation needs at once: ``(text, video, text_to_video_local,
    video_indices, text_indices)`` where ``text_to_video_local[j]`` indexes the returned videos."""
    tidx = cache.text_indices(split)
    if len(tidx) == 0:
        raise UserError(
            f"{cache.path}: no captions to evaluate" + (f" in split {split!r}" if split else "")
        )
    t2v = cache.text_to_video.numpy()[tidx]
    vidx, local = np.unique(t2v, return_inverse=True)
    return (
        cache.text_features(tidx, words=words),
        cache.video_features(vidx, patches=patches),
        torch.from_numpy(local.astype(np.int64)),
        torch.from_numpy(vidx),
        torch.from_numpy(tidx),
    )


try:
    import lightning.pytorch as _pl

    _DataModuleBase = _pl.LightningDataModule
except ImportError:  # pragma: no cover - lightning is a dependency
    _DataModuleBase = object


class CachedRetrievalDataModule(_DataModuleBase):
    """Frozen-backbone training from feature caches (one cache per split, built by ``vr cache``).

    ``train_cache`` / ``val_cache`` / ``test_cache``: cache folders (``test_cache`` defaults to
    ``val_cache``); ``*_split``: optional split label inside a cache built from a multi-split
    captions.jsonl. Training batches: :class:`CachedPairDataset` (one random caption per video,
    per-process batch = ``global_batch_size`` / world size), or with ``expand_sentences`` every
    (video, caption) pair (:class:`CachedCaptionDataset`, CLIP4Clip's
    ``--expand_msrvtt_sentences``); evaluation batches:
    :class:`CachedVideoCaptionsDataset`. ``words`` / ``patches``: load word / patch features
    (None: whatever the cache holds; set them from ``aggregator.needs_words/needs_patches``).
    Call :meth:`check_encoder` with the model's encoder to refuse caches of another model.
    """

    def __init__(
        self,
        train_cache: str | None = None,
        val_cache: str | None = None,
        test_cache: str | None = None,
        train_split: str | None = None,
        val_split: str | None = None,
        test_split: str | None = None,
        global_batch_size: int = 128,
        eval_batch_size: int = 64,
        num_workers: int = 0,
        words: bool | None = None,
        patches: bool | None = None,
        shuffle: bool = True,
        expand_sentences: bool = False,
    ):
        super().__init__()
        self.expand_sentences = bool(expand_sentences)
        self.paths = {"train": train_cache, "val": val_cache, "test": test_cache or val_cache}
        self.split_names = {"train": train_split, "val": val_split, "test": test_split}
        self.global_batch_size = int(global_batch_size)
        self.eval_batch_size = int(eval_batch_size)
        self.num_workers = int(num_workers)
        self.words, self.patches, self.shuffle = words, patches, shuffle
        self.caches: dict[str, FeatureCache] = {}

    def cache(self, which: str) -> FeatureCache:
        if which not in self.caches:
            path = self.paths.get(which)
            if path is None:
                raise UserError(f"no {which} feature cache given (--data.{which}_cache DIR)")
            self.caches[which] = FeatureCache.open(path)
        return self.caches[which]

    def check_encoder(self, encoder) -> None:
        """UserError unless every configured cache was built by ``encoder``."""
        for which, path in self.paths.items():
            if path is not None:
                self.cache(which).check_fingerprint(encoder)

    def setup(self, stage: str | None = None):
        if stage in (None, "fit"):
            self.cache("train")
        if stage in (None, "fit", "validate") and self.paths["val"] is not None:
            self.cache("val")
        if stage in (None, "test", "predict"):
            self.cache("test")

    def per_process_batch(self) -> int:
        trainer = getattr(self, "trainer", None)
        world = trainer.world_size if trainer is not None else 1
        if self.global_batch_size % world:
            raise UserError(
                f"global_batch_size {self.global_batch_size} is not divisible by world size {world}"
            )
        return self.global_batch_size // world

    def train_dataloader(self) -> DataLoader:
        kind = CachedCaptionDataset if self.expand_sentences else CachedPairDataset
        ds = kind(
            self.cache("train"),
            split=self.split_names["train"],
            words=self.words,
            patches=self.patches,
        )
        return DataLoader(
            ds,
            batch_size=self.per_process_batch(),
            shuffle=self.shuffle,
            drop_last=True,
            num_workers=self.num_workers,
            collate_fn=ds.collate,
            persistent_workers=self.num_workers > 0,
        )

    def _eval_loader(self, which: str) -> DataLoader:
        ds = CachedVideoCaptionsDataset(
            self.cache(which), split=self.split_names[which], words=self.words, patches=self.patches
        )
        return DataLoader(
            ds,
            batch_size=self.eval_batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=ds.collate,
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def eval_sets(self, stage: str) -> list[str]:
        """Names of the evaluation dataloaders of a stage (one cache each)."""
        return ["val"] if stage == "validate" else ["test"]

    def _bank_text_indices(self, max_captions: int | None, seed: int) -> np.ndarray:
        from video_retrieval.train.retrieval_data import bank_sample

        idx = self.cache("train").text_indices(self.split_names["train"])
        return idx[bank_sample(len(idx), max_captions, seed)]

    def caption_bank(self, max_captions: int | None = None, seed: int = 0) -> list[str]:
        """Training captions (UCoFiA's t2v Sinkhorn bank; a seeded random sample), as text."""
        c = self.cache("train")
        return [c.captions[j] for j in self._bank_text_indices(max_captions, seed).tolist()]

    def caption_bank_features(self, max_captions: int | None = None, seed: int = 0):
        """The same bank as cached ``TextFeatures`` (no text encoding needed)."""
        idx = self._bank_text_indices(max_captions, seed)
        return self.cache("train").text_features(idx, words=self.words)

    def video_bank_loader(self, max_videos: int | None = None, seed: int = 0) -> DataLoader:
        """Training videos (UCoFiA's v2t Sinkhorn bank; a seeded random sample) as cached
        evaluation batches."""
        from video_retrieval.train.retrieval_data import bank_sample

        c = self.cache("train")
        vidx = c.video_indices(self.split_names["train"])
        vidx = vidx[bank_sample(len(vidx), max_videos, seed)]
        ds = CachedVideoCaptionsDataset(
            c, split=self.split_names["train"], video_indices=vidx, words=self.words,
            patches=self.patches,
        )  # fmt: skip
        return DataLoader(ds, batch_size=self.eval_batch_size, shuffle=False, collate_fn=ds.collate)
