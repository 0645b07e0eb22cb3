"""Retrieval data: frame sampling via ``load_frames``, datasets, collate, LightningDataModule.

Training samples are one video with one caption: a random caption of the video each epoch
(CLIP4Clip's sampling *without* ``--expand_msrvtt_sentences``: ~9k samples per MSR-VTT epoch), or
every (video, caption) pair with ``expand_sentences`` (CLIP4Clip's published MSR-VTT command and
UCoFiA's ``train_msrvtt.sh``: 180k pairs per epoch; the ``configs/msrvtt_*.yaml`` recipes).
Evaluation samples are one video with *all* its captions, so text and video features are encoded
once each.

At ``setup`` every video of the splits in use must exist and be non-empty: otherwise training stops
before the first step with the count and the first missing paths (``allow_missing=True`` leaves
those videos and their captions out and logs the count). A video that is there but cannot be
decoded never becomes a zero tensor: it is logged, recorded (path, reason) in
``dataset.failures`` and in the batch's ``"failed"`` list, and then
- in training, another random video is drawn instead (the batch keeps its size, which
  all-gathering across processes needs);
- in evaluation, the video and its captions are dropped from the batch (collate filters ``None``).

Frames are decoded once per (path, window, frames, size) when ``cache_frames`` is on (in-memory,
per process) and/or ``frame_cache_dir`` is set (``.npz`` files shared between runs/processes).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from video_retrieval.atomic import atomic_savez
from video_retrieval.datasets.captions_jsonl import RetrievalSplit, load_captions_jsonl
from video_retrieval.datasets.didemo import load_didemo
from video_retrieval.datasets.msrvtt import load_msrvtt, load_temporal_pairs
from video_retrieval.errors import UserError
from video_retrieval.train.pair_sampler import PairBatchSampler

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


def center_crop_square(pixels: np.ndarray, size: int) -> np.ndarray:
    """[T,H,W,3] -> [T,size,size,3]: centre crop the short side's square, resize if needed."""
    t, h, w, _ = pixels.shape
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    out = pixels[:, y : y + s, x : x + s]
    if s != size:
        ten = torch.from_numpy(np.ascontiguousarray(out)).permute(0, 3, 1, 2).float()
        ten = torch.nn.functional.interpolate(
            ten, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        out = ten.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return np.ascontiguousarray(out)


class FrameReader:
    """``load_frames`` + centre crop, with optional in-memory and on-disk (npz) caches."""

    def __init__(
        self,
        num_frames: int,
        frame_size: int,
        cache_frames: bool = False,
        cache_dir: str | None = None,
        backend: str = "auto",
        symmetric_window: bool = False,
    ):
        self.symmetric_window = symmetric_window
        self.num_frames = int(num_frames)
        self.frame_size = int(frame_size)
        self.cache_frames = cache_frames
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.backend = backend
        self._mem: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def _disk_key(self, path: str, start, end) -> Path:
        st = os.stat(path)
        key = f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{start}|{end}|"
        key += f"{self.symmetric_window}|"
        key += f"{self.num_frames}|{self.frame_size}"
        return self.cache_dir / (hashlib.sha1(key.encode()).hexdigest()[:24] + ".npz")

    def read(self, path: str, start=None, end=None) -> tuple[np.ndarray, np.ndarray]:
        """(pixels uint8 [T,S,S,3], mask bool [T]); raises on a missing/undecodable video."""
        key = (path, start, end)
        if key in self._mem:
            return self._mem[key]
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such video file: {path}")
        disk = self._disk_key(path, start, end) if self.cache_dir else None
        if disk is not None and disk.is_file():
            with np.load(disk) as z:
                pixels, mask = z["pixels"], z["mask"]
        else:
            from video_retrieval.media.decode import load_frames, probe_video

            if self.symmetric_window and start is None and end is None:
                # sample over [first frame centre, last frame centre]: segment midpoints are then
                # symmetric under time reversal (a reversed video yields the reversed frames)
                info = probe_video(path)
                half = 0.5 / info.fps if info.fps > 0 else 0.0
                if info.duration > 2 * half:
                    start, end = half, info.duration - half
            fr = load_frames(
                path,
                num_frames=self.num_frames,
                start=start,
                end=end,
                size=self.frame_size,
                backend=self.backend,
            )
            pixels = center_crop_square(np.asarray(fr.pixels), self.frame_size)
            mask = np.asarray(fr.mask, dtype=bool)
            if pixels.shape[0] != self.num_frames or not mask.any():
                raise ValueError(f"decoder returned {pixels.shape[0]} frames, mask {mask.sum()}")
            if disk is not None:
                atomic_savez(disk, pixels=pixels, mask=mask)
        if self.cache_frames:
            self._mem[key] = (pixels, mask)
        return pixels, mask


class _Base(Dataset):
    def __init__(self, split: RetrievalSplit, reader: FrameReader):
        self.split = split
        self.reader = reader
        self.failures: list[tuple[str, str]] = []

    def _frames(self, v: int):
        item = self.split.videos[v]
        try:
            return self.reader.read(item.path, item.start, item.end), None
        except Exception as exc:  # noqa: BLE001 - any decode failure is reported, not raised
            reason = f"{type(exc).__name__}: {exc}"
            log.warning("skipping video %s (%s)", item.path, reason)
            self.failures.append((item.path, reason))
            return None, (item.path, reason)


class RetrievalTrainDataset(_Base):
    """One (video, caption) per item; failed videos are replaced by another random video."""

    def __init__(
        self,
        split: RetrievalSplit,
        reader: FrameReader,
        expand_sentences: bool = False,
        max_retries: int = 10,
    ):
        super().__init__(split, reader)
        self.expand = expand_sentences
        self.max_retries = max_retries
        self.bad: set[int] = set()
        self.with_caps = [v for v in range(len(split.videos)) if split.captions_of(v)]
        if not self.with_caps:
            raise UserError(f"training split {split.name!r} has no captioned video")

    def __len__(self) -> int:
        return len(self.split.captions) if self.expand else len(self.with_caps)

    def __getitem__(self, i: int):
        if self.expand:
            c = i
            v = self.split.caption_video[c]
        else:
            v = self.with_caps[i]
            c = None
        failed = []
        for _ in range(self.max_retries + 1):
            got, fail = (None, None) if v in self.bad else self._frames(v)
            if got is not None:
                break
            if fail is not None:
                failed.append(fail)
                self.bad.add(v)
            v = self.with_caps[int(torch.randint(len(self.with_caps), ()).item())]
            c = None
        else:
            raise RuntimeError(f"could not decode any of {self.max_retries + 1} training videos")
        if c is None:
            caps = self.split.captions_of(v)
            c = caps[int(torch.randint(len(caps), ()).item())]
        pixels, mask = got
        return {
            "frames": torch.from_numpy(pixels),
            "mask": torch.from_numpy(mask),
            "caption": self.split.captions[c],
            "video_index": v,
            "failed": failed,
        }


class RetrievalEvalDataset(_Base):
    """One video with all its captions per item; ``None`` (dropped) when it cannot be decoded."""

    def __len__(self) -> int:
        return len(self.split.videos)

    def __getitem__(self, v: int):
        got, fail = self._frames(v)
        caps = self.split.captions_of(v)
        if got is None:
            return {"failed": [fail], "video_index": v}
        pixels, mask = got
        return {
            "frames": torch.from_numpy(pixels),
            "mask": torch.from_numpy(mask),
            "captions": [self.split.captions[c] for c in caps],
            "caption_ids": caps,
            "video_index": v,
            "failed": [],
        }


def collate_retrieval(items: list[dict]) -> dict:
    """Stack frames of decoded items; drop failed ones (their failures stay in ``"failed"``).

    Output: ``frames`` uint8 [B,T,S,S,3], ``mask`` bool [B,T], ``video_index`` long [B],
    ``failed`` list of (path, reason); training: ``captions`` list[B]; evaluation: ``captions``
    (all captions, flat), ``caption_ids`` long [Nc], ``caption_video`` long [Nc] (row in batch).
    """
    failed = [f for it in items for f in it.get("failed", [])]
    ok = [it for it in items if "frames" in it]
    out: dict = {"failed": failed}
    if not ok:
        out.update(frames=None, mask=None, video_index=torch.zeros(0, dtype=torch.long))
        out["captions"] = []
        return out
    out["frames"] = torch.stack([it["frames"] for it in ok])
    out["mask"] = torch.stack([it["mask"] for it in ok])
    out["video_index"] = torch.tensor([it["video_index"] for it in ok], dtype=torch.long)
    if "caption" in ok[0]:
        out["captions"] = [it["caption"] for it in ok]
    else:
        out["captions"] = [c for it in ok for c in it["captions"]]
        out["caption_ids"] = torch.tensor([c for it in ok for c in it["caption_ids"]])
        out["caption_video"] = torch.tensor(
            [b for b, it in enumerate(ok) for _ in it["captions"]], dtype=torch.long
        )
    return out


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
