"""One search result, as the CLI, the HTTP API and the Python API return it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Hit:
    """One search result; ``moment`` and ``thumbnail_time`` are seconds."""

    rank: int
    video: str
    score: float
    moment: tuple[float, float]
    thumbnail_time: float
    base_score: float = 0.0

    def to_dict(self) -> dict:
        return {
            "rank": self.rank,
            "video": self.video,
            "score": round(float(self.score), 6),
            "moment": {"start": round(self.moment[0], 3), "end": round(self.moment[1], 3)},
            "thumbnail_time": round(self.thumbnail_time, 3),
        }
