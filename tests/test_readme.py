"""The README's "Try it" section runs word for word after `make demo`: every command and Python
snippet of it, on a fresh `vr demo` output folder (the demo's own seed and sizes), printing what the
README shows. The other Python snippets of the README run too."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
BIN = Path(sys.executable).parent
NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def console_blocks(text: str) -> list[list[tuple[str, list[str]]]]:
    """Each ```console block as [(command, the output lines shown under it)]."""
    blocks = []
    for body in re.findall(r"^```console\n(.*?)^```", text, flags=re.S | re.M):
        steps: list[tuple[str, list[str]]] = []
        for line in body.splitlines():
            if line.startswith("$ "):
                steps.append((line[2:], []))
            else:
                steps[-1][1].append(line)
        blocks.append(steps)
    return blocks


TRY_IT = section(README.read_text(), "Try it (after `make demo`)")


def test_try_it_has_commands_and_a_snippet():
    commands = [c for b in console_blocks(TRY_IT) for c, _ in b]
    assert any(" search " in c for c in commands) and any(" localize " in c for c in commands)
    assert any(" serve " in c for c in commands) and python_blocks(TRY_IT)


@pytest.fixture(scope="module")
def demo_cwd(tmp_path_factory) -> Path:
    """A working folder after `make demo`: `demo_out/` written by `vr demo` with its defaults,
    and the repository's `.venv/bin` and bundled models at the paths the README names."""
    cwd = tmp_path_factory.mktemp("readme")
    (cwd / ".venv").mkdir()
    (cwd / ".venv" / "bin").symlink_to(BIN)
    (cwd / "video_retrieval").symlink_to(REPO / "video_retrieval")
    run = subprocess.run([str(BIN / "vr"), "demo"], cwd=cwd, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return cwd


def same_line(shown: str, got: str) -> bool:
    """The README's line and the printed one: the same words, numbers within 0.005 (the last
    printed digit may differ between CPUs)."""
    if NUMBER.sub("#", shown) != NUMBER.sub("#", got):
        return False
    return all(
        abs(float(a) - float(b)) <= 5e-3
        for a, b in zip(NUMBER.findall(shown), NUMBER.findall(got), strict=True)
    )


def prints_as_shown(command: str, shown: list[str], cwd: Path) -> None:
    """Run a README command in ``cwd``: it succeeds and prints the lines shown (``same_line``)."""
    run = subprocess.run(shlex.split(command), cwd=cwd, capture_output=True, text=True)
    assert run.returncode == 0, (command, run.stderr)
    got = run.stdout.splitlines()
    assert len(got) == len(shown), (command, got)
    for want, line in zip(shown, got):
        assert same_line(want, line), (command, want, line)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def serve(command: str, cwd: Path):
    """Start the README's `vr serve` command on a free port; wait until it answers."""
    port = free_port()
    proc = subprocess.Popen([*shlex.split(command), "--port", str(port)], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"vr serve exited: {proc.stderr.read()}")
        try:
            if get_json(f"{url}/healthz", timeout=1)["status"] == "ok":
                return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    pytest.fail("vr serve did not answer /healthz in 120 s")


@pytest.mark.parametrize("b", range(len(console_blocks(TRY_IT))))
def test_try_it_commands_print_what_the_readme_shows(b, demo_cwd):
    for command, shown in console_blocks(TRY_IT)[b]:
        assert command.startswith(".venv/bin/vr "), command
        if " serve " in command:
            proc, url = serve(command, demo_cwd)
            try:
                info = get_json(f"{url}/api/info")
                assert info["videos"] == 51 and info["localize_method"] == "head"
                hits = get_json(f"{url}/api/search?q=the+white+ball+sinks&k=1")["results"]
                assert hits[0]["video"].endswith("synmom0000_test.mp4")
                loc = get_json(
                    f"{url}/api/localize?id={hits[0]['id']}&q=the+white+ball+sinks&top=2"
                )
                assert loc["method"] == "head" and loc["head"] == "QD-DETR"
                assert (loc["moments"][0]["start"], loc["moments"][0]["end"]) == (38.0, 44.0)
            finally:
                proc.terminate()
                proc.wait(30)
            continue
        prints_as_shown(command, shown, demo_cwd)
        if "--plot" in command:
            png = demo_cwd / command.split("--plot ")[1].split()[0]
            assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("i", range(len(python_blocks(TRY_IT))))
def test_try_it_python_runs_as_written(i, demo_cwd, monkeypatch, capsys):
    code = python_blocks(TRY_IT)[i]
    monkeypatch.chdir(demo_cwd)
    namespace: dict = {"__name__": "__readme__"}
    exec(compile(code, f"README.md Try it, python block {i + 1}", "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    # the search hits: the long video the query describes first
    assert printed[0].startswith("1 ") and "synmom0000_test.mp4" in printed[0]
    moment = namespace["result"]["moments"][0]
    assert (moment["start"], moment["end"]) == (38.0, 44.0)  # as the comment says
    assert namespace["result"]["method"] == "head"
    assert namespace["frames"].pixels.shape[0] == 12


OTHER_PYTHON = [b for b in python_blocks(README.read_text()) if b not in python_blocks(TRY_IT)]


@pytest.mark.parametrize("i", range(len(OTHER_PYTHON)))
def test_other_python_snippets_run_as_written(i, demo_cwd, monkeypatch, capsys):
    monkeypatch.chdir(demo_cwd)
    namespace: dict = {"__name__": "__readme__"}
    code = "\n".join(OTHER_PYTHON[: i + 1])  # a later snippet may use what an earlier one built
    exec(compile(code, f"README.md python block {i + 1}", "exec"), namespace)
    printed = capsys.readouterr().out
    assert "video0.mp4" in printed  # the caption's own clip is found


def test_the_screenshot_is_the_demo_collection(demo_cwd, tmp_path):
    """docs/serve.png is this page: `make demo`'s index served with the bundled moment head, a
    long video playing from the moment the head found (VR_DOCS_SCREENSHOT=docs/serve.png writes
    it)."""
    from test_web_browser import CHROMIUM_ARGS, chromium_or_skip

    chromium = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    command = next(c for b in console_blocks(TRY_IT) for c, _ in b if " serve " in c)
    proc, url = serve(command, demo_cwd)
    pw = sync_playwright().start()
    try:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(90_000)
        page.goto(f"{url}/?q=the+white+ball+sinks&k=10")
        page.wait_for_selector("[data-video]")
        page.wait_for_function(
            "() => [...document.querySelectorAll('.hit img')].every(i => i.complete && i.naturalWidth)"
        )
        page.locator("[data-video]").first.click()
        page.wait_for_selector("#bands .band")
        text = page.locator("#moment-info").inner_text()
        assert text.startswith("Best moment 38.0–44.0") and "QD-DETR head" in text, text
        page.wait_for_function("() => document.getElementById('video').currentTime >= 38")
        page.evaluate("() => document.getElementById('video').pause()")
        shot = tmp_path / "serve.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 20_000
        if os.environ.get("VR_DOCS_SCREENSHOT"):
            Path(os.environ["VR_DOCS_SCREENSHOT"]).write_bytes(shot.read_bytes())
        browser.close()
    finally:
        pw.stop()
        proc.terminate()
        proc.wait(30)


SEARCH_BY_EXAMPLE = section(README.read_text(), "Search by example")
EXPORT = section(README.read_text(), "Export: take the moment with you")


def test_search_by_example_and_export_commands_print_what_the_readme_shows(demo_cwd, monkeypatch,
                                                                           capsys):  # fmt: skip
    """The "Search by example" snippet (it grabs frame.png) and every command of it and of
    "Export", word for word on the demo output."""
    monkeypatch.chdir(demo_cwd)
    (code,) = python_blocks(SEARCH_BY_EXAMPLE)
    exec(compile(code, "README.md Search by example", "exec"), {"__name__": "__readme__"})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("1 ") and printed[0].endswith("video0.mp4 1.0 3.125"), printed
    steps = [s for text in (SEARCH_BY_EXAMPLE, EXPORT) for b in console_blocks(text) for s in b]
    assert len(steps) == 7
    for command, shown in steps:
        assert command.startswith(".venv/bin/vr "), command
        prints_as_shown(command, shown, demo_cwd)
