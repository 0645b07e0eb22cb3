"""Progress bars: on stderr while it is a terminal, never in a pipe or a log, and off with
``--no-progress`` (the one spelling of every command)."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios

import pytest
from _serve_util import shared_serve_index


def stderr_on_a_terminal(argv: list[str], cwd) -> tuple[int, str]:
    """Run ``vr ARGV`` with stderr on a pseudo-terminal (stdout a pipe); what stderr showed."""
    master, slave = pty.openpty()
    # a terminal 100 columns wide (a fresh pty is 0 x 0, where tqdm draws an empty bar)
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "video_retrieval.cli", *argv], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=slave)  # fmt: skip
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # the terminal closed: the process ended
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    proc.stdout.read()
    return proc.wait(), b"".join(chunks).decode("utf-8", "replace")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return shared_serve_index(tmp_path_factory)


@pytest.mark.parametrize("command", ["synth", "eval"])
def test_long_commands_show_progress_on_a_terminal_only(command, world, tmp_path):
    captions = world["index"].parent / "collection" / "captions.jsonl"
    argv, label = {
        "synth": (["synth", "moments", "--out", str(tmp_path / "m"), "--num-videos", "2",
                   "--min-duration", "30", "--max-duration", "32", "--workers", "1"], "rendering"),
        "eval": (["eval", "retrieval", "--index", str(world["index"]), "--captions",
                  str(captions)], "evaluating"),
    }[command]  # fmt: skip
    rc, shown = stderr_on_a_terminal(argv, tmp_path)
    assert rc == 0, shown
    assert label in shown and "100%" in shown, shown
    rc, quiet = stderr_on_a_terminal([*argv, "--no-progress"], tmp_path)
    assert rc == 0 and label not in quiet, quiet
    piped = subprocess.run([sys.executable, "-m", "video_retrieval.cli", *argv], cwd=tmp_path,
                           capture_output=True, text=True)  # fmt: skip
    assert piped.returncode == 0 and label not in piped.stderr, piped.stderr
