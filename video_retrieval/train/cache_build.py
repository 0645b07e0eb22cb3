"""Frozen-feature cache: encode a dataset once with a frozen CLIP, train aggregators from disk.

A cache directory holds memory-mapped fp16 ``.npy`` arrays plus ``manifest.json``::

    video_frames.npy      fp16  [N_video, T, D]     frame CLS embeddings (joint space, not normalised)
    video_mask.npy        bool  [N_video, T]        False for padding and for failed videos
    video_timestamps.npy  fp32  [N_video, T]        presentation time (s) of each stored frame
    video_duration.npy    fp32  [N_video]           duration (s) of the whole video (NaN if failed)
    video_failed.npy      bool  [N_video]           True where decoding failed (see manifest failures)
    video_patches.npy     fp16  [N_video, T, P|K, D]  projected patch tokens (``patches`` all/topk)
    video_patch_index.npy int16 [N_video, T, K]     patch index (0..P-1) of each kept token (topk)
    text_sentence.npy     fp16  [N_text, D]         sentence (EOT) embeddings
    text_words.npy        fp16  [N_text, L, D]      projected word tokens (when words are stored)
    text_word_mask.npy    bool  [N_text, L]         True for real tokens (SOT..EOT)
    text_to_video.npy     int64 [N_text]            index of each caption's video

``patches="topk"`` keeps, per frame, the K patch tokens with the highest cosine similarity to that
frame's CLS embedding (a cheap, frozen criterion), in ascending patch order, with their indices.
UCoFiA's *learned* patch selector (PredictorLG + perturbed top-k, refs §2.2) then only chooses
among these K candidates instead of all P patches; use ``patches="all"`` for the exact method.

Building is resumable: all arrays are preallocated as memmaps, each finished chunk is flushed and
appended to ``journal.jsonl`` (fsync'd), so a rerun after a crash or ``kill -9`` skips the finished
chunks and produces the same arrays as an uninterrupted run. The manifest is written
temp-then-rename. A video that fails to decode never aborts the build: it is recorded in the
manifest's ``failures`` (index, id, path, reason), its mask is all False and ``video_failed`` True.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from video_retrieval.atomic import atomic_write_json
from video_retrieval.errors import UserError
from video_retrieval.temporal.features import TextFeatures, VideoFeatures

FORMAT_NAME = "vr-feature-cache"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
JOURNAL = "journal.jsonl"
LOCK = ".lock"
PATCH_MODES = ("none", "all", "topk")
TOPK_CRITERION = "cosine_to_frame_cls"

#: Every array file the builder may create (removed by ``overwrite``).
ARRAY_FILES = (
    "video_frames",
    "video_mask",
    "video_timestamps",
    "video_duration",
    "video_failed",
    "video_patches",
    "video_patch_index",
    "text_sentence",
    "text_words",
    "text_word_mask",
    "text_to_video",
)


@dataclass
class CacheSettings:
    """How frames are sampled and which features are stored.

    ``num_frames=T``: T frames at the midpoints of T equal segments (``load_frames`` contract).
    ``fps=F``: one frame each 1/F s, then uniformly subsampled to at most ``max_frames`` (CLIP4Clip's
    1 fps + uniform slicing); shorter videos are padded and masked. ``decode_size`` resizes while
    decoding (short side); None decodes at full size so features equal ``encode_frames`` on the
    decoded frames. ``frame_size=S`` reproduces the training DataModule's frames exactly
    (``RetrievalDataModule(frame_size=S)``: decode at short side S, centre square crop with
    ``retrieval_data.center_crop_square``); ``symmetric_window`` samples between the first and the
    last frame centres like ``RetrievalDataModule(symmetric_window=True)`` (time-reversal exact).
    """

    num_frames: int | None = 12
    fps: float | None = None
    max_frames: int = 12
    decode_size: int | None = None
    patches: str = "none"
    patch_topk: int = 16
    max_words: int = 32
    words: bool = True
    frame_size: int | None = None
    symmetric_window: bool = False

    def __post_init__(self):
        if self.fps is not None:
            if not self.fps > 0:
                raise UserError(f"--fps must be positive, got {self.fps}")
            self.num_frames = None
        elif self.num_frames is None or int(self.num_frames) < 1:
            raise UserError(f"--num-frames must be >= 1, got {self.num_frames}")
        if int(self.max_frames) < 1:
            raise UserError(f"--max-frames must be >= 1, got {self.max_frames}")
        if self.patches not in PATCH_MODES:
            raise UserError(
                f"--patches must be one of {', '.join(PATCH_MODES)}, got {self.patches!r}"
            )
        if self.patches == "topk" and int(self.patch_topk) < 1:
            raise UserError(f"--patch-topk must be >= 1, got {self.patch_topk}")
        if self.frame_size is not None and int(self.frame_size) < 1:
            raise UserError(f"--frame-size must be >= 1, got {self.frame_size}")
        if int(self.max_words) < 2:
            raise UserError(f"--max-words must be >= 2 (SOT and EOT), got {self.max_words}")

    @property
    def frames_per_video(self) -> int:
        return int(self.num_frames) if self.fps is None else int(self.max_frames)


@dataclass
class VideoItem:
    id: str
    path: str
    split: str | None = None
    start: float | None = None  # seconds; None = whole video (DiDeMo-style windows otherwise)
    end: float | None = None


@dataclass
class CaptionItem:
    text: str
    video_index: int
    split: str | None = None


@dataclass
class _Decoded:
    pixels: np.ndarray | None  # uint8 [T,H,W,3] (only valid frames are encoded)
    timestamps: np.ndarray  # [T]
    mask: np.ndarray  # bool [T]
    duration: float
    reason: str | None = None  # set when decoding failed


@dataclass
class BuildReport:
    out_dir: str
    num_videos: int
    num_texts: int
    failures: list = field(default_factory=list)
    video_chunks_done: int = 0  # chunks encoded by *this* call (0 when everything was cached)
    text_chunks_done: int = 0
    resumed: bool = False
    up_to_date: bool = False
    seconds: float = 0.0


# ------------------------------------------------------------------------------------------------
# small helpers
# ------------------------------------------------------------------------------------------------
def _read_journal(path: Path) -> list[dict]:
    """Entries of the progress journal; a torn last line (killed mid-write) is ignored."""
    if not path.exists():
        return []
    entries = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(entry, dict) and "kind" in entry and "start" in entry:
                entries.append(entry)
    return entries


def _fit_length(pixels, timestamps, mask, t: int):
    """Uniformly subsample valid frames to at most ``t``, then pad (repeat last, mask False)."""
    pixels = np.asarray(pixels)
    timestamps = np.asarray(timestamps, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    valid = np.flatnonzero(mask)
    if len(valid) > t:
        keep = valid[np.linspace(0, len(valid) - 1, t).round().astype(np.int64)]
        return pixels[keep], timestamps[keep], np.ones(t, dtype=bool)
    if len(mask) > t:  # more padding than room: drop padding from the end
        pixels, timestamps, mask = pixels[:t], timestamps[:t], mask[:t]
    n = len(mask)
    if n < t:
        if n == 0:
            return None, np.zeros(t), np.zeros(t, dtype=bool)
        pad = t - n
        pixels = np.concatenate([pixels, np.repeat(pixels[-1:], pad, axis=0)])
        timestamps = np.concatenate([timestamps, np.repeat(timestamps[-1:], pad)])
        mask = np.concatenate([mask, np.zeros(pad, dtype=bool)])
    return pixels, timestamps, mask


def select_topk_patches(cls: torch.Tensor, patches: torch.Tensor, k: int):
    """Frozen top-k criterion: the ``k`` patches most cosine-similar to their frame's CLS.

    ``cls [N,D]``, ``patches [N,P,D]`` -> (kept ``[N,k,D]``, indices ``[N,k]`` ascending).
    """
    k = min(int(k), patches.shape[1])
    score = torch.einsum(
        "npd,nd->np", F.normalize(patches.float(), dim=-1), F.normalize(cls.float(), dim=-1)
    )
    idx = score.topk(k, dim=1).indices.sort(dim=1).values
    kept = torch.gather(patches, 1, idx[:, :, None].expand(-1, -1, patches.shape[-1]))
    return kept, idx


def _encoder_fingerprint(encoder) -> str:
    fp = encoder.fingerprint() if callable(getattr(encoder, "fingerprint", None)) else None
    if not fp:
        raise UserError(
            "the encoder has no fingerprint(); cannot build a cache that checks its model"
        )
    return str(fp)


def _jsonable(obj):
    try:
        json.dumps(obj)
        return obj
    except TypeError:
        return json.loads(json.dumps(obj, default=str))


# ------------------------------------------------------------------------------------------------
# building
# ------------------------------------------------------------------------------------------------
class _NotResumable(Exception):
    """The arrays of an interrupted build are missing or malformed: start the build afresh."""


class _Arrays:
    """The preallocated memmaps of one build."""

    def __init__(self, out: Path, shapes: dict[str, tuple[tuple[int, ...], str]], create: bool):
        self.out = out
        self.arrays: dict[str, np.memmap] = {}
        for name, (shape, dtype) in shapes.items():
            path = out / f"{name}.npy"
            if create:
                arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.dtype(dtype), shape=shape)
            else:
                try:
                    arr = np.load(path, mmap_mode="r+")
                except (OSError, ValueError) as exc:
                    raise _NotResumable(f"{path}: {exc}") from exc
                if tuple(arr.shape) != tuple(shape) or arr.dtype != np.dtype(dtype):
                    raise _NotResumable(f"{path}: {arr.shape} {arr.dtype} != {shape} {dtype}")
            self.arrays[name] = arr

    def __getitem__(self, name):
        return self.arrays[name]

    def __contains__(self, name):
        return name in self.arrays

    def flush(self):
        for arr in self.arrays.values():
            if isinstance(arr, np.memmap) and arr.size:
                arr.flush()

    def close(self):
        self.flush()
        self.arrays.clear()


def _probe_dims(encoder, settings: CacheSettings, need_text: bool) -> tuple[int, int, int]:
    """(D, P, L) from one tiny forward pass: embed width, patch tokens per frame, word length."""
    d = int(encoder.embed_dim)
    p = 0
    if settings.patches != "none":
        s = int(getattr(encoder, "image_size", 64))
        _, patches = encoder.encode_frames(np.zeros((1, s, s, 3), np.uint8), return_patches=True)
        if patches is None:
            raise UserError("this encoder returns no patch tokens; use --patches none")
        p = int(patches.shape[1])
    length = 0
    if need_text and settings.words:
        tokens = encoder.tokenize(["a"], context_length=settings.max_words)
        with torch.no_grad():
            tf = encoder.encode_text(tokens, return_words=True)
        if tf.words is None:
            raise UserError("this encoder returns no word tokens; build without words")
        length = min(int(tf.words.shape[1]), int(settings.max_words))
    return d, p, length


def _decode_one(load_frames, item: VideoItem, settings: CacheSettings) -> _Decoded:
    t = settings.frames_per_video
    try:
        start, end = item.start, item.end
        if settings.symmetric_window and start is None and end is None:
            from video_retrieval.media.decode import probe_video

            info = probe_video(item.path)
            half = 0.5 / info.fps if info.fps > 0 else 0.0
            if info.duration > 2 * half:
                start, end = half, info.duration - half
        size = settings.frame_size if settings.frame_size is not None else settings.decode_size
        window = {"start": start, "end": end, "size": size}
        if settings.fps is None:
            fr = load_frames(item.path, num_frames=t, **window)
        else:
            fr = load_frames(item.path, fps=settings.fps, **window)
        pixels = fr.pixels
        if settings.frame_size is not None:
            from video_retrieval.train.retrieval_data import center_crop_square

            pixels = center_crop_square(np.asarray(pixels), int(settings.frame_size))
        pixels, ts, mask = _fit_length(pixels, fr.timestamps, fr.mask, t)
        if pixels is None or not mask.any():
            raise ValueError("no decodable frames")
        return _Decoded(pixels, ts, mask, float(fr.duration))
    except Exception as exc:  # one bad video never aborts the build
        reason = getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"
        return _Decoded(
            None, np.zeros(t), np.zeros(t, dtype=bool), float("nan"), reason=str(reason)
        )


def _encode_valid_frames(encoder, decoded: list[_Decoded], batch_size: int, want_patches: bool):
    """Encode the valid frames of every decoded video. Frames of the same size are batched
    together (``encode_frames`` takes one uint8 array). Returns per-video (cls [n,D], patches)."""
    out: list = [None] * len(decoded)
    groups: dict[tuple, list[int]] = {}
    for i, dec in enumerate(decoded):
        if dec.reason is None:
            groups.setdefault(tuple(dec.pixels.shape[1:]), []).append(i)
    for members in groups.values():
        pix = [decoded[i].pixels[decoded[i].mask] for i in members]
        counts = [len(p) for p in pix]
        cls, patches = encoder.encode_frames(
            np.concatenate(pix), batch_size=batch_size, return_patches=want_patches
        )
        cls = cls.detach().float().cpu()
        patches = None if patches is None else patches.detach().float().cpu()
        offset = 0
        for i, n in zip(members, counts):
            out[i] = (
                cls[offset : offset + n],
                None if patches is None else patches[offset : offset + n],
            )
            offset += n
    return out


def _build_key(fingerprint, settings, videos, captions) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([fingerprint, asdict(settings)], sort_keys=True).encode())
    for v in videos:
        h.update(json.dumps([v.id, v.path, v.split, v.start, v.end]).encode())
    for c in captions:
        h.update(json.dumps([c.text, c.video_index, c.split]).encode())
    return h.hexdigest()


def build_cache(
    encoder,
    videos: Sequence[VideoItem],
    captions: Sequence[CaptionItem] = (),
    out_dir: str | os.PathLike = "cache",
    settings: CacheSettings | None = None,
    **kwargs,
) -> BuildReport:
    """Encode ``videos`` and ``captions`` with the frozen ``encoder`` into ``out_dir``.

    Reruns resume an interrupted build with the same inputs and settings; a finished cache with the
    same inputs is left untouched (``up_to_date``). Different inputs or a different model in an
    existing cache directory are refused unless ``overwrite``. ``on_chunk(kind, start, end)`` is
    called after each chunk is durably recorded (``kind`` is "video" or "text"). Keyword options:
    ``batch_size`` (frames per encoder call), ``chunk_size`` (videos per journaled chunk),
    ``text_chunk_size``, ``num_workers`` (decoding threads), ``overwrite``, ``load_frames``
    (decoder override), ``on_chunk``, ``log``. Two builds of one directory at once are refused.
    """
    out = Path(out_dir)
    if (
        out.exists()
        and not (out / MANIFEST).exists()
        and any(p.name != LOCK for p in out.iterdir())
        and not kwargs.get("overwrite", False)
    ):
        raise UserError(f"{out} exists and is not a feature cache; choose an empty --out")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOCK, "a") as lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{out}: another `vr cache` is building this cache right now") from None
        try:
            return _build_cache_locked(encoder, videos, captions, out, settings, **kwargs)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _build_cache_locked(
    encoder,
    videos: Sequence[VideoItem],
    captions: Sequence[CaptionItem] = (),
    out_dir: str | os.PathLike = "cache",
    settings: CacheSettings | None = None,
    *,
    batch_size: int = 64,
    chunk_size: int = 16,
    text_chunk_size: int = 256,
    num_workers: int = 2,
    overwrite: bool = False,
    load_frames: Callable | None = None,
    on_chunk: Callable[[str, int, int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> BuildReport:
    t0 = time.perf_counter()
    settings = settings or CacheSettings()
    videos = [v if isinstance(v, VideoItem) else VideoItem(**v) for v in videos]
    captions = [c if isinstance(c, CaptionItem) else CaptionItem(**c) for c in captions]
    if not videos:
        raise UserError("no videos to cache")
    for j, c in enumerate(captions):
        if not 0 <= int(c.video_index) < len(videos):
            raise UserError(
                f"caption {j} refers to video {c.video_index}, outside 0..{len(videos) - 1}"
            )
        if not str(c.text).strip():
            raise UserError(f"caption {j} (video {videos[c.video_index].id}) is empty")
    if load_frames is None:
        from video_retrieval.media.decode import load_frames
    log = log or (lambda msg: None)
    batch_size, chunk_size, text_chunk_size = int(batch_size), int(chunk_size), int(text_chunk_size)
    if min(batch_size, chunk_size, text_chunk_size) < 1:
        raise UserError("batch and chunk sizes must be >= 1")

    out = Path(out_dir)
    fingerprint = _encoder_fingerprint(encoder)
    key = _build_key(fingerprint, settings, videos, captions)
    manifest_path, journal_path = out / MANIFEST, out / JOURNAL

    resume = False
    if manifest_path.exists():
        try:
            old = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError):
            old = {}
        same = old.get("build_key") == key and old.get("format_version") == FORMAT_VERSION
        if same and not overwrite:
            if old.get("status") == "complete":
                log(f"{out}: up to date ({len(videos)} videos, {len(captions)} captions)")
                return BuildReport(
                    str(out), len(videos), len(captions), old.get("failures", []),
                    up_to_date=True, seconds=time.perf_counter() - t0,
                )  # fmt: skip
            resume = True
        elif not overwrite:
            why = (
                "a different model"
                if old.get("fingerprint") not in (None, fingerprint)
                else "different videos, captions or settings"
            )
            raise UserError(
                f"{out} already holds a feature cache built with {why}; use --overwrite or another --out"
            )

    if not resume and out.exists():
        for name in ARRAY_FILES:
            (out / f"{name}.npy").unlink(missing_ok=True)
        for path in (manifest_path, journal_path):
            path.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)

    d, p, length = _probe_dims(encoder, settings, need_text=bool(captions))
    nv, nt, t = len(videos), len(captions), settings.frames_per_video
    kp = p if settings.patches == "all" else min(int(settings.patch_topk), p)
    shapes: dict[str, tuple[tuple[int, ...], str]] = {
        "video_frames": ((nv, t, d), "float16"),
        "video_mask": ((nv, t), "bool"),
        "video_timestamps": ((nv, t), "float32"),
        "video_duration": ((nv,), "float32"),
        "video_failed": ((nv,), "bool"),
        "text_sentence": ((nt, d), "float16"),
        "text_to_video": ((nt,), "int64"),
    }
    if settings.patches != "none":
        shapes["video_patches"] = ((nv, t, kp, d), "float16")
    if settings.patches == "topk":
        shapes["video_patch_index"] = ((nv, t, kp), "int16")
    if nt and settings.words:
        shapes["text_words"] = ((nt, length, d), "float16")
        shapes["text_word_mask"] = ((nt, length), "bool")

    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "status": "building",
        "build_key": key,
        "fingerprint": fingerprint,
        "encoder_spec": _jsonable(getattr(encoder, "spec", {})),
        # the autocast really used (spec "auto" resolves per machine): bf16 features differ a bit
        "encoder_autocast": str(getattr(encoder, "autocast_dtype", None)),
        "embed_dim": d,
        "sampling": {
            "num_frames": settings.num_frames,
            "fps": settings.fps,
            "max_frames": settings.max_frames,
            "frames_per_video": t,
            "decode_size": settings.decode_size,
            "frame_size": settings.frame_size,
            "symmetric_window": settings.symmetric_window,
        },
        "patches": {
            "mode": settings.patches,
            "patches_per_frame": p,
            "stored_per_frame": kp if settings.patches != "none" else 0,
            "topk": kp if settings.patches == "topk" else None,
            "criterion": TOPK_CRITERION if settings.patches == "topk" else None,
        },
        "text": {
            "max_words": settings.max_words,
            "words": bool(nt and settings.words),
            "word_length": length,
        },
        "settings": asdict(settings),
        "counts": {"videos": nv, "texts": nt, "failed": 0},
        "arrays": {name: {"shape": list(s), "dtype": dt} for name, (s, dt) in shapes.items()},
        "videos": [asdict(v) for v in videos],
        "captions": [asdict(c) for c in captions],
        "failures": [],
    }
    arrays = None
    if resume:
        try:
            arrays = _Arrays(out, shapes, create=False)
        except _NotResumable as exc:
            log(f"{out}: cannot resume ({exc}); starting afresh")
            resume = False
            journal_path.unlink(missing_ok=True)
    if not resume:
        atomic_write_json(manifest_path, manifest, sort_keys=False)
        arrays = _Arrays(out, shapes, create=True)
    arrays["text_to_video"][:] = np.asarray([c.video_index for c in captions], dtype=np.int64)
    arrays.flush()

    journal = _read_journal(journal_path) if resume else []
    covered = {"video": np.zeros(nv, dtype=bool), "text": np.zeros(nt, dtype=bool)}
    for entry in journal:
        if entry["kind"] in covered:
            covered[entry["kind"]][int(entry["start"]) : int(entry["end"])] = True
    failures = {int(f["index"]): f for e in journal for f in e.get("failures", [])}
    report = BuildReport(str(out), nv, nt, resumed=resume)
    if resume:
        log(f"{out}: resuming ({int(covered['video'].sum())}/{nv} videos and "
            f"{int(covered['text'].sum())}/{nt} captions already done)")  # fmt: skip

    lock = threading.Lock()
    with open(journal_path, "a") as jf:

        def record(kind, start, end, chunk_failures=()):
            arrays.flush()
            entry = {"kind": kind, "start": start, "end": end, "failures": list(chunk_failures)}
            with lock:
                jf.write(json.dumps(entry) + "\n")
                jf.flush()
                os.fsync(jf.fileno())
            if on_chunk is not None:
                on_chunk(kind, start, end)

        # -- videos: decode the next chunk in threads while this one is encoded ---------------
        video_chunks = [
            (s, min(s + chunk_size, nv)) for s in range(0, nv, chunk_size)
            if not covered["video"][s : s + chunk_size].all()
        ]  # fmt: skip
        want_patches = settings.patches != "none"
        with ThreadPoolExecutor(max_workers=max(1, int(num_workers))) as pool:

            def submit(chunk):
                s, e = chunk
                return [
                    pool.submit(_decode_one, load_frames, videos[i], settings) for i in range(s, e)
                ]

            pending = submit(video_chunks[0]) if video_chunks else None
            for n, (s, e) in enumerate(video_chunks):
                decoded = [f.result() for f in pending]
                pending = submit(video_chunks[n + 1]) if n + 1 < len(video_chunks) else None
                encoded = _encode_valid_frames(encoder, decoded, batch_size, want_patches)
                chunk_failures = []
                frames = np.zeros((e - s, t, d), np.float16)
                patches_np = np.zeros((e - s, t, kp, d), np.float16) if want_patches else None
                pidx = np.zeros((e - s, t, kp), np.int16) if settings.patches == "topk" else None
                for j, (dec, enc) in enumerate(zip(decoded, encoded)):
                    i = s + j
                    if dec.reason is not None:
                        f = {
                            "index": i,
                            "id": videos[i].id,
                            "path": videos[i].path,
                            "reason": dec.reason,
                        }
                        chunk_failures.append(f)
                        failures[i] = f
                        continue
                    cls, pt = enc
                    frames[j, dec.mask] = cls.numpy().astype(np.float16)
                    if settings.patches == "all":
                        patches_np[j, dec.mask] = pt.numpy().astype(np.float16)
                    elif settings.patches == "topk":
                        kept, idx = select_topk_patches(cls, pt, kp)
                        patches_np[j, dec.mask] = kept.numpy().astype(np.float16)
                        pidx[j, dec.mask] = idx.numpy().astype(np.int16)
                arrays["video_frames"][s:e] = frames
                arrays["video_mask"][s:e] = np.stack([dec.mask for dec in decoded])
                arrays["video_timestamps"][s:e] = np.stack([dec.timestamps for dec in decoded])
                arrays["video_duration"][s:e] = np.asarray([dec.duration for dec in decoded])
                arrays["video_failed"][s:e] = np.asarray(
                    [dec.reason is not None for dec in decoded]
                )
                if want_patches:
                    arrays["video_patches"][s:e] = patches_np
                if pidx is not None:
                    arrays["video_patch_index"][s:e] = pidx
                for f in chunk_failures:
                    log(f"warning: {f['path']}: {f['reason']} (masked out)")
                record("video", s, e, chunk_failures)
                report.video_chunks_done += 1
                log(f"videos {e}/{nv}")

        # -- captions ------------------------------------------------------------------------
        for s in range(0, nt, text_chunk_size):
            e = min(s + text_chunk_size, nt)
            if covered["text"][s:e].all():
                continue
            texts = [captions[j].text for j in range(s, e)]
            tokens = encoder.tokenize(texts, context_length=settings.max_words)
            with torch.no_grad():
                tf = encoder.encode_text(tokens, return_words=settings.words)
            arrays["text_sentence"][s:e] = (
                tf.sentence.detach().float().cpu().numpy().astype(np.float16)
            )
            if "text_words" in arrays:
                words = tf.words.detach().float().cpu()[:, :length]
                arrays["text_words"][s:e] = words.numpy().astype(np.float16)
                wm = tf.word_mask
                if wm is None:  # fall back to the tokens: real tokens are non-zero ids
                    wm = tokens[:, :length] != 0
                arrays["text_word_mask"][s:e] = wm.detach().cpu().bool().numpy()[:, :length]
            record("text", s, e)
            report.text_chunks_done += 1
            log(f"captions {e}/{nt}")

    arrays.close()
    manifest["status"] = "complete"
    manifest["failures"] = [failures[i] for i in sorted(failures)]
    manifest["counts"]["failed"] = len(failures)
    manifest["build_seconds"] = round(time.perf_counter() - t0, 3)
    atomic_write_json(manifest_path, manifest, sort_keys=False)
    report.failures = manifest["failures"]
    report.seconds = time.perf_counter() - t0
    return report


def remove_cache(path: str | os.PathLike) -> None:
    """Delete a cache directory built by :func:`build_cache` (refuses other directories)."""
    path = Path(path)
    if not (path / MANIFEST).exists():
        raise UserError(f"{path} is not a feature cache (no {MANIFEST})")
    shutil.rmtree(path)


# ------------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------------
def _as_index(indices, n: int) -> np.ndarray:
    if indices is None:
        return np.arange(n, dtype=np.int64)
    if isinstance(indices, torch.Tensor):
        indices = indices.cpu().numpy()
    if isinstance(indices, slice):
        return np.arange(n, dtype=np.int64)[indices]
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise IndexError(f"index out of range 0..{n - 1}")
    return np.where(idx < 0, idx + n, idx)


def _gather(arr: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Rows ``idx`` of a memmap, read in ascending order (sequential I/O), returned in ``idx`` order."""
    if idx.size == 0:
        return np.asarray(arr[:0])
    order = np.argsort(idx, kind="stable")
    rows = np.asarray(arr[idx[order]])
    out = np.empty_like(rows)
    out[order] = rows
    return out


