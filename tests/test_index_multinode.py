"""``vr index --num-nodes N --devices M``: Lightning multi-node DDP, run as 2 nodes x 1 process
on localhost (MASTER_ADDR=127.0.0.1, a NODE_RANK per process, one shared index folder).

Rank 0 holds the writer lock for the whole run and waits inside DDP for rank 1: had the worker
tried to take the lock too, the run would deadlock, so finishing at all shows it does not."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from video_retrieval.cli import main
from video_retrieval.index.api import Index
from video_retrieval.index.files import read_events, writer_active
from video_retrieval.media.write import write_video

VR = [sys.executable, "-m", "video_retrieval.cli"]
TINY = ["--model", "vr-tiny", "--random-weights"]
DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "RANK",
           "GROUP_RANK", "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "VR_INDEX_DDP")  # fmt: skip


def box_video(path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    x = np.full((20, 48, 64, 3), 20, np.uint8)
    colour = rng.integers(60, 255, 3).astype(np.uint8)
    for t in range(20):
        pos = int(48 * t / 19)
        pos = pos if seed % 2 else 48 - pos
        x[t, 16:32, pos : pos + 16] = colour
    return write_video(path, x, fps=10, gop=5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in DDP_ENV}
    return {**env, **extra}


def contents(d: Path) -> dict:
    idx = Index.open(d)
    return {v["path"]: (np.asarray(idx.frames(i)[0]), np.asarray(idx.pooled[i]))
            for i, v in enumerate(idx.videos)}  # fmt: skip


@pytest.fixture(scope="module")
def vids(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("multinode_vids")
    for i in range(5):
        box_video(d / f"v{i}.mp4", i)
    return d


def test_two_nodes_equal_one_process(vids, tmp_path):
    d = tmp_path / "idx"
    port = free_port()
    argv = [*VR, "index", str(vids), "--index", str(d), *TINY, "--fps", "2", "--workers", "0",
            "--num-nodes", "2", "--devices", "1", "--json"]  # fmt: skip
    procs = [
        subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), NODE_RANK=str(node)),
        )  # fmt: skip
        for node in (1, 0)  # the worker node may start first
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    (out1, err1), (out0, err0) = outs
    assert procs[0].returncode == 0, err1
    assert procs[1].returncode == 0, err0
    assert out1 == ""  # rank 0 reports
    assert "Traceback" not in err0 + err1
    summary = json.loads(out0)
    assert (summary["videos"], summary["encoded"], summary["num_nodes"]) == (5, 5, 2)
    # each rank wrote its own shards and journal; together they hold every video once
    assert sorted(p.name for p in (d / "journal").iterdir()) == [
        "00000-000.jsonl",
        "00000-001.jsonl",
    ]
    by_rank: dict[str, set] = {"000": set(), "001": set()}
    for e in read_events(d):
        if e["event"] == "shard":
            by_rank[e["shard"].split("-")[1]] |= {v["path"] for v in e["videos"]}
    assert by_rank["000"] and by_rank["001"] and not by_rank["000"] & by_rank["001"]
    assert len(by_rank["000"] | by_rank["001"]) == 5
    assert not writer_active(d)
    # the same index as one process builds
    one = tmp_path / "one"
    assert main(["index", str(vids), "--index", str(one), *TINY, "--fps", "2", "--workers", "0",
                 "--json"]) == 0  # fmt: skip
    a, b = contents(d), contents(one)
    assert sorted(a) == sorted(b)
    for path in a:
        np.testing.assert_allclose(a[path][0], b[path][0], atol=2e-3)
        np.testing.assert_allclose(a[path][1], b[path][1], atol=2e-3)


@pytest.mark.parametrize(
    "env, extra, needles",
    [
        ({}, ["--num-nodes", "2"], ["--num-nodes 2: set MASTER_ADDR, MASTER_PORT, NODE_RANK",
                                    "torchrun or srun"]),
        ({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999", "NODE_RANK": "2"},
         ["--num-nodes", "2"], ["NODE_RANK=2 must be in 0..1"]),
        ({}, ["--num-nodes", "0"], ["argument --num-nodes: must be in 1..", "got 0"]),
        ({"TORCHELASTIC_RUN_ID": "t1", "RANK": "0", "GROUP_RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "3",
          "WORLD_SIZE": "3", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999"},
         ["--devices", "2"], ["the launcher started 3 processes but --num-nodes 1 x --devices 2"]),
    ],
)  # fmt: skip
def test_launch_errors_are_one_line(env, extra, needles, vids, tmp_path, capsys, monkeypatch):
    for k in DDP_ENV:
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    rc = main(["index", str(vids), "--index", str(tmp_path / "i"), *TINY, "--workers", "0", *extra])
    err = capsys.readouterr().err
    assert rc == 2
    lines = [x for x in err.strip().splitlines() if not x.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert not (tmp_path / "i").exists()
