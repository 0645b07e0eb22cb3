"""``vr index --repair``: rebuild what can be rebuilt of a damaged index from what survives."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from video_retrieval.errors import UserError
from video_retrieval.index import files as store
from video_retrieval.index.build import ann_options, finalize
from video_retrieval.index.config import (
    IndexConfig,
    load_models,
    reuse_index_settings,
)
from video_retrieval.models.weights import (
    manifest_weights,
)


def _verify_shard(index_dir, name: str, entries: list[dict], patches: bool) -> str | None:
    """Why shard ``name`` cannot serve ``entries`` (its journal lines), or None when it can."""
    try:
        meta = {v["path"]: v for v in store.load_shard_meta(index_dir, name)["videos"]}
        rows = store.load_shard_frames(index_dir, name).shape[0]
        if patches:
            rows = min(rows, store.load_shard_patches(index_dir, name).shape[0])
    except (UserError, KeyError, TypeError) as exc:
        return str(exc).split(";")[0]
    for e in entries:
        m = meta.get(e["path"])
        if m is None or (m["offset"], m["length"]) != (e["offset"], e["length"]):
            return f"shard {name} metadata does not match the journal"
        if rows < e["offset"] + e["length"]:
            return f"shard {name} is truncated"
    return None


def run_repair(index_dir, cfg: IndexConfig | None = None) -> dict:
    """Rebuild what can be rebuilt from the shards and the journal: the manifest (from the last
    run's recorded settings), videos/pooled/ann, failures.jsonl. Videos whose shard is missing or
    damaged are dropped and listed (``lost``): index their files again to re-encode them."""
    cfg = cfg or IndexConfig()
    index_dir = Path(index_dir).expanduser().resolve()
    if not index_dir.is_dir() or not store.is_index_dir(index_dir):
        raise UserError(f"{index_dir} is not an index folder (nothing to repair)")
    with store.IndexLock(index_dir, wait=cfg.wait):
        store.clean_temp_files(index_dir)
        state = store.replay(index_dir)
        try:
            manifest = store.read_manifest(index_dir)
        except store.IndexDamaged:
            manifest = None
        rebuilt_manifest = manifest is None
        if manifest is None:
            if not state.config:
                raise UserError(
                    f"cannot repair {index_dir}: manifest.json is unusable and the journal does "
                    "not record the model (an index from an older vr); build a new index"
                )
            manifest = {
                "format_version": store.FORMAT_VERSION,
                **state.config,
                "counts": {"videos": 0, "frames": 0, "shards": 0, "failures": 0},
                "complete": False,
            }
        by_shard: dict[str, list[dict]] = {}
        for v in state.videos.values():
            by_shard.setdefault(v["shard"], []).append(v)
        patches = bool(manifest["fingerprint"].get("patches"))
        lost, drops = [], []
        for name, entries in sorted(by_shard.items()):
            why = _verify_shard(index_dir, name, entries, patches)
            if why:
                for e in entries:
                    lost.append({"path": e["path"], "reason": why})
                    drops.append({"event": "drop", "path": e["path"], "reason": f"repair: {why}"})
        run = store.next_run_id(index_dir)
        store.Journal(index_dir, run, 0).append(*drops)
        state = store.replay(index_dir)
        repaired_cfg = reuse_index_settings(replace(cfg, encoder_spec=None), manifest)
        encoder, pool_agg, _, _, _ = load_models(repaired_cfg)
        opts = ann_options(cfg, encoder, pool_agg, manifest)
        manifest = finalize(index_dir, state, pool_agg, manifest, opts)
        store.remove_orphans(index_dir, state)
    return {
        "index": str(index_dir),
        "repaired": True,
        "manifest_rebuilt": rebuilt_manifest,
        "lost": lost,
        "videos": manifest["counts"]["videos"],
        "frames": manifest["counts"]["frames"],
        "ann": manifest["ann"],
        "weights": manifest_weights(manifest),
    }
