"""Real-dataset formats end to end: DiDeMo video names, the streamed MSRVTT_data.json (200k
sentences), the released QVHighlights features, the MSR-VTT recipes' sentence expansion and the
DSL v2t normalisation."""

import json
import random
import re
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from video_retrieval.datasets.didemo import (
    didemo_collisions,
    load_didemo,
    name_stem,
    resolve_didemo_videos,
)
from video_retrieval.datasets.moments import video_paths
from video_retrieval.datasets.msrvtt import load_msrvtt, read_msrvtt_captions

from video_retrieval.errors import UserError

REPO = Path(__file__).resolve().parents[1]
REAL = Path("/work/shared/fixtures/real")
if not REAL.is_dir():
    REAL = Path(__file__).parent / "fixtures" / "real"


# ------------------------------------------------------------------------------ DiDeMo names


def _didemo_json(path: Path, names: list[str]) -> Path:
    recs = [
        {"annotation_id": i, "description": f"event {i} in {n}", "video": n,
         "times": [[0, 0]] * 4, "num_segments": 6}
        for i, n in enumerate(names)
    ]  # fmt: skip
    path.write_text(json.dumps(recs))
    return path


def test_didemo_names_stay_distinct(tmp_path):
    vdir = tmp_path / "videos"
    vdir.mkdir()
    names = [
        "1234@N00_5555_abcdef0123.mov",  # a pair of different videos: .mov and .mp4
        "1234@N00_5555_abcdef0123.mp4",
        "77@N01_42_17dce1d555.",  # a real name that ends in "."
        "9@N02_7_00aa11bb22.3gp",
    ]
    for f in ("1234@N00_5555_abcdef0123.mov", "1234@N00_5555_abcdef0123.mp4",
              "77@N01_42_17dce1d555.", "9@N02_7_00aa11bb22.mp4"):  # fmt: skip
        (vdir / f).write_bytes(b"x")
    split = load_didemo(_didemo_json(tmp_path / "val_data.json", names), vdir)
    # the full file name is the id (the stems of the pair would be equal)
    assert [v.video_id for v in split.videos] == names
    assert len({v.path for v in split.videos}) == 4
    assert split.videos[0].path.endswith(".mov") and split.videos[1].path.endswith(".mp4")
    assert split.videos[2].path == str(vdir / "77@N01_42_17dce1d555.")
    assert split.videos[3].path == str(vdir / "9@N02_7_00aa11bb22.mp4")  # re-encoded <stem>.mp4
    assert name_stem("77@N01_42_17dce1d555.") == "77@N01_42_17dce1d555"
    assert name_stem("a.b.mov") == "a.b"


def test_didemo_reencoded_copies_keep_the_full_name(tmp_path):
    vdir = tmp_path / "videos"
    vdir.mkdir()
    for f in ("X.mov.mp4", "X.mp4", "Y..mp4"):
        (vdir / f).write_bytes(b"x")
    paths = resolve_didemo_videos(vdir, ["X.mov", "X.mp4", "Y."])
    assert paths == {"X.mov": str(vdir / "X.mov.mp4"), "X.mp4": str(vdir / "X.mp4"),
                     "Y.": str(vdir / "Y..mp4")}  # fmt: skip


def test_didemo_refuses_two_videos_on_one_file_with_the_list(tmp_path):
    vdir = tmp_path / "videos"
    vdir.mkdir()
    # only X.mp4 is there: X.mov would fall back to it, but X.mp4 is another annotated video
    for f in ("X.mp4", "Z.mp4"):
        (vdir / f).write_bytes(b"x")
    names = ["X.mov", "X.mp4", "Z.", "Z.mp4", "W.avi"]
    with pytest.raises(UserError) as e:
        load_didemo(_didemo_json(tmp_path / "val_data.json", names), vdir)
    msg = str(e.value)
    assert "2 file(s)" in msg and "X.mov and X.mp4 -> X.mp4" in msg
    assert "Z. and Z.mp4 -> Z.mp4" in msg and "X.mov.mp4" in msg
    assert didemo_collisions(vdir, names) == {"X.mp4": ["X.mov", "X.mp4"], "Z.mp4": ["Z.", "Z.mp4"]}
    # without the other annotation, the stem copy is accepted
    assert resolve_didemo_videos(vdir, ["X.mov"]) == {"X.mov": str(vdir / "X.mp4")}
    # the moment data resolves a split the same way (one file per annotated name)
    rows = [{"vid": n, "qid": i} for i, n in enumerate(["X.mov", "W.avi"])]
    assert video_paths(rows, vdir, "didemo") == {"X.mov": str(vdir / "X.mp4"), "W.avi": None}
    with pytest.raises(UserError, match="X.mov and X.mp4"):
        video_paths(rows + [{"vid": "X.mp4", "qid": 9}], vdir, "didemo")


