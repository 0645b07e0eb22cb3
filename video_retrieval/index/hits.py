"""One search result, as the CLI, the HTTP API and the Python API return it (``schemas.Hit``)."""

from __future__ import annotations

from video_retrieval.schemas import Hit, Span

__all__ = ["Hit", "Span", "make_hit"]


def make_hit(rank: int, row: int, video: str, score: float, base_score: float,
             moment: tuple[float, float], thumbnail_time: float,
             duration: float | None = None,
             matched_frame_time: float | None = None) -> Hit:  # fmt: skip
    """A hit with its numbers rounded as every output shows them (6 decimals: frame times such
    as 1.9375 s at 16 fps stay exact), so that the CLI, the API and Python give the same rows."""
    return Hit(
        rank=int(rank),
        id=int(row),
        video=str(video),
        score=round(float(score), 6),
        base_score=round(float(base_score), 6),
        moment=Span(start=round(float(moment[0]), 6), end=round(float(moment[1]), 6)),
        thumbnail_time=round(float(thumbnail_time), 6),
        duration=None if not duration else round(float(duration), 6),
        matched_frame_time=None if matched_frame_time is None
        else round(float(matched_frame_time), 6),
    )  # fmt: skip
