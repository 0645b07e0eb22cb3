"""Retrieval training through the LightningModule and ``vr train`` (LightningCLI)."""

import glob
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from video_retrieval.temporal import AGGREGATORS

from video_retrieval.cli.train import main as train_main
from video_retrieval.metrics.retrieval import video_to_text_matrix
from video_retrieval.models.checkpoints import load_retrieval_model, slim_checkpoint
from video_retrieval.train.retrieval_module import RetrievalModule, symmetric_infonce, warmup_cosine

REPO = Path(__file__).resolve().parents[1]
AGGS = ["mean", "query_scored", "seq_lstm", "seq_transformer", "tight_transformer", "ucofia"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from video_retrieval.datasets.synth_retrieval import generate_retrieval

    out = tmp_path_factory.mktemp("synth")
    generate_retrieval(
        out, seed=0, num_train=8, num_test=8, num_compositional=4, codec="h264_lossless", workers=1
    )
    return out


def _batch(n=4, t=3, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (n, t, size, size, 3), generator=g, dtype=torch.uint8)
    caps = [
        f"a {c} square moves {d}"
        for c, d in zip(["red", "blue", "green", "white"], ["left", "right", "up", "down"])
    ]
    return {
        "frames": frames,
        "mask": torch.ones(n, t, dtype=torch.bool),
        "captions": caps[:n],
        "failed": [],
    }


def test_symmetric_infonce_and_schedule():
    sim = torch.tensor([[2.0, 0.0], [1.0, 3.0]])
    # rows: -log softmax([2,0])_0 and -log softmax([1,3])_1; columns: [2,1]_0 and [0,3]_1
    ce = lambda x, i: -torch.log_softmax(x, 0)[i]  # noqa: E731
    expected = 0.5 * (
        (ce(sim[0], 0) + ce(sim[1], 1)) / 2 + (ce(sim[:, 0], 0) + ce(sim[:, 1], 1)) / 2
    )
    assert symmetric_infonce(sim).item() == pytest.approx(expected.item())
    assert warmup_cosine(0, 100, 10) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 10) == pytest.approx(0.0)


@pytest.mark.parametrize("agg", AGGS)
def test_one_training_step_per_aggregator(agg):
    assert agg in AGGREGATORS
    torch.manual_seed(0)
    kw = {"max_words": 16} if agg == "ucofia" else None
    m = RetrievalModule(
        model="vr-micro", aggregator=agg, aggregator_kwargs=kw, num_frames=3, max_words=16
    )
    opt = m.configure_optimizers()["optimizer"]
    loss = m.training_step(_batch(), 0)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    enc_grads = [p.grad for p in m.encoder.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in enc_grads)
    before = m.encoder.model.visual.conv1.weight.detach().clone()
    opt.step()
    assert not torch.equal(before, m.encoder.model.visual.conv1.weight)
    with torch.no_grad():
        m.aggregator.logit_scale.fill_(10.0)
    m.on_train_batch_end(None, None, 0)
    assert m.aggregator.logit_scale.exp().item() == pytest.approx(100.0)


def test_optimizer_groups_and_freeze():
    m = RetrievalModule(
        model="vr-micro",
        aggregator="seq_transformer",
        num_frames=3,
        max_words=16,
        lr_clip=1e-5,
        lr_new=1e-3,
        weight_decay=0.2,
    )
    groups = {g["name"]: g for g in m.configure_optimizers()["optimizer"].param_groups}
    ids = {k: {id(p) for p in g["params"]} for k, g in groups.items()}
    named = dict(m.named_parameters())
    assert groups["clip"]["lr"] == 1e-5 and groups["new"]["lr"] == 1e-3
    assert groups["clip_no_decay"]["weight_decay"] == 0.0 and groups["clip"]["weight_decay"] == 0.2
    assert id(named["aggregator.logit_scale"]) in ids["clip_no_decay"]
    assert id(named["encoder.model.token_embedding.weight"]) in ids["clip_no_decay"]
    assert id(named["aggregator.frame_position_embeddings.weight"]) in ids["new_no_decay"]
    for name, p in named.items():
        if name.endswith(".bias") or ".ln_" in name:
            assert id(p) not in ids.get("clip", set()) | ids.get("new", set()), name
    assert id(named["encoder.model.visual.conv1.weight"]) in ids["clip"]
    f = RetrievalModule(
        model="vr-micro", aggregator="seq_lstm", num_frames=3, max_words=16, freeze_backbone=True
    )
    loss = f.training_step(_batch(), 0)
    loss.backward()
    assert all(p.grad is None for p in f.encoder.parameters())
    assert any(p.grad is not None for p in f.aggregator.parameters())
    names = {g["name"] for g in f.configure_optimizers()["optimizer"].param_groups}
    assert not any(n == "clip" for n in names)


