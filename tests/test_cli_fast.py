"""Usage errors are refused before any model code is imported: a mistyped command answers in
the interpreter's start-up time, not after torch's (seconds)."""

from __future__ import annotations

import subprocess
import sys

import pytest

CASES = [
    (["search", "   ", "--index", "idx"], "the query is empty"),
    (["search", "a dog", "--index", "idx", "--rerank", "sequence"], "unknown reranker 'sequence'"),
    (["search", "a dog"], "--index DIR is required"),
    (["search", "a dog", "--indx", "idx"], "did you mean --index"),
    (["search", "a dog", "--index", "idx", "-k", "0"], "argument -k"),
    (["localize", "v.mp4", "q", "--top", "0"], "argument --top"),
    (["index", "videos", "--index", "i", "--ann", "nope"], "argument --ann"),
]


@pytest.mark.parametrize("argv,needle", CASES)
def test_usage_errors_import_no_model_code(argv, needle):
    code = (
        "import sys\n"
        "from video_retrieval.cli.main import main\n"
        f"rc = main({argv!r})\n"
        "heavy = sorted(m for m in ('torch', 'faiss', 'open_clip', 'lightning') if m in sys.modules)\n"
        "print(rc, heavy)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip() == "2 []", (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], lines


def test_the_light_reranker_names_are_the_aggregators():
    from video_retrieval.temporal import AGGREGATORS

    from video_retrieval.limits import AGGREGATOR_NAMES

    assert set(AGGREGATOR_NAMES) == set(AGGREGATORS)
