"""Checkpoints written before the package split load and answer as they did.

``tests/fixtures/old_checkpoints/`` holds what the code of commit 2277715 (every module directly in
``video_retrieval/``) answered with the bundled assets, and a full Lightning moment checkpoint
that code wrote (its hyper-parameters name ``video_retrieval.lit_moments.*``). A retrieval
checkpoint naming the old classes is made here from a fresh one with its class paths rewritten
(19 MB: too large to commit). And a checkpoint naming a class that is not ours is refused before
anything imports it.
"""

from __future__ import annotations

import glob
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from video_retrieval.cli import main as vr_main
from video_retrieval.errors import UserError
from video_retrieval.models.assets import DEMO_CLIPS, DEMO_MOMENTS, DEMO_RETRIEVAL
from video_retrieval.models.class_paths import CLASS_PATHS, OLD_CLASS_PATHS, check_class_paths

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "old_checkpoints"
OLD_MOMENT_CKPT = FIXTURES / "moment_qd_detr_lightning.ckpt"
ANSWERS = json.loads((FIXTURES / "answers.json").read_text())

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    """The worlds the answers were recorded on (same generator, same seeds, lossless)."""
    from video_retrieval.datasets.synth_moments import generate_moments
    from video_retrieval.datasets.synth_retrieval import generate_retrieval

    out = tmp_path_factory.mktemp("compat")
    generate_retrieval(out / "ret", seed=5, num_train=2, num_test=6, num_compositional=0,
                       codec="h264_lossless", workers=1)  # fmt: skip
    generate_moments(out / "mom", seed=5, num_videos=3, queries_per_video=3,
                     codec="h264_lossless", workers=1, min_duration=30, max_duration=40)  # fmt: skip
    return out


def _rows(world: Path) -> list[dict]:
    return [
        json.loads(line)
        for split in ("train", "val", "test")
        for line in (world / "mom" / f"{split}.jsonl").read_text().splitlines()
    ]


def _same_moments(got: dict, want: dict) -> None:
    assert [(m["start"], m["end"]) for m in got["moments"]] == [
        (m["start"], m["end"]) for m in want["moments"]
    ]
    assert [m["score"] for m in got["moments"]] == pytest.approx(
        [m["score"] for m in want["moments"]], abs=1e-5
    )
    assert got["saliency"] == pytest.approx(want["saliency"], abs=1e-4)


# ---------------------------------------------------------------------- the bundled assets
def test_bundled_retrieval_model_searches_as_before(worlds, tmp_path):
    from video_retrieval import Index

    idx = Index.build([str(worlds / "ret" / "videos")], str(tmp_path / "idx"),
                      checkpoint=str(DEMO_RETRIEVAL), workers=0)  # fmt: skip
    for query, want in ANSWERS["search"].items():
        hits = idx.search(query, k=5, rerank="none")
        assert [Path(h.video).name for h in hits] == [w[0] for w in want]
        assert [h.score for h in hits] == pytest.approx([w[1] for w in want], abs=1e-5)
        assert [[h.moment.start, h.moment.end] for h in hits] == [w[2] for w in want]


def test_bundled_moment_head_and_clip_encoder_answer_as_before(worlds):
    from video_retrieval import localize
    from video_retrieval.models.checkpoints import load_retrieval_model
    from video_retrieval.moments.features import clip_features

    for r in _rows(worlds)[:4]:
        video = worlds / "mom" / "videos" / f"{r['vid']}.mp4"
        got = localize(str(video), r["query"], checkpoint=str(DEMO_MOMENTS), top=5)
        _same_moments(got, ANSWERS["localize"][f"{r['vid']}|{r['query']}"])
    from video_retrieval.moments.predictor import MomentPredictor

    head = MomentPredictor.from_checkpoint(DEMO_MOMENTS).model
    assert {layer.form for layer in head.t2v} == {"post_norm"}  # the form it was trained with
    enc, agg, _ = load_retrieval_model(DEMO_CLIPS)
    want = ANSWERS["clips"]
    video = worlds / "mom" / "videos" / want["video"]
    f, _, _ = clip_features(enc, video, clip_len=2.0, aggregator=agg, frames_per_clip=4,
                            context=1.0)  # fmt: skip
    assert list(f.shape) == want["shape"]
    np.testing.assert_allclose(f[:3, :8], want["feats_first"], atol=1e-5)
    assert float(f.sum()) == pytest.approx(want["sum"], abs=1e-3)


