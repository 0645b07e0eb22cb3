"""Honest defaults and failures (issue "Trust"): every reproduction of the issue, through the CLI.

Each user-facing error is one line on stderr, exit code 2, no traceback; damaged indexes name the
file and the repair command; no command silently uses random weights.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import ffmpeg as ffmpeg_python
import numpy as np
import pytest
from _cli_util import TINY, box_video, one_line_error, run_cli, tiny_index

from video_retrieval.index.api import Index
from video_retrieval.media.write import ffmpeg_exe
from video_retrieval.models.assets import DEMO_RETRIEVAL

VR = [sys.executable, "-m", "video_retrieval.cli"]
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def vids(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("trust_vids")
    for i in range(4):
        box_video(d / f"v{i}.mp4", i)
    return d


def run_vr(*argv, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*VR, *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **OFFLINE, **(env or {})},
    )


# -- 1. no silent random weights ----------------------------------------------------------------
def test_default_model_is_a_real_clip_and_offline_says_how(vids, tmp_path):
    """No flags: ViT-B-32 + laion2b_s34b_b79k; offline the run stops with one line naming a
    flag that works, and the folder it created is gone."""
    d = tmp_path / "idx"
    res = run_vr("index", vids, "--index", d, env={"HF_HOME": str(tmp_path / "hf")})
    assert res.returncode == 2
    line = one_line_error(res.stderr, "'ViT-B-32'/'laion2b_s34b_b79k'", "--pretrained /path/")
    assert "--checkpoint" not in line
    assert not d.exists()  # a failed first run removes the folder it created


@pytest.mark.parametrize("command", ["index", "localize", "cache"])
def test_a_model_without_weights_is_refused(command, vids, tmp_path, capsys):
    argv = {
        "index": ["index", vids, "--index", tmp_path / "i"],
        "localize": ["localize", vids / "v0.mp4", "a box"],
        "cache": ["cache", "--videos", vids, "--out", tmp_path / "c"],
    }[command]
    rc, _, err = run_cli(capsys, *argv, "--model", "vr-tiny")
    assert rc == 2
    one_line_error(err, "--model vr-tiny has no weights", "--pretrained", "--random-weights")


def test_the_refusal_names_the_default_tag_first(vids, capsys):
    """open_clip's ViT-B-32 has 20-odd tags; the refusal names the one every command defaults to
    (laion2b_s34b_b79k) first, not only the first four of open_clip's list."""
    rc, _, err = run_cli(capsys, "localize", vids / "v0.mp4", "a box", "--model", "ViT-B-32")
    assert rc == 2
    one_line_error(err, "(tags for ViT-B-32: laion2b_s34b_b79k, openai, ", "more)")


def test_random_weights_are_said_loudly_and_recorded(vids, tmp_path, capsys):
    rc, out, err = run_cli(capsys, "index", vids, "--index", tmp_path / "i", *TINY, "--json",
                           "--workers", "0")  # fmt: skip
    assert rc == 0 and "RANDOM weights" in err and "meaningless" in err
    assert json.loads(out)["weights"] == {"kind": "random", "model": "vr-tiny", "seed": 0}
    manifest = json.loads((tmp_path / "i" / "manifest.json").read_text())
    assert manifest["model"]["weights"]["kind"] == "random"
    rc, out, err = run_cli(capsys, "search", "a box", "--index", tmp_path / "i", "--json")
    assert rc == 0 and "RANDOM weights" in err


# -- 2. one meaning per flag ----------------------------------------------------------------------
def test_checkpoint_takes_an_open_clip_state_dict(vids, tmp_path, capsys):
    import torch
    from video_retrieval.encoders.factory import create_encoder

    enc = create_encoder("vr-tiny", seed=3)
    state = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(enc.model.state_dict(), state)
    d = tmp_path / "i"
    rc, out, err = run_cli(capsys, "index", vids, "--index", d, "--model", "vr-tiny",
                           "--checkpoint", state, "--workers", "0", "--json")  # fmt: skip
    assert rc == 0, err
    s = json.loads(out)
    assert s["weights"] == {"kind": "file", "model": "vr-tiny", "path": str(state.resolve())}
    assert "RANDOM" not in err
    rc, out, err = run_cli(capsys, "search", "a box", "--index", d, "--json", "-k", "1")
    assert rc == 0 and len(json.loads(out)["results"]) == 1  # rebuilt from the manifest


