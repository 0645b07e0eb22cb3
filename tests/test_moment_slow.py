"""Training-to-quality check on the synthetic moment world (``pytest -m slow -s``).

Generates the recipe's world (seed 0, 546 videos, up to 20 queries each), trains the clip encoder
(``configs/moments_synth_clips.yaml``: the demo retrieval model fine-tuned on moment clips) and
then the Moment-DETR head from scratch (``configs/moments_synth.yaml``) on CPU through the real
entry point, and scores the held-out test split with the QVHighlights metrics, next to the
zero-shot baseline on the same clip features. About 1.5 hours on 2 cores.
"""

import json
import os
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("VR_MOMENT_SEED", "0"))
CLIP_EPOCHS = int(os.environ.get("VR_MOMENT_CLIP_EPOCHS", "3"))
EPOCHS = int(os.environ.get("VR_MOMENT_EPOCHS", "200"))
NUM_VIDEOS = int(os.environ.get("VR_MOMENT_VIDEOS", "546"))


def test_detr_head_beats_zero_shot_on_synthetic_world(tmp_path):
    import torch
    from video_retrieval.datasets.synth_moments import generate_moments

    from video_retrieval.cli_train import main as train_main
    from video_retrieval.lit_moments import (
        MomentDataModule,
        load_module,
        predict_split,
        zero_shot_split,
    )
    from video_retrieval.moment_metrics import evaluate

    torch.set_num_threads(int(os.environ.get("VR_NUM_THREADS", "2")))
    world = tmp_path / "world"
    generate_moments(world, seed=SEED, workers=2, num_videos=NUM_VIDEOS, queries_per_video=20)
    run = tmp_path / "run"
    t0 = time.time()
    # 1. the clip encoder, into a folder of this run
    cfg = yaml.safe_load(Path("configs/moments_synth_clips.yaml").read_text())
    cfg["trainer"]["callbacks"][0]["init_args"]["dirpath"] = str(run / "clips")
    clip_cfg = tmp_path / "clips.yaml"
    clip_cfg.write_text(yaml.safe_dump(cfg))
    train_main(
        [
            "fit",
            f"--config={clip_cfg}",
            f"--trainer.max_epochs={CLIP_EPOCHS}",
            f"--trainer.default_root_dir={run}/clips_logs",
            "--trainer.enable_progress_bar=false",
            f"--data.init_args.root={world}",
        ]
    )
    clip_ckpt = run / "clips" / "last.ckpt"
    assert clip_ckpt.is_file()
    clip_s = time.time() - t0
    # 2. the head on the clip encoder's features
    t0 = time.time()
    train_main(
        [
            "fit",
            "--config=configs/moments_synth.yaml",
            f"--trainer.max_epochs={EPOCHS}",
            f"--trainer.default_root_dir={run}/head",
            "--trainer.enable_progress_bar=false",
            f"--model.init_args.predictions_dir={run}/pred",
            f"--data.init_args.train_path={world}/train.jsonl",
            f"--data.init_args.val_path={world}/val.jsonl",
            f"--data.init_args.test_path={world}/test.jsonl",
            f"--data.init_args.cache_dir={tmp_path}/cache",
            f"--data.init_args.retrieval_checkpoint={clip_ckpt}",
        ]
    )
    head_s = time.time() - t0
    ckpts = sorted(Path(run / "head").rglob("best-*.ckpt"))
    assert ckpts, "no best checkpoint written"
    module = load_module(ckpts[-1])
    meta = module.meta_extra
    dm = MomentDataModule(
        train_path=f"{world}/train.jsonl",
        val_path=f"{world}/val.jsonl",
        test_path=f"{world}/test.jsonl",
        cache_dir=f"{tmp_path}/cache",
        retrieval_checkpoint=str(clip_ckpt),
        clip_pooling=meta["clip_pooling"],
        clip_context=meta["clip_context"],
        frames_per_clip=meta["frames_per_clip"],
        video_feature_norm=meta["video_feature_norm"],
        video_feature_diff=meta["video_feature_diff"],
    )
    dm.setup("test")
    gts = [it["row"] for it in dm.items["test"]]
    head = evaluate(predict_split(module, dm, "test"), gts)["brief"]
    zs = evaluate(zero_shot_split(dm, "test"), gts)["brief"]
    keys = [
        "MR-full-R1@0.3",
        "MR-full-R1@0.5",
        "MR-full-R1@0.7",
        "MR-full-mAP",
        "MR-full-mIoU",
        "HL-min-VeryGood-Hit1",
    ]
    report = {
        "seed": SEED,
        "videos": NUM_VIDEOS,
        "clip_epochs": CLIP_EPOCHS,
        "epochs": EPOCHS,
        "best_ckpt": ckpts[-1].name,
        "clip_encoder_seconds": round(clip_s, 1),
        "head_seconds": round(head_s, 1),
        "test_queries": len(gts),
        "head": {k: head[k] for k in keys},
        "zero_shot": {k: zs[k] for k in keys},
    }
    print("\nMOMENTS_SYNTH", json.dumps(report))
    assert head["MR-full-R1@0.7"] > zs["MR-full-R1@0.7"]
    assert head["MR-full-mAP"] > zs["MR-full-mAP"]
    assert head["MR-full-R1@0.5"] >= 60.0
