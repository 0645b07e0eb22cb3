"""Nothing lost, nothing silently wrong: repair from every surviving source, readers isolated
from updates, checksummed files, file names that are bytes (issue "Nothing lost").

Each case is a reproduction of the audit, run through the real CLI (and the Python API where the
issue names it).
"""

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
from _cli_util import TINY, box_video, one_line_error, run_cli, tiny_index

from video_retrieval.index.api import Index

VR = [sys.executable, "-m", "video_retrieval.cli"]


@pytest.fixture()
def vids(tmp_path) -> Path:
    d = tmp_path / "vids"
    for i in range(4):
        box_video(d / f"v{i}.mp4", i)
    return d


def _search_names(capsys, d, k=4) -> list[str]:
    rc, out, err = run_cli(capsys, "search", "a box", "--index", d, "--json", "-k", k)
    assert rc == 0, err
    return sorted(Path(r["video"]).name for r in json.loads(out)["results"])


# -- 1. repair never deletes ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "damage", ["journal deleted", "shard json deleted", "journal truncated", "both deleted"]
)
def test_repair_keeps_every_video_when_the_sources_are_gone(damage, vids, tmp_path, capsys):
    d = tiny_index(vids, tmp_path / "i", "--shard-size", "2")
    before = _search_names(capsys, d)
    gone = tmp_path / "moved_away"
    shutil.move(vids, gone)  # the source videos are elsewhere now: nothing can be re-encoded
    if damage in ("journal deleted", "both deleted"):
        shutil.rmtree(d / "journal")
    if damage in ("shard json deleted", "both deleted"):
        for p in (d / "shards").glob("*.json"):
            p.unlink()
    if damage == "journal truncated":
        for p in (d / "journal").glob("*.jsonl"):
            p.write_text(p.read_text().splitlines()[0] + "\n")  # the config line only
    shards_before = sorted(p.name for p in (d / "shards").glob("*.npy"))
    rc, out, err = run_cli(capsys, "index", "--index", d, "--repair", "--json")
    assert rc == 0, err
    rep = json.loads(out)
    assert rep["lost"] == [] and rep["videos"] == 4 and rep["kept"] == 4
    assert sorted(p.name for p in (d / "shards").glob("*.npy")) == shards_before  # none deleted
    assert _search_names(capsys, d) == before  # every video stays searchable
    # and the index is whole again: an ordinary run (sources back) re-encodes nothing
    shutil.move(gone, vids)
    rc, out, _ = run_cli(capsys, "index", vids, "--index", d, "--workers", "0", "--json")
    assert rc == 0 and json.loads(out)["encoded"] == 0


def test_an_ordinary_run_on_a_damaged_journal_refuses_instead_of_deleting(vids, tmp_path, capsys):
    d = tiny_index(vids, tmp_path / "i")
    shutil.rmtree(d / "journal")
    shards = sorted((d / "shards").iterdir())
    rc, _, err = run_cli(capsys, "index", vids, "--index", d, "--workers", "0")
    assert rc == 2
    one_line_error(err, "journal does not record 4", f"vr index --index {d} --repair")
    assert sorted((d / "shards").iterdir()) == shards


def test_repair_quarantines_what_it_cannot_use_and_reports_the_lost(vids, tmp_path, capsys):
    d = tiny_index(vids, tmp_path / "i", "--shard-size", "2")
    shard = sorted((d / "shards").glob("*.npy"))[0]
    data = bytearray(shard.read_bytes())
    data[-40:-24] = bytes(16)  # flipped bytes in the frames, header intact
    shard.write_bytes(bytes(data))
    shutil.move(vids, tmp_path / "gone")
    rc, out, err = run_cli(capsys, "index", "--index", d, "--repair")
    assert rc == 1, err  # something was lost
    assert "LOST 2 video(s)" in out and "moved 2 unusable file(s) aside" in out
    quarantined = list((d / "quarantine").rglob("*.npy"))
    assert [p.name for p in quarantined] == [shard.name]
    assert quarantined[0].read_bytes() == bytes(data)  # kept, byte for byte
    assert len(_search_names(capsys, d)) == 2  # the corrupt shard was not baked into the index


