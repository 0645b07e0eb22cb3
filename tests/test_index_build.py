"""Batch indexing: on-disk format, incremental add/prune, changed files, bad files, fingerprints,
resume after SIGKILL (real subprocess), 2-process DDP == 1 process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _video_util import write_audio_only

from video_retrieval.errors import UserError
from video_retrieval.index.api import Index
from video_retrieval.index.files import read_events
from video_retrieval.media.write import write_video

VR = [sys.executable, "-m", "video_retrieval.cli"]
TINY = ["--model", "vr-tiny", "--random-weights"]  # tests only: random weights, said loudly
COLOURS = [
    (220, 30, 30),
    (30, 200, 40),
    (40, 60, 220),
    (230, 220, 40),
    (200, 40, 200),
    (30, 210, 210),
]


def make_video(
    path, seed: int, frames: int = 20, h: int = 48, w: int = 64, fps: float = 10.0, codec="h264"
):
    """A coloured box moving over a dark background; ``seed`` picks colour and direction."""
    c = np.array(COLOURS[seed % len(COLOURS)], np.uint8)
    x = np.full((frames, h, w, 3), 20 + 7 * (seed % 5), np.uint8)
    for t in range(frames):
        pos = int((w - 16) * (t / max(frames - 1, 1)))
        if seed % 2:
            pos = w - 16 - pos
        x[t, 16:32, pos : pos + 16] = c
    return write_video(path, x, fps=fps, gop=5, codec=codec)


def build(inputs, index_dir, **kw):
    if not kw.get("checkpoint"):
        kw.setdefault("model", "vr-tiny")
        kw.setdefault("random_weights", True)
    kw.setdefault("fps", 2.0)
    kw.setdefault("workers", 0)
    kw.setdefault("progress", False)
    return Index.build(inputs, index_dir, **kw)


def contents(index_dir) -> dict:
    """path -> (frames fp16 [T,D], timestamps, pooled vector) of an index directory."""
    d = Path(index_dir)
    files = json.loads((d / "manifest.json").read_text())["files"]
    videos = json.loads((d / files["videos"]).read_text())
    pooled = np.load(d / files["pooled"])
    out = {}
    for i, v in enumerate(videos):
        arr = np.load(d / "shards" / f"{v['shard']}.npy")[v["offset"] : v["offset"] + v["length"]]
        out[v["path"]] = (arr, np.asarray(v["timestamps"]), pooled[i])
    return out


def assert_same_contents(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_allclose(
            a[k][0].astype(np.float32), b[k][0].astype(np.float32), atol=2e-3
        )
        np.testing.assert_allclose(a[k][1], b[k][1])
        np.testing.assert_allclose(a[k][2], b[k][2], atol=2e-3)


@pytest.fixture(scope="module")
def vids(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("vids")
    for i in range(3):
        make_video(d / f"clip{i}.mp4", i)
    make_video(d / "sub" / "deeper" / "clip3.mkv", 3)
    (d / "notes.txt").write_text("not a video, and not picked up from a folder")
    return d


def test_build_writes_the_documented_layout(vids, tmp_path):
    idx = build([vids], tmp_path / "idx", shard_size=2)
    d = tmp_path / "idx"
    m = json.loads((d / "manifest.json").read_text())
    assert m["format_version"] == 2 and m["complete"] is True
    assert m["files"] == {"videos": "videos.000001.json", "pooled": "pooled.000001.npy",
                          "ann": "ann.000001.faiss", "checksums": "checksums.000001.json"}  # fmt: skip
    # every file of the generation and of each shard: its size and BLAKE2b checksum
    import hashlib

    def digest(path):
        data = path.read_bytes()
        return {"bytes": len(data), "blake2b": hashlib.blake2b(data, digest_size=16).hexdigest()}

    assert m["checksums"] == {name: digest(d / name) for name in m["files"].values()}
    shard_records = json.loads((d / m["files"]["checksums"]).read_text())["shards"]
    assert shard_records == {p.name: digest(p) for p in (d / "shards").iterdir()}
    assert m["model"]["weights"] == {"kind": "random", "model": "vr-tiny", "seed": 0}
    assert set(m["fingerprint"]) == {"encoder", "sampling", "aggregator"}
    assert m["fingerprint"]["sampling"] == {"fps": 2.0, "num_frames": None}
    assert m["fingerprint"]["aggregator"] == "mean"
    assert m["counts"]["videos"] == 4 and m["counts"]["shards"] == 2
    assert m["ann"]["type"] == "flat" and m["ann"]["recall_at_10"] == 1.0
    shards = sorted(p.name for p in (d / "shards").iterdir())
    assert shards == [
        "00000-000-000000.json", "00000-000-000000.npy", "00000-000-000001.json", "00000-000-000001.npy",
    ]  # fmt: skip
    assert not list(d.rglob(".*tmp*"))  # no temporary files left behind
    # recursive discovery, text file ignored inside folders, paths absolute and sorted
    paths = [v["path"] for v in idx.videos]
    assert paths == sorted(paths) and len(paths) == 4
    assert any(p.endswith("sub/deeper/clip3.mkv") for p in paths)
    frames = np.load(d / "shards" / "00000-000-000000.npy")
    assert frames.dtype == np.float16 and frames.shape[1] == m["embed_dim"]
    pooled = np.load(d / m["files"]["pooled"])
    assert pooled.shape == (4, m["embed_dim"]) and pooled.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(pooled, axis=1), 1.0, atol=1e-5)
    # 2 s videos at 2 fps: 4 frames each, timestamps within the video
    for v in idx.videos:
        assert v["length"] == len(v["timestamps"]) == 4
        assert 0 <= min(v["timestamps"]) and max(v["timestamps"]) < v["duration"] + 1e-6
    # pooled vector = the mean aggregator over the stored frames
    f, _ = idx.frames(0)
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    mean = f.mean(0) / np.linalg.norm(f.mean(0))
    np.testing.assert_allclose(pooled[0], mean, atol=1e-5)
    s = idx.build_summary
    assert s["new"] == 4 and s["encoded"] == 4 and s["frames_encoded"] == 16 and s["failed"] == []


def test_incremental_add_changed_and_prune(vids, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(vids, src)
    d = tmp_path / "idx"
    first = build([src], d)
    before = contents(d)
    # unchanged rerun: nothing encoded, same contents
    again = build([src], d).build_summary
    assert (again["encoded"], again["unchanged"]) == (0, 4)
    assert_same_contents(before, contents(d))
    # a new file: only it is encoded
    make_video(src / "new.webm", 4, codec="vp9")
    s = build([src], d).build_summary
    assert (s["new"], s["encoded"], s["unchanged"], s["videos"]) == (1, 1, 4, 5)
    # touched (mtime only): content hash equal -> not re-encoded
    os.utime(src / "clip0.mp4", ns=(1, 1))
    s = build([src], d).build_summary
    assert (s["changed"], s["encoded"]) == (0, 0)
    # changed content: re-encoded, its frames change, others stay
    make_video(src / "clip1.mp4", 5, frames=30)
    s = build([src], d).build_summary
    assert (s["changed"], s["encoded"]) == (1, 1)
    now = contents(d)
    p1 = str((src / "clip1.mp4").resolve())
    assert now[p1][0].shape[0] == 6 != before[p1][0].shape[0]
    p0 = str((src / "clip0.mp4").resolve())
    np.testing.assert_array_equal(now[p0][0], before[p0][0])
    # deleted: kept (reported missing) without --prune, dropped with it
    (src / "clip2.mp4").unlink()
    s = build([src], d).build_summary
    assert (s["missing"], s["videos"]) == (1, 5)
    s = build([src], d, prune=True).build_summary
    assert (s["pruned"], s["videos"]) == (1, 4)
    assert str((src / "clip2.mp4").resolve()) not in contents(d)
    # two generations stay on disk, the manifest's and the one before (readers that opened it
    # keep working across one update); shards neither of them reads are deleted
    m = json.loads((d / "manifest.json").read_text())
    files, gen = m["files"], m["generation"]
    previous = {k: v.replace(f"{gen:06d}", f"{gen - 1:06d}") for k, v in files.items()}
    for stem in ("videos", "pooled", "ann", "checksums"):
        assert sorted(p.name for p in d.glob(f"{stem}.*")) == sorted([previous[stem], files[stem]])
    live = {v["shard"] for v in json.loads((d / files["videos"]).read_text())}
    before_live = {v["shard"] for v in json.loads((d / previous["videos"]).read_text())}
    assert {p.stem for p in (d / "shards").glob("*.npy")} == live | before_live
    assert first is not None


def test_update_killed_inside_finalize_is_never_read_half_written(vids, tmp_path, monkeypatch):
    import video_retrieval.index.ann as ann_mod

    src = tmp_path / "src"
    shutil.copytree(vids, src)
    d = tmp_path / "idx"
    build([src], d)
    before = contents(d)
    make_video(src / "new.webm", 4, codec="vp9")
    (src / "clip2.mp4").unlink()

    def killed(*_a, **_k):  # dies after the new pooled/videos files, before the new ann file
        raise RuntimeError("killed while writing ann.faiss")

    monkeypatch.setattr(ann_mod, "save_ann", killed)
    with pytest.raises(RuntimeError, match="killed"):
        build([src], d, prune=True)
    # readers keep the previous generation, whole: not a mix of old and new files
    old = Index.open(d)
    assert len(old) == 4 and str((src / "clip2.mp4").resolve()) in [v["path"] for v in old.videos]
    assert old.search("a box", k=4, rerank="none")  # its shards are all still there
    assert_same_contents(before, contents(d))
    monkeypatch.undo()
    s = build([src], d, prune=True).build_summary
    assert s["videos"] == 4 and len(Index.open(d)) == 4
    fresh = tmp_path / "fresh"
    build([src], fresh)
    assert_same_contents(contents(d), contents(fresh))


def test_bad_files_are_skipped_and_listed(vids, tmp_path, capsys):
    from video_retrieval.cli import main

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    (bad / "text.mkv").write_text("hello, I am not a video\n" * 50)
    write_audio_only(bad / "tone.m4a")
    (bad / "empty.avi").write_bytes(b"")
    good = vids / "clip0.mp4"
    rc = main(["index", str(bad), str(good), str(bad / "tone.m4a"), "--index", str(tmp_path / "i"),
               *TINY, "--workers", "0", "--precision", "fp32", "--json"])  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["videos"] == 1 and out["autocast"] == "fp32"
    reasons = {Path(f["path"]).name: f["reason"] for f in out["failed"]}
    assert set(reasons) == {"corrupt.mp4", "text.mkv", "tone.m4a", "empty.avi"}
    assert all(r.strip() for r in reasons.values())
    lines = (tmp_path / "i" / "failures.jsonl").read_text().splitlines()
    assert {Path(json.loads(x)["path"]).name for x in lines} == set(reasons)
    # nothing indexable at all: non-zero exit
    rc = main(
        ["index", str(bad), "--index", str(tmp_path / "j"), *TINY, "--workers", "0", "--json"]
    )
    capsys.readouterr()
    assert rc == 1


def test_other_model_or_sampling_is_refused(vids, tmp_path):
    from video_retrieval.encoders.factory import create_encoder

    d = tmp_path / "idx"
    build([vids / "clip0.mp4"], d)
    with pytest.raises(UserError, match=r"differs in the sampling \(--fps/--num-frames\)"):
        build([vids / "clip0.mp4"], d, fps=1.0)
    with pytest.raises(UserError, match=r"differs in the model \(--model"):
        build([vids / "clip0.mp4"], d, model="vr-micro")
    with pytest.raises(UserError, match="was built with model"):
        Index.open(d, encoder=create_encoder("vr-micro"))
    # no model or sampling flags: an incremental run reuses the index's own settings
    s = Index.build([vids / "clip1.mp4"], d, workers=0, progress=False).build_summary
    assert (s["new"], s["videos"], s["sampling"]) == (1, 2, {"fps": 2.0, "num_frames": None})
    with pytest.raises(UserError, match="no such file"):
        build([vids / "missing.mp4"], d)


def _journal_videos(d: Path) -> int:
    try:
        return sum(len(e["videos"]) for e in read_events(d) if e.get("event") == "shard")
    except (OSError, KeyError):
        return 0


def test_resume_after_sigkill_equals_uninterrupted(tmp_path):
    src = tmp_path / "many"
    n = 24
    for i in range(4):
        make_video(src / f"v{i:02d}.mp4", i, frames=24, h=72, w=96, fps=12)
    for i in range(4, n):  # copies: distinct paths are distinct videos to the index
        shutil.copy(src / f"v{i % 4:02d}.mp4", src / f"v{i:02d}.mp4")
    killed = tmp_path / "killed"
    cmd = [*VR, "index", str(src), "--index", str(killed), *TINY, "--num-frames", "6", "--workers", "0",
           "--shard-size", "1", "--batch-size", "4", "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and _journal_videos(killed) < 3:
        time.sleep(0.02)
    assert proc.poll() is None, "indexing finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = _journal_videos(killed)
    assert 3 <= done < n  # killed mid-run, with committed progress
    assert json.loads((killed / "manifest.json").read_text())["complete"] is False
    # same command again: resumes, encodes only what is missing
    res = subprocess.run([*cmd, "--json"], capture_output=True, text=True, check=True)
    summary = json.loads(res.stdout)
    assert summary["encoded"] == n - done and summary["unchanged"] == done
    ref = build([src], tmp_path / "ref", fps=None, num_frames=6, batch_size=4)
    assert len(ref) == n
    assert_same_contents(contents(killed), contents(tmp_path / "ref"))


# three Python processes + Lightning DDP start-up: about a minute on 2 cores, so in CI too
def test_two_processes_equal_one(vids, tmp_path):
    d2 = tmp_path / "ddp"
    res = subprocess.run(
        [*VR, "index", str(vids), "--index", str(d2), *TINY, "--devices", "2", "--fps", "2", "--workers", "0", "--json"],
        capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads(res.stdout)
    assert summary["devices"] == 2 and summary["videos"] == 4
    ranks = {p.name.split("-")[1] for p in (d2 / "shards").glob("*.npy")}
    assert ranks == {"000", "001"}  # one shard set per rank
    build([vids], tmp_path / "one")
    assert_same_contents(contents(d2), contents(tmp_path / "one"))
