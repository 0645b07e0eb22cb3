import json

import pytest
import torch
from video_retrieval.datasets.moments import (
    load_charades_sta,
    load_didemo_moments,
    load_qvhighlights,
    relevant_clip_ids,
    resolve_video,
    sample_saliency_pairs,
)

from video_retrieval.errors import UserError

torch.set_num_threads(1)  # 2 shared cores: oversubscribed intra-op threads are far slower

FIX = "/work/shared/fixtures/real"


def test_qvhighlights_fixture_fields():
    rows = load_qvhighlights(f"{FIX}/qvhighlights_val_head40.jsonl")
    assert len(rows) == 40
    r = rows[0]
    assert r["qid"] == 2579 and r["vid"] == "NUsG9BgSes0_210.0_360.0" and r["duration"] == 150.0
    assert len(r["saliency_scores"]) == len(r["relevant_clip_ids"])
    # windows on the 2 s grid: clip ids = union of floor(s/2) .. e/2 - 1
    for r in rows:
        ids = set()
        for s, e in r["relevant_windows"]:
            ids.update(range(int(s // 2), int(e // 2)))
        assert ids == set(r["relevant_clip_ids"])


def test_didemo_fixture_segments_to_seconds():
    rows = load_didemo_moments(f"{FIX}/didemo_val_head40.json")
    assert len(rows) == 40
    r = rows[0]  # times [[1,1],[1,1],[1,1],[0,0]] -> consensus segment 1 = [5, 10] s
    assert r["qid"] == 49152
    assert r["relevant_windows"] == [[5.0, 10.0]]
    assert r["annotator_windows"] == [[5.0, 10.0]] * 3 + [[0.0, 5.0]]
    assert r["duration"] == 30.0
    assert r["vid"].endswith(".mov")


def test_didemo_tie_goes_to_earliest_listed(tmp_path):
    p = tmp_path / "d.json"
    rec = {
        "annotation_id": 1,
        "description": "x",
        "video": "a.mp4",
        "num_segments": 5,
        "times": [[2, 3], [0, 0], [0, 0], [2, 3]],
    }
    p.write_text(json.dumps([rec]))
    r = load_didemo_moments(p)[0]
    assert r["relevant_windows"] == [[10.0, 20.0]] and r["duration"] == 25.0


def test_charades_sta_lines_and_durations(tmp_path):
    p = tmp_path / "charades_sta_test.txt"
    p.write_text(
        "AB12C 0.0 6.9##a person is putting a book on a shelf.\nXY34Z 3.1 40.0##person opens door\n"
    )
    csvp = tmp_path / "Charades_v1_test.csv"
    csvp.write_text("id,subject,length\nAB12C,s1,30.5\nXY34Z,s2,31.25\n")
    rows = load_charades_sta(p, str(csvp))
    assert rows[0] == {
        "qid": 0,
        "query": "a person is putting a book on a shelf.",
        "vid": "AB12C",
        "duration": 30.5,
        "relevant_windows": [[0.0, 6.9]],
    }
    assert rows[1]["relevant_windows"] == [[3.1, 31.25]]  # clipped to the video length
    assert load_charades_sta(p)[0]["duration"] is None
    bad = tmp_path / "bad.txt"
    bad.write_text("AB12C 0.0 6.9 no separator\n")
    with pytest.raises(UserError):
        load_charades_sta(bad)


def test_resolve_video_and_clip_ids(tmp_path):
    (tmp_path / "abc.mp4").write_bytes(b"x")
    assert resolve_video(tmp_path, {"vid": "abc"}).endswith("abc.mp4")
    assert resolve_video(tmp_path, {"vid": "abc.mov"}).endswith("abc.mp4")  # re-encoded copy
    with pytest.raises(UserError):
        resolve_video(tmp_path, {"vid": "nope"})
    assert relevant_clip_ids({"relevant_windows": [[3.0, 7.0]]}, 2.0, 10) == [1, 2, 3]
    assert relevant_clip_ids({"relevant_windows": [[16.0, 30.0]]}, 2.0, 10) == [8, 9]


def test_saliency_pairs_hard_and_easy():
    import random

    row = {
        "relevant_clip_ids": [2, 3, 4],
        "saliency_scores": [[1, 1, 1], [4, 4, 4], [0, 1, 0]],
        "relevant_windows": [[4, 10]],
    }
    pos, neg = sample_saliency_pairs(row, 2.0, 8, random.Random(0))
    assert pos[0] == 3 and neg[0] == 4  # hard pair: highest / lowest summed score
    assert pos[1] in (2, 3, 4) and neg[1] in (0, 1, 5, 6, 7)
    # whole video relevant: the hard pair is used again (never a positive equal to its negative)
    row2 = {"relevant_clip_ids": [0, 1], "saliency_scores": [[1, 1, 1], [2, 2, 2]]}
    for seed in range(5):
        pos, neg = sample_saliency_pairs(row2, 2.0, 2, random.Random(seed))
        assert pos == [1, 1] and neg == [0, 0]
    # without scores: inside vs outside the windows
    pos, neg = sample_saliency_pairs({"relevant_windows": [[0, 4]]}, 2.0, 6, random.Random(1))
    assert set(pos) <= {0, 1} and set(neg) <= {2, 3, 4, 5}
