"""``vr index --verify``: every file of the index's current generation and of its shards against
the sizes and checksums recorded when they were written (opening hashes only the small ones)."""

from __future__ import annotations

from pathlib import Path

from video_retrieval.errors import UserError
from video_retrieval.index import files as store
from video_retrieval.index.checksums import mismatch


def verify_index(index_dir) -> dict:
    """``{"index", "checked", "unrecorded"}``; the first file that does not match raises
    ``IndexDamaged`` naming it (and the repair command)."""
    d = Path(index_dir).expanduser().resolve()
    manifest = store.read_manifest(d)
    if manifest is None:
        if (d / store.JOURNAL).is_dir() or (d / store.SHARDS).is_dir():
            raise store.IndexDamaged(d, d / store.MANIFEST, "is missing")
        raise UserError(f"{d} is not an index directory (build one with vr index)")
    records = manifest.get("checksums")
    if not records:
        raise UserError(
            f"index {d} records no checksums (built by an earlier vr); any vr index run on it "
            "records them for the files it writes"
        )
    files = store.manifest_files(manifest)
    checked = 0
    for name in files.values():
        why = mismatch(d / name, records.get(name), full=True)
        if why:
            raise store.IndexDamaged(d, d / name, why)
        checked += 1
    shards = store.read_index_json(d, d / files["checksums"]).get("shards", {})
    videos = store.read_index_json(d, d / files["videos"])
    needed = {v["shard"] for v in videos}
    unrecorded = sorted(sh for sh in needed if not any(f.startswith(sh + ".") for f in shards))
    for name, record in sorted(shards.items()):
        path = store.shard_path(d, name)
        why = mismatch(path, record, full=True)
        if why:
            raise store.IndexDamaged(d, path, why)
        checked += 1
    out = {"index": str(d), "checked": checked, "unrecorded": unrecorded}
    if (manifest.get("store") or {}).get("kind") == "milvus":
        out["collections"] = _verify_milvus(d, manifest)
    return out


def _verify_milvus(d: Path, manifest: dict) -> int:
    """The index's collections in Milvus: made for it, of its dimension, holding a row for
    every video of the generation and at least its frames. Returns the collections checked."""
    from video_retrieval.index.milvus import (
        Calls,
        Target,
        check_collections,
        connect,
        generation_filter,
    )

    target = Target.of_manifest(d, manifest)
    calls = Calls(connect(target), target)
    names = check_collections(calls, manifest, int(manifest["embed_dim"]))

    def count(part: str, expr: str = "") -> int:
        calls("load_collection", names[part])
        got = calls("query", names[part], filter=expr, output_fields=["count(*)"])
        return int(got[0]["count(*)"])

    counts = manifest["counts"]
    live = count("videos", generation_filter(int(manifest["generation"])))
    frames = count("frames")
    if live != counts["videos"] or frames < counts["frames"]:
        raise store.IndexDamaged(
            d, d / store.MANIFEST, f"counts {counts['videos']} videos and {counts['frames']} "
            f"frames; {target.shown()} holds {live} and {frames}",
        )  # fmt: skip
    return len(names)
