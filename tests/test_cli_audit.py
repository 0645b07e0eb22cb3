"""The audit's families, kept as tests that enumerate what they cover, so that a new command, flag
or index file gets the same treatment without anyone writing its case:

* bad input per command: every numeric flag of every ``vr`` command with a value outside its
  bounds, and a mistyped option: one line on stderr, exit 2, the flag named;
* faults per index file: every file of a built index deleted, truncated or overwritten with
  random bytes: ``vr search`` answers or says in one line which file (exit 2), never an internal
  error; ``vr index --repair`` then brings the index back;
* eval inputs: files of the wrong kind, not UTF-8, empty, with out-of-range numbers;
* HTTP: every route's bad parameters (and bad uploads) answer a 4xx JSON error, never a 500.

Checkpoints are ``test_models_checkpoint_safety`` (every loader) and ``test_models_compat``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import pytest
from _cli_util import box_video, one_line_error, run_cli, tiny_index

from video_retrieval.cli.main import build_parser


def _subparsers(parser: argparse.ArgumentParser, prefix=()):
    """(command words, parser) of every command and subcommand of ``vr``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from _subparsers(sub, (*prefix, name))


def _numeric_flags():
    """(command words, flag, an out-of-range value) for every bounded numeric flag."""
    out = []
    for words, parser in _subparsers(build_parser()):
        for action in parser._actions:
            conv = action.type
            if not action.option_strings or conv is None or conv in (int, float, str):
                continue
            for bad in ("-7", "0", "1e12", "nan", "x"):
                try:
                    conv(bad)
                except argparse.ArgumentTypeError:
                    out.append((words, action.option_strings[-1], bad))
                    break
    return out


NUMERIC = _numeric_flags()


def test_the_enumeration_sees_the_bounded_flags():
    flags = {(" ".join(w), f) for w, f, _ in NUMERIC}
    for expected in [("index", "--workers"), ("index", "--fps"), ("search", "-k"),
                     ("search", "--candidates"), ("serve", "--candidates"), ("demo", "--num-videos"),
                     ("localize", "--top"), ("eval retrieval", "--alpha"),
                     ("search", "--image-weight"), ("search", "--start"),
                     ("clip", "--max-seconds")]:  # fmt: skip
        assert expected in flags, expected
    assert len(NUMERIC) >= 20


@pytest.mark.parametrize(
    "words,flag,bad", NUMERIC, ids=[f"{' '.join(w)} {f}" for w, f, _ in NUMERIC]
)
def test_every_numeric_flag_refuses_out_of_range_in_one_line(words, flag, bad, capsys):
    rc, _, err = run_cli(capsys, *words, f"{flag}={bad}")
    assert rc == 2
    one_line_error(err, flag)


