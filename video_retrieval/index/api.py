"""``Index``: the Python API over an index directory (build, open, search).

Example::

    >>> from video_retrieval import Index
    >>> index = Index.build(["videos/"], "my_index", pretrained="/path/open_clip_pytorch_model.bin")  # doctest: +SKIP
    >>> hits = Index.open("my_index").search("a red circle moves left", k=5)   # doctest: +SKIP
    >>> hits[0].video, hits[0].score, hits[0].moment                            # doctest: +SKIP
    ('/abs/videos/v3.mp4', 0.41, (2.0, 5.5))

The facade on top of the ``index`` package: ``IndexStore`` (an opened generation) plus the
writer (``build.run_indexing``) and the searcher (``search``).
"""

from __future__ import annotations

from video_retrieval.index.build import run_indexing
from video_retrieval.index.config import IndexConfig
from video_retrieval.index.hits import Hit
from video_retrieval.index.search import search_batch, search_index
from video_retrieval.index.store import GenerationGone, IndexStore


class Index(IndexStore):
    """A built index: ``Index.build(...)`` to create/update, ``Index.open(dir)`` to query.

    Example::

        >>> idx = Index.open("my_index")                                   # doctest: +SKIP
        >>> for hit in idx.search("a blue square grows", k=3, rerank="cliprerank"):
        ...     print(hit.rank, hit.video, round(hit.score, 3), hit.moment.start, hit.moment.end)  # doctest: +SKIP
    """

    def refresh(self) -> None:
        """Move to the newest generation of the index on disk, keeping the loaded models (the
        index must still be built with them)."""
        fresh = type(self).open(self.dir)
        if self._models is not None:
            fresh.share_models(self)
        keep = {k: v for k, v in self.__dict__.items() if k == "build_summary"}
        self.__dict__.update({**fresh.__dict__, **keep})

    def _retry_once(self, run):
        """``run()``; if an update removed the generation this reader opened while it was
        reading (``GenerationGone``), reopen the newest one and run it again."""
        try:
            return run()
        except GenerationGone:
            self.refresh()
            return run()

    @classmethod
    def build(cls, inputs, index_dir, **options) -> Index:
        """Index ``inputs`` (video files and/or folders) into ``index_dir`` and open it.

        Options are those of ``config.IndexConfig`` (``model``, ``pretrained``, ``checkpoint``,
        ``fps``, ``num_frames``, ``batch_size``, ``workers``, ``devices``, ``prune``, ...).
        Running it again adds new files, re-encodes changed ones and (``prune=True``) drops
        deleted ones. The run's summary is in ``.build_summary``.
        """
        summary = run_indexing(inputs, index_dir, IndexConfig(**options))
        idx = cls.open(index_dir)
        idx.build_summary = summary
        return idx

    def search(
        self,
        query: str,
        k: int = 10,
        candidates: int = 100,
        rerank: str | None = "auto",
        alpha: float = 0.4,
        rerank_model: str | None = None,
    ) -> list[Hit]:
        """Two-stage search: ANN over pooled vectors (top ``candidates``), then ``rerank``
        ("auto", "none", "cliprerank", an aggregator name such as "query_scored", or a checkpoint
        path) from stored frame features. ``auto`` is ``search.default_rerank`` (query scoring
        for long videos, none for short ones, as measured). ``rerank_model``: a separate
        frame encoder (a vr train checkpoint) for CLIPRerank's max-over-frames term. Returns up
        to ``k`` ``Hit``s, best first."""
        return self._retry_once(
            lambda: search_index(self, query, k=k, candidates=candidates, rerank=rerank,
                                 alpha=alpha, rerank_model=rerank_model)
        )  # fmt: skip

    def search_batch(
        self,
        queries: list[str],
        k: int = 10,
        candidates: int = 100,
        rerank: str | None = "auto",
        alpha: float = 0.4,
        batch_size: int = 256,
        rerank_model: str | None = None,
    ) -> list[list[Hit]]:
        """``search`` for many queries in one pass: queries are encoded ``batch_size`` at a
        time and stage 1 is one FAISS batch search per batch. Returns one hit list per query,
        in order, equal to ``[self.search(q, ...) for q in queries]``."""
        return self._retry_once(
            lambda: search_batch(self, queries, k=k, candidates=candidates, rerank=rerank,
                                 alpha=alpha, batch_size=batch_size, rerank_model=rerank_model)
        )  # fmt: skip


__all__ = ["Hit", "Index"]
