"""MSR-VTT retrieval annotations (CLIP4Clip layout), also used for the synthetic world.

* ``MSRVTT_data.json``: ``videos[*].video_id`` and ``sentences[*].{video_id, caption}`` (10,000
  videos, 200,000 sentences). It is read with a streaming parser (``ijson``), one sentence at a
  time, keeping only the captions of the videos asked for: the file is never held in memory as a
  whole (text or object tree), and it is read once for any number of splits
  (``read_msrvtt_captions(path, ids)``).
* train csv (``MSRVTT_train.9k.csv`` / ``.7k.csv`` / synth ``train.csv``): one column ``video_id``;
  the captions come from the data json (20 per video on MSR-VTT).
* test csv (``MSRVTT_JSFUSION_test.csv`` / synth ``test.csv`` / ``test_compositional.csv``): columns
  ``key,vid_key,video_id,sentence``; every row is one query (1k-A has one per video, the synthetic
  world several).
* videos: ``<video_dir>/<video_id>.mp4``, falling back to ``.webm``.
"""

from __future__ import annotations

import csv
from pathlib import Path

from video_retrieval.datasets.captions_jsonl import RetrievalSplit, VideoItem, _require
from video_retrieval.datasets.text_files import read_json_file

from video_retrieval.errors import UserError


def video_path(video_dir: str | Path, video_id: str) -> str:
    base = Path(video_dir)
    for ext in (".mp4", ".webm"):
        p = base / f"{video_id}{ext}"
        if p.exists():
            return str(p)
    return str(base / f"{video_id}.mp4")  # missing: reported when decoding


def _read_csv(path: Path) -> list[dict]:
    with open(_require(path, "MSR-VTT csv"), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if rows and "video_id" not in rows[0]:
        raise UserError(f"{path}: no 'video_id' column (got {list(rows[0])})")
    return rows


def iter_msrvtt_sentences(data_json: str | Path):
    """``(index, video_id, caption)`` for every entry of ``sentences``, streamed from the file."""
    import ijson

    path = _require(Path(data_json), "MSR-VTT data json")
    k = -1
    with open(path, "rb") as f:
        try:
            for k, s in enumerate(ijson.items(f, "sentences.item", use_float=True)):
                if not isinstance(s, dict) or "video_id" not in s or "caption" not in s:
                    raise UserError(f"{path}: sentences[{k}] has no video_id/caption: {s!r}")
                yield k, str(s["video_id"]), str(s["caption"]).strip()
        except ijson.JSONError as e:
            raise UserError(f"{path}: not valid JSON after sentence {k + 1} ({e})") from None
    if k < 0:
        raise UserError(f"{path}: no 'sentences' (expected the MSR-VTT data json layout)")


def read_msrvtt_captions(
    data_json: str | Path, ids: set[str] | None = None
) -> dict[str, list[str]]:
    """``{video_id: [captions in file order]}`` for the videos in ``ids`` (all when None)."""
    caps: dict[str, list[str]] = {}
    for _k, vid, caption in iter_msrvtt_sentences(data_json):
        if ids is None or vid in ids:
            caps.setdefault(vid, []).append(caption)
    return caps


def read_split_ids(split_csv: str | Path) -> list[str]:
    return [r["video_id"].strip() for r in _read_csv(Path(split_csv))]


def load_msrvtt_train(
    data_json: str | Path,
    split_csv: str | Path,
    video_dir: str | Path,
    captions: dict[str, list[str]] | None = None,
) -> RetrievalSplit:
    """Videos listed in ``split_csv`` with all their captions from ``data_json`` (json order).
    ``captions``: the already read ``read_msrvtt_captions`` result, to read the json once for
    several lists."""
    ids = read_split_ids(split_csv)
    caps = captions if captions is not None else read_msrvtt_captions(data_json, set(ids))
    out = RetrievalSplit(name=Path(split_csv).stem)
    missing = [v for v in ids if v not in caps]
    if missing:
        raise UserError(
            f"{split_csv}: {len(missing)} video(s) have no caption in {data_json} "
            f"(first: {missing[0]})"
        )
    for vid in ids:
        out.videos.append(VideoItem(vid, video_path(video_dir, vid)))
        for c in caps[vid]:
            out.captions.append(c)
            out.caption_video.append(len(out.videos) - 1)
    return out


def load_msrvtt_test(split_csv: str | Path, video_dir: str | Path) -> RetrievalSplit:
    """Every csv row is a query; videos in first-appearance order."""
    out = RetrievalSplit(name=Path(split_csv).stem)
    index: dict[str, int] = {}
    for r in _read_csv(Path(split_csv)):
        vid = r["video_id"].strip()
        if "sentence" not in r:
            raise UserError(f"{split_csv}: no 'sentence' column")
        if vid not in index:
            index[vid] = len(out.videos)
            out.videos.append(VideoItem(vid, video_path(video_dir, vid)))
        out.captions.append(str(r["sentence"]).strip())
        out.caption_video.append(index[vid])
    return out


def load_msrvtt(
    split_csv: str | Path, video_dir: str | Path, data_json: str | Path | None = None
) -> RetrievalSplit:
    """Dispatch on the csv columns: ``sentence`` present -> test layout, else train layout."""
    with open(_require(Path(split_csv), "MSR-VTT csv"), newline="", encoding="utf-8") as f:
        header = next(csv.reader(f), [])
    if "sentence" in header:
        return load_msrvtt_test(split_csv, video_dir)
    if data_json is None:
        raise UserError(f"{split_csv} lists video ids only; the MSRVTT_data.json is needed")
    return load_msrvtt_train(data_json, split_csv, video_dir)


def load_temporal_pairs(
    path: str | Path, split: RetrievalSplit, with_kind: bool = False
) -> list[tuple]:
    """Synthetic-world ``temporal_pairs.json`` as (a, b) indices into ``split.videos`` (plus the
    pair's ``kind``, "direction" | "order", with ``with_kind``).

    Pairs whose videos are not both in the split are skipped."""
    pairs = read_json_file(_require(Path(path), "temporal pairs file"), str(path))
    if not isinstance(pairs, list) or not all(isinstance(p, dict) and {"a", "b"} <= set(p)
                                              for p in pairs):  # fmt: skip
        raise UserError(f'{path}: expected a list of {{"a", "b", "kind"}} pairs')
    index = {v.video_id: i for i, v in enumerate(split.videos)}
    out = []
    for p in pairs:
        if p["a"] in index and p["b"] in index:
            a, b = index[p["a"]], index[p["b"]]
            out.append((a, b, p.get("kind", "")) if with_kind else (a, b))
    return out