def test_real_didemo_sample_names(tmp_path):
    split = load_didemo(REAL / "didemo_val_head40.json", tmp_path)
    records = json.loads((REAL / "didemo_val_head40.json").read_text())
    assert [v.video_id for v in split.videos] == list(dict.fromkeys(r["video"] for r in records))
    assert {Path(v.video_id).suffix for v in split.videos} >= {".mov", ".mp4", ".3gp", ".avi"}


# ------------------------------------------------------------------------------ MSR-VTT json


def write_msrvtt_data_json(path: Path, n_videos=10000, per_video=20, seed=0) -> None:
    """The real structure: info, videos (category/url/video_id/start time/end time/split/id) and
    sentences (caption/video_id/sen_id) in shuffled order."""
    rng = random.Random(seed)
    words = "a man woman dog car is playing cooking driving on the in with music".split()
    videos = [
        {"category": i % 20, "url": f"https://www.youtube.com/watch?v=x{i:010d}",
         "video_id": f"video{i}", "start time": 1.5, "end time": 12.25,
         "split": "train" if i < 6513 else "test", "id": i}
        for i in range(n_videos)
    ]  # fmt: skip
    sentences = [
        {"caption": f"{' '.join(rng.choices(words, k=6))} {v}-{k} ", "video_id": f"video{v}"}
        for v in range(n_videos)
        for k in range(per_video)
    ]
    rng.shuffle(sentences)
    for i, s in enumerate(sentences):
        s["sen_id"] = i
    with open(path, "w") as f:
        json.dump({"info": {"year": "2016"}, "videos": videos, "sentences": sentences}, f)


@pytest.fixture(scope="module")
def msrvtt_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("msrvtt_full")
    write_msrvtt_data_json(root / "MSRVTT_data.json")
    (root / "MSRVTT_train.9k.csv").write_text(
        "video_id\n" + "".join(f"video{i}\n" for i in range(9000))
    )
    (root / "MSRVTT_train.7k.csv").write_text(
        "video_id\n" + "".join(f"video{i}\n" for i in range(7010))
    )
    return root


def test_msrvtt_200k_sentences_every_caption_in_file_order(msrvtt_root):
    root = msrvtt_root
    tr = load_msrvtt(root / "MSRVTT_train.9k.csv", root / "videos", root / "MSRVTT_data.json")
    assert len(tr.videos) == 9000 and len(tr.captions) == 180000
    # each video keeps all 20 captions, stripped, in the order they appear in the file
    data = json.loads((root / "MSRVTT_data.json").read_text())
    expected = [s["caption"].strip() for s in data["sentences"] if s["video_id"] == "video17"]
    assert [tr.captions[c] for c in tr.captions_of(17)] == expected and len(expected) == 20
    seven = load_msrvtt(root / "MSRVTT_train.7k.csv", root / "videos", root / "MSRVTT_data.json")
    assert len(seven.videos) == 7010 and len(seven.captions) == 140200
    # one streaming pass serves several lists
    caps = read_msrvtt_captions(root / "MSRVTT_data.json")
    assert len(caps) == 10000 and sum(map(len, caps.values())) == 200000


def test_msrvtt_json_is_streamed_not_loaded_whole(msrvtt_root):
    """Peak Python heap of loading the 9k split vs ``json.load`` of the file (the old loader):
    the streaming reader keeps only the captions asked for (BENCHMARKS.md: 20.6 vs 100.1 MB)."""
    path = msrvtt_root / "MSRVTT_data.json"
    ids = {f"video{i}" for i in range(9000)}
    tracemalloc.start()
    with open(path) as f:
        whole = json.load(f)
    load_peak = tracemalloc.get_traced_memory()[1]
    del whole
    tracemalloc.stop()
    tracemalloc.start()
    caps = read_msrvtt_captions(path, ids)
    stream_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert sum(map(len, caps.values())) == 180000
    assert stream_peak < 0.4 * load_peak, (stream_peak, load_peak)


def test_msrvtt_json_errors_are_one_line(tmp_path):
    p = tmp_path / "MSRVTT_data.json"
    p.write_text('{"videos": [], "sentences": [{"video_id": "video0", "caption": "a"}, {"vid')
    with pytest.raises(UserError, match="not valid JSON after sentence 1"):
        read_msrvtt_captions(p)
    p.write_text('{"videos": [], "sentences": [{"video_id": "video0"}]}')
    with pytest.raises(UserError, match=r"sentences\[0\] has no video_id/caption"):
        read_msrvtt_captions(p)
    p.write_text('{"videos": []}')
    with pytest.raises(UserError, match="no 'sentences'"):
        read_msrvtt_captions(p)


# ------------------------------------------------------------------------------ MSR-VTT recipes


