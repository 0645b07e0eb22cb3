"""``vr data check`` on folders of the real layouts, and the data modules' checks before training:
missing videos stop ``vr train`` with one line unless ``allow_missing``; a bad ``--ckpt_path``
ends in one line."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from video_retrieval.datasets.check import check_dataset

from video_retrieval.cli import main
from video_retrieval.errors import UserError
from video_retrieval.media.write import write_video

REPO = Path(__file__).resolve().parents[1]
REAL = Path("/work/shared/fixtures/real")
if not REAL.is_dir():
    REAL = Path(__file__).parent / "fixtures" / "real"


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """One small decodable video, copied under every name a test needs."""
    p = tmp_path_factory.mktemp("clip") / "clip.mp4"
    rng = np.random.default_rng(0)
    write_video(p, rng.integers(0, 255, (6, 24, 32, 3), dtype=np.uint8), fps=3)
    return p


def _report(capsys, *argv):
    rc = main(["data", "check", *argv, "--json", "--no-progress"])
    out = capsys.readouterr().out
    return rc, json.loads(out)


def _split(rep, file):
    return next(s for s in rep["splits"] if s["file"] == file)


def test_msrvtt_folder(tmp_path, clip, capsys):
    root = tmp_path / "msrvtt"
    (root / "videos").mkdir(parents=True)
    with open(REAL / "msrvtt_train9k_head60.csv") as f:
        train = [r["video_id"] for r in csv.DictReader(f)][:6]
    with open(REAL / "msrvtt_jsfusion_test_head60.csv") as f:
        test_rows = list(csv.DictReader(f))[:4]
    (root / "MSRVTT_train.9k.csv").write_text("video_id\n" + "\n".join(train + [train[0]]) + "\n")
    shutil.copy(REAL / "msrvtt_jsfusion_test_head60.csv", root / "MSRVTT_JSFUSION_test.csv")
    with open(root / "MSRVTT_JSFUSION_test.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["key", "vid_key", "video_id", "sentence"])
        w.writeheader()
        w.writerows(test_rows)
    sentences = [{"video_id": v, "caption": f"c{k} {v}", "sen_id": i * 20 + k}
                 for i, v in enumerate(train[:5]) for k in range(20)]  # fmt: skip
    (root / "MSRVTT_data.json").write_text(json.dumps({"videos": [], "sentences": sentences}))
    for v in train[:4] + [r["video_id"] for r in test_rows]:
        shutil.copy(clip, root / "videos" / f"{v}.mp4")
    (root / "videos" / f"{train[1]}.mp4").write_bytes(b"\x00" * 100)  # undecodable
    (root / "videos" / f"{train[2]}.mp4").write_bytes(b"")  # empty = missing
    rc, rep = _report(capsys, "msrvtt", str(root))
    assert rc == 1 and rep["ok"] is False
    data = _split(rep, "MSRVTT_data.json")
    assert (data["annotations"], data["videos"]) == (100, 5)
    assert (data["published_annotations"], data["published_videos"]) == (200000, 10000)
    nine = _split(rep, "MSRVTT_train.9k.csv")
    assert nine["videos"] == 6 and nine["annotations"] == 100 and nine["published_videos"] == 9000
    assert nine["duplicate_ids"] == [train[0]]
    assert nine["without_captions"] == [train[5]]
    assert set(nine["missing"]) == {train[2], train[4], train[5]} and nine["missing_count"] == 3
    assert [u["id"] for u in nine["undecodable"]] == [train[1]]
    test = _split(rep, "MSRVTT_JSFUSION_test.csv")
    assert test["missing_count"] == 0 and test["videos_found"] == 4 and test["annotations"] == 4
    assert _split(rep, "MSRVTT_train.7k.csv")["found"] is False  # optional
    assert rep["next"] == [
        f"vr train fit --config configs/msrvtt_mean.yaml --data.init_args.root {root} "
        "--data.init_args.allow_missing true"
    ]
    # the human report names the same things; --no-decode only checks the files
    assert main(["data", "check", "msrvtt", str(root), "--no-progress"]) == 1
    text = capsys.readouterr().out
    assert "MSRVTT_train.9k.csv: 100 annotations (published 180,000)" in text
    assert "undecodable:" in text and "PROBLEMS FOUND" in text and "next:" not in text
    assert "vr train fit" not in text  # nothing to run before the problems are fixed
    rc, rep = _report(capsys, "msrvtt", str(root), "--no-decode")
    assert _split(rep, "MSRVTT_train.9k.csv")["undecodable_count"] == 0


def test_didemo_folder_with_name_quirks(tmp_path, clip, capsys):
    root = tmp_path / "didemo"
    (root / "videos").mkdir(parents=True)
    records = json.loads((REAL / "didemo_val_head40.json").read_text())
    names = list(dict.fromkeys(r["video"] for r in records))
    # a .mov/.mp4 pair of different videos where only the .mp4 file is there, a duplicate id
    extra = dict(records[0], annotation_id=records[1]["annotation_id"])
    pair = dict(records[0], annotation_id=999999, video=names[0].rsplit(".", 1)[0] + ".mp4")
    (root / "val_data.json").write_text(json.dumps(records + [extra, pair]))
    shutil.copy(clip, root / "videos" / pair["video"])
    for n in names[1:30]:
        shutil.copy(clip, root / "videos" / (n + ".mp4"))  # re-encoded copies keep the name
    rc, rep = _report(capsys, "didemo", str(root))
    assert rc == 1
    val = _split(rep, "val_data.json")
    assert val["annotations"] == 42 and val["published_annotations"] == 4180
    assert val["videos"] == 41  # the pair counts as two videos
    assert val["duplicate_ids"] == [records[1]["annotation_id"]]
    assert val["shared_files"] == {pair["video"]: [names[0], pair["video"]]}
    assert val["missing_count"] == len(names) - 30 and val["undecodable_count"] == 0
    assert _split(rep, "train_data.json")["found"] is False
    assert "train_data.json not found" in " ".join(rep["notes"])
    assert len(rep["next"]) == 2 and "configs/moments_didemo.yaml" in rep["next"][1]
    # training on it refuses the shared file with the list
    from video_retrieval.datasets.didemo import load_didemo

    with pytest.raises(UserError, match="would stand for more than one annotated DiDeMo video"):
        load_didemo(root / "val_data.json", root / "videos")


def test_qvhighlights_folder_with_features(tmp_path, capsys):
    root = tmp_path / "qvh"
    (root / "features" / "clip_features").mkdir(parents=True)
    (root / "features" / "clip_text_features").mkdir(parents=True)
    lines = (REAL / "qvhighlights_val_head40.jsonl").read_text().splitlines()
    (root / "highlight_val_release.jsonl").write_text("\n".join(lines) + "\n")
    rows = [json.loads(x) for x in lines]
    for r in rows[1:]:
        np.savez(
            root / "features" / "clip_features" / f"{r['vid']}.npz", features=np.ones((75, 512))
        )
        np.savez(root / "features" / "clip_text_features" / f"qid{r['qid']}.npz",
                 last_hidden_state=np.ones((8, 512)))  # fmt: skip
    rc, rep = _report(capsys, "qvhighlights", str(root))
    val = _split(rep, "highlight_val_release.jsonl")
    assert val["annotations"] == 40 and val["published_annotations"] == 1550
    assert val["videos"] == len({r["vid"] for r in rows}) and val["published_videos"] == 1519
    assert val["missing_features_count"] == 2  # the first row's video and query features
    assert rc == 1
    assert "--data.init_args.features_dir" in rep["next"][0]
    assert "--data.init_args.allow_missing true" in rep["next"][0]


def test_charades_folder(tmp_path, clip, capsys):
    root = tmp_path / "charades"
    (root / "videos").mkdir(parents=True)
    lines = ["AO8RW 0.0 6.9##a person is putting a book on a shelf.",
             "Y6R7T 10.0 20.0##person opens the door.",
             "Y6R7T 10.0 20.0##Person opens the door."]  # fmt: skip
    (root / "charades_sta_train.txt").write_text("\n".join(lines) + "\n")
    (root / "charades_sta_test.txt").write_text(lines[0] + "\n")
    shutil.copy(clip, root / "videos" / "AO8RW.mp4")
    rc, rep = _report(capsys, "charades", str(root))
    tr = _split(rep, "charades_sta_train.txt")
    assert (tr["annotations"], tr["videos"]) == (3, 2)
    assert tr["published_annotations"] == 12408 and tr["published_videos"] == 5338
    assert tr["duplicate_ids"] == [["Y6R7T", 10.0, 20.0, "person opens the door."]]
    assert tr["missing"] == ["Y6R7T"]
    te = _split(rep, "charades_sta_test.txt")
    assert te["missing_count"] == 0 and te["videos_found"] == 1
    assert any("Charades_v1_train.csv not found" in n for n in rep["notes"])
    assert rc == 1 and "configs/moments_charades.yaml" in rep["next"][0]


def test_clean_folder_is_ok_and_usage_errors_are_one_line(tmp_path, clip, capsys):
    root = tmp_path / "charades"
    (root / "videos").mkdir(parents=True)
    for split in ("train", "test"):
        (root / f"charades_sta_{split}.txt").write_text("AO8RW 0.0 1.5##a person sits.\n")
        (root / f"Charades_v1_{split}.csv").write_text("id,length\nAO8RW,2.0\n")
    shutil.copy(clip, root / "videos" / "AO8RW.mp4")
    rep = check_dataset("charades", root, progress=False)
    assert rep["ok"] is True and rep["videos_checked"] == 1
    assert "allow_missing" not in rep["next"][0]
    assert main(["data", "check", "charades", str(root), "--no-progress"]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["data", "check", "charades", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"error: no such folder: {tmp_path / 'nope'}"


# ------------------------------------------------------------------------------ before training


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from video_retrieval.datasets.synth_retrieval import generate_retrieval

    out = tmp_path_factory.mktemp("synth")
    generate_retrieval(out, seed=0, num_train=6, num_test=6, num_compositional=0, workers=1)
    return out


def test_retrieval_training_refuses_missing_videos_before_the_first_step(world, tmp_path, capsys):
    w = tmp_path / "world"
    shutil.copytree(world, w)
    train_ids = (w / "train.csv").read_text().split()[1:]
    (w / "videos" / f"{train_ids[0]}.mp4").unlink()
    (w / "videos" / f"{train_ids[1]}.mp4").write_bytes(b"")
    argv = [
        "train", "fit", "--config", str(REPO / "configs" / "synth_mean.yaml"),
        f"--data.root={w}", "--data.frame_cache_dir=null", "--data.global_batch_size=2",
        "--data.eval_batch_size=4", f"--trainer.default_root_dir={tmp_path / 'run'}",
        "--trainer.max_epochs=1", "--data.pair_batches=false",
    ]  # fmt: skip
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: 2 of 6 videos of the train split are missing or empty")
    assert f"{train_ids[0]}.mp4" in line and "vr data check synth" in line
    assert "--data.init_args.allow_missing true" in line
    assert not list((tmp_path / "run").rglob("*.ckpt"))  # stopped before training


def test_allow_missing_leaves_them_out_and_logs_the_count(world, tmp_path, caplog):
    from video_retrieval.train.retrieval_data import RetrievalDataModule

    w = tmp_path / "world"
    shutil.copytree(world, w)
    test_ids = [r.split(",")[2] for r in (w / "test.csv").read_text().splitlines()[1:]]
    gone = test_ids[0]
    (w / "videos" / f"{gone}.mp4").unlink()
    dm = RetrievalDataModule(dataset="synth", root=str(w), num_frames=2, frame_size=16)
    with pytest.raises(UserError, match="1 of 6 videos of the val split"):
        dm.setup("validate")
    dm = RetrievalDataModule(
        dataset="synth", root=str(w), num_frames=2, frame_size=16, allow_missing=True
    )
    dm.setup("validate")
    val = dm.splits["val"]
    assert len(val.videos) == 5 and gone not in [v.video_id for v in val.videos]
    assert all(0 <= v < 5 for v in val.caption_video) and dm.missing["val"] == 1
    # temporal pairs that named the missing video are gone, the others point at the new indices
    for a, b, _k in dm.pairs.get("val", []):
        assert val.videos[a].video_id != gone and val.videos[b].video_id != gone
    assert "1 of 6 videos missing or empty" in caplog.text


def test_moment_training_refuses_missing_videos(tmp_path, clip):
    from video_retrieval.train.moment_data import MomentDataModule

    rows = [{"qid": i, "query": f"q{i}", "vid": f"v{i % 3}", "duration": 2.0,
             "relevant_windows": [[0, 1]]} for i in range(6)]  # fmt: skip
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "videos").mkdir()
    shutil.copy(clip, tmp_path / "videos" / "v0.mp4")
    shutil.copy(clip, tmp_path / "videos" / "v1.mp4")
    kw = dict(train_path=str(tmp_path / "train.jsonl"), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(UserError) as e:
        MomentDataModule(**kw).setup("fit")
    assert str(e.value).startswith("1 video(s) of the train split")
    assert "v2" in str(e.value) and "2 queries" in str(e.value)
    dm = MomentDataModule(**kw, allow_missing=True)
    dm.setup("fit")
    assert sorted(it["row"]["qid"] for it in dm.items["train"]) == [0, 1, 3, 4]
    assert dm.missing == {"train": 1}


@pytest.mark.parametrize("kind", ["missing", "empty", "garbage", "folder"])
def test_bad_ckpt_path_is_one_line(tmp_path, capsys, kind):
    p = tmp_path / "x.ckpt"
    if kind == "empty":
        p.write_bytes(b"")
    elif kind == "garbage":
        p.write_bytes(b"not a checkpoint" * 10)
    elif kind == "folder":
        p.mkdir()
    rc = main(["train", "fit", "--config", str(REPO / "configs" / "synth_mean.yaml"),
               "--ckpt_path", str(p)])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [
        {
            "missing": f"error: --ckpt_path {p}: no such file",
            "empty": f"error: --ckpt_path {p}: empty file, not a checkpoint",
            "garbage": f"error: --ckpt_path {p}: not a checkpoint written by vr train (a PyTorch "
            "zip file); truncated or another kind of file?",
            "folder": f"error: --ckpt_path {p}: is a folder; give the .ckpt file inside it",
        }[kind]
    ]
