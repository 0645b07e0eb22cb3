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

from pathlib import Path

from video_retrieval.errors import UserError
from video_retrieval.index.build import run_indexing
from video_retrieval.index.config import IndexConfig
from video_retrieval.index.example_search import rank_example
from video_retrieval.index.examples import (
    ExampleQuery,
    image_list,
    image_name,
    image_query,
    like_query,
    video_query,
)
from video_retrieval.index.hits import Hit
from video_retrieval.index.search import search_batch, search_index
from video_retrieval.index.store import GenerationGone, IndexStore
from video_retrieval.limits import check, check_query
from video_retrieval.media.image import read_image


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
        query: str | None = None,
        k: int = 10,
        candidates: int = 100,
        rerank: str | None = "auto",
        alpha: float = 0.4,
        rerank_model: str | None = None,
        *,
        image=None,
        image_weight: float = 0.5,
        video=None,
        start: float | None = None,
        end: float | None = None,
        like=None,
        include_self: bool = False,
    ) -> list[Hit]:
        """Two-stage search: ANN over pooled vectors (top ``candidates``), then ``rerank``
        ("auto", "none", "cliprerank", an aggregator name such as "query_scored", or a checkpoint
        path) from stored frame features. ``auto`` is ``search.default_rerank`` (query scoring
        for long videos, none for short ones, as measured). ``rerank_model``: a separate
        frame encoder (a vr train checkpoint) for CLIPRerank's max-over-frames term. Returns up
        to ``k`` ``Hit``s, best first.

        Queries by example (``examples``, ``example_search``; rerank auto, none, frames or
        cliprerank): ``image`` (a path, file bytes, PIL image or uint8 array, or a list of them:
        a query set, averaged), with ``query`` too a text + image query weighted by
        ``image_weight``; ``video`` (a file; ``start``/``end`` seconds of it); ``like`` (an
        index id, or ``"ID:S-E"``: more like this from its stored vectors). The query video is
        left out of its own results unless ``include_self``. Such hits carry
        ``matched_frame_time``."""
        if image is None and video is None and like is None:
            return self._retry_once(
                lambda: search_index(self, query, k=k, candidates=candidates, rerank=rerank,
                                     alpha=alpha, rerank_model=rerank_model)
            )  # fmt: skip
        ex = self.example(query, image=image, image_weight=image_weight, video=video,
                          start=start, end=end, like=like)  # fmt: skip
        return self.search_example(ex, k=k, candidates=candidates, rerank=rerank, alpha=alpha,
                                   include_self=include_self)  # fmt: skip

    def search_example(self, example: ExampleQuery, k: int = 10, candidates: int = 100,
                       rerank: str | None = "auto", alpha: float = 0.4,
                       include_self: bool = False) -> list[Hit]:  # fmt: skip
        """The hits of an encoded query by example (``example``), best first."""
        return self._retry_once(
            lambda: rank_example(self, example, k=k, candidates=candidates, rerank=rerank,
                                 alpha=alpha, include_self=include_self)
        )  # fmt: skip

    def example(self, query: str | None = None, *, image=None, image_weight: float = 0.5,
                video=None, start=None, end=None, like=None) -> ExampleQuery:  # fmt: skip
        """The encoded query by example of ``search``'s arguments (one of ``image`` (with or
        without ``query``), ``video``, ``like``). Images and the video file are checked before
        the model loads."""
        given = [name for name, v in (("image", image), ("video", video), ("like", like))
                 if v is not None]  # fmt: skip
        if len(given) != 1:
            raise UserError(f"give one of image, video, like (got {' and '.join(given) or 'none'})")
        if query is not None and image is None:
            raise UserError("a text query combines with an image only (image=...)")
        if (start is not None or end is not None) and image is not None:
            raise UserError("start and end are seconds of a video or clip query, not an image's")
        if image is not None:
            text = None if query is None else check_query(query)
            items = image_list(image)
            names = [image_name(x, i) for i, x in enumerate(items)]
            pixels = [read_image(x, what=None if isinstance(x, (str, Path)) else n)
                      for x, n in zip(items, names)]  # fmt: skip
            encoder, agg = self.models()
            return image_query(self, encoder, agg, pixels, text=text,
                               image_weight=check("image_weight", image_weight), names=names)  # fmt: skip
        if video is not None:
            if not Path(video).is_file():
                raise UserError(f"--video: no such file: {video}")
            encoder, agg = self.models()
            return video_query(self, encoder, agg, video, start, end)
        return like_query(self, self.models()[1], like, start, end)

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