MSRVTT_RECIPES = sorted((REPO / "configs").glob("msrvtt_*.yaml"))


@pytest.mark.parametrize("cfg", MSRVTT_RECIPES, ids=lambda p: p.stem)
def test_msrvtt_recipes_expand_sentences_with_the_step_count_in_the_header(cfg):
    text = cfg.read_text()
    conf = yaml.safe_load(text)
    data = conf["data"]["init_args"]
    assert data["expand_sentences"] is True
    batch = data["global_batch_size"]
    epochs = conf["trainer"]["max_epochs"]
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    m = re.search(r"180,000 pairs per epoch\s*#?\s*= ([\d,]+) steps per epoch at global batch (\d+)"
                  r" \(([\d,]+) steps in (\d+) epochs\)", header)  # fmt: skip
    assert m, header
    steps, hb, total, he = (int(x.replace(",", "")) for x in m.groups())
    assert (steps, hb, he) == (180000 // batch, batch, epochs) and total == steps * epochs


def test_training_docstring_no_longer_calls_one_caption_sampling_the_clip4clip_default():
    import video_retrieval.train.retrieval_datasets as rd

    assert "CLIP4Clip default" not in rd.__doc__
    assert "--expand_msrvtt_sentences" in rd.__doc__


# ------------------------------------------------------------------------------ DSL v2t


def test_dsl_v2t_normalises_the_transposed_matrix_by_hand():
    from video_retrieval.metrics.retrieval import dsl_metrics, dual_softmax, retrieval_metrics

    # texts x videos, text i describes video i
    s = np.array([[1.0, 0.0], [1.0, 1.0]])
    e = np.e
    # t2v: each video column softmax-ed over the texts
    t2v = np.array([[1 * 0.5, 0 * 1 / (1 + e)], [1 * 0.5, 1 * e / (1 + e)]])
    # v2t: each text row softmax-ed over the videos (the transposed matrix's columns)
    v2t = np.array([[1 * e / (1 + e), 0 * 1 / (1 + e)], [1 * 0.5, 1 * 0.5]])
    np.testing.assert_allclose(dual_softmax(s, dim=0), t2v)
    np.testing.assert_allclose(dual_softmax(s, dim=1), v2t)
    m = dsl_metrics(s, [0, 1])
    # video 0 ranks texts by v2t[:, 0] = (0.731, 0.5): text 0 first -> R@1 100. With the t2v prior
    # (column 0 = (0.5, 0.5), a tie, ranked pessimistically) it would be 50.
    assert m["v2t"]["R1"] == 100.0
    assert retrieval_metrics(dual_softmax(s, dim=0), [0, 1])["v2t"]["R1"] == 50.0
    assert m["t2v"]["R1"] == 100.0
    # torch input gives the same numbers
    np.testing.assert_allclose(dual_softmax(torch.tensor(s), dim=1), v2t)


# ------------------------------------------------------------------------------ QVHighlights features


def _qvh_features(root: Path, rows, lengths, streams=("clip", "slowfast"), seed=0):
    rng = np.random.default_rng(seed)
    dims = {"clip": 512, "slowfast": 2304}
    for s in streams:
        d = root / f"{s}_features"
        d.mkdir(parents=True, exist_ok=True)
        for vid, n in lengths.items():
            extra = 1 if s == "slowfast" else 0  # released streams differ by a clip at times
            np.savez(
                d / f"{vid}.npz", features=rng.normal(size=(n + extra, dims[s])).astype(np.float32)
            )
    t = root / "clip_text_features"
    t.mkdir(parents=True, exist_ok=True)
    for r in rows:
        n_tok = 5 + r["qid"] % 7
        np.savez(t / f"qid{r['qid']}.npz",
                 last_hidden_state=rng.normal(size=(n_tok, 512)).astype(np.float32),
                 pooler_output=rng.normal(size=(512,)).astype(np.float32))  # fmt: skip


@pytest.fixture()
def qvh(tmp_path):
    lines = (REAL / "qvhighlights_val_head40.jsonl").read_text().splitlines()[:8]
    rows = [json.loads(x) for x in lines]
    (tmp_path / "val.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    lengths = {r["vid"]: int(r["duration"] // 2) for r in rows}
    _qvh_features(tmp_path / "features", rows, lengths)
    return tmp_path, rows, lengths


def test_official_features_are_read_as_moment_detr_reads_them(qvh):
    from video_retrieval.datasets.qvh_features import OfficialFeatures

    from video_retrieval.train.moment_data import MomentDataModule

    root, rows, lengths = qvh
    f = OfficialFeatures(root / "features", ["slowfast", "clip"], max_v_l=75, max_q_l=32)
    v = f.video(rows[0]["vid"])
    n = min(75, lengths[rows[0]["vid"]])
    assert v.shape == (n, 2304 + 512)  # cut to the shorter stream, SlowFast first
    raw = np.load(root / "features" / "slowfast_features" / f"{rows[0]['vid']}.npz")["features"]
    np.testing.assert_allclose(v[:, :2304], raw[:n] / (np.linalg.norm(raw[:n], axis=1, keepdims=True) + 1e-5), rtol=1e-5)  # fmt: skip
    np.testing.assert_allclose(np.linalg.norm(v[:, 2304:], axis=1), 1.0, atol=1e-4)
    t = f.text(rows[0]["qid"])
    assert t.shape == (5 + rows[0]["qid"] % 7, 512)

    dm = MomentDataModule(
        train_path=str(root / "train.jsonl"), val_path=str(root / "val.jsonl"),
        features_dir=str(root / "features"), feature_streams=["clip"],
    )  # fmt: skip
    dm.setup("fit")
    assert dm.v_feat_dim == 512 and dm.t_feat_dim == 512
    assert dm.encoder is None and dm.encoder_source["kind"] == "features_dir"
    it = dm.items["val"][0]
    assert it["num_clips"] == min(75, lengths[it["row"]["vid"]])
    dm2 = MomentDataModule(
        train_path=str(root / "train.jsonl"), val_path=str(root / "val.jsonl"),
        features_dir=str(root / "features"), feature_streams=["slowfast", "clip"],
    )  # fmt: skip
    dm2.setup("fit")
    assert dm2.v_feat_dim == 2816


def test_missing_feature_files_stop_setup_unless_allowed(qvh, caplog):
    from video_retrieval.train.moment_data import MomentDataModule

    root, rows, _ = qvh
    (root / "features" / "clip_features" / f"{rows[1]['vid']}.npz").unlink()
    (root / "features" / "clip_text_features" / f"qid{rows[2]['qid']}.npz").write_bytes(b"")
    kw = dict(train_path=str(root / "train.jsonl"), features_dir=str(root / "features"))
    with pytest.raises(UserError) as e:
        MomentDataModule(**kw).setup("fit")
    assert "2 feature file(s) of the train split" in str(e.value)
    assert f"{rows[1]['vid']}.npz" in str(e.value) and "allow_missing" in str(e.value)
    dm = MomentDataModule(**kw, allow_missing=True)
    dm.setup("fit")
    left = {r["qid"] for r in rows} - {it["row"]["qid"] for it in dm.items["train"]}
    same_video = {r["qid"] for r in rows if r["vid"] == rows[1]["vid"]}
    assert left == same_video | {rows[2]["qid"]}
    assert "queries left out (allow_missing)" in caplog.text


def test_qvhighlights_recipe_trains_and_validates_on_the_features(qvh, capsys):
    """The recipe with --data.init_args.features_dir: fit + validation metrics (tiny model)."""
    from video_retrieval.cli.train import main as train_main

    root, _, _ = qvh
    args = [
        "fit", "--config", str(REPO / "configs" / "moments_qvhighlights.yaml"),
        f"--data.init_args.train_path={root / 'train.jsonl'}",
        f"--data.init_args.val_path={root / 'val.jsonl'}",
        f"--data.init_args.features_dir={root / 'features'}",
        "--data.init_args.feature_streams=[slowfast,clip]",
        "--data.init_args.batch_size=4",
        "--model.init_args.hidden_dim=32", "--model.init_args.dim_feedforward=64",
        "--model.init_args.nheads=4", f"--model.init_args.predictions_dir={root / 'preds'}",
        "--trainer.max_epochs=1", "--trainer.check_val_every_n_epoch=1",
        f"--trainer.default_root_dir={root / 'run'}", "--trainer.enable_progress_bar=false",
        "--trainer.logger=false",
    ]  # fmt: skip
    try:
        rc = train_main(args)
    except SystemExit as e:
        rc = e.code
    assert rc in (0, None)
    ckpts = list((root / "run").rglob("*.ckpt"))
    assert ckpts
    meta = torch.load(ckpts[0], weights_only=True, map_location="cpu")["moment_meta"]
    assert meta["model_kwargs"]["v_feat_dim"] == 2816 and meta["model_kwargs"]["t_feat_dim"] == 512
    assert meta["encoder_source"] == {
        "kind": "features_dir", "path": str((root / "features").resolve()),
        "streams": ["slowfast", "clip"], "dims": [2304, 512],
    }  # fmt: skip
    # the head scores those features only: vr localize on a video refuses in one line
    from video_retrieval.cli import main as vr_main

    video = root / "a.mp4"
    video.write_bytes(b"\0")  # never decoded: the refusal comes first
    capsys.readouterr()
    rc = vr_main(["localize", str(video), "a query", "--checkpoint", str(ckpts[0])])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err, err
    assert err.startswith("error: this moment head was trained on pre-extracted features")
    assert "slowfast+clip" in err
