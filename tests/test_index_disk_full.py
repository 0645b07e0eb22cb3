"""A disk that fills up during `vr index`: one line naming the file, the version of the index
that was there stays whole and searchable, and the same command resumes once there is room.

A real full disk: a small tmpfs (needs root to mount, as in CI's container; skipped otherwise)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from _cli_util import TINY, box_video, one_line_error, run_cli


@pytest.fixture()
def small_disk(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)  # fmt: skip
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()[:120]}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def resize(mnt: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mnt)], check=True)


def test_a_full_disk_loses_nothing_and_the_run_resumes(small_disk, tmp_path, capsys):
    few, many = tmp_path / "few", tmp_path / "many"
    for i in range(40):
        box_video(many / f"v{i:02d}.mp4", i)
    few.mkdir()
    for i in range(3):
        shutil.copy(many / f"v{i:02d}.mp4", few)
    d = small_disk / "idx"
    rc, _, err = run_cli(capsys, "index", few, "--index", d, *TINY, "--fps", "2", "--workers", "0")
    assert rc == 0, err

    def search() -> list:
        rc, out, err = run_cli(capsys, "search", "a box", "--index", d, "--json", "-k", "50")
        assert rc == 0, err
        return [(r["video"], r["score"]) for r in json.loads(out)["results"]]

    before = search()
    resize(small_disk, "64k")  # what the first version uses, and a little more
    rc, _, err = run_cli(capsys, "index", many, "--index", d, "--workers", "0")
    assert rc == 2
    line = one_line_error(err, "the disk is full: free space and run the same command again")
    assert str(d) in line  # the file it could not write
    assert search() == before  # the version that was there is whole, as it was
    resize(small_disk, "16m")
    rc, out, err = run_cli(capsys, "index", many, "--index", d, "--workers", "0", "--json")
    assert rc == 0, err
    assert json.loads(out)["videos"] == 43
    rc, out, err = run_cli(capsys, "index", "--index", d, "--verify")
    assert rc == 0 and "match their checksums" in out, err
    assert len(search()) == 43
