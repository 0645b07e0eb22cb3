"""Reading an index whose vectors are in Milvus (``store.IndexStore`` delegates to this when the
manifest says ``"store": {"kind": "milvus", ...}``): stage-1 search filtered to the generation
the reader opened, the pooled vectors of given rows, and a video's frames and patch tokens.

Rows are the positions in the generation's ``videos.<gen>.json`` (as in the FAISS store); each
entry's ``milvus_id`` is its key in Milvus (``milvus``). A reader whose generation is no longer
the current one or the one before (its removed rows may be deleted) raises ``GenerationGone``
through the store, which reopens the newest.
"""

from __future__ import annotations

import numpy as np

from video_retrieval.errors import UserError
from video_retrieval.index.files import IndexDamaged
from video_retrieval.index.milvus import (
    GET_BATCH,
    Calls,
    Target,
    check_collections,
    connect,
    generation_filter,
)

#: the search parameter of each Milvus index type, and the name the manifest records it under
SEARCH_PARAM = {"HNSW": ("ef", "efSearch"), "HNSW_SQ": ("ef", "efSearch"),
                "IVF_FLAT": ("nprobe", "nprobe"), "IVF_SQ8": ("nprobe", "nprobe")}  # fmt: skip
#: Milvus answers at most this many results per query
MAX_LIMIT = 16384


def search_params(ann: dict, limit: int) -> dict:
    """Milvus search parameters of a manifest's ``ann`` entry for ``limit`` results (HNSW needs
    ef >= limit on a Milvus server)."""
    index_type = ann.get("index_type", "FLAT")
    if index_type not in SEARCH_PARAM:
        return {"metric_type": "COSINE", "params": {}}
    name, recorded = SEARCH_PARAM[index_type]
    value = int((ann.get("params") or {}).get(recorded, 0)) or None
    params = {}
    if value is not None:
        params[name] = max(value, limit) if name == "ef" else value
    return {"metric_type": "COSINE", "params": params}


def get_vectors(calls: Calls, collection: str, ids: list[int], fields=("vector",)) -> dict:
    """{id: row dict} of the rows with these primary keys (missing ids are absent)."""
    out = {}
    for s in range(0, len(ids), GET_BATCH):
        chunk = [int(i) for i in ids[s : s + GET_BATCH]]
        for row in calls("get", collection, ids=chunk, output_fields=list(fields)):
            out[int(row["id"])] = row
    return out


class MilvusVectors:
    """One generation of an index in Milvus, opened for reading."""

    def __init__(self, index_dir, manifest: dict, videos: list[dict], token: str | None = None):
        self.target = Target.of_manifest(index_dir, manifest)
        self.gen = int(manifest.get("generation", 0))
        self.dim = int(manifest["embed_dim"])
        self.ann_info = dict(manifest.get("ann") or {})
        self.calls = Calls(connect(self.target, token), self.target)
        self.names = check_collections(self.calls, manifest, self.dim)
        self.keys = np.array([int(v["milvus_id"]) for v in videos], dtype=np.int64)
        self.lengths = [int(v["length"]) for v in videos]
        self.row_of = {int(k): i for i, k in enumerate(self.keys)}
        self._loaded = False

    def load(self) -> None:
        """Load the videos collection for search (a no-op when it is loaded already)."""
        if not self._loaded:
            self.calls("load_collection", self.names["videos"])
            self._loaded = True

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores [Q,k], rows [Q,k]; -1 = none) of the generation's live videos."""
        q = np.asarray(queries, dtype=np.float32).reshape(-1, self.dim)
        k = int(min(k, MAX_LIMIT))
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        rows = np.full((len(q), k), -1, dtype=np.int64)
        if not len(self.keys) or not len(q):
            return scores, rows
        self.load()
        answers = self.calls(
            "search", self.names["videos"], data=[v for v in q], limit=k,
            filter=generation_filter(self.gen), search_params=search_params(self.ann_info, k),
        )  # fmt: skip
        for j, hits in enumerate(answers):
            n = 0
            for h in hits:
                row = self.row_of.get(int(h["id"]))
                if row is None:  # not in this reader's list: another writer's row (never live)
                    continue
                scores[j, n], rows[j, n] = float(h["distance"]), row
                n += 1
        return scores, rows

    def pooled(self, rows) -> np.ndarray:
        """Pooled vectors [len(rows), D] (float32) of these rows, in their order."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        ids = [int(self.keys[r]) for r in rows]
        got = get_vectors(self.calls, self.names["videos"], sorted(set(ids)))
        missing = [i for i in ids if i not in got]
        if missing:
            raise self.missing("pooled vector", missing[0])
        return np.array([got[i]["vector"] for i in ids], dtype=np.float32).reshape(-1, self.dim)

    def frames(self, row: int, part: str = "frames") -> np.ndarray:
        """The stored frame embeddings [T,D] (``part="patches"``: patch tokens [T,K*D]) of a
        row, in frame order."""
        key, n = int(self.keys[row]), self.lengths[row]
        got = get_vectors(self.calls, self.names[part], list(range(key, key + n)))
        if len(got) != n:
            raise self.missing(part[:-1], key, f"{len(got)} of {n}")
        return np.array([got[key + t]["vector"] for t in range(n)], dtype=np.float32)

    def missing(self, what: str, key: int, count: str = "") -> UserError:
        return IndexDamaged(
            self.target.index_dir, self.target.index_dir / "manifest.json",
            f"names {count + ' ' if count else ''}{what} rows of video key {key} that "
            f"{self.target.shown()} does not hold",
        )  # fmt: skip


class PooledView:
    """``IndexStore.pooled`` of a Milvus index: indexable by rows like the FAISS store's
    memory-mapped array, each access one lookup in Milvus (``np.asarray`` reads them all)."""

    def __init__(self, vectors: MilvusVectors):
        self.vectors = vectors
        self.shape = (len(vectors.keys), vectors.dim)
        self.ndim = 2
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows):
        if isinstance(rows, slice):
            rows = np.arange(self.shape[0])[rows]
        if np.isscalar(rows):
            return self.vectors.pooled([int(rows)])[0]
        return self.vectors.pooled(rows)

    def __array__(self, dtype=None, copy=None):
        out = self.vectors.pooled(np.arange(self.shape[0]))
        return out if dtype is None else out.astype(dtype)
