import math

import numpy as np
import pytest
import torch

from video_retrieval.metrics.retrieval import (
    dual_softmax,
    flatten_metrics,
    ranks_of_targets,
    retrieval_metrics,
    temporal_pair_accuracy,
    video_to_text_matrix,
)


def test_one_to_one_hand_computed():
    # 3 captions x 3 videos, GT on the diagonal.
    sim = np.array(
        [
            [0.9, 0.1, 0.2],  # gt rank 1
            [0.8, 0.5, 0.1],  # gt 0.5 -> rank 2
            [0.7, 0.6, 0.0],  # gt 0.0 -> rank 3
        ]
    )
    res = retrieval_metrics(sim, [0, 1, 2])
    t = res["t2v"]
    assert t["R1"] == pytest.approx(100 / 3)
    assert t["R5"] == 100.0 and t["R10"] == 100.0
    assert t["MdR"] == 2.0 and t["MnR"] == 2.0
    # v2t = transpose: video0 column [0.9,0.8,0.7] -> rank1; video1 [0.1,0.5,0.6] -> rank 2;
    # video2 [0.2,0.1,0.0] -> rank 3
    v = res["v2t"]
    assert v["R1"] == pytest.approx(100 / 3)
    assert v["MdR"] == 2.0 and v["MnR"] == 2.0


def test_ties_are_pessimistic():
    sim = np.array([[0.5, 0.5, 0.1], [0.3, 0.3, 0.3]])
    # caption 0 gt video 0 ties with video 1 -> rank 2; caption 1 ties with all -> rank 3
    assert ranks_of_targets(sim, [0, 1]).tolist() == [2, 3]
    # a collapsed model (all equal) ranks everything last
    res = retrieval_metrics(np.zeros((4, 4)), [0, 1, 2, 3])
    assert res["t2v"]["R1"] == 0.0 and res["t2v"]["MdR"] == 4.0
    assert res["v2t"]["R1"] == 0.0


def test_nan_counts_as_worst():
    sim = np.array([[float("nan"), 0.2], [0.1, 0.3]])
    assert ranks_of_targets(sim, [0, 1]).tolist() == [2, 1]


def test_multi_caption_t2v_and_v2t_max():
    # 5 captions: video 0 has captions 0,1,2; video 1 has captions 3,4.
    sim = np.array(
        [
            [0.9, 0.1],  # c0 -> v0 rank 1
            [0.2, 0.8],  # c1 -> v0 rank 2
            [0.4, 0.4],  # c2 -> v0 tie -> rank 2
            [0.3, 0.6],  # c3 -> v1 rank 1
            [0.5, 0.4],  # c4 -> v1 rank 2
        ]
    )
    t2v = [0, 0, 0, 1, 1]
    res = retrieval_metrics(sim, t2v)
    assert res["t2v"]["R1"] == pytest.approx(40.0)
    assert res["t2v"]["MdR"] == 2.0
    assert res["t2v"]["MnR"] == pytest.approx(8 / 5)
    # v2t: video v query, group w score = max_{c in w} sim[c, v]
    m = video_to_text_matrix(sim, t2v)
    assert m.tolist() == [[0.9, 0.5], [0.8, 0.6]]
    # video 0: own 0.9 > 0.5 -> rank 1; video 1: own 0.6 < 0.8 -> rank 2
    assert res["v2t"]["R1"] == 50.0 and res["v2t"]["MnR"] == 1.5 and res["v2t"]["MdR"] == 1.5


def test_r5_r10_large_gallery():
    n = 20
    sim = np.zeros((n, n))
    for i in range(n):
        # GT at rank i+1: i gallery items strictly above it
        sim[i] = -np.arange(n) * 0.01 + 1.0  # descending over columns
    res = retrieval_metrics(sim, list(range(n)))
    t = res["t2v"]
    assert t["R1"] == 5.0 and t["R5"] == 25.0 and t["R10"] == 50.0
    assert t["MdR"] == 10.5 and t["MnR"] == 10.5


def test_torch_input_and_validation():
    res = retrieval_metrics(torch.eye(3), torch.tensor([0, 1, 2]))
    assert res["t2v"]["R1"] == 100.0 and res["v2t"]["R1"] == 100.0
    with pytest.raises(ValueError):
        retrieval_metrics(np.eye(3), [0, 1])
    with pytest.raises(ValueError):
        retrieval_metrics(np.eye(3), [0, 1, 3])


def test_dual_softmax_changes_ranking_transductively():
    # video 0 is a "hub": it scores high for every query
    s = torch.tensor([[10.0, 9.0], [10.0, 2.0]])
    assert retrieval_metrics(s, [1, 0])["t2v"]["R1"] == 50.0
    d = dual_softmax(s)
    # column 0 normalised over queries: 0.5 each -> 5, 5; column 1: softmax(9,2) ~ 1 -> ~9
    assert d[0, 1] > d[0, 0]
    assert retrieval_metrics(d, [1, 0])["t2v"]["R1"] == 100.0


def test_temporal_pair_accuracy():
    # videos 0,1 are a pair; captions 0,1 of video 0, caption 2 of video 1
    sim = np.array([[1.0, 0.0], [0.5, 0.5], [0.2, 0.9]])
    # c0 win, c1 tie (0.5), c2 win -> 2.5 / 3
    assert temporal_pair_accuracy(sim, [0, 0, 1], [(0, 1)]) == pytest.approx(2.5 / 3)
    # order-blind: identical columns -> exactly 0.5
    same = np.array([[0.3, 0.3], [0.7, 0.7]])
    assert temporal_pair_accuracy(same, [0, 1], [(0, 1)]) == 0.5
    assert math.isnan(temporal_pair_accuracy(same, [0, 1], []))


def test_flatten():
    assert flatten_metrics({"t2v": {"R1": 1}}, "val/") == {"val/t2v_R1": 1.0}
