"""The encoding pipeline of ``vr index`` (as clip-retrieval splits inference):

* **reader** (``VideoReader``, a map-style ``Dataset``): in DataLoader workers, decodes and samples
  the frames of one video (``read_sampled_frames`` at the encoder's input size), hashes the file,
  returns uint8 frames + timestamps, or the reason it failed. Decoding overlaps with encoding.
* **mapper** (``BatchingEncoder``): in the main process, preprocesses (batched tensor ops) and
  encodes frames in batches of ``batch_size`` frames across video boundaries.
* **writer** (``ShardWriter``): accumulates per-video frame embeddings into fp16 shards, writes each
  shard atomically, then commits it with a journal line (``index.files``).
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

import numpy as np
import torch

from video_retrieval.errors import VideoDecodeError
from video_retrieval.index import files as store
from video_retrieval.media.files import content_hash


# -- reader -------------------------------------------------------------------------------------
def failure_reason(exc: BaseException) -> str:
    if isinstance(exc, VideoDecodeError):
        return exc.reason
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def read_sampled_frames(path, sampling: dict, size: int | None):
    """``decode.load_frames`` with an index's sampling settings; a file whose decodable part
    falls short of the container's declared duration (``decode.truncation``) raises
    ``VideoDecodeError`` (truncated files are failures, not short videos)."""
    from video_retrieval.media.decode import load_frames, probe_video, symmetric_bounds, truncation

    start = end = None
    if sampling.get("symmetric_window"):
        start, end = symmetric_bounds(probe_video(path))
    fr = load_frames(
        path,
        num_frames=sampling.get("num_frames"),
        fps=sampling.get("fps"),
        start=start,
        end=end,
        size=size,
    )
    why = truncation(fr.duration, getattr(fr, "header_duration", 0.0))
    if why:
        raise VideoDecodeError(path, why)
    return fr


class VideoReader(torch.utils.data.Dataset):
    """Item ``i``: dict(path, size, mtime_ns, sha256, pixels uint8 [T,H,W,3], timestamps,
    duration, fps) or dict(..., error=reason)."""

    def __init__(self, items: list[dict], sampling: dict, image_size: int | None):
        self.items = items
        self.sampling = sampling
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        item = dict(self.items[i])
        try:
            if not item.get("sha256"):
                item["sha256"] = content_hash(item["path"])
            fr = read_sampled_frames(item["path"], self.sampling, self.image_size)
            mask = np.asarray(fr.mask, dtype=bool)
            pixels = np.ascontiguousarray(fr.pixels[mask])
            if len(pixels) == 0:
                raise VideoDecodeError(item["path"], "no frames could be decoded")
            item.update(
                pixels=torch.from_numpy(pixels),
                timestamps=[float(t) for t in np.asarray(fr.timestamps)[mask]],
                duration=float(fr.duration),
                fps=float(fr.fps),
            )
        except Exception as exc:  # one bad video never aborts the batch
            item["error"] = failure_reason(exc)
        return item


def list_collate(batch: list[dict]) -> list[dict]:
    return batch


def _worker_init(_):
    torch.set_num_threads(1)


def make_loader(items, sampling, image_size, workers: int, batch_size=None):
    ds = VideoReader(items, sampling, image_size)
    kw = {}
    if workers > 0:
        kw = {"prefetch_factor": 4, "persistent_workers": False, "worker_init_fn": _worker_init}
    if batch_size is None:
        return torch.utils.data.DataLoader(
            ds, batch_size=None, num_workers=workers, collate_fn=_identity, **kw
        )
    return torch.utils.data.DataLoader(
        ds, batch_size=batch_size, num_workers=workers, collate_fn=list_collate, **kw
    )


def _identity(x):
    return x


# -- mapper -------------------------------------------------------------------------------------
class BatchingEncoder:
    """Preprocess each video's frames and encode frames in batches of ``batch_size`` across
    videos; ``add`` / ``flush`` return the videos whose frames are all encoded, in order, as
    ``(item, embeddings float32 [T,D], patches float32 [T,K,D] or None)`` (``patch_topk`` = K:
    the projected patch tokens most cosine-similar to each frame's CLS)."""

    def __init__(self, encoder, batch_size: int = 64, patch_topk: int = 0):
        self.encoder = encoder
        self.batch_size = max(1, int(batch_size))
        self.patch_topk = int(patch_topk)
        self.pending: deque = deque()  # [item, images [T,3,S,S], parts, n_done]
        self.queued = 0
        self.frames_encoded = 0

    def add(self, item: dict) -> list:
        images = self.encoder.preprocess(item.pop("pixels"))
        self.pending.append([item, images, [], 0])
        self.queued += len(images)
        out = []
        while self.queued >= self.batch_size:
            out += self._step(self.batch_size)
        return out

    def flush(self) -> list:
        out = []
        while self.queued > 0:
            out += self._step(min(self.batch_size, self.queued))
        return out

    @torch.inference_mode()
    def _step(self, n: int) -> list:
        chunks, owners = [], []
        need = n
        for entry in self.pending:
            if need == 0:
                break
            _, images, _, done = entry
            take = min(need, len(images) - done)
            if take > 0:
                chunks.append(images[done : done + take])
                owners.append((entry, take))
                need -= take
        emb, pt = self.encoder.encode_images(torch.cat(chunks), return_patches=self.patch_topk > 0)
        if pt is not None:
            from video_retrieval.encoders.patches import select_topk_patches

            pt = select_topk_patches(emb, pt, self.patch_topk)[0].float().cpu().numpy()
        emb = emb.float().cpu().numpy()
        pos = 0
        for entry, take in owners:
            entry[2].append((emb[pos : pos + take], None if pt is None else pt[pos : pos + take]))
            entry[3] += take
            pos += take
        self.queued -= n
        self.frames_encoded += n
        out = []
        while self.pending and self.pending[0][3] == len(self.pending[0][1]):
            item, _, parts, _ = self.pending.popleft()
            patches = None if parts[0][1] is None else np.concatenate([p for _, p in parts])
            out.append((item, np.concatenate([e for e, _ in parts]), patches))
        return out


def encode_videos(encoder, items: list[dict], batch_size: int, patch_topk: int = 0) -> list:
    """Encode a list of read items: ``(item, emb, patches)`` for good ones, ``(item, None,
    None)`` for failures."""
    be = BatchingEncoder(encoder, batch_size, patch_topk)
    out = []
    for item in items:
        if "error" in item:
            out.append((item, None, None))
        else:
            out += be.add(item)
    out += be.flush()
    return out


# -- writer -------------------------------------------------------------------------------------
class ShardWriter:
    """Buffers encoded videos into shards; each shard is written atomically, then committed."""

    def __init__(
        self, index_dir, run: int, rank: int = 0, shard_size=64, shard_frames=8192, sink=None
    ):
        self.index_dir = Path(index_dir)
        # where a shard's frames go: files in the index folder (``files.write_shard``), or
        # Milvus (``milvus_write.MilvusSink``); either returns the files' checksums
        self.sink = sink or store.write_shard
        self.run, self.rank = run, rank
        self.shard_size, self.shard_frames = shard_size, shard_frames
        self.journal = store.Journal(index_dir, run, rank)
        self.seq = 0
        self.buffer: list[tuple[dict, np.ndarray, np.ndarray | None]] = []
        self.nframes = 0
        self.videos_written = 0
        self.frames_written = 0
        self.failures: list[dict] = []

    def add(self, item: dict, emb: np.ndarray, patches: np.ndarray | None = None) -> None:
        pt = None if patches is None else np.asarray(patches, dtype=np.float16)
        self.buffer.append((item, np.asarray(emb, dtype=np.float16), pt))
        self.nframes += len(emb)
        if len(self.buffer) >= self.shard_size or self.nframes >= self.shard_frames:
            self.flush()

    def fail(self, item: dict, reason: str) -> None:
        ev = {"event": "fail", "path": item["path"], "reason": reason}
        ev.update({k: item.get(k) for k in ("size", "mtime_ns", "sha256")})
        self.journal.append(ev)
        self.failures.append({"path": item["path"], "reason": reason})

    def flush(self) -> None:
        if not self.buffer:
            return
        name = store.shard_name(self.run, self.rank, self.seq)
        self.seq += 1
        metas, offset = [], 0
        for item, emb, _ in self.buffer:
            metas.append(
                {
                    "path": item["path"],
                    "size": item["size"],
                    "mtime_ns": item["mtime_ns"],
                    "sha256": item["sha256"],
                    "offset": offset,
                    "length": len(emb),
                    "timestamps": item["timestamps"],
                    "duration": item["duration"],
                    "fps": item["fps"],
                }
            )
            offset += len(emb)
        patches = None
        if self.buffer[0][2] is not None:
            patches = np.concatenate([p for _, _, p in self.buffer])
        frames = np.concatenate([e for _, e, _ in self.buffer])
        files = self.sink(self.index_dir, name, frames, metas, patches)
        # the journal line holds everything the shard's .json does, and the files' checksums,
        # so that either can rebuild the other
        self.journal.append({"event": "shard", "shard": name, "videos": metas, "files": files})
        self.videos_written += len(metas)
        self.frames_written += offset
        self.buffer, self.nframes = [], 0
