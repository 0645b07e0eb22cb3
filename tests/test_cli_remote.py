"""`vr search --server URL`: the query goes to a running `vr serve`; the output is the local
search's, byte for byte, and no model (no torch) is loaded."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from _serve_util import shared_serve_index

from video_retrieval.cli import main

TOKEN = "remote-test-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return shared_serve_index(tmp_path_factory)


@pytest.fixture(scope="module")
def server(world, tmp_path_factory):
    """`vr serve --token` as a user starts it; yields its URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "video_retrieval.cli", "serve", "--index", str(world["index"]),
           "--port", str(port), "--token", TOKEN,
           "--cache-dir", str(tmp_path_factory.mktemp("remote_cache"))]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vr serve exited: {proc.stderr.read()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("vr serve did not answer in 180 s")
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)
        startup = proc.stderr.read()
    # a clean start-up: our one line, no library chatter (faiss's loader, open_clip's tokenizer)
    assert "faiss.loader" not in startup and "tokenizer" not in startup, startup


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_remote_answers_equal_local_ones(world, server, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("VR_SERVE_TOKEN", TOKEN)
    q = world["captions"][0]["caption"]
    for extra in ([], ["--json"], ["--rerank", "cliprerank", "--json"], ["-k", "3"]):
        rc_l, local, _ = run(capsys, "search", q, "--index", world["index"], *extra)
        rc_r, remote, err = run(capsys, "search", q, "--server", server, *extra)
        assert rc_l == rc_r == 0, err
        assert remote == local, extra
    queries = tmp_path / "q.txt"
    queries.write_text("\n".join(c["caption"] for c in world["captions"][:3]) + "\n")
    for extra in ([], ["--json"]):
        _, local, _ = run(capsys, "search", "--queries", queries, "--index", world["index"], *extra)
        monkeypatch.setenv("VR_SERVER", server)  # the environment names the server too
        rc, remote, err = run(capsys, "search", "--queries", queries, *extra)
        monkeypatch.delenv("VR_SERVER")
        assert rc == 0 and remote == local, err
    assert len(json.loads(remote.splitlines()[0])["results"]) == 10


def test_remote_search_loads_no_model(server, world):
    """The point of --server: the interpreter and one request, no torch import."""
    code = (
        "import sys\n"
        "from video_retrieval.cli.main import main\n"
        f"rc = main(['search', {world['captions'][1]['caption']!r}, '--server', {server!r}])\n"
        "assert rc == 0, rc\n"
        "assert 'torch' not in sys.modules and 'faiss' not in sys.modules, 'model code loaded'\n"
    )
    env = {**os.environ, "VR_SERVE_TOKEN": TOKEN}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("rank  score (cosine)  video")


def test_remote_errors_are_one_line(server, capsys, monkeypatch):
    monkeypatch.delenv("VR_SERVE_TOKEN", raising=False)
    dead = f"http://127.0.0.1:{free_port()}"
    cases = [
        (["x", "--server", server], f"{server} answered 401", "VR_SERVE_TOKEN"),
        (["x", "--server", dead], f"cannot reach vr serve at {dead}", "vr serve --index"),
        (["x", "--server", "ftp://host"], "--server must be an http(s) URL", "ftp://host"),
        (["x"], "--index DIR is required", "--server URL"),
        (["x", "--server", server, "--index", "somewhere"], "leave out --index", "--server"),
    ]
    for argv, *needles in cases:
        rc, out, err = run(capsys, "search", *argv)
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
        assert all(n in lines[0] for n in needles), (needles, lines[0])
    monkeypatch.setenv("VR_SERVE_TOKEN", TOKEN)
    rc, _, err = run(capsys, "search", "x", "--server", server, "--rerank", "nonsense")
    assert rc == 2 and "answered 400: unknown rerank 'nonsense'" in err
