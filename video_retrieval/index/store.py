"""An opened generation of an index: its manifest, the indexed videos, the pooled vectors, the
ANN, the stored frame (and patch) features, and the models it was built with (layout and
consistency rules: ``files``).

This is the read side only: it never imports the writers (``build``, ``repair``) or the
searchers (``search``); ``api.Index`` adds those on top.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from video_retrieval.errors import UserError
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
        self.build_summary: dict | None = None

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
        """The FAISS index, with the search parameter ``vr index`` tuned (efSearch / nprobe)."""
        if self._ann is None:
            from video_retrieval.index.ann import load_ann

            path = self.dir / manifest_files(self.manifest)["ann"]
            if not path.exists():
                raise IndexDamaged(self.dir, path, "is missing")
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
        if depth:
            return ann_search(self.ann(), queries, k, rerank_from=self.pooled, rerank=depth)
        return ann_search(self.ann(), queries, k)

    def _shard(self, i: int, patches: bool = False) -> np.ndarray:
        v = self.videos[i]
        key = v["shard"] + (".patches" if patches else "")
        arr = self._shard_cache.get(key)
        if arr is None:
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
        arr = self._shard(i, patches=True)
        o, n = v["offset"], v["length"]
        return np.asarray(arr[o : o + n], dtype=np.float32)

    def row_of(self, path) -> int | None:
        if not hasattr(self, "_rows"):
            self._rows = {v["path"]: i for i, v in enumerate(self.videos)}
        return self._rows.get(str(Path(path).resolve()))
