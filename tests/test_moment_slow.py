"""Training-to-quality check on the synthetic moment world (``pytest -m slow -s``).

Generates the world (seed 0), trains the Moment-DETR head from scratch on CPU through the real
entry point (``vr train fit --config configs/moments_synth.yaml``), and scores the held-out test
split with the QVHighlights metrics, next to the zero-shot baseline on the same features.
"""

import json
import os
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("VR_MOMENT_SEED", "0"))
EPOCHS = int(os.environ.get("VR_MOMENT_EPOCHS", "60"))


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

    torch.set_num_threads(int(os.environ.get("VR_NUM_THREADS", "1")))
    world = tmp_path / "world"
    generate_moments(world, seed=SEED, workers=2)
    run = tmp_path / "run"
    data_args = [
        f"--data.init_args.train_path={world}/train.jsonl",
        f"--data.init_args.val_path={world}/val.jsonl",
        f"--data.init_args.test_path={world}/test.jsonl",
        f"--data.init_args.cache_dir={tmp_path}/cache",
    ]
    t0 = time.time()
    train_main(
        [
            "fit",
            "--config=configs/moments_synth.yaml",
            f"--trainer.max_epochs={EPOCHS}",
            f"--trainer.default_root_dir={run}",
            "--trainer.enable_progress_bar=false",
            f"--model.init_args.predictions_dir={run}/pred",
            *data_args,
        ]
    )
    train_s = time.time() - t0
    ckpts = sorted(Path(run).rglob("best-*.ckpt"))
    assert ckpts, "no best checkpoint written"
    module = load_module(ckpts[-1])

    def data(norm):  # the head sees the features it was trained on; zero-shot plain CLIP ones
        dm = MomentDataModule(
            train_path=f"{world}/train.jsonl",
            val_path=f"{world}/val.jsonl",
            test_path=f"{world}/test.jsonl",
            cache_dir=f"{tmp_path}/cache",
            retrieval_checkpoint="auto",
            video_feature_norm=norm,
        )
        dm.setup("test")
        return dm

    dm = data(module.meta_extra["video_feature_norm"])
    gts = [it["row"] for it in dm.items["test"]]
    head = evaluate(predict_split(module, dm, "test"), gts)["brief"]
    zs = evaluate(zero_shot_split(data("none"), "test"), gts)["brief"]
    keys = [
        "MR-full-R1@0.5",
        "MR-full-R1@0.7",
        "MR-full-mAP",
        "MR-full-mIoU",
        "HL-min-VeryGood-Hit1",
    ]
    report = {
        "seed": SEED,
        "epochs": EPOCHS,
        "best_ckpt": ckpts[-1].name,
        "train_seconds": round(train_s, 1),
        "test_queries": len(gts),
        "head": {k: head[k] for k in keys},
        "zero_shot": {k: zs[k] for k in keys},
    }
    print("\nMOMENTS_SYNTH", json.dumps(report))
    assert head["MR-full-R1@0.7"] > zs["MR-full-R1@0.7"]
    assert head["MR-full-mAP"] > zs["MR-full-mAP"]
    assert head["MR-full-R1@0.5"] >= 60.0