def test_missing_weight_files_say_no_such_file(vids, tmp_path, capsys):
    for flag in ("--pretrained", "--checkpoint"):
        rc, _, err = run_cli(capsys, "index", vids, "--index", tmp_path / "i", "--model",
                             "ViT-B-32", flag, "/nonexistent.bin")  # fmt: skip
        assert rc == 2
        one_line_error(err, "no such file: /nonexistent.bin")
    assert not (tmp_path / "i").exists()


def test_a_moment_head_is_not_an_index_checkpoint(vids, tmp_path, capsys):
    from video_retrieval.models.assets import DEMO_MOMENTS

    if not DEMO_MOMENTS.is_file():
        pytest.skip("no bundled moment head")
    rc, _, err = run_cli(capsys, "index", vids, "--index", tmp_path / "i", "--checkpoint",
                         DEMO_MOMENTS)  # fmt: skip
    assert rc == 2
    one_line_error(err, "moment-head checkpoint", "vr localize --checkpoint")


# -- 4. model settings travel with the model ----------------------------------------------------------
def test_checkpoint_sampling_is_the_default_and_reindex_reuses_the_manifest(vids, tmp_path, capsys):
    d = tmp_path / "i"
    rc, out, err = run_cli(capsys, "index", vids / "v0.mp4", vids / "v1.mp4", "--index", d,
                           "--checkpoint", DEMO_RETRIEVAL, "--workers", "0", "--json")  # fmt: skip
    assert rc == 0, err
    s = json.loads(out)
    # the demo model trained on 8 frames between the first and last frame centres
    assert s["sampling"] == {"fps": None, "num_frames": 8, "symmetric_window": True}
    assert s["weights"]["kind"] == "vr_train_checkpoint"
    idx = Index.open(d)
    assert [v["length"] for v in idx.videos] == [8, 8]
    # 2 s at 10 fps: 8 segments of [0.05 s, 1.95 s] (first to last frame centre); each takes
    # the frame presented at its midpoint (frames start every 0.1 s)
    mid = 0.05 + (np.arange(8) + 0.5) * (1.9 / 8)
    want = np.floor(mid * 10 + 1e-6) / 10
    np.testing.assert_allclose(idx.videos[0]["timestamps"], want, atol=1e-9)
    # an incremental run needs only the inputs: the manifest names the checkpoint
    rc, out, err = run_cli(capsys, "index", vids, "--index", d, "--workers", "0", "--json")
    assert rc == 0, err
    s = json.loads(out)
    assert (s["new"], s["unchanged"], s["videos"]) == (2, 2, 4)
    # a conflicting flag: one line naming the flag
    rc, _, err = run_cli(capsys, "index", vids, "--index", d, "--fps", "1")
    assert rc == 2
    one_line_error(err, "differs in the sampling (--fps/--num-frames)", "vr train checkpoint")