class FeatureCache:
    """Read-only view of a finished cache. Arrays are memory-mapped lazily, so the object pickles
    cheaply into DataLoader workers (each worker maps the files itself)."""

    def __init__(self, path: str | os.PathLike, manifest: dict):
        self.path = Path(path)
        self.manifest = manifest
        self._arrays: dict[str, np.ndarray] = {}
        self.text_to_video = torch.from_numpy(
            np.array(self._array("text_to_video"), dtype=np.int64)
        )
        self._video_captions: list[list[int]] | None = None

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def open(
        cls, path: str | os.PathLike, encoder=None, fingerprint: str | None = None
    ) -> FeatureCache:
        """Open the cache at ``path``. With ``encoder`` (or ``fingerprint``), refuse a cache built
        by another model (UserError)."""
        path = Path(path)
        mpath = path / MANIFEST
        if not mpath.exists():
            raise UserError(
                f"{path} is not a feature cache (no {MANIFEST}); build it with `vr cache`"
            )
        try:
            manifest = json.loads(mpath.read_text())
        except json.JSONDecodeError as exc:
            raise UserError(f"{mpath}: unreadable manifest ({exc})") from exc
        if manifest.get("format") != FORMAT_NAME:
            raise UserError(f"{path} is not a feature cache (format {manifest.get('format')!r})")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise UserError(
                f"{path}: cache format version {manifest.get('format_version')} is not supported "
                f"(this version reads {FORMAT_VERSION}); rebuild it with `vr cache --overwrite`"
            )
        if manifest.get("status") != "complete":
            raise UserError(
                f"{path}: the cache build did not finish; rerun the same `vr cache` command to resume it"
            )
        if encoder is not None:
            fingerprint = _encoder_fingerprint(encoder)
        if fingerprint is not None and fingerprint != manifest.get("fingerprint"):
            raise UserError(
                f"{path} was built with a different model (cache fingerprint "
                f"{manifest.get('fingerprint')!r}, encoder fingerprint {fingerprint!r}); "
                "rebuild the cache with this encoder or use the matching model"
            )
        return cls(path, manifest)

    def check_fingerprint(self, encoder_or_fingerprint) -> None:
        fp = encoder_or_fingerprint
        if not isinstance(fp, str):
            fp = _encoder_fingerprint(fp)
        if fp != self.fingerprint:
            raise UserError(
                f"{self.path} was built with a different model ({self.fingerprint!r} != {fp!r})"
            )

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_arrays"] = {}
        return state

    def _array(self, name: str) -> np.ndarray:
        arr = self._arrays.get(name)
        if arr is None:
            arr = np.load(self.path / f"{name}.npy", mmap_mode="r")
            self._arrays[name] = arr
        return arr

    # -- metadata ---------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    @property
    def encoder_spec(self) -> dict:
        return self.manifest.get("encoder_spec", {})

    @property
    def embed_dim(self) -> int:
        return int(self.manifest["embed_dim"])

    @property
    def num_frames(self) -> int:
        return int(self.manifest["sampling"]["frames_per_video"])

    @property
    def num_videos(self) -> int:
        return int(self.manifest["counts"]["videos"])

    @property
    def num_texts(self) -> int:
        return int(self.manifest["counts"]["texts"])

    @property
    def patch_mode(self) -> str:
        return self.manifest["patches"]["mode"]

    @property
    def has_patches(self) -> bool:
        return self.patch_mode != "none"

    @property
    def has_words(self) -> bool:
        return bool(self.manifest["text"]["words"])

    @property
    def videos(self) -> list[dict]:
        return self.manifest["videos"]

    @property
    def video_ids(self) -> list[str]:
        return [v["id"] for v in self.manifest["videos"]]

    @property
    def video_paths(self) -> list[str]:
        return [v["path"] for v in self.manifest["videos"]]

    @property
    def captions(self) -> list[str]:
        return [c["text"] for c in self.manifest["captions"]]

    @property
    def failures(self) -> list[dict]:
        return self.manifest.get("failures", [])

    @property
    def failed(self) -> np.ndarray:
        return np.array(self._array("video_failed"), dtype=bool)

    @property
    def video_captions(self) -> list[list[int]]:
        """For each video, the indices of its captions."""
        if self._video_captions is None:
            caps: list[list[int]] = [[] for _ in range(self.num_videos)]
            for j, v in enumerate(self.text_to_video.tolist()):
                caps[v].append(j)
            self._video_captions = caps
        return self._video_captions

    def video_indices(self, split: str | None = None, include_failed: bool = False) -> np.ndarray:
        failed = self.failed
        keep = [
            i for i, v in enumerate(self.manifest["videos"])
            if (split is None or v.get("split") == split) and (include_failed or not failed[i])
        ]  # fmt: skip
        return np.asarray(keep, dtype=np.int64)

    def text_indices(self, split: str | None = None, include_failed: bool = False) -> np.ndarray:
        failed = self.failed
        t2v = self.text_to_video.numpy()
        keep = [
            j for j, c in enumerate(self.manifest["captions"])
            if (split is None or c.get("split") == split) and (include_failed or not failed[t2v[j]])
        ]  # fmt: skip
        return np.asarray(keep, dtype=np.int64)

    # -- features ---------------------------------------------------------------------------
    def video_features(self, indices=None, patches: bool | None = None) -> VideoFeatures:
        """fp32 ``VideoFeatures`` for ``indices`` (default: all videos). ``patches`` defaults to
        whatever the cache holds (top-k caches give ``[B,T,K,D]``, see :meth:`patch_indices`)."""
        idx = _as_index(indices, self.num_videos)
        frames = torch.from_numpy(_gather(self._array("video_frames"), idx).astype(np.float32))
        mask = torch.from_numpy(_gather(self._array("video_mask"), idx).astype(bool))
        want = self.has_patches if patches is None else bool(patches)
        if want and not self.has_patches:
            raise UserError(f"{self.path} holds no patch tokens; rebuild with --patches all|topk")
        pt = None
        if want:
            pt = torch.from_numpy(_gather(self._array("video_patches"), idx).astype(np.float32))
        return VideoFeatures(frames, mask, pt)

    def patch_indices(self, indices=None) -> torch.Tensor | None:
        """``[B,T,K]`` original patch positions of top-k tokens (None unless ``patches="topk"``)."""
        if self.patch_mode != "topk":
            return None
        idx = _as_index(indices, self.num_videos)
        return torch.from_numpy(_gather(self._array("video_patch_index"), idx).astype(np.int64))

    def timestamps(self, indices=None) -> torch.Tensor:
        idx = _as_index(indices, self.num_videos)
        return torch.from_numpy(_gather(self._array("video_timestamps"), idx).astype(np.float32))

    def durations(self, indices=None) -> torch.Tensor:
        idx = _as_index(indices, self.num_videos)
        return torch.from_numpy(_gather(self._array("video_duration"), idx).astype(np.float32))

    def text_features(self, indices=None, words: bool | None = None) -> TextFeatures:
        idx = _as_index(indices, self.num_texts)
        sentence = torch.from_numpy(_gather(self._array("text_sentence"), idx).astype(np.float32))
        want = self.has_words if words is None else bool(words)
        if want and not self.has_words:
            raise UserError(f"{self.path} holds no word features")
        if not want:
            return TextFeatures(sentence)
        w = torch.from_numpy(_gather(self._array("text_words"), idx).astype(np.float32))
        wm = torch.from_numpy(_gather(self._array("text_word_mask"), idx).astype(bool))
        return TextFeatures(sentence, w, wm)

    def __repr__(self) -> str:
        return (
            f"FeatureCache({str(self.path)!r}, videos={self.num_videos}, texts={self.num_texts}, "
            f"T={self.num_frames}, D={self.embed_dim}, patches={self.patch_mode})"
        )
