"""Validated evaluation input: malformed rows end in one line naming the file and line (exit 2, no
traceback), windows past the duration are clipped with a warning, the JSON never holds NaN;
``vr eval retrieval`` refuses bad rows and counts empty captions as invalid."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from video_retrieval.cli import main

GT = {"qid": 1, "query": "q", "vid": "v", "duration": 30, "relevant_windows": [[20, 30]]}


def _strict(text: str):
    def no_constants(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=no_constants)


def _run(capsys, *argv) -> tuple[int, str, str]:
    rc = main(list(argv))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _one_line_error(rc, err, *needles):
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def _files(tmp_path, pred_lines, gt_rows=(GT,)):
    p = tmp_path / "pred.jsonl"
    p.write_text("".join(line + "\n" for line in pred_lines))
    g = tmp_path / "gt.jsonl"
    g.write_text("".join(json.dumps(r) + "\n" for r in gt_rows))
    return p, g


BAD_PREDICTIONS = [
    ('{"qid": 1, "pred_relevant_windows": [[NaN, 30, 1]]}', "window 0 start is not finite"),
    ('{"qid": 1, "pred_relevant_windows": [[20, Infinity, 1]]}', "window 0 end is not finite"),
    ('{"qid": 1, "pred_relevant_windows": [[20, 30, NaN]]}', "window 0 score is not finite"),
    ('{"qid": 1, "pred_relevant_windows": [[-2, 30, 1]]}', "negative time"),
    ('{"qid": 1, "pred_relevant_windows": [[30, 20, 1]]}', "starts after it ends"),
    ('{"qid": 1, "pred_relevant_windows": [[20, 30]]}', "must be [start, end, score]"),
    ('{"qid": 1, "pred_relevant_windows": [20, 30, 1]}', "must be [start, end, score]"),
    ('{"qid": 1, "pred_relevant_windows": [["20", 30, 1]]}', "must be a number"),
    ('{"qid": 1, "pred_relevant_windows": {"a": 1}}', "must be a list"),
    ('{"pred_relevant_windows": [[20, 30, 1]]}', "missing field 'qid'"),
    ('{"qid": 1}', "missing field 'pred_relevant_windows'"),
    ('{"qid": null, "pred_relevant_windows": []}', "qid must be"),
    ('{"qid": 1, "pred_saliency_scores": [0.1, NaN]}', "pred_saliency_scores[1] is not finite"),
    ("[1, 2, 3]", "expected a JSON object"),
    ('{"qid": 1, "pred_relevant_windows": [[20, 30, 1]]', "not valid JSON"),
]


@pytest.mark.parametrize("line,needle", BAD_PREDICTIONS)
def test_bad_prediction_rows_are_refused_naming_the_line(tmp_path, capsys, line, needle):
    p, g = _files(tmp_path, ['{"qid": 7, "pred_relevant_windows": [[0, 1, 1]]}', line])
    rc, out, err = _run(capsys, "eval", "moments", "--pred", str(p), "--gt", str(g))
    _one_line_error(rc, err, f"{p}:2:", needle)
    assert out == ""


def test_duplicate_qids_are_refused_not_scored_by_order(tmp_path, capsys):
    # the old evaluator kept the last row: 66.67 or 100 depending on the order
    p, g = _files(
        tmp_path,
        ['{"qid": 1, "pred_relevant_windows": [[20, 30, 1]]}',
         '{"qid": 1, "pred_relevant_windows": [[0, 5, 1]]}'],
    )  # fmt: skip
    rc, _, err = _run(capsys, "eval", "moments", "--pred", str(p), "--gt", str(g))
    _one_line_error(rc, err, f"{p}:2:", "duplicate qid 1 (first on line 1)")
    # in the ground truth too
    p, g = _files(tmp_path, ['{"qid": 1, "pred_relevant_windows": [[20, 30, 1]]}'], [GT, GT])
    rc, _, err = _run(capsys, "eval", "moments", "--pred", str(p), "--gt", str(g))
    _one_line_error(rc, err, f"{g}:2:", "duplicate qid 1")


@pytest.mark.parametrize(
    "gt,needle",
    [
        ({**GT, "relevant_windows": [[30, 20]]}, "starts after it ends"),
        ({**GT, "relevant_windows": [[-1, 20]]}, "negative time"),
        ({**GT, "duration": float("nan")}, "duration is not finite"),
        ({**GT, "duration": 0}, "duration must be positive"),
        ({k: v for k, v in GT.items() if k != "qid"}, "missing field 'qid'"),
        ({**GT, "relevant_clip_ids": [10], "saliency_scores": [[1, 2], [3, 4]]}, "one entry per"),
        ({**GT, "relevant_windows": [[1, 2, 3]]}, "must be [start, end]"),
    ],
)
def test_bad_ground_truth_rows_are_refused(tmp_path, capsys, gt, needle):
    p, g = _files(tmp_path, ['{"qid": 1, "pred_relevant_windows": [[20, 30, 1]]}'], [gt])
    rc, _, err = _run(capsys, "eval", "moments", "--pred", str(p), "--gt", str(g))
    _one_line_error(rc, err, f"{g}:1:", needle)


def test_empty_inputs_are_errors(tmp_path, capsys):
    p, g = _files(tmp_path, [], [])
    rc, out, err = _run(capsys, "eval", "moments", "--pred", str(p), "--gt", str(g))
    _one_line_error(rc, err, "empty")  # was: exit 0 with {"brief": {}}
    p, g = _files(tmp_path, ["", "  "])
    rc, out, err = _run(capsys, "eval", "moments", "--pred", str(p), "--gt", str(g))
    _one_line_error(rc, err, str(p), "no prediction rows")
    # a ground truth without any label (a test release) cannot be scored
    p, g = _files(
        tmp_path,
        ['{"qid": 1, "pred_relevant_windows": [[20, 30, 1]]}'],
        [{"qid": 1, "query": "q", "vid": "v", "duration": 30}],
    )
    rc, out, err = _run(capsys, "eval", "moments", "--pred", str(p), "--gt", str(g))
    _one_line_error(rc, err, "no ground-truth windows")


def test_windows_past_the_duration_are_clipped_with_a_warning(tmp_path, capsys):
    p, g = _files(tmp_path, ['{"qid": 1, "pred_relevant_windows": [[20, 40, 1], [35, 50, 0.5]]}'])
    rc, out, err = _run(capsys, "eval", "moments", "--pred", str(p), "--gt", str(g))
    assert rc == 0 and "Traceback" not in err
    assert err.strip() == (
        "warning: 2 predicted window(s) end after their video's duration; clipped to it"
    )
    res = _strict(out)
    # [20, 40] -> [20, 30]: IoU 1 with the ground truth (unclipped it would be 0.5)
    assert res["brief"]["MR-full-R1@0.7"] == 100.0
    assert res["warnings"] and res["protocol"] == "qvhighlights"


def test_unsorted_windows_are_scored_in_the_given_order_with_a_warning(tmp_path, capsys):
    p, g = _files(tmp_path, ['{"qid": 1, "pred_relevant_windows": [[0, 5, 0.1], [20, 30, 0.9]]}'])
    rc, out, err = _run(capsys, "eval", "moments", "--pred", str(p), "--gt", str(g))
    assert rc == 0 and "not in descending score order" in err
    assert _strict(out)["brief"]["MR-full-R1@0.5"] == 0.0  # R1 takes the first row, as official


def test_json_output_never_holds_nan(tmp_path, capsys):
    """The old evaluator printed ``"MR-full-mIoU": NaN`` (invalid JSON) for NaN windows: those are
    refused now, and the printer turns any non-finite value into null before a strict dump."""
    from video_retrieval.moments.evaluate import json_safe

    assert json_safe({"a": float("nan"), "b": [float("inf"), 1.5], "c": {"d": -float("inf")}}) == {
        "a": None, "b": [None, 1.5], "c": {"d": None}
    }  # fmt: skip
    gt = {**GT, "relevant_windows": [[10, 10]]}  # a zero-length window: IoU 0, not 0/0
    p, g = _files(tmp_path, ['{"qid": 1, "pred_relevant_windows": [[10, 10, 1]]}'], [gt])
    rc, out, err = _run(capsys, "eval", "moments", "--pred", str(p), "--gt", str(g))
    assert rc == 0
    res = _strict(out)
    assert res["brief"]["MR-full-mIoU"] == 0.0

    def walk(x):
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
        elif isinstance(x, float):
            assert np.isfinite(x)

    walk(res)


def test_errors_through_the_installed_command_have_no_traceback(tmp_path):
    p, g = _files(tmp_path, ['{"qid": 1, "pred_relevant_windows": [[NaN, 30, 1]]}'])
    vr = Path(sys.executable).with_name("vr")
    out = subprocess.run(
        [str(vr), "eval", "moments", "--pred", str(p), "--gt", str(g)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr
    assert f"{p}:1: window 0 start is not finite" in out.stderr


# ------------------------------------------------------------------------------ vr eval retrieval


@pytest.fixture(scope="module")
def small_index(tmp_path_factory) -> Path:
    from video_retrieval.index.api import Index
    from video_retrieval.media.write import write_video

    root = tmp_path_factory.mktemp("evalidx")
    for i, colour in enumerate([(230, 20, 20), (20, 220, 20)]):
        x = np.full((10, 32, 32, 3), 15, np.uint8)
        x[:, 8:24, 8:24] = colour
        write_video(root / "videos" / f"v{i}.mp4", x, fps=5)
    Index.build(
        [root / "videos"], root / "idx", model="vr-tiny", random_weights=True, fps=2.0, workers=0,
        progress=False,
    )  # fmt: skip
    return root


@pytest.mark.parametrize(
    "line,needle",
    [
        ('{"video": null, "caption": "a red box"}', "'video' must be a non-empty path, not null"),
        ('{"video": 3, "caption": "a red box"}', "'video' must be a non-empty path, not 3"),
        ('{"video": "", "caption": "a red box"}', "'video' must be a non-empty path"),
        ('{"video": "videos/v0.mp4", "caption": null}', "'caption' must be a string, not null"),
        ('{"video": "videos/v0.mp4"}', "missing field 'caption'"),
        ('["videos/v0.mp4", "a red box"]', "expected a"),
        ("{not json", "not valid JSON"),
    ],
)
def test_bad_caption_rows_are_refused(small_index, capsys, line, needle):
    c = small_index / "bad.jsonl"
    c.write_text(
        json.dumps({"video": "videos/v1.mp4", "caption": "a green box"}) + "\n" + line + "\n"
    )
    rc, out, err = _run(
        capsys, "eval", "retrieval", "--index", str(small_index / "idx"), "--captions", str(c)
    )
    _one_line_error(rc, err, f"{c}:2:", needle)


def test_empty_captions_are_invalid_not_missing_from_the_index(small_index, capsys):
    c = small_index / "caps.jsonl"
    rows = [
        {"video": "videos/v0.mp4", "caption": "a red box"},
        {"video": "videos/v1.mp4", "caption": "   "},
        {"video": "videos/v1.mp4", "caption": "a green box"},
        {"video": "videos/absent.mp4", "caption": "not indexed"},
    ]
    c.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc, out, err = _run(
        capsys, "eval", "retrieval", "--index", str(small_index / "idx"), "--captions", str(c),
        "--json",
    )  # fmt: skip
    assert rc == 0, err
    res = _strict(out)
    assert res["queries"] == 2 and res["skipped"] == 1
    assert res["invalid"] == 1 and res["invalid_lines"] == [2]
    assert "warning: 1 empty caption(s) not scored (lines 2)" in err
    # only empty captions: an error that says so
    c.write_text(json.dumps({"video": "videos/v0.mp4", "caption": ""}) + "\n")
    rc, out, err = _run(
        capsys, "eval", "retrieval", "--index", str(small_index / "idx"), "--captions", str(c)
    )
    _one_line_error(rc, err, "every caption is empty")
    c.write_text("\n")
    rc, out, err = _run(
        capsys, "eval", "retrieval", "--index", str(small_index / "idx"), "--captions", str(c)
    )
    _one_line_error(rc, err, "no captions (empty file)")