COMMANDS = [" ".join(w) for w, _ in _subparsers(build_parser()) if w[0] != "train"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_names_a_mistyped_option(command, capsys):
    rc, _, err = run_cli(capsys, *command.split(), "--definitely-not-an-option", "1")
    assert rc == 2
    one_line_error(err, "--definitely-not-an-option")


# -- faults per index file ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit")
    vids = root / "vids"
    for i in range(4):
        box_video(vids / f"v{i}.mp4", i)
    return vids, tiny_index(vids, root / "idx", "--shard-size", "2")


def _index_files(d: Path) -> list[str]:
    return sorted(
        str(p.relative_to(d)) for p in d.rglob("*")
        if p.is_file() and not p.name.startswith(".") and "serve_cache" not in p.parts
    )  # fmt: skip


FAULTS = ["deleted", "truncated", "random bytes"]


def _damage(path: Path, fault: str) -> None:
    if fault == "deleted":
        path.unlink()
    elif fault == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: max(1, len(data) // 3)])
    else:
        path.write_bytes(os.urandom(max(64, path.stat().st_size)))


def test_faults_in_every_index_file_are_one_line_and_repairable(pristine, tmp_path, capsys):
    vids, idx = pristine
    files = _index_files(idx)
    assert {"manifest.json", "failures.jsonl"} <= set(files) and len(files) >= 10
    for name in files:
        for fault in FAULTS:
            d = tmp_path / "work"
            shutil.rmtree(d, ignore_errors=True)
            shutil.copytree(idx, d)
            _damage(d / name, fault)
            rc, out, err = run_cli(capsys, "search", "a box", "--index", d, "--json", "-k", "4")
            case = f"{name} {fault}"
            assert "internal error" not in err and "Traceback" not in err, (case, err)
            if rc != 0:
                assert rc == 2, (case, err)
                one_line_error(err)
                assert "--repair" in err or "journal" in err, (case, err)
            rc, out, err = run_cli(capsys, "index", "--index", d, "--repair", "--json")
            assert rc in (0, 1) and "internal error" not in err, (case, err)
            rc, out, err = run_cli(capsys, "search", "a box", "--index", d, "--json", "-k", "4")
            assert rc == 0, (case, err)
            assert len(json.loads(out)["results"]) == 4, case  # sources exist: nothing lost


# -- eval inputs ------------------------------------------------------------------------------------
EVAL_FILES = {
    "not utf-8": b"\xff\xfe\x00bad\n",
    "empty": b"",
    "not json": b"{oops\n",
    "a list line": b"[1, 2]\n",
    "huge number": b'{"qid": 1, "vid": "v", "pred_relevant_windows": [[0, 2, 1'
    + b"0" * 400
    + b"]]}\n",
    "nan window": b'{"qid": 1, "vid": "v", "pred_relevant_windows": [[NaN, 2, 0.5]]}\n',
}


@pytest.mark.parametrize("kind", sorted(EVAL_FILES))
def test_eval_inputs_are_one_line(kind, pristine, tmp_path, capsys):
    _, idx = pristine
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(EVAL_FILES[kind])
    gt = tmp_path / "gt.jsonl"
    gt.write_text(json.dumps({"qid": 1, "query": "q", "vid": "v", "duration": 10,
                              "relevant_windows": [[0, 2]]}) + "\n")  # fmt: skip
    for argv in (["eval", "moments", "--pred", bad, "--gt", gt],
                 ["eval", "moments", "--gt", bad],
                 ["eval", "retrieval", "--index", idx, "--captions", bad],
                 ["search", "--queries", bad, "--index", idx],
                 ["localize", "--queries", bad, "--video-dir", tmp_path, "--out", tmp_path / "o.jsonl",
                  "--model", "vr-tiny", "--random-weights"]):  # fmt: skip
        if kind == "a list line" and argv[0] == "search":
            continue  # a line that is not a JSON object is a plain-text query there
        rc, _, err = run_cli(capsys, *argv)
        assert rc == 2, (kind, argv[:2], err)
        one_line_error(err)


# -- HTTP ---------------------------------------------------------------------------------------------
def test_http_bad_parameters_are_4xx_json_never_500(pristine, tmp_path):
    from fastapi.testclient import TestClient

    from video_retrieval.web.app import create_app
    from video_retrieval.web.config import ServeConfig
    from video_retrieval.web.state import load_state

    _, idx = pristine
    st = load_state(ServeConfig(index=idx, cache_dir=tmp_path / "cache"))
    cases = [
        ("GET", "/api/search", {"q": ""}), ("GET", "/api/search", {"q": "x", "k": "0"}),
        ("GET", "/api/search", {"q": "x", "k": "abc"}), ("GET", "/api/search", {}),
        ("GET", "/api/search", {"q": "x", "rerank": "nope"}),
        ("GET", "/api/localize", {"id": "999", "q": "x"}), ("GET", "/api/localize", {"id": "-1", "q": "x"}),
        ("GET", "/api/localize", {"id": "0", "q": " "}), ("GET", "/api/localize", {"id": "0", "q": "x", "top": "0"}),
        ("GET", "/thumb/0", {"t": "-5"}), ("GET", "/thumb/0", {"t": "nan"}), ("GET", "/thumb/99", {}),
        ("GET", "/media/99", {}), ("GET", "/media/0", {"g": "12345"}),
        ("GET", "/api/search", {"like": "999"}), ("GET", "/api/search", {"like": "x"}),
        ("GET", "/api/search", {"like": "0", "start": "1", "end": "99"}),
        ("GET", "/api/search", {"like": "0", "q": "x"}),
        ("GET", "/media/0/clip", {"start": "0", "end": "99"}), ("GET", "/media/0/clip", {}),
        ("GET", "/media/0/clip", {"start": "x", "end": "1"}),
        ("GET", "/media/99/clip", {"start": "0", "end": "1"}),
        ("UPLOAD", "/api/search", {"image": ("x.png", b"not an image", "image/png")}),
        ("UPLOAD", "/api/search", {"video": ("v.mp4", b"not a video", "video/mp4")}),
        ("UPLOAD", "/api/search", {"picture": ("x.png", b"x", "image/png")}),
        ("POST", "/api/search", None), ("GET", "/nope", {}),
    ]  # fmt: skip
    with TestClient(create_app(state=st), base_url="http://127.0.0.1") as c:
        for method, url, params in cases:
            if method == "GET":
                r = c.get(url, params=params)
            elif method == "UPLOAD":  # a query by example: multipart
                r = c.post(url, files=params)
            else:
                r = c.post(url, content=b"not json", headers={"content-type": "application/json"})
            assert 400 <= r.status_code < 500, (url, params, r.status_code, r.text)
            assert r.headers["content-type"].startswith("application/json"), (url, params)
            assert "error" in r.json() and "\n" not in r.json()["error"], (url, r.text)
