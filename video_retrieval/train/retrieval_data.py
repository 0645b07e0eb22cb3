"""Retrieval data for training: ``RetrievalDataModule`` (the splits of MSR-VTT, DiDeMo, a
``captions.jsonl`` folder or the synthetic world; loaders, hard-negative pair batches, the caption
and video banks of the Sinkhorn evaluation). Datasets, frame reading and collate:
``retrieval_datasets``.

At ``setup`` every video of the splits in use must exist and be non-empty: otherwise training stops
before the first step with the count and the first missing paths (``allow_missing=True`` leaves
those videos and their captions out and logs the count).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from video_retrieval.datasets.captions_jsonl import RetrievalSplit, load_captions_jsonl
from video_retrieval.datasets.didemo import load_didemo
from video_retrieval.datasets.msrvtt import load_msrvtt, load_temporal_pairs
from video_retrieval.errors import UserError
from video_retrieval.train.pair_sampler import PairBatchSampler
from video_retrieval.train.retrieval_datasets import (
    FrameReader,
    RetrievalEvalDataset,
    RetrievalTrainDataset,
    collate_retrieval,
)

log = logging.getLogger(__name__)


DATASETS = ("msrvtt", "didemo", "jsonl", "synth")


# Per dataset: default file names relative to ``root`` (None = not used).
_DEFAULTS = {
    "msrvtt": {
        "data_json": "MSRVTT_data.json",
        "train_file": "MSRVTT_train.9k.csv",
        "val_file": "MSRVTT_JSFUSION_test.csv",  # CLIP4Clip: val == 1k-A test
        "test_file": "MSRVTT_JSFUSION_test.csv",
        "compositional_file": None,
        "temporal_pairs_file": None,
        "train_pairs_file": None,
        "video_dir": "videos",
    },
    "synth": {
        "data_json": "MSRVTT_data.json",
        "train_file": "train.csv",
        "val_file": "test.csv",
        "test_file": "test.csv",
        "compositional_file": "test_compositional.csv",
        "temporal_pairs_file": "temporal_pairs.json",
        "train_pairs_file": "train_pairs.json",
        "video_dir": "videos",
    },
    "didemo": {
        "data_json": None,
        "train_file": "train_data.json",
        "val_file": "val_data.json",
        "test_file": "test_data.json",
        "compositional_file": None,
        "temporal_pairs_file": None,
        "train_pairs_file": None,
        "video_dir": "videos",
    },
    "jsonl": {
        "data_json": None,
        "train_file": "captions.jsonl:train",
        "val_file": "captions.jsonl:val",
        "test_file": "captions.jsonl:test",
        "compositional_file": None,
        "temporal_pairs_file": None,
        "train_pairs_file": None,
        "video_dir": None,
    },
}


def _nonempty_file(path: str) -> bool:
    try:
        return os.path.getsize(path) > 0 and os.path.isfile(path)
    except OSError:
        return False


def bank_sample(n: int, k: int | None, seed: int) -> list[int]:
    """``k`` of ``range(n)`` drawn without replacement (seeded), in increasing order; all if
    ``k`` is None or >= n."""
    if k is None or k >= n:
        return list(range(n))
    return sorted(np.random.default_rng(seed).choice(n, int(k), replace=False).tolist())


class RetrievalDataModule(pl.LightningDataModule):
    """MSR-VTT / DiDeMo / captions.jsonl / synthetic-world retrieval data.

    Args:
        dataset: ``msrvtt`` | ``didemo`` | ``jsonl`` | ``synth``.
        root: dataset folder; file arguments are relative to it (absolute paths also work).
        data_json, train_file, val_file, test_file, compositional_file, temporal_pairs_file,
            train_pairs_file, video_dir: override the per-dataset defaults (``jsonl`` files are
            ``name:split``). Pairs files: ``[{"a": video_id, "b": video_id, ...}]``.
        num_frames: frames per video (uniform segment midpoints); frame_size: square crop side.
        global_batch_size: training batch over all processes (per process = global / world size).
        eval_batch_size: videos per evaluation batch (per process).
        expand_sentences: every (video, caption) pair is a training sample.
        shuffle: shuffle the training set (off: deterministic order, e.g. to compare DDP runs).
        pair_batches: put both videos of each ``train_pairs_file`` pair (hard negatives, e.g. the
            synthetic world's time-reversed pairs) into the same global batch
            (``video_retrieval.train.pair_sampler``); one caption per video per epoch only.
        max_train_videos / max_eval_videos: keep only the first N (tiny debug runs).
        cache_frames: keep decoded frames in memory; frame_cache_dir: npz cache folder.
        symmetric_window: sample between the first and the last frame centres (instead of over
            [0, duration]) so that a time-reversed video gives exactly the reversed frames.
        allow_missing: leave out (and log the count of) videos that are missing or empty at
            setup instead of stopping.
    """

    def __init__(
        self,
        dataset: str = "synth",
        root: str = "data/synth",
        data_json: str | None = None,
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        compositional_file: str | None = None,
        temporal_pairs_file: str | None = None,
        train_pairs_file: str | None = None,
        video_dir: str | None = None,
        num_frames: int = 12,
        frame_size: int = 224,
        global_batch_size: int = 128,
        eval_batch_size: int = 16,
        num_workers: int = 0,
        expand_sentences: bool = False,
        shuffle: bool = True,
        pair_batches: bool = False,
        max_train_videos: int | None = None,
        max_eval_videos: int | None = None,
        cache_frames: bool = False,
        frame_cache_dir: str | None = None,
        decode_backend: str = "auto",
        symmetric_window: bool = False,
        didemo_end: float = 30.0,
        allow_missing: bool = False,
    ):
        super().__init__()
        if dataset not in DATASETS:
            raise UserError(f"unknown dataset {dataset!r}; choose one of {list(DATASETS)}")
        self.save_hyperparameters()
        d = dict(_DEFAULTS[dataset])
        for k in d:
            if locals()[k] is not None:
                d[k] = locals()[k]
        self.files = d
        self.dataset = dataset
        self.root = Path(root)
        self.num_frames = num_frames
        self.frame_size = frame_size
        self.global_batch_size = global_batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.reader = FrameReader(
            num_frames, frame_size, cache_frames, frame_cache_dir, decode_backend, symmetric_window
        )
        self.splits: dict[str, RetrievalSplit] = {}
        self.missing: dict[str, int] = {}  # split -> videos left out (allow_missing)
        self.pairs: dict[str, list[tuple[int, int, str]]] = {}  # (a, b, kind) per eval split
        self._datasets: dict[str, Dataset] = {}

    # -- annotations ---------------------------------------------------------------------------
    def _path(self, name: str | None) -> Path | None:
        if name is None:
            return None
        p = Path(name)
        return p if p.is_absolute() else self.root / p

    def load_split(self, which: str) -> RetrievalSplit:
        """``which``: train | val | test | compositional (cached). An empty split is an error."""
        split = self._read_split(which)
        if not split.videos:
            raise UserError(f"{which} split of {self.dataset!r} at {self.root} is empty")
        return split

    def _read_split(self, which: str) -> RetrievalSplit:
        if which in self.splits:
            return self.splits[which]
        key = {"compositional": "compositional_file"}.get(which, f"{which}_file")
        name = self.files[key]
        if name is None:
            raise UserError(f"dataset {self.dataset!r} has no {which} split")
        vdir = self._path(self.files["video_dir"]) if self.files["video_dir"] else None
        if self.dataset in ("msrvtt", "synth"):
            split = load_msrvtt(self._path(name), vdir, self._path(self.files["data_json"]))
        elif self.dataset == "didemo":
            split = load_didemo(self._path(name), vdir, end=self.hparams.didemo_end)
        else:
            fname, _, sp = name.partition(":")
            split = load_captions_jsonl(self._path(fname), sp or None, vdir)
        split.name = which
        limit = self.hparams.max_train_videos if which == "train" else self.hparams.max_eval_videos
        split = split.subset(limit)
        self.splits[which] = split
        tp = self.files["temporal_pairs_file"]
        if which in ("val", "test") and tp is not None and self._path(tp).is_file():
            self.pairs[which] = load_temporal_pairs(self._path(tp), split, with_kind=True)
        return split

    def has_split(self, which: str) -> bool:
        key = {"compositional": "compositional_file"}.get(which, f"{which}_file")
        name = self.files.get(key)
        if name is None:
            return False
        return self._path(name.partition(":")[0]).is_file()

    def eval_sets(self, stage: str) -> list[str]:
        """Names of the evaluation dataloaders of a stage, in dataloader order."""
        if stage == "validate":
            return ["val"]
        names = ["test"]
        # optional: a world generated without compositional videos has an empty file
        if self.has_split("compositional") and self._read_split("compositional").videos:
            names.append("compositional")
        return names

    def caption_bank(self, max_captions: int | None = None, seed: int = 0) -> list[str]:
        """Training captions, the t2v bank of UCoFiA's Sinkhorn prior: all of them, or a seeded
        random sample of ``max_captions`` in file order (not the first N, which on MSR-VTT would
        be the captions of the first few hundred videos)."""
        caps = self.load_split("train").captions
        return [caps[i] for i in bank_sample(len(caps), max_captions, seed)]

    def video_bank_loader(self, max_videos: int | None = None, seed: int = 0) -> DataLoader:
        """Training videos (all, or a seeded random sample), the v2t Sinkhorn bank, as an
        evaluation loader (``collate_retrieval`` batches; undecodable videos are dropped)."""
        split = self.load_split("train")
        keep = bank_sample(len(split.videos), max_videos, seed)
        bank = RetrievalSplit([split.videos[i] for i in keep], name="train_bank")
        return DataLoader(
            RetrievalEvalDataset(bank, self.reader),
            batch_size=self.eval_batch_size,
            shuffle=False,
            **self._loader_kwargs(),
        )

    def check_videos(self, which: str) -> None:
        """Stop (``UserError``: count + first paths) when videos of a split are missing or empty;
        with ``allow_missing`` drop them and their captions instead (count logged)."""
        if which in self.missing:
            return
        split = self.load_split(which)
        bad = [i for i, v in enumerate(split.videos) if not _nonempty_file(v.path)]
        self.missing[which] = len(bad)
        if not bad:
            return
        first = ", ".join(split.videos[i].path for i in bad[:3])
        if not self.hparams.allow_missing:
            raise UserError(
                f"{len(bad)} of {len(split.videos)} videos of the {which} split are missing or "
                f"empty (first: {first}); check the folder with `vr data check {self.dataset} "
                f"{self.root}`, or train without them: --data.init_args.allow_missing true"
            )
        keep = set(range(len(split.videos))) - set(bad)
        if not keep:
            raise UserError(f"every video of the {which} split is missing (first: {first})")
        self.splits[which] = split.without(bad)
        self.pairs.pop(which, None)  # pair indices refer to the full split
        tp = self.files["temporal_pairs_file"]
        if which in ("val", "test") and tp is not None and self._path(tp).is_file():
            self.pairs[which] = load_temporal_pairs(
                self._path(tp), self.splits[which], with_kind=True
            )
        log.warning(
            "%s split: %d of %d videos missing or empty, left out with their captions "
            "(allow_missing; first: %s)",
            which,
            len(bad),
            len(split.videos),
            first,
        )

    # -- Lightning hooks -----------------------------------------------------------------------
    def setup(self, stage: str | None = None):
        names = []
        if stage in (None, "fit"):
            names.append("train")
        if stage in (None, "fit", "validate"):
            names.append("val")
        if stage in (None, "test", "predict"):
            names += self.eval_sets("test")
        for n in names:
            self.load_split(n)
            self.check_videos(n)

    def per_process_batch(self) -> int:
        world = self.trainer.world_size if self.trainer is not None else 1
        if self.global_batch_size % world:
            raise UserError(
                f"global_batch_size {self.global_batch_size} is not divisible by the "
                f"world size {world}"
            )
        return self.global_batch_size // world

    def _loader_kwargs(self) -> dict:
        kw = {"num_workers": self.num_workers, "collate_fn": collate_retrieval}
        if self.num_workers > 0:
            kw["persistent_workers"] = True
        return kw

    def train_dataloader(self):
        if "train" not in self._datasets:
            self._datasets["train"] = RetrievalTrainDataset(
                self.load_split("train"), self.reader, self.hparams.expand_sentences
            )
        ds = self._datasets["train"]
        bs = self.per_process_batch()
        world = self.trainer.world_size if self.trainer is not None else 1
        drop_last = len(ds) >= bs * world
        if self.hparams.pair_batches and self.hparams.shuffle:
            rank = self.trainer.global_rank if self.trainer is not None else 0
            sampler = PairBatchSampler(
                ds, self._train_item_pairs(ds), self.global_batch_size, world, rank, self._seed()
            )
            return DataLoader(
                ds, batch_size=bs, sampler=sampler, drop_last=drop_last, **self._loader_kwargs()
            )
        if world > 1 and not self.hparams.shuffle:
            # Lightning always installs a shuffling DistributedSampler for training; an explicit
            # one keeps the order, so that rank r's step-s batch is items r, r+W, ... of the
            # single-process step-s batch (same global batches, as the DDP test requires).
            sampler = DistributedSampler(
                ds, num_replicas=world, rank=self.trainer.global_rank, shuffle=False
            )
            return DataLoader(
                ds, batch_size=bs, sampler=sampler, drop_last=drop_last, **self._loader_kwargs()
            )
        return DataLoader(
            ds,
            batch_size=bs,
            shuffle=self.hparams.shuffle,
            drop_last=drop_last,
            **self._loader_kwargs(),
        )

    def _train_item_pairs(self, ds: RetrievalTrainDataset) -> list[tuple[int, int]]:
        if self.hparams.expand_sentences:
            raise UserError("pair_batches needs expand_sentences=false (one item per video)")
        name = self.files.get("train_pairs_file")
        path = self._path(name)
        if path is None or not path.is_file():
            raise UserError(
                f"pair_batches: no train pairs file ({path or 'set data.train_pairs_file'})"
            )
        item = {v: i for i, v in enumerate(ds.with_caps)}
        pairs = load_temporal_pairs(path, ds.split)
        return [(item[a], item[b]) for a, b in pairs if a in item and b in item]

    @staticmethod
    def _seed() -> int:
        return int(os.environ.get("PL_GLOBAL_SEED", 0))

    def _eval_loader(self, which: str):
        if which not in self._datasets:
            self._datasets[which] = RetrievalEvalDataset(self.load_split(which), self.reader)
        return DataLoader(
            self._datasets[which],
            batch_size=self.eval_batch_size,
            shuffle=False,
            **self._loader_kwargs(),
        )

    def val_dataloader(self):
        return self._eval_loader("val")

    def test_dataloader(self):
        return [self._eval_loader(n) for n in self.eval_sets("test")]

    def predict_dataloader(self):
        return self._eval_loader("test")