def test_repair_re_encodes_a_corrupt_shard_when_the_sources_exist(vids, tmp_path, capsys):
    d = tiny_index(vids, tmp_path / "i", "--shard-size", "2")
    before = _search_names(capsys, d)
    shard = sorted((d / "shards").glob("*.npy"))[1]
    data = bytearray(shard.read_bytes())
    data[-8:] = b"\xff" * 8
    shard.write_bytes(bytes(data))
    rc, out, err = run_cli(capsys, "index", "--index", d, "--repair", "--json")
    assert rc == 0, err
    rep = json.loads(out)
    assert len(rep["reencoded"]) == 2 and rep["lost"] == []
    assert any(q.endswith(shard.name) for q in rep["quarantined"])
    assert _search_names(capsys, d) == before


# -- 2. readers keep the generation they opened ----------------------------------------------------
def _update(vids: Path, d: Path, n: int) -> None:
    box_video(vids / f"new{n}.mp4", 10 + n)
    rc = subprocess.run([*VR, "index", str(vids), "--index", str(d), *TINY, "--fps", "2",
                         "--workers", "0"], capture_output=True, timeout=300).returncode  # fmt: skip
    assert rc == 0


def _wait_stopped(pid: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().split(")")[-1].split()[0] == "T":
                return
        time.sleep(0.05)
    raise AssertionError("the reader did not stop")


@pytest.mark.parametrize("updates", [1, 2])
def test_a_paused_cli_reader_survives_updates(updates, vids, tmp_path):
    """``vr search`` stops (SIGSTOP) right after it opened the index and mapped its pooled
    vectors; one update later it reads the generation it opened (kept on disk), two updates
    later it reopens the newest one: never 'damaged', never a mix."""
    d = tiny_index(vids, tmp_path / "i")
    env = {**os.environ, "VR_TEST_PAUSE_AFTER_OPEN": "1"}
    reader = subprocess.Popen([*VR, "search", "a box", "--index", str(d), "--json", "-k", "10"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)  # fmt: skip
    try:
        _wait_stopped(reader.pid)
        for n in range(updates):
            _update(vids, d, n)
        reader.send_signal(signal.SIGCONT)
        out, err = reader.communicate(timeout=300)
    finally:
        reader.kill()
    assert reader.returncode == 0, err
    names = {Path(r["video"]).name for r in json.loads(out)["results"]}
    # the generation it opened (4 videos) after one update; the newest (6) after two
    assert len(names) == (4 if updates == 1 else 6)


def test_an_open_python_index_survives_two_updates(vids, tmp_path):
    d = tiny_index(vids, tmp_path / "i")
    searched, opened = Index.open(d), Index.open(d)
    first = [(h.video, h.score) for h in searched.search("a box", k=10)]
    assert len(first) == 4
    _update(vids, d, 0)
    _update(vids, d, 1)
    # the one that searched holds its generation's files open: it answers as before
    assert [(h.video, h.score) for h in searched.search("a box", k=10)] == first
    # the one that had not read its ANN yet finds that generation gone: it moves to the newest
    assert len(opened.search("a box", k=10)) == 6 and len(opened) == 6
    searched.refresh()  # and moving on is one call
    assert len(searched.search("a box", k=10)) == 6


# -- 3. checksums ----------------------------------------------------------------------------
def test_flipped_bytes_in_the_ann_are_caught_before_a_search_answers(vids, tmp_path, capsys):
    d = tiny_index(vids, tmp_path / "i")
    m = json.loads((d / "manifest.json").read_text())
    ann = d / m["files"]["ann"]
    data = bytearray(ann.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 16] = b"\x7f" * 16  # header intact
    ann.write_bytes(bytes(data))
    rc, out, err = run_cli(capsys, "search", "a box", "--index", d, "--json")
    assert rc == 2 and out == ""
    one_line_error(err, m["files"]["ann"], "checksum", "--repair")


def test_scores_outside_the_cosine_range_never_reach_a_user(vids, tmp_path, capsys):
    """An ANN without a recorded checksum (an older index) answering garbage is refused too."""
    d = tiny_index(vids, tmp_path / "i")
    m = json.loads((d / "manifest.json").read_text())
    del m["checksums"]
    (d / "manifest.json").write_text(json.dumps(m))
    import faiss

    ann = faiss.read_index(str(d / m["files"]["ann"]))
    x = ann.reconstruct_n(0, ann.ntotal) * 50.0  # vectors no longer unit length
    bad = faiss.IndexFlatIP(x.shape[1])
    bad.add(x)
    faiss.write_index(bad, str(d / m["files"]["ann"]))
    rc, _, err = run_cli(capsys, "search", "a box", "--index", d, "--rerank", "none")
    assert rc == 2
    one_line_error(err, m["files"]["ann"], "not cosines")


def test_verify_checks_every_file_and_names_the_corrupt_one(vids, tmp_path, capsys):
    d = tiny_index(vids, tmp_path / "i", "--shard-size", "2")
    rc, out, err = run_cli(capsys, "index", "--index", d, "--verify")
    assert rc == 0, err
    assert "all 8 files match their checksums" in out  # 4 generation files, 2 shards x (npy, json)
    shard = sorted((d / "shards").glob("*.npy"))[0]
    data = bytearray(shard.read_bytes())
    data[-4:] = b"\x00\x7c\x00\x7c"  # two fp16 infinities
    shard.write_bytes(bytes(data))
    rc, _, err = run_cli(capsys, "index", "--index", d, "--verify")
    assert rc == 2
    one_line_error(err, shard.name, "checksum", "--repair")


# -- 4. file names are bytes on disk ---------------------------------------------------------------
def test_names_that_are_not_utf8_or_hold_newlines_are_indexed_searched_and_printed(tmp_path,
                                                                                   capsys):  # fmt: skip
    d = tmp_path / "vids"
    d.mkdir()
    odd = [os.fsdecode(b"caf\xe9.mp4"), "two\nlines.mp4", "plain.mp4"]
    for i, name in enumerate(odd):
        box_video(d / f"plain{i}.mp4", i).rename(d / name)  # ffmpeg-python takes str names only
    idx = tiny_index(d, tmp_path / "i")
    rc, out, err = run_cli(capsys, "search", "a box", "--index", idx, "-k", "3")
    assert rc == 0, err
    lines = [x for x in out.splitlines() if x.strip() and x.lstrip()[0].isdigit()]
    assert len(lines) == 3  # one hit per line, whatever the names hold
    assert any("caf\\xe9.mp4" in x for x in lines) and any("two\\nlines.mp4" in x for x in lines)
    rc, out, _ = run_cli(capsys, "search", "a box", "--index", idx, "-k", "3", "--json")
    names = sorted(Path(r["video"]).name for r in json.loads(out)["results"])
    assert names == sorted(odd)  # JSON round-trips the names (surrogate escapes)
    assert len(np.unique(names)) == 3


def test_vr_serve_answers_for_names_that_are_not_utf8(tmp_path):
    from fastapi.testclient import TestClient

    from video_retrieval.web.app import create_app
    from video_retrieval.web.config import ServeConfig
    from video_retrieval.web.state import load_state

    d = tmp_path / "vids"
    d.mkdir()
    odd = [os.fsdecode(b"caf\xe9.mp4"), "two\nlines.mp4"]
    for i, name in enumerate(odd):
        box_video(d / f"plain{i}.mp4", i, seconds=4.0).rename(d / name)
    idx = tiny_index(d, tmp_path / "i")
    st = load_state(ServeConfig(index=idx, cache_dir=tmp_path / "cache"))
    with TestClient(create_app(state=st), base_url="http://127.0.0.1") as c:
        r = c.get("/api/search", params={"q": "a box", "k": 2})
        assert r.status_code == 200, r.text
        hits = r.json()["results"]
        # UTF-8 JSON for browsers: a byte that is not UTF-8 shown as \xNN (as ls -b does)
        assert sorted(Path(h["video"]).name for h in hits) == ["caf\\xe9.mp4", "two\nlines.mp4"]
        for h in hits:
            assert c.get(h["thumbnail"]).status_code == 200
            assert c.get(h["media"]).status_code == 200
            r = c.get("/api/localize", params={"id": h["id"], "q": "a box"})
            assert r.status_code == 200, r.text
            assert r.json()["moments"]
