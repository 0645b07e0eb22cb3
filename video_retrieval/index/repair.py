"""``vr index --repair``: rebuild what can be rebuilt of a damaged index from everything that
survives, and never delete what it cannot rebuild better.

Sources, in order of trust, for where each video's frames are: the journal's shard lines, the
shards' own ``.json`` files, then the ``videos.<gen>.json`` of every generation still on disk.
A source is taken only when its shard's frame file (and patch file, for an index with patches)
exists, holds the video's rows and matches the checksum recorded for it (the journal's, else a
generation's ``checksums.<gen>.json``; shards written before checksums are checked by size).
Then repair

* writes back what was missing: journal lines for videos only the other sources knew, a shard's
  ``.json`` from the journal, the manifest from the journal or the last generation;
* re-encodes the videos it could not recover whose source files still exist (the same model
  and sampling, as an ordinary run would);
* writes a new generation (videos, pooled vectors, ANN, checksums) from the recovered shards;
* moves anything it cannot use (a corrupt shard, an unreadable manifest or shard ``.json``, shard
  files no video needs) into ``INDEX/quarantine/<time>/`` instead of deleting it;
* reports what it kept, rebuilt, re-encoded, quarantined and lost (the CLI exits 1 when a video
  was lost: its frames are gone and its source file too).

Nothing it needs is ever lost by running it: a repair that cannot establish the index's model
(no manifest and no journal record of it) stops before it changes anything.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from video_retrieval.errors import UserError
from video_retrieval.index import files as store
from video_retrieval.index.build import (
    ann_options,
    encode_local,
    finalize,
    make_plan,
    pool_videos,
)
from video_retrieval.index.checksums import mismatch
from video_retrieval.index.config import IndexConfig, load_models, reuse_index_settings
from video_retrieval.models.weights import manifest_weights

QUARANTINE = "quarantine"
#: what a video's entry needs to be searchable
ENTRY_KEYS = ("path", "shard", "offset", "length", "timestamps")


@dataclass
class Report:
    kept: list[str] = field(default_factory=list)  # videos recovered as they were
    rebuilt: list[str] = field(default_factory=list)  # files written anew
    reencoded: list[str] = field(default_factory=list)  # videos encoded again from their source
    quarantined: list[str] = field(default_factory=list)  # files moved aside, not deleted
    lost: list[dict] = field(default_factory=list)  # videos gone: {"path", "reason"}


class Quarantine:
    """Moves files of an index into ``INDEX/quarantine/<time>/`` (same file system: a rename)."""

    def __init__(self, index_dir: Path, report: Report):
        self.index_dir = index_dir
        self.root = index_dir / QUARANTINE / time.strftime("%Y%m%d-%H%M%S")
        self.report = report

    def move(self, path: Path) -> None:
        if not path.exists():
            return
        dest = self.root / path.relative_to(self.index_dir)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, dest)
        self.report.quarantined.append(str(dest.relative_to(self.index_dir)))


# -- the sources -------------------------------------------------------------------------------
def _read_json_or_none(path: Path):
    try:
        return store.read_json(path)
    except (OSError, ValueError):
        return None


def _generation_videos(index_dir: Path) -> list[tuple[str, list]]:
    """``(file name, entries)`` of every readable ``videos.*.json``, newest generation first."""
    out = []
    for p in sorted(index_dir.glob("videos.*.json"), reverse=True):
        got = _read_json_or_none(p)
        if isinstance(got, list):
            out.append((p.name, [v for v in got if isinstance(v, dict)]))
    out += [(n, v) for n, v in _v1(index_dir)]
    return out


def _v1(index_dir: Path):
    got = _read_json_or_none(index_dir / store.V1_FILES["videos"])
    return [(store.V1_FILES["videos"], got)] if isinstance(got, list) else []


def _shard_checksums(index_dir: Path, state: store.IndexState) -> dict[str, dict]:
    """file name -> recorded size and checksum: the journal's, else a generation's."""
    records: dict[str, dict] = {}
    for p in sorted(index_dir.glob("checksums.*.json")):
        got = _read_json_or_none(p)
        if isinstance(got, dict) and isinstance(got.get("shards"), dict):
            records.update(got["shards"])
    for files in state.shard_files.values():
        records.update(files)
    return records


class Shards:
    """Which shards can serve frames, each checked once (a bad one is quarantined)."""

    def __init__(self, index_dir: Path, records: dict, patches: bool, quarantine: Quarantine):
        self.index_dir, self.records, self.patches = index_dir, records, patches
        self.quarantine = quarantine
        self.rows: dict[str, int] = {}
        self.bad: dict[str, str] = {}

    def check(self, name: str) -> str | None:
        """Why shard ``name`` cannot serve frames, or None (its row count is in ``rows``)."""
        if name in self.rows:
            return None
        if name in self.bad:
            return self.bad[name]
        files = [f"{name}.npy"] + ([f"{name}.patches.npy"] if self.patches else [])
        why, rows = None, []
        for file in files:
            path = store.shard_path(self.index_dir, file)
            why = mismatch(path, self.records.get(file), full=True)
            if why is None:
                try:
                    rows.append(np.load(path, mmap_mode="r").shape[0])
                except FileNotFoundError:
                    why = "is missing"
                except (ValueError, OSError, EOFError):
                    why = "is not a readable array"
            if why:
                why = f"shard file {file} {why}"
                break
        if why:
            self.bad[name] = why
            if "missing" not in why:  # damaged: kept aside, never baked into the index
                for suffix in (".npy", ".patches.npy", ".json"):
                    self.quarantine.move(store.shard_path(self.index_dir, name + suffix))
            return why
        self.rows[name] = min(rows)
        return None

    def holds(self, entry: dict) -> bool:
        """Does the (checked) shard hold every row of ``entry``?"""
        return self.rows[entry["shard"]] >= int(entry["offset"]) + int(entry["length"])


# -- the repair --------------------------------------------------------------------------------
def _config_of(manifest: dict | None, state: store.IndexState) -> dict | None:
    if manifest is not None:
        keys = ("fingerprint", "model", "embed_dim", "store")
        return {k: manifest[k] for k in keys if k in manifest}
    return state.config


def _candidates(index_dir: Path, state: store.IndexState, quarantine: Quarantine):
    """path -> entries that say where its frames are, most trusted first; and the journal's
    drops (videos pruned on purpose are not brought back from older files)."""
    out: dict[str, list[tuple[str, dict]]] = {}
    for path, e in state.videos.items():
        out.setdefault(path, []).append(("journal", e))
    shard_dir = index_dir / store.SHARDS
    for p in sorted(shard_dir.glob("*.json")) if shard_dir.is_dir() else []:
        meta = _read_json_or_none(p)
        if not isinstance(meta, dict) or not isinstance(meta.get("videos"), list):
            quarantine.move(p)
            continue
        for v in meta["videos"]:
            if isinstance(v, dict) and "path" in v:
                out.setdefault(v["path"], []).append((f"shards/{p.name}", {**v, "shard": p.stem}))
    for name, entries in _generation_videos(index_dir):
        for v in entries:
            if "path" in v and "shard" in v:
                out.setdefault(v["path"], []).append((name, v))
    return out


def _complete(entry: dict, others: list[dict]) -> dict:
    """``entry`` with what another source of the same rows adds (old journal lines lack the
    timestamps, duration and fps that the shard files hold)."""
    out = dict(entry)
    for o in others:
        if (o.get("shard"), o.get("offset"), o.get("length")) == (
            entry.get("shard"), entry.get("offset"), entry.get("length"),
        ):  # fmt: skip
            for k, v in o.items():
                out.setdefault(k, v)
    return out


def _choose(path: str, cands: list[tuple[str, dict]], shards: Shards):
    """(entry, None) for the first source whose shard holds the rows, else (None, why)."""
    whole = [e for _, e in cands]
    why = "no shard holds its frames"
    for _, e in cands:
        e = _complete(e, whole)
        if any(k not in e for k in ENTRY_KEYS):
            why = "its entries lack the frame timestamps"
            continue
        bad = shards.check(e["shard"])
        if bad:
            why = bad
            continue
        if not shards.holds(e):
            why = f"shard {e['shard']} holds fewer rows than it needs"
            continue
        return e, None
    return None, why


def run_repair(index_dir, cfg: IndexConfig | None = None) -> dict:
    """Repair ``index_dir`` (see the module doc); returns the report as a dict."""
    cfg = (cfg or IndexConfig()).check()
    index_dir = Path(index_dir).expanduser().resolve()
    looks = [index_dir / store.MANIFEST, index_dir / store.JOURNAL, index_dir / store.SHARDS]
    if not index_dir.is_dir() or not any(p.exists() for p in looks):
        raise UserError(f"{index_dir} is not an index folder (nothing to repair)")
    report = Report()
    with store.IndexLock(index_dir, wait=cfg.wait):
        store.clean_temp_files(index_dir)
        try:
            manifest, manifest_bad = store.read_manifest(index_dir), False
        except store.IndexDamaged:
            manifest, manifest_bad = None, True
        state = store.replay(index_dir)
        config = _config_of(manifest, state)
        if config is None:
            raise UserError(
                f"cannot repair {index_dir}: manifest.json is unusable and the journal does not "
                "record the model (an index from an older vr); nothing was changed. Build a new "
                "index (the shards stay where they are)"
            )
        quarantine = Quarantine(index_dir, report)
        if manifest_bad:
            quarantine.move(index_dir / store.MANIFEST)
        manifest_rebuilt = manifest is None
        if manifest is None:
            manifest = {
                "format_version": store.FORMAT_VERSION, **config,
                "counts": {"videos": 0, "frames": 0, "shards": 0, "failures": 0},
                "complete": False,
            }  # fmt: skip
        patches = bool(config["fingerprint"].get("patches"))
        shards = Shards(index_dir, _shard_checksums(index_dir, state), patches, quarantine)
        sink = None
        if (config.get("store") or {}).get("kind") == "milvus":  # frames in Milvus, not shards/
            from video_retrieval.index import milvus_write

            cfg = milvus_write.resolve_store(index_dir, cfg, {**manifest, "store": config["store"]})
            manifest["store"] = milvus_write.restore_collections(index_dir, cfg, manifest, report)
            sink = milvus_write.make_sink(cfg, index_dir, manifest["store"])
            shards = milvus_write.MilvusShards(sink.calls, manifest["store"], patches)
        cands = _candidates(index_dir, state, quarantine)
        chosen, lost = {}, {}
        for path in sorted(cands):
            if path in state.failures or (path not in state.videos and path in state.dropped):
                continue  # failed or pruned on purpose: not brought back
            entry, why = _choose(path, cands[path], shards)
            if entry is None:
                lost[path] = why
            else:
                chosen[path] = entry
        run = store.next_run_id(index_dir)
        journal = store.Journal(index_dir, run, 0)
        events = [{"event": "config", **config}]
        by_shard: dict[str, list[dict]] = {}
        for path, e in chosen.items():
            j = state.videos.get(path)
            same = j is not None and (j["shard"], j["offset"], j["length"]) == (
                e["shard"], e["offset"], e["length"],
            )  # fmt: skip
            report.kept.append(path)
            if not same:
                by_shard.setdefault(e["shard"], []).append(e)
        for name, entries in sorted(by_shard.items()):
            videos = [{k: v for k, v in e.items() if k != "shard"} for e in entries]
            files = {f: r for f, r in shards.records.items() if f.startswith(name + ".")}
            events.append({"event": "shard", "shard": name, "videos": videos, "files": files})
            report.rebuilt.append(f"journal/{journal.path.name} (shard {name})")
        for path, why in lost.items():
            if path in state.videos:
                events.append({"event": "drop", "path": path, "reason": f"repair: {why}"})
        journal.append(*events)
        _rewrite_shard_json(index_dir, chosen, report)
        state = store.replay(index_dir)

        repaired_cfg = reuse_index_settings(replace(cfg, encoder_spec=None), manifest)
        encoder, pool_agg, _, _, _ = load_models(repaired_cfg)
        sources = [Path(p) for p in lost if os.path.isfile(p)]
        if sources:  # frames gone, source still there: encode it again, as a run would
            repaired_cfg = replace(repaired_cfg, patches=int(repaired_cfg.patches or 0))
            todo, plan_events, _ = make_plan(sources, state, prune=False)
            store.Journal(index_dir, run + 1, 0).append(*plan_events)
            encode_local(todo, repaired_cfg, encoder, index_dir, run + 1, False, sink)
            state = store.replay(index_dir)
            report.reencoded = sorted(p for p in map(str, sources) if p in state.videos)
        report.lost = [{"path": p, "reason": why} for p, why in lost.items()
                       if p not in state.videos]  # fmt: skip
        opts = ann_options(cfg, encoder, pool_agg, manifest)
        if sink is not None:
            manifest = milvus_write.finalize(index_dir, state, pool_agg, manifest, opts,
                                             pool_videos, cfg.milvus_token, run + 1)  # fmt: skip
        else:
            manifest = finalize(index_dir, state, pool_agg, manifest, opts)
        report.rebuilt += sorted(store.manifest_files(manifest).values()) + [store.MANIFEST]
        _quarantine_unused(index_dir, state, manifest, quarantine)
    return {
        "index": str(index_dir),
        "repaired": True,
        "manifest_rebuilt": manifest_rebuilt,
        "kept": len(report.kept),
        "rebuilt": sorted(set(report.rebuilt)),
        "reencoded": report.reencoded,
        "quarantined": report.quarantined,
        "lost": report.lost,
        "videos": manifest["counts"]["videos"],
        "frames": manifest["counts"]["frames"],
        "ann": manifest["ann"],
        "weights": manifest_weights(manifest),
    }


def _rewrite_shard_json(index_dir: Path, chosen: dict[str, dict], report: Report) -> None:
    """Write the ``.json`` of every shard that serves videos but lost its own."""
    from video_retrieval.media.atomic import atomic_write_json

    by_shard: dict[str, list[dict]] = {}
    for e in chosen.values():
        by_shard.setdefault(e["shard"], []).append(e)
    for name, entries in by_shard.items():
        path = store.shard_path(index_dir, name, ".json")
        if path.exists():
            continue
        videos = sorted(({k: v for k, v in e.items() if k != "shard"} for e in entries),
                        key=lambda v: v["offset"])  # fmt: skip
        atomic_write_json(path, {"shard": name, "videos": videos})
        report.rebuilt.append(f"shards/{path.name}")


def _quarantine_unused(index_dir: Path, state, manifest: dict, quarantine: Quarantine) -> None:
    """Shard files that neither the index nor a reader of the previous generation needs."""
    keep = state.live_shards() | store.referenced_shards(index_dir, manifest)
    shard_dir = index_dir / store.SHARDS
    for p in sorted(shard_dir.iterdir()) if shard_dir.is_dir() else []:
        if p.name.split(".")[0] not in keep and not p.name.startswith("."):
            quarantine.move(p)