# ------------------------------------------------- a full Lightning checkpoint of the old code
def test_old_lightning_moment_checkpoint_localizes_as_before(worlds, capsys):
    raw = torch.load(OLD_MOMENT_CKPT, weights_only=True, map_location="cpu")
    assert raw["hyper_parameters"]["_class_path"] == "video_retrieval.lit_moments.MomentDETRModule"
    for r in _rows(worlds)[:3]:
        video = worlds / "mom" / "videos" / f"{r['vid']}.mp4"
        capsys.readouterr()
        # --nms 1: no suppression, as the answers were recorded before NMS was the default
        rc = vr_main(["localize", str(video), r["query"], "--checkpoint", str(OLD_MOMENT_CKPT),
                      "--top", "5", "--json", "--nms", "1"])  # fmt: skip
        out, err = capsys.readouterr()
        assert rc == 0, err
        _same_moments(
            json.loads(out), ANSWERS["localize_full_lightning"][f"{r['vid']}|{r['query']}"]
        )


def test_old_lightning_moment_checkpoint_loads_and_resumes(worlds, tmp_path, monkeypatch):
    from video_retrieval.train.moment_module import MomentDETRModule, load_module

    module = load_module(OLD_MOMENT_CKPT)
    assert isinstance(module, MomentDETRModule) and module.hparams.hidden_dim == 16
    # trained before the published T2V form was the default: it keeps the form it learned
    assert [layer.form for layer in module.model.t2v] == ["post_norm", "post_norm"]
    mom = worlds / "mom"
    monkeypatch.chdir(tmp_path)  # its predictions_dir is relative: runs/old_fixture/predictions
    rc = vr_main([
        "train", "fit", "--config", str(REPO / "configs" / "moments_synth.yaml"),
        f"--data.init_args.train_path={mom / 'train.jsonl'}",
        f"--data.init_args.val_path={mom / 'val.jsonl'}",
        f"--data.init_args.test_path={mom / 'test.jsonl'}",
        f"--data.init_args.cache_dir={tmp_path / 'cache'}",
        f"--data.init_args.retrieval_checkpoint={DEMO_CLIPS}",
        "--model.init_args.predictions_dir=runs/old_fixture/predictions",
        "--model.init_args.hidden_dim=16", "--model.init_args.nheads=2",
        "--model.init_args.dim_feedforward=32",  # the settings it was trained with
        f"--trainer.default_root_dir={tmp_path / 'run'}",
        "--trainer.max_epochs=2", "--trainer.check_val_every_n_epoch=1",
        "--trainer.enable_progress_bar=false",
        f"--ckpt_path={OLD_MOMENT_CKPT}",
    ])  # fmt: skip
    assert rc == 0
    last = sorted(glob.glob(f"{tmp_path / 'run'}/**/last.ckpt", recursive=True))
    new = torch.load(last[0], weights_only=True, map_location="cpu")
    assert new["epoch"] == 1  # continued from the old checkpoint's epoch 0
    assert new["hyper_parameters"]["hidden_dim"] == 16
    assert new["hyper_parameters"]["t2v_form"] == "post_norm"
    assert new["moment_meta"]["model_kwargs"]["t2v_form"] == "post_norm"
    assert (
        new["hyper_parameters"]["_class_path"]
        == "video_retrieval.train.moment_module.MomentDETRModule"
    )
    assert new["datamodule_hyper_parameters"]["_class_path"] == (
        "video_retrieval.train.moment_data.MomentDataModule"
    )


# ---------------------------------------------------------------- retrieval, old class paths
@pytest.fixture(scope="module")
def retrieval_ckpts(worlds, tmp_path_factory):
    """A fresh retrieval checkpoint, and the same file naming the pre-split classes."""
    out = tmp_path_factory.mktemp("rtrain")
    rc = vr_main([
        "train", "fit", "--config", str(REPO / "configs" / "synth_mean.yaml"),
        "--model.init_args.model=vr-micro", "--model.init_args.max_words=16",
        f"--data.init_args.root={worlds / 'ret'}", "--data.init_args.frame_cache_dir=null",
        "--data.init_args.global_batch_size=2", "--data.init_args.eval_batch_size=2",
        "--data.init_args.frame_size=32", "--trainer.max_steps=1",
        "--trainer.limit_val_batches=0", f"--trainer.default_root_dir={out}",
        "--trainer.enable_progress_bar=false",
    ])  # fmt: skip
    assert rc == 0
    new = Path(sorted(glob.glob(f"{out}/**/last.ckpt", recursive=True))[0])
    raw = torch.load(new, weights_only=True, map_location="cpu")
    assert raw["hyper_parameters"]["_class_path"] in CLASS_PATHS
    back = {v: k for k, v in OLD_CLASS_PATHS.items()}
    for key in ("hyper_parameters", "datamodule_hyper_parameters"):
        raw[key]["_class_path"] = back[raw[key]["_class_path"]]
    old = out / "old_paths.ckpt"
    torch.save(raw, old)
    return new, old


