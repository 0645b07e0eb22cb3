"""An opened generation of an index: its manifest, the indexed videos, the pooled vectors, the
ANN, the stored frame (and patch) features, and the models it was built with (layout and
consistency rules: ``files``).

This is the read side only: it never imports the writers (``build``, ``repair``) or the
searchers (``search``); ``api.Index`` adds those on top.

Integrity: opening checks the generation's files against the sizes and checksums the manifest
records (``checksums``; hashes for files up to 64 MB), and a shard's files when they are first
read; the ANN's answers must be cosines (in [-1, 1]). A writer keeps the generation before the
newest one on disk, so a reader that opened it keeps working across one update; when even that
generation is gone (two updates while it was open) the reader gets ``GenerationGone`` and
``api.Index`` reopens the newest generation and tries once more, instead of calling a healthy
index damaged.

An index built with ``--store milvus`` keeps its pooled vectors, frames and patch tokens in
Milvus: the same methods then read them through ``milvus_read`` (search filtered to the opened
generation; ``pooled`` is a view that looks rows up), and the folder holds only metadata.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np

from video_retrieval.errors import UserError
from video_retrieval.index.checksums import mismatch
from video_retrieval.index.files import (
    IndexDamaged,
    load_index_npy,
    load_shard_frames,
    load_shard_patches,
    manifest_files,
    read_index_json,
    read_manifest,
    writer_active,
)

#: a cosine can exceed 1 by rounding only; an ANN answering more is damaged
SCORE_SLACK = 1e-3


class GenerationGone(IndexDamaged):
    """A file of the generation this reader opened was removed by later updates (the index on
    disk is healthy and newer): reopen it (``api.Index`` does) and try again."""


class IndexStore:
    """A built index opened for reading (``IndexStore.open(dir)``; users hold an ``api.Index``)."""

    def __init__(self, index_dir, manifest: dict, videos: list[dict], pooled: np.ndarray):
        self.dir = Path(index_dir)
        self.manifest = manifest
        self.videos = videos
        self.pooled = pooled
        self._ann = None
        self._models = None
        self._shard_cache: dict[str, np.ndarray] = {}
        self._shard_records: dict | None = None
        self.build_summary: dict | None = None
        self._milvus = None  # milvus_read.MilvusVectors of a --store milvus index

    # construction
    @classmethod
    def open(cls, index_dir, encoder=None) -> IndexStore:
        """Open a built index. ``encoder`` (optional) must have the index's fingerprint.

        Reads the generation the manifest names; a writer switching generations at the same
        moment makes it read the manifest again (a few tries) rather than mix two versions.
        """
        d = Path(index_dir)
        if not d.is_dir():
            raise UserError(f"no such index folder: {index_dir} (build one with vr index)")
        for attempt in range(3):
            manifest = read_manifest(d)
            try:
                idx = cls._open_generation(d, manifest)
                break
            except IndexDamaged:
                if attempt == 2 or read_manifest(d) == manifest:
                    raise  # the manifest did not move: the damage is real
        if encoder is not None:
            idx.check_encoder(encoder)
            idx._models = (encoder, idx._pool_aggregator(None))
        if os.environ.pop("VR_TEST_PAUSE_AFTER_OPEN", None):  # the isolation test stops here once
            os.kill(os.getpid(), signal.SIGSTOP)
        return idx

    @classmethod
    def _open_generation(cls, d: Path, manifest: dict | None) -> IndexStore:
        if manifest is None:
            if (d / "journal").is_dir() and writer_active(d):
                raise UserError(f"index {d} is being built by a running vr index; try again later")
            if (d / "journal").is_dir() or (d / "shards").is_dir():  # an index without its manifest
                raise IndexDamaged(d, d / "manifest.json", "is missing")
            raise UserError(f"{d} is not an index directory (build one with vr index)")
        if not manifest.get("complete"):
            if writer_active(d):
                raise UserError(f"index {d} is being built by a running vr index; try again later")
            raise UserError(
                f"index {d} is incomplete (its first indexing run was interrupted); "
                "run the same vr index command again to finish it"
            )
        files = manifest_files(manifest)
        records = manifest.get("checksums") or {}
        for key in ("videos", "pooled", "checksums", "ann"):
            name = files.get(key)
            if name is None:
                continue
            record = records.get(name)
            if key == "ann" and record:  # its size now, its checksum where it is loaded
                record = {"bytes": record["bytes"]}
            why = mismatch(d / name, record)
            if why:
                raise IndexDamaged(d, d / name, why)
        videos = read_index_json(d, d / files["videos"])
        if not isinstance(videos, list) or not all(
            isinstance(v, dict) and {"path", "shard", "offset", "length"} <= set(v) for v in videos
        ):
            raise IndexDamaged(d, d / files["videos"], "is not a list of indexed videos")
        if len(videos) != manifest["counts"]["videos"]:
            raise IndexDamaged(
                d, d / files["videos"], f"lists {len(videos)} videos, the manifest "
                f"{manifest['counts']['videos']}"
            )  # fmt: skip
        if (manifest.get("store") or {}).get("kind") == "milvus":
            from video_retrieval.index.milvus_read import MilvusVectors, PooledView

            vectors = MilvusVectors(d, manifest, videos)
            idx = cls(d, manifest, videos, PooledView(vectors))
            idx._milvus = vectors
            return idx
        pooled = load_index_npy(d, d / files["pooled"])
        if pooled.ndim != 2 or pooled.shape[0] != len(videos):
            raise IndexDamaged(
                d, d / files["pooled"], f"has shape {pooled.shape}, expected ({len(videos)}, D)"
            )
        return cls(d, manifest, videos, pooled)

    # properties
    def __len__(self) -> int:
        return len(self.videos)

    @property
    def fingerprint(self) -> dict:
        return self.manifest["fingerprint"]

    @property
    def embed_dim(self) -> int:
        return int(self.manifest["embed_dim"])

    def check_encoder(self, encoder) -> None:
        fp = encoder.fingerprint()
        if fp != self.fingerprint["encoder"]:
            raise UserError(
                f"index {self.dir} was built with model {self.fingerprint['encoder']}, not with the "
                f"loaded model {fp}; search it with the same model or rebuild it"
            )

    def _pool_aggregator(self, checkpoint_aggregator):
        from video_retrieval.temporal import build_aggregator

        if checkpoint_aggregator is not None and not checkpoint_aggregator.query_dependent:
            return checkpoint_aggregator.eval()
        return build_aggregator("mean", self.embed_dim)

    @property
    def weights(self) -> dict:
        """Where the index's model weights came from (``models.weights.describe_weights``)."""
        from video_retrieval.models.weights import manifest_weights

        return manifest_weights(self.manifest)

    def share_models(self, other: IndexStore) -> None:
        """Use the loaded models of ``other``, an earlier generation of this index built with the
        same model (``vr serve`` reloading an updated index); refuse when the model differs."""
        new, old = self.fingerprint, other.fingerprint
        if new != old:
            changed = sorted(k for k in set(new) | set(old) if new.get(k) != old.get(k))
            raise UserError(
                f"it was rebuilt with other settings ({', '.join(changed)} changed); "
                "restart vr serve to serve it"
            )
        self._models = other.models()

    def models(self):
        """(encoder, pooling aggregator), rebuilt from the manifest on first use."""
        if self._models is None:
            m = self.manifest["model"]
            agg = None
            if m.get("checkpoint"):
                ckpt = m["checkpoint"]
                if not os.path.exists(ckpt):
                    raise UserError(
                        f"the checkpoint index {self.dir} was built with is missing: {ckpt}"
                    )
                from video_retrieval.models.checkpoints import load_retrieval_model

                encoder, agg, _ = load_retrieval_model(ckpt)
            else:
                from video_retrieval.encoders.factory import create_encoder

                encoder = create_encoder(**m["encoder_spec"])
            encoder.eval()
            self.check_encoder(encoder)
            self._models = (encoder, self._pool_aggregator(agg))
        return self._models

    @property
    def ann_info(self) -> dict:
        """The manifest's ANN entry: ``{"type", "params", "recall_at_10", "sample", ...}``
        (indexes from before recall was measured record only the type)."""
        from video_retrieval.index.ann import describe

        return describe(self.manifest.get("ann"))

    def ann(self):
        """The FAISS index, with the search parameter ``vr index`` tuned (efSearch / nprobe)
        (a Milvus index: its loaded collection)."""
        if self._milvus is not None:
            self._milvus.load()
            return self._milvus
        if self._ann is None:
            from video_retrieval.index.ann import load_ann

            name = manifest_files(self.manifest)["ann"]
            path = self.dir / name
            why = mismatch(path, (self.manifest.get("checksums") or {}).get(name))
            if why:
                raise self._damaged(path, why)
            if not path.exists():
                raise self._damaged(path, "is missing")
            try:
                ann = load_ann(path, params=self.ann_info.get("params"))
            except RuntimeError as exc:  # FAISS reports damage as RuntimeError
                why = str(exc).strip().splitlines()[-1][:120] if str(exc).strip() else ""
                raise IndexDamaged(self.dir, path, f"is unreadable ({why})") from None
            if ann.ntotal != len(self.videos):
                raise IndexDamaged(
                    self.dir, path, f"holds {ann.ntotal} vectors for {len(self.videos)} videos"
                )
            self._ann = ann
        return self._ann

    def ann_search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Stage 1 for query vectors [Q,D]: (scores [Q,k], rows [Q,k], -1 = none) from the ANN;
        compressed kinds re-rank their top candidates exactly from the pooled vectors."""
        from video_retrieval.index.ann import ann_search, search_params

        _, depth = search_params(self.ann_info)
        if self._milvus is not None:
            self._check_milvus_generation()
            scores, rows = self._milvus.search(queries, k)
        elif depth:
            scores, rows = ann_search(self.ann(), queries, k, rerank_from=self.pooled, rerank=depth)
        else:
            scores, rows = ann_search(self.ann(), queries, k)
        found = scores[rows >= 0]
        if found.size and (np.abs(found).max() > 1 + SCORE_SLACK or not np.isfinite(found).all()):
            path = self.dir / manifest_files(self.manifest).get("ann", "manifest.json")
            raise IndexDamaged(self.dir, path, "answers scores that are not cosines (corrupt)")
        return scores, rows

    def _generation_moved(self) -> bool:
        """Does the manifest on disk name a newer generation than the one this reader opened?"""
        try:
            on_disk = read_manifest(self.dir)
        except UserError:
            return False
        return bool(on_disk) and on_disk.get("generation") != self.manifest.get("generation")

    def _check_milvus_generation(self) -> None:
        """A Milvus index deletes the rows removed two generations ago: a reader whose
        generation is older than the one before the newest would miss them."""
        try:
            on_disk = read_manifest(self.dir) or {}
        except UserError:
            return
        if int(on_disk.get("generation", 0)) >= int(self.manifest.get("generation", 0)) + 2:
            raise GenerationGone(self.dir, self.dir / "manifest.json", "moved two generations on")

    def _damaged(self, path: Path, why: str) -> IndexDamaged:
        """The error for a file of this generation: ``GenerationGone`` when it is missing
        because later updates removed it, ``IndexDamaged`` otherwise."""
        if why == "is missing" and self._generation_moved():
            return GenerationGone(self.dir, path, "was removed by a newer update of the index")
        return IndexDamaged(self.dir, path, why)

    def shard_records(self) -> dict:
        """Sizes and checksums of the shard files of this generation (``checksums.<gen>.json``;
        empty for indexes written before checksums)."""
        if self._shard_records is None:
            name = manifest_files(self.manifest).get("checksums")
            records = {}
            if name and (self.dir / name).exists():
                got = read_index_json(self.dir, self.dir / name)
                records = got.get("shards", {}) if isinstance(got, dict) else {}
            elif name and self.manifest.get("checksums"):
                raise self._damaged(self.dir / name, "is missing")
            self._shard_records = records
        return self._shard_records

    def _shard(self, i: int, patches: bool = False) -> np.ndarray:
        v = self.videos[i]
        key = v["shard"] + (".patches" if patches else "")
        arr = self._shard_cache.get(key)
        if arr is None:
            file = v["shard"] + (".patches.npy" if patches else ".npy")
            path = self.dir / "shards" / file
            why = mismatch(path, self.shard_records().get(file))
            if why or not path.exists():
                raise self._damaged(path, why or "is missing")
            load = load_shard_patches if patches else load_shard_frames
            arr = load(self.dir, v["shard"])
            if arr.shape[0] < v["offset"] + v["length"]:
                raise IndexDamaged(
                    self.dir, self.dir / "shards" / f"{key}.npy",
                    f"has {arr.shape[0]} rows, videos.json needs {v['offset'] + v['length']}",
                )  # fmt: skip
            self._shard_cache[key] = arr
        return arr

    def frames(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Stored frame embeddings (float32 [T,D]) and timestamps (s) of video row ``i``."""
        v = self.videos[i]
        if self._milvus is not None:
            self._check_milvus_generation()
            return self._milvus.frames(i), np.asarray(v["timestamps"])
        arr = self._shard(i)
        o, n = v["offset"], v["length"]
        return np.asarray(arr[o : o + n], dtype=np.float32), np.asarray(v["timestamps"])

    @property
    def patch_topk(self) -> int:
        """Patch tokens stored per frame (0: none; ``vr index --patches K``)."""
        return int((self.manifest["fingerprint"].get("patches") or {}).get("topk", 0))

    def patches(self, i: int) -> np.ndarray:
        """Stored projected patch tokens (float32 [T,K,D]) of video row ``i``."""
        if not self.patch_topk:
            raise UserError(f"index {self.dir} stores no patch tokens: rebuild it with --patches K")
        v = self.videos[i]
        if self._milvus is not None:
            self._check_milvus_generation()
            flat = self._milvus.frames(i, "patches")
            return flat.reshape(len(flat), self.patch_topk, self.embed_dim)
        arr = self._shard(i, patches=True)
        o, n = v["offset"], v["length"]
        return np.asarray(arr[o : o + n], dtype=np.float32)

    def row_of(self, path) -> int | None:
        if not hasattr(self, "_rows"):
            self._rows = {v["path"]: i for i, v in enumerate(self.videos)}
        return self._rows.get(str(Path(path).resolve()))