def test_loss_decreases_overfitting_tiny_batch():
    torch.manual_seed(0)
    m = RetrievalModule(model="vr-micro", aggregator="mean", num_frames=3, max_words=16)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    batch = _batch(seed=1)
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss = m.training_step(batch, 0)
        loss.backward()
        opt.step()
        m.on_train_batch_end(None, None, 0)
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0], losses


def _cli(args):
    try:
        train_main(args)
    except SystemExit as e:
        return e.code
    return 0


def _tiny(world, root):
    return [
        f"--data.root={world}",
        "--data.frame_cache_dir=null",
        "--data.global_batch_size=4",
        "--data.eval_batch_size=4",
        f"--trainer.default_root_dir={root}",
    ]


@pytest.mark.parametrize("agg", AGGS)
def test_every_synth_config_fast_dev_run(agg, world, tmp_path):
    cfg = REPO / "configs" / f"synth_{agg}.yaml"
    assert (
        _cli(["fit", "--config", str(cfg), "--trainer.fast_dev_run=1", *_tiny(world, tmp_path)])
        == 0
    )


@pytest.mark.parametrize("ds", ["msrvtt", "didemo"])
def test_real_configs_parse(ds, capsys):
    for agg in AGGS:
        cfg = REPO / "configs" / f"{ds}_{agg}.yaml"
        assert _cli(["fit", "--config", str(cfg), "--print_config"]) == 0
        out = capsys.readouterr().out
        assert "ViT-B-32" in out and f"aggregator: {agg}" in out
        frames = 12 if ds == "msrvtt" else 64
        assert f"num_frames: {frames}" in out


def test_config_typo_is_reported(capsys):
    cfg = REPO / "configs" / "synth_mean.yaml"
    code = _cli(["fit", "--config", str(cfg), "--model.init_args.aggregatr=mean", "--print_config"])
    assert code not in (0, None)
    assert "aggregatr" in capsys.readouterr().err


def test_checkpoint_roundtrip_and_resume(world, tmp_path, capsys):
    cfg = REPO / "configs" / "synth_seq_transformer.yaml"
    args = ["fit", "--config", str(cfg), *_tiny(world, tmp_path), "--trainer.limit_val_batches=0"]
    capsys.readouterr()
    assert _cli([*args, "--trainer.max_steps=2"]) == 0
    ckpts = sorted(glob.glob(f"{tmp_path}/**/last.ckpt", recursive=True))
    assert ckpts, os.listdir(tmp_path)
    out, err = capsys.readouterr()
    assert f"last checkpoint: {ckpts[0]}" in out.splitlines()  # the run says where it wrote
    assert "Tip:" not in out + err and "tensorboardX" not in out + err
    # vr train test: each metric once, rounded, after a header (Lightning's table is off)
    assert _cli(["test", "--config", str(cfg), *_tiny(world, tmp_path / "t"),
                 f"--ckpt_path={ckpts[0]}"]) == 0  # fmt: skip
    out = capsys.readouterr().out.splitlines()
    table = out[out.index("test metrics:") + 1 :]
    names = [line.split()[0] for line in table]
    assert "test/t2v_R1" in names and len(names) == len(set(names)), table
    assert all(re.fullmatch(r"\s+\S+\s+-?\d+\.\d\d", line) for line in table), table
    raw = torch.load(ckpts[0], map_location="cpu", weights_only=True)
    assert raw["global_step"] == 2 and raw["hyper_parameters"]["aggregator"] == "seq_transformer"
    json.dumps(raw["hyper_parameters"])  # plain JSON-able
    enc, agg, meta = load_retrieval_model(ckpts[0], precision="fp32")
    assert meta["aggregator"] == "seq_transformer" and meta["frame_size"] == 64
    # same similarities as the in-memory LightningModule with the same weights
    m = RetrievalModule(
        **{k: v for k, v in raw["hyper_parameters"].items() if not k.startswith("_")}
    )
    m.load_state_dict(raw["state_dict"])
    m.eval()
    b = _batch(n=3, t=8, size=64, seed=3)
    with torch.no_grad():
        s1 = m.aggregator.similarity(
            m.encode_text(b["captions"]), m.encode_video(b["frames"], b["mask"])
        )
        tok = enc.tokenize(b["captions"], context_length=meta["max_words"])
        t = enc.encode_text(tok, return_words=agg.needs_words)
        cls, _ = enc.encode_images(enc.preprocess(b["frames"].reshape(-1, 64, 64, 3)))
        from video_retrieval.temporal.features import VideoFeatures

        s2 = agg.similarity(t, VideoFeatures(cls.reshape(3, 8, -1), b["mask"]))
    torch.testing.assert_close(s1, s2, rtol=1e-4, atol=1e-4)
    # the slim (fp16, no optimizer state) file gives the same model up to fp16 rounding
    slim = slim_checkpoint(ckpts[0], tmp_path / "slim.ckpt")
    assert slim["bytes"] < 0.3 * os.path.getsize(ckpts[0])
    enc16, agg16, meta16 = load_retrieval_model(tmp_path / "slim.ckpt", precision="fp32")
    assert {k: meta16[k] for k in ("aggregator", "frame_size", "num_frames", "global_step")} == {
        k: meta[k] for k in ("aggregator", "frame_size", "num_frames", "global_step")
    }
    with torch.no_grad():
        t16 = enc16.encode_text(tok, return_words=agg16.needs_words)
        cls16, _ = enc16.encode_images(enc16.preprocess(b["frames"].reshape(-1, 64, 64, 3)))
        s3 = agg16.similarity(t16, VideoFeatures(cls16.reshape(3, 8, -1), b["mask"]))
    torch.testing.assert_close(s3, s2, rtol=0, atol=0.05)
    assert not torch.equal(s3, s2)  # really the rounded weights
    # resume: --ckpt_path continues from step 2
    out2 = tmp_path / "resume"
    args2 = ["fit", "--config", str(cfg), *_tiny(world, out2), "--trainer.limit_val_batches=0"]
    assert _cli([*args2, "--trainer.max_steps=3", f"--ckpt_path={ckpts[0]}"]) == 0
    last = sorted(glob.glob(f"{out2}/**/last.ckpt", recursive=True))
    assert torch.load(last[0], map_location="cpu", weights_only=True)["global_step"] == 3