def test_old_retrieval_class_paths_index_search_and_resume(worlds, retrieval_ckpts, tmp_path,
                                                          capsys):  # fmt: skip
    new, old = retrieval_ckpts
    answers = {}
    for name, ckpt in (("new", new), ("old", old)):
        d = tmp_path / name
        rc = vr_main(["index", str(worlds / "ret" / "videos"), "--index", str(d), "--checkpoint",
                      str(ckpt), "--workers", "0", "--json"])  # fmt: skip
        assert rc == 0, capsys.readouterr().err
        capsys.readouterr()
        assert vr_main(["search", "a red circle moves left", "--index", str(d), "--json"]) == 0
        rows = json.loads(capsys.readouterr().out)["results"]
        answers[name] = [(Path(r["video"]).name, r["score"], r["moment"]) for r in rows]
    assert answers["old"] == answers["new"] and len(answers["new"]) == 8  # 2 train + 6 test
    rc = vr_main([
        "train", "fit", "--config", str(REPO / "configs" / "synth_mean.yaml"),
        "--model.init_args.model=vr-micro", "--model.init_args.max_words=16",
        f"--data.init_args.root={worlds / 'ret'}", "--data.init_args.frame_cache_dir=null",
        "--data.init_args.global_batch_size=2", "--data.init_args.eval_batch_size=2",
        "--data.init_args.frame_size=32", "--trainer.max_steps=2",
        "--trainer.limit_val_batches=0", f"--trainer.default_root_dir={tmp_path / 'resume'}",
        "--trainer.enable_progress_bar=false", f"--ckpt_path={old}",
    ])  # fmt: skip
    assert rc == 0
    last = sorted(glob.glob(f"{tmp_path / 'resume'}/**/last.ckpt", recursive=True))
    resumed = torch.load(last[0], weights_only=True, map_location="cpu")
    assert resumed["global_step"] == 2 and resumed["hyper_parameters"]["model"] == "vr-micro"


# ------------------------------------------------------------- a checkpoint naming other code
MARKER_MODULE = """
from pathlib import Path
Path({marker!r}).write_text("imported")

class X:
    def __init__(self, **kwargs):
        pass
"""


@pytest.mark.parametrize("key", ["_class_path", "_instantiator"])
def test_a_checkpoint_naming_another_class_is_refused_before_import(retrieval_ckpts, tmp_path,
                                                                    monkeypatch, capsys, key):  # fmt: skip
    new, _ = retrieval_ckpts
    marker = tmp_path / "marker.txt"
    (tmp_path / "vr_marker_mod.py").write_text(MARKER_MODULE.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))
    raw = torch.load(new, weights_only=True, map_location="cpu")
    raw["hyper_parameters"][key] = "vr_marker_mod.X"
    bad = tmp_path / "bad.ckpt"
    torch.save(raw, bad)
    capsys.readouterr()
    rc = vr_main(["train", "fit", "--config", str(REPO / "configs" / "synth_mean.yaml"),
                  f"--ckpt_path={bad}", "--trainer.max_steps=1"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "vr_marker_mod.X" in err and "refusing to import" in err
    assert not marker.exists() and "vr_marker_mod" not in sys.modules
    for load in ("index", "localize"):
        args = (["index", str(tmp_path), "--index", str(tmp_path / "i")] if load == "index"
                else ["localize", str(tmp_path / "none.mp4"), "q"])  # fmt: skip
        assert vr_main([*args, "--checkpoint", str(bad)]) == 2
    assert not marker.exists()


def test_class_path_check_maps_old_paths_and_walks_nested_values():
    ckpt = {
        "hyper_parameters": {"_class_path": "video_retrieval.lit_moments.MomentDETRModule",
                             "_instantiator": "lightning.pytorch.cli.instantiate_module",
                             "hidden_dim": 16},
        "datamodule_hyper_parameters": {"_class_path": "video_retrieval.lit_moments.MomentDataModule"},
        "state_dict": {},
    }  # fmt: skip
    out = check_class_paths(ckpt, "x.ckpt")
    assert out["hyper_parameters"]["_class_path"] == (
        "video_retrieval.train.moment_module.MomentDETRModule"
    )
    assert out["datamodule_hyper_parameters"]["_class_path"] == (
        "video_retrieval.train.moment_data.MomentDataModule"
    )
    assert ckpt["hyper_parameters"]["_class_path"].startswith("video_retrieval.lit_")  # a copy
    nested = {"hyper_parameters": {"aggregator_kwargs": {"x": [{"class_path": "os.system"}]}}}
    with pytest.raises(UserError, match="'os.system'"):
        check_class_paths(nested, "y.ckpt")
    # every class the allow-list names exists where it says
    import importlib

    for path in CLASS_PATHS | set(OLD_CLASS_PATHS.values()):
        mod, _, name = path.rpartition(".")
        assert hasattr(importlib.import_module(mod), name), path
