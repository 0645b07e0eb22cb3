"""Retrieval loaders on the real annotation fixtures, with stand-in videos under the real ids."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from video_retrieval.datasets.captions_jsonl import load_captions_jsonl
from video_retrieval.datasets.didemo import load_didemo
from video_retrieval.datasets.msrvtt import load_msrvtt, load_temporal_pairs

from video_retrieval.errors import UserError
from video_retrieval.media.write import write_video
from video_retrieval.train.retrieval_data import RetrievalDataModule
from video_retrieval.train.retrieval_datasets import (
    FrameReader,
    RetrievalEvalDataset,
    RetrievalTrainDataset,
    center_crop_square,
    collate_retrieval,
)

REAL = Path("/work/shared/fixtures/real")
if not REAL.is_dir():  # the fixtures may also be vendored next to the tests
    REAL = Path(__file__).parent / "fixtures" / "real"


def _video(path: Path, seed: int, frames: int = 8, h: int = 36, w: int = 48):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(1, h, w, 3), dtype=np.uint8)
    ramp = (np.arange(frames) * 20).astype(np.uint8)[:, None, None, None]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(str(path), (base + ramp).astype(np.uint8), fps=4, codec="h264")


def _real_msrvtt(tmp_path: Path, n_train=6, n_test=5):
    """MSR-VTT folder from the real csv heads + a data json for their ids + stand-in videos."""
    root = tmp_path / "msrvtt"
    root.mkdir()
    with open(REAL / "msrvtt_train9k_head60.csv") as f:
        train_ids = [r["video_id"] for r in csv.DictReader(f)][:n_train]
    with open(REAL / "msrvtt_jsfusion_test_head60.csv") as f:
        test_rows = list(csv.DictReader(f))[:n_test]
    with open(root / "MSRVTT_train.9k.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video_id"])
        w.writerows([[v] for v in train_ids])
    with open(root / "MSRVTT_JSFUSION_test.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["key", "vid_key", "video_id", "sentence"])
        w.writeheader()
        w.writerows(test_rows)
    sentences = [
        {"video_id": v, "caption": f"caption {k} of {v}", "sen_id": i * 3 + k}
        for i, v in enumerate(train_ids)
        for k in range(3)
    ]
    data = {"videos": [{"video_id": v} for v in train_ids], "sentences": sentences}
    (root / "MSRVTT_data.json").write_text(json.dumps(data))
    for i, v in enumerate(train_ids + [r["video_id"] for r in test_rows]):
        _video(root / "videos" / f"{v}.mp4", i)
    return root, train_ids, test_rows


def test_msrvtt_real_csvs(tmp_path):
    root, train_ids, test_rows = _real_msrvtt(tmp_path)
    tr = load_msrvtt(root / "MSRVTT_train.9k.csv", root / "videos", root / "MSRVTT_data.json")
    assert (
        [v.video_id for v in tr.videos]
        == train_ids
        == ["video0", "video1", "video2", "video3", "video4", "video5"]
    )
    assert len(tr.captions) == 18 and tr.captions_of(1) == [3, 4, 5]
    assert tr.captions[4] == "caption 1 of video1"
    te = load_msrvtt(root / "MSRVTT_JSFUSION_test.csv", root / "videos")
    # JSFusion 1k-A: one caption per video, first row video9770
    assert te.videos[0].video_id == "video9770"
    assert te.captions[0] == "a person is connecting something to system"
    assert te.caption_video == list(range(len(test_rows)))
    assert te.videos[0].path.endswith("videos/video9770.mp4")
    # train csv without the data json is a user error; a csv of the wrong layout too
    with pytest.raises(UserError):
        load_msrvtt(root / "MSRVTT_train.9k.csv", root / "videos")


def test_msrvtt_webm_fallback(tmp_path):
    root, *_ = _real_msrvtt(tmp_path, n_train=2, n_test=1)
    shutil.move(root / "videos" / "video0.mp4", root / "videos" / "video0.webm")
    tr = load_msrvtt(root / "MSRVTT_train.9k.csv", root / "videos", root / "MSRVTT_data.json")
    assert tr.videos[0].path.endswith("video0.webm")


def test_didemo_real_json(tmp_path):
    records = json.loads((REAL / "didemo_val_head40.json").read_text())
    split = load_didemo(REAL / "didemo_val_head40.json", tmp_path)
    # one paragraph per video, descriptions joined in file order with one space
    first = records[0]["video"]
    expected = " ".join(r["description"].strip() for r in records if r["video"] == first)
    assert split.videos[0].video_id == first  # the full file name (CLIP4Clip), not the stem
    assert split.captions[0] == expected
    assert len(split.videos) == len({r["video"] for r in records}) == len(split.captions)
    assert all(v.start == 0.0 and v.end == 30.0 for v in split.videos)
    # names keep their real extension (.mov/.3gp/.m4v); an .mp4 copy is used when present
    assert split.videos[0].path.endswith(first)
    _video(tmp_path / (Path(first).stem + ".mp4"), 0)
    split2 = load_didemo(REAL / "didemo_val_head40.json", tmp_path)
    assert split2.videos[0].path.endswith(Path(first).stem + ".mp4")


def test_captions_jsonl(tmp_path):
    lines = [
        {"video": "videos/a.mp4", "caption": "red ball", "split": "train"},
        {"video": "videos/b.mp4", "caption": "blue box", "split": "test"},
        {"video": "videos/a.mp4", "caption": "a red ball moves", "split": "train"},
    ]
    p = tmp_path / "captions.jsonl"
    p.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    tr = load_captions_jsonl(p, "train")
    assert [v.video_id for v in tr.videos] == ["a"] and tr.captions == [
        "red ball",
        "a red ball moves",
    ]
    assert tr.videos[0].path == str(tmp_path / "videos/a.mp4")
    assert len(load_captions_jsonl(p)) == 2
    (tmp_path / "bad.jsonl").write_text('{"video": "x.mp4"}\n')
    with pytest.raises(UserError, match="bad.jsonl:1"):
        load_captions_jsonl(tmp_path / "bad.jsonl")


def test_temporal_pairs(tmp_path):
    root, _, test_rows = _real_msrvtt(tmp_path, n_train=1, n_test=4)
    te = load_msrvtt(root / "MSRVTT_JSFUSION_test.csv", root / "videos")
    ids = [r["video_id"] for r in test_rows]
    pairs = [
        {"a": ids[0], "b": ids[2], "kind": "direction"},
        {"a": ids[1], "b": "nope", "kind": "order"},
    ]
    (root / "tp.json").write_text(json.dumps(pairs))
    assert load_temporal_pairs(root / "tp.json", te) == [(0, 2)]


def test_center_crop():
    x = np.zeros((2, 30, 50, 3), np.uint8)
    x[:, :, 10:40] = 200
    y = center_crop_square(x, 30)
    assert y.shape == (2, 30, 30, 3) and (y == 200).all()
    assert center_crop_square(x, 16).shape == (2, 16, 16, 3)


def test_failed_videos_are_skipped_not_zero(tmp_path, caplog):
    root, train_ids, _ = _real_msrvtt(tmp_path, n_train=4, n_test=3)
    (root / "videos" / "video1.mp4").unlink()  # missing
    (root / "videos" / "video2.mp4").write_bytes(b"not a video at all")  # undecodable
    tr = load_msrvtt(root / "MSRVTT_train.9k.csv", root / "videos", root / "MSRVTT_data.json")
    reader = FrameReader(num_frames=4, frame_size=32)
    ds = RetrievalTrainDataset(tr, reader)
    torch.manual_seed(0)
    items = [ds[i] for i in range(len(ds))]
    # every item is a decoded video (resampled), none is a zero tensor
    assert all(it["video_index"] in (0, 3) for it in items)
    assert all(
        it["frames"].shape == (4, 32, 32, 3) and it["frames"].float().mean() > 0 for it in items
    )
    failed_paths = {p for p, _ in ds.failures}
    assert any(p.endswith("video1.mp4") for p in failed_paths)
    assert any(p.endswith("video2.mp4") for p in failed_paths)
    assert "skipping video" in caplog.text
    # evaluation: the bad videos are dropped from the batch, with their failures reported
    ev = RetrievalEvalDataset(tr, reader)
    batch = collate_retrieval([ev[i] for i in range(len(ev))])
    assert batch["video_index"].tolist() == [0, 3]
    assert batch["frames"].shape == (2, 4, 32, 32, 3)
    assert len(batch["failed"]) == 2
    assert batch["caption_video"].tolist() == [0, 0, 0, 1, 1, 1]
    assert batch["caption_ids"].tolist() == [0, 1, 2, 9, 10, 11]


def test_frame_cache_decodes_once(tmp_path, monkeypatch):
    root, *_ = _real_msrvtt(tmp_path, n_train=2, n_test=1)
    import video_retrieval.media.decode as decode

    calls = []
    real = decode.load_frames

    def counting(*a, **k):
        calls.append(a[0])
        return real(*a, **k)

    monkeypatch.setattr(decode, "load_frames", counting)
    path = str(root / "videos" / "video0.mp4")
    r = FrameReader(4, 32, cache_frames=True, cache_dir=str(tmp_path / "npz"))
    a = r.read(path)
    b = r.read(path)
    assert len(calls) == 1 and np.array_equal(a[0], b[0])
    # a second reader (another process / run) reads the npz instead of decoding
    r2 = FrameReader(4, 32, cache_dir=str(tmp_path / "npz"))
    c = r2.read(path)
    assert len(calls) == 1 and np.array_equal(a[0], c[0]) and c[1].all()


def test_datamodule_msrvtt_layout(tmp_path):
    root, *_ = _real_msrvtt(tmp_path, n_train=4, n_test=3)
    dm = RetrievalDataModule(
        dataset="msrvtt",
        root=str(root),
        num_frames=3,
        frame_size=24,
        global_batch_size=2,
        eval_batch_size=2,
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["frames"].shape == (2, 3, 24, 24, 3) and batch["frames"].dtype == torch.uint8
    assert len(batch["captions"]) == 2 and batch["mask"].all()
    vb = next(iter(dm.val_dataloader()))
    assert vb["captions"][0] == "a person is connecting something to system"
    assert dm.eval_sets("test") == ["test"]
    assert len(dm.caption_bank()) == 12
    # expand_sentences: every (video, caption) pair is a sample
    dm2 = RetrievalDataModule(
        dataset="msrvtt", root=str(root), num_frames=2, frame_size=16, expand_sentences=True
    )
    dm2.setup("fit")
    assert len(dm2.train_dataloader().dataset) == 12
    with pytest.raises(UserError):
        RetrievalDataModule(dataset="nope")