DDP_SCRIPT = r"""
import json, sys, torch
torch.set_num_threads(1)
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI
out = sys.argv[1]
cli = LightningCLI(LightningModule, LightningDataModule, subclass_mode_model=True,
                   subclass_mode_data=True, args=sys.argv[2:], run=False,
                   save_config_kwargs={"overwrite": True})
cli.trainer.fit(cli.model, cli.datamodule)
cli.trainer.validate(cli.model, cli.datamodule, verbose=False)
if cli.trainer.global_rank == 0:
    res = cli.model.eval_results["val/"]
    res["world_size"] = cli.trainer.world_size
    res["w"] = float(cli.model.encoder.model.visual.conv1.weight.double().sum())
    sim, t2v = cli.model.eval_similarity["val/"]
    res["sim"], res["t2v"] = sim.double().tolist(), t2v.tolist()
    json.dump(res, open(out, "w"))
"""


def test_ddp_two_processes_matches_one(world, tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)
    cfg = REPO / "configs" / "synth_mean.yaml"
    common = [
        "--config",
        str(cfg),
        f"--data.root={world}",
        "--data.frame_cache_dir=null",
        "--data.global_batch_size=4",
        "--data.eval_batch_size=3",  # 8 videos / (2 x 3): padded
        "--data.shuffle=false",
        "--data.expand_sentences=true",
        "--data.max_train_videos=4",
        "--trainer.max_steps=3",
        "--trainer.limit_val_batches=null",
        "--trainer.check_val_every_n_epoch=1000",
        "--trainer.enable_progress_bar=false",
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    results = {}
    for name, extra in {
        "one": ["--trainer.devices=1", "--trainer.strategy=auto"],
        "ddp": ["--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.accelerator=cpu"],
    }.items():
        out = tmp_path / f"{name}.json"
        proc = subprocess.run(
            [
                sys.executable,
                str(script),
                str(out),
                *common,
                *extra,
                f"--trainer.default_root_dir={tmp_path / name}",
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        results[name] = json.loads(out.read_text())
    one, ddp = results["one"], results["ddp"]
    assert one["world_size"] == 1 and ddp["world_size"] == 2
    # every test video and caption counted once despite DistributedSampler padding
    assert ddp["num_videos"] == one["num_videos"] == 8
    assert ddp["num_captions"] == one["num_captions"]
    # same global batch -> same weights -> same metrics
    assert ddp["w"] == pytest.approx(one["w"], rel=1e-4)
    # the same similarity matrix up to float-level differences d (other reduction order)
    assert ddp["t2v"] == one["t2v"]
    s1, s2 = np.array(one["sim"]), np.array(ddp["sim"])
    assert np.abs(s2 - s1).max() <= 1e-5 * np.abs(s1).max()  # of the matrix's scale
    # a random-init model has near-tied scores, so d may reorder a pair whose gap is < 2d; the
    # metrics may differ by exactly what such pairs allow, no more
    d2 = 2 * float(np.abs(s2 - s1).max()) + 1e-12
    t2v = np.array(one["t2v"])
    n_t = len(t2v)
    t2v_near = _near_ties(s1, t2v, d2)  # per caption: competitors within 2d of its video
    v2t = video_to_text_matrix(s1, t2v)  # a video's score for another: its best caption's
    queries = np.unique(t2v)
    v2t_near = _near_ties(v2t[queries], queries, d2)  # (a max moves by <= d too)
    for k, near, n in (("t2v", t2v_near, n_t), ("v2t", v2t_near, len(queries))):
        for metric, tol in (
            ("R1", 100 * np.count_nonzero(near) / n),
            ("R5", 100 * np.count_nonzero(near) / n),
            ("MnR", near.sum() / n),
        ):
            key = f"{k}_{metric}"
            assert abs(ddp[key] - one[key]) <= tol + 1e-9, (key, ddp[key], one[key], tol)


def _near_ties(sim: np.ndarray, gt: np.ndarray, gap: float) -> np.ndarray:
    """Per row of ``sim``: how many other columns score within ``gap`` of column ``gt[row]``."""
    own = sim[np.arange(len(gt)), gt][:, None]
    near = np.abs(sim - own) < gap
    near[np.arange(len(gt)), gt] = False
    return near.sum(1)


def test_seq_transformer_initialises_from_a_local_clip_file(tmp_path):
    from video_retrieval.encoders.factory import create_encoder

    torch.manual_seed(1)
    path = create_encoder("vr-micro", precision="fp32").save_encoder(tmp_path / "clip.safetensors")
    kw = {"model": "vr-micro", "aggregator": "seq_transformer", "num_frames": 3, "max_words": 16}
    m = RetrievalModule(checkpoint=str(path), aggregator_kwargs={"heads": 2}, **kw)
    text_block = m.encoder.model.transformer.resblocks[0].attn.in_proj_weight
    agg_block = m.aggregator.transformer.resblocks[0].attn.in_proj_weight
    assert torch.equal(agg_block, text_block)
    pos = m.encoder.model.positional_embedding
    assert torch.equal(m.aggregator.frame_position_embeddings.weight[: len(pos)], pos)
    scratch = RetrievalModule(aggregator_kwargs={"heads": 2}, **kw)  # random CLIP: CLIP4Clip init
    assert not torch.equal(
        scratch.aggregator.transformer.resblocks[0].attn.in_proj_weight,
        scratch.encoder.model.transformer.resblocks[0].attn.in_proj_weight,
    )


def test_frozen_cache_recipe_parses(capsys):
    cfg = REPO / "configs" / "msrvtt_ucofia_frozen.yaml"
    assert _cli(["fit", "--config", str(cfg), "--print_config"]) == 0
    out = capsys.readouterr().out
    assert "video_retrieval.train.cache_data.CachedRetrievalDataModule" in out
    assert "freeze_backbone: true" in out and "aggregator: ucofia" in out


def test_resume_with_another_model_config_is_refused(world, tmp_path, capsys):
    """LightningCLI would train the checkpoint's aggregator under the other config's name."""
    from video_retrieval.cli import main

    mean = ["fit", "--config", str(REPO / "configs" / "synth_mean.yaml"),
            *_tiny(world, tmp_path / "m"), "--trainer.limit_val_batches=0"]  # fmt: skip
    assert _cli([*mean, "--trainer.max_steps=2"]) == 0
    ckpt = sorted(glob.glob(f"{tmp_path}/m/**/last.ckpt", recursive=True))[0]
    seq = ["train", "fit", "--config", str(REPO / "configs" / "synth_seq_transformer.yaml"),
           *_tiny(world, tmp_path / "s"), "--trainer.max_steps=4", f"--ckpt_path={ckpt}"]  # fmt: skip
    capsys.readouterr()
    assert main(seq) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert "aggregator='mean' (config: 'seq_transformer')" in err
    assert not glob.glob(f"{tmp_path}/s/**/*.ckpt", recursive=True)  # nothing was trained
    # the same config resumes
    assert _cli([*mean, "--trainer.max_steps=3", f"--ckpt_path={ckpt}"]) == 0
