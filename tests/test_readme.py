"""The README's Python snippets run as written, on the synthetic collection `make demo` writes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_the_readme_has_python_snippets():
    assert len(python_blocks(README.read_text())) >= 1


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory) -> Path:
    """What `make demo` leaves in the working folder (a smaller collection, same layout)."""
    from video_retrieval.demo import generate_collection

    cwd = tmp_path_factory.mktemp("readme")
    generate_collection(cwd / "demo_out", seed=5, num_videos=8, moment_videos=1)
    return cwd


@pytest.mark.parametrize("i", range(len(python_blocks(README.read_text()))))
def test_python_snippet_runs_as_written(i, demo_out, monkeypatch, capsys):
    code = python_blocks(README.read_text())[i]
    monkeypatch.chdir(demo_out)
    namespace: dict = {"__name__": "__readme__"}
    exec(compile(code, f"README.md python block {i + 1}", "exec"), namespace)
    printed = capsys.readouterr().out
    if "Index.build" in code:  # the retrieval snippet printed its hits, the localize one a moment
        assert len(namespace["index"]) == 8
        assert printed.count(".mp4") >= 5
    if "localize(" in code:
        moment = namespace["result"]["moments"][0]
        assert 0 <= moment["start"] < moment["end"] <= namespace["result"]["duration"] + 1e-6
        assert namespace["result"]["method"] == "head"
        assert namespace["frames"].pixels.shape[0] == 12