# -- 5. concurrent writers ---------------------------------------------------------------------------
def test_two_concurrent_writers_with_different_inputs(vids, tmp_path):
    d = tmp_path / "i"
    cmd = ["index", "--index", d, *TINY, "--fps", "2", "--workers", "0", "--json"]
    env = {**os.environ, **OFFLINE}
    procs = [
        subprocess.Popen([*VR, *map(str, cmd), str(vids / f"v{i}.mp4"), str(vids / f"v{i + 2}.mp4")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for i in (0, 1)
    ]  # fmt: skip
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    journals = sorted(p.name for p in (d / "journal").iterdir())
    assert journals == ["00000-000.jsonl", "00001-000.jsonl"]  # unique run ids
    idx = Index.open(d)
    assert sorted(Path(v["path"]).name for v in idx.videos) == [f"v{i}.mp4" for i in range(4)]
    hits = idx.search("a box", k=4, rerank="none")
    assert len(hits) == 4
    # a rerun of everything: nothing to encode, all searchable
    res = run_vr(*cmd, vids)
    assert res.returncode == 0 and json.loads(res.stdout)["encoded"] == 0


def test_a_writer_that_does_not_wait_says_who_holds_the_lock(vids, tmp_path, capsys):
    from video_retrieval.index.files import IndexLock

    d = tiny_index(vids, tmp_path / "i")
    capsys.readouterr()
    with IndexLock(d):
        rc, _, err = run_cli(capsys, "index", vids, "--index", d, "--no-wait")
    assert rc == 2
    one_line_error(err, "is being written by vr index (pid", "wait for it")


# -- 6. damage, disks, temporary files ------------------------------------------------------------
def _damage(d: Path, what: str) -> str:
    m = json.loads((d / "manifest.json").read_text())
    files = m.get("files", {})
    if what == "empty ann":
        (d / files["ann"]).write_bytes(b"")
        return files["ann"]
    if what == "truncated ann":
        p = d / files["ann"]
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
        return files["ann"]
    if what == "deleted shard":
        shard = sorted((d / "shards").glob("*.npy"))[0]
        shard.unlink()
        return shard.name
    if what == "invalid manifest":
        (d / "manifest.json").write_text("{not json")
        return "manifest.json"
    if what == "invalid videos":
        (d / files["videos"]).write_text("[{")
        return files["videos"]
    if what == "truncated pooled":
        p = d / files["pooled"]
        p.write_bytes(p.read_bytes()[:100])
        return files["pooled"]
    raise ValueError(what)


@pytest.mark.parametrize(
    "what",
    ["empty ann", "truncated ann", "deleted shard", "invalid manifest", "invalid videos",
     "truncated pooled"],
)  # fmt: skip
def test_damaged_index_is_one_line_and_repairs(what, vids, tmp_path, capsys):
    d = tiny_index(vids, tmp_path / "i", "--shard-size", "2")
    capsys.readouterr()
    name = _damage(d, what)
    rc, _, err = run_cli(capsys, "search", "a box", "--index", d)
    assert rc == 2
    one_line_error(err, name, f"vr index --index {d} --repair")
    rc, out, err = run_cli(capsys, "index", "--index", d, "--repair", "--json")
    assert rc == 0, err
    rep = json.loads(out)
    assert rep["lost"] == []
    assert rep["manifest_rebuilt"] == (what == "invalid manifest")
    # the deleted shard's two videos are encoded again from their source files
    assert len(rep["reencoded"]) == (2 if what == "deleted shard" else 0)
    rc, out, err = run_cli(capsys, "search", "a box", "--index", d, "--json", "-k", "4")
    assert rc == 0, err
    assert len(json.loads(out)["results"]) == 4
    rc, out, _ = run_cli(capsys, "index", vids, "--index", d, "--workers", "0", "--json")
    assert rc == 0 and json.loads(out)["encoded"] == 0 and len(Index.open(d)) == 4


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_full_or_read_only_disk_during_indexing(code, vids, tmp_path, capsys, monkeypatch):
    import video_retrieval.media.atomic as atomic

    d = tiny_index(vids, tmp_path / "i", "--shard-size", "1")
    before = [v["path"] for v in Index.open(d).videos]
    extra = tmp_path / "more"
    box_video(extra / "w.mp4", 7)
    real = atomic.atomic_write

    def failing(path, write):
        path = Path(path)
        if path.parent.name == "shards":  # the disk fills up while a shard is written
            tmp = atomic.tmp_path(path)
            tmp.write_bytes(b"partial")
            try:
                raise OSError(code, os.strerror(code), str(tmp))
            finally:
                tmp.unlink()
        return real(path, write)

    monkeypatch.setattr(atomic, "atomic_write", failing)
    capsys.readouterr()
    rc, _, err = run_cli(capsys, "index", extra, "--index", d, "--workers", "0")
    assert rc == 2
    want = "the disk is full" if code == errno.ENOSPC else "read-only"
    one_line_error(err, want)
    monkeypatch.undo()
    assert [v["path"] for v in Index.open(d).videos] == before  # nothing lost, still searchable
    assert not list(d.rglob(".*tmp*"))
    rc, out, _ = run_cli(capsys, "index", extra, "--index", d, "--workers", "0", "--json")
    assert rc == 0 and json.loads(out)["videos"] == len(before) + 1


def test_leftover_temp_files_of_a_killed_first_run_do_not_block(vids, tmp_path, capsys):
    d = tmp_path / "i"
    d.mkdir()
    (d / ".manifest.json.tmp4242").write_text("{")  # killed while writing its first manifest
    tiny_index(vids, d)
    assert not list(d.rglob(".*tmp*")) and len(Index.open(d)) == 4


# -- 9. truncated files ---------------------------------------------------------------------------
def test_truncated_faststart_mp4_is_a_failure_not_a_short_video(vids, tmp_path, capsys):
    src = box_video(tmp_path / "long.mp4", 1, seconds=10.0)
    fast = tmp_path / "in" / "faststart.mp4"
    fast.parent.mkdir()
    ffmpeg_python.input(str(src)).output(str(fast), c="copy", movflags="+faststart").run(
        cmd=ffmpeg_exe(), quiet=True, overwrite_output=True
    )
    data = fast.read_bytes()
    fast.write_bytes(data[: len(data) // 2])
    d = tmp_path / "i"
    rc, out, err = run_cli(capsys, "index", fast.parent, vids / "v0.mp4", "--index", d, *TINY,
                           "--workers", "0", "--json")  # fmt: skip
    assert rc == 0, err
    s = json.loads(out)
    assert s["videos"] == 1
    [failed] = s["failed"]
    assert failed["path"] == str(fast) and "truncated" in failed["reason"]
    assert "10.00s the container declares" in failed["reason"]
    lines = [json.loads(x) for x in (d / "failures.jsonl").read_text().splitlines()]
    assert [x["path"] for x in lines] == [str(fast)]


# -- errors are one line, tracebacks on request -----------------------------------------------------
def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback(tmp_path):
    d = tmp_path / "i"
    d.mkdir()
    (d / "manifest.json").write_text(json.dumps({"fingerprint": {}, "format_version": 2}))
    res = run_vr("search", "a box", "--index", d)
    assert res.returncode in (2, 3)
    one_line_error(res.stderr)
    res = run_vr("search", "a box", "--index", d, "--debug")
    assert "Traceback" in res.stderr
    res = run_vr("search", "a box", "--index", d, env={"VR_DEBUG": "1"})
    assert "Traceback" in res.stderr


def test_localize_refuses_a_truncated_file_as_index_does(tmp_path, capsys):
    src = box_video(tmp_path / "long.mp4", 1, seconds=10.0)
    fast = tmp_path / "faststart.mp4"
    ffmpeg_python.input(str(src)).output(str(fast), c="copy", movflags="+faststart").run(
        cmd=ffmpeg_exe(), quiet=True, overwrite_output=True
    )
    fast.write_bytes(fast.read_bytes()[: fast.stat().st_size // 2])
    rc, out, err = run_cli(capsys, "localize", fast, "a box", *TINY)
    assert rc == 2 and out == ""
    one_line_error(err, "truncated", "10.00s the container declares")
    queries = tmp_path / "q.jsonl"
    queries.write_text(json.dumps({"query": "a box", "video": str(fast)}) + "\n")
    rc, _, err = run_cli(capsys, "localize", "--queries", queries, "--out", tmp_path / "p.jsonl",
                         *TINY)  # fmt: skip
    assert rc == 2 and not (tmp_path / "p.jsonl").exists()
    one_line_error(err, "truncated")
