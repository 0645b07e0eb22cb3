"""``slim_checkpoint`` / ``slim_moment_checkpoint`` on hand-made checkpoints (no training, no
encoder build): exactly which entries are kept, which are dropped, what is cast to fp16, where a
re-pointed moment head looks for its encoder, and the summary each returns. The end-to-end use
(a trained checkpoint slimmed and loaded back) is in test_train_retrieval.py and
test_moments_clip_pooling.py; these are the fast checks mutation testing runs
(tools/mutation.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from video_retrieval.errors import UserError
from video_retrieval.models import checkpoints
from video_retrieval.models.checkpoints import slim_checkpoint, slim_moment_checkpoint

INFERENCE_KEYS = {"hyper_parameters", "vr_meta", "epoch", "global_step", "state_dict"}


def _retrieval_ckpt(path: Path, **over) -> Path:
    """What ``vr train`` writes for a retrieval model, training state included."""
    w = torch.arange(6, dtype=torch.float32).reshape(2, 3) / 3
    ckpt = {
        "state_dict": {
            "encoder.proj.weight": w,
            "encoder.position_ids": torch.arange(4, dtype=torch.int64),
            "encoder.mask": torch.tensor([True, False]),
            "aggregator.scale": torch.tensor([0.1], dtype=torch.float64),
        },
        "hyper_parameters": {
            "_class_path": "video_retrieval.lit_retrieval.RetrievalModule",  # pre-split path
            "aggregator": "meanP",
            "num_frames": 4,
        },
        "vr_meta": {"encoder_spec": {"model": "vr-tiny"}, "frame_size": 32},
        "epoch": 3,
        "global_step": 120,
        "optimizer_states": [{"state": {0: {"exp_avg": torch.ones(2, 3)}}}],
        "lr_schedulers": [{"last_epoch": 3}],
        "loops": {"fit_loop": {"epoch_progress": {"current": 3}}},
        "callbacks": {"ModelCheckpoint": {"best_model_score": torch.tensor(0.5)}},
        "pytorch-lightning_version": "2.4.0",
    }
    ckpt.update(over)
    torch.save(ckpt, path)
    return path


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_slim_keeps_the_inference_part_in_fp16_by_default(tmp_path):
    src = _retrieval_ckpt(tmp_path / "full.ckpt")
    info = slim_checkpoint(src, tmp_path / "out" / "slim.ckpt")  # the folder is created
    dst = tmp_path / "out" / "slim.ckpt"
    assert info == {"path": str(dst), "bytes": dst.stat().st_size, "tensors": 4, "fp16": True}
    got = _load(dst)
    assert set(got) == INFERENCE_KEYS  # no optimizer, scheduler, loop or callback state
    sd = got["state_dict"]
    assert set(sd) == set(_load(src)["state_dict"])
    # floating tensors (fp32 and fp64 alike) become fp16; integer and bool buffers keep theirs
    assert sd["encoder.proj.weight"].dtype == torch.float16
    assert sd["aggregator.scale"].dtype == torch.float16
    assert sd["encoder.position_ids"].dtype == torch.int64
    assert sd["encoder.mask"].dtype == torch.bool
    assert sd["encoder.position_ids"].tolist() == [0, 1, 2, 3]
    assert sd["encoder.mask"].tolist() == [True, False]
    expected = (torch.arange(6, dtype=torch.float32).reshape(2, 3) / 3).half()
    assert torch.equal(sd["encoder.proj.weight"], expected)
    assert got["epoch"] == 3 and got["global_step"] == 120
    assert got["vr_meta"] == {"encoder_spec": {"model": "vr-tiny"}, "frame_size": 32}
    # the hyper-parameters as read_checkpoint returns them: the old class path mapped to today's
    assert got["hyper_parameters"] == {
        "_class_path": "video_retrieval.train.retrieval_module.RetrievalModule",
        "aggregator": "meanP",
        "num_frames": 4,
    }


def test_slim_fp32_keeps_every_dtype(tmp_path):
    src = _retrieval_ckpt(tmp_path / "full.ckpt")
    info = slim_checkpoint(src, tmp_path / "slim32.ckpt", half=False)
    assert info["fp16"] is False and info["tensors"] == 4
    sd = _load(tmp_path / "slim32.ckpt")["state_dict"]
    assert {k: v.dtype for k, v in sd.items()} == {
        "encoder.proj.weight": torch.float32,
        "encoder.position_ids": torch.int64,
        "encoder.mask": torch.bool,
        "aggregator.scale": torch.float64,
    }
    assert torch.equal(sd["encoder.proj.weight"], _load(src)["state_dict"]["encoder.proj.weight"])


def test_slim_keeps_only_the_entries_present(tmp_path):
    """A checkpoint without vr_meta / epoch / global_step (an older or hand-made one) slims to
    what it has: nothing invented."""
    src = tmp_path / "bare.ckpt"
    torch.save(
        {"state_dict": {"w": torch.ones(1)}, "hyper_parameters": {"aggregator": "meanP"}}, src
    )
    slim_checkpoint(src, tmp_path / "s.ckpt")
    assert set(_load(tmp_path / "s.ckpt")) == {"hyper_parameters", "state_dict"}


@pytest.mark.parametrize(
    "payload",
    [
        {"hyper_parameters": {"aggregator": "meanP"}},  # no weights
        {"state_dict": {"w": torch.ones(1)}, "hyper_parameters": {"lr": 1e-4}},  # no aggregator
        {"state_dict": {"w": torch.ones(1)}},  # no hyper-parameters at all
        {"state_dict": {"w": torch.ones(1)}, "hyper_parameters": None},
    ],
    ids=["no-state-dict", "no-aggregator", "no-hparams", "hparams-none"],
)
def test_slim_refuses_what_is_not_a_retrieval_checkpoint(tmp_path, payload):
    src = tmp_path / "other.ckpt"
    torch.save(payload, src)
    msg = f"{src}: not a retrieval checkpoint written by vr train"
    with pytest.raises(UserError) as err:
        slim_checkpoint(src, tmp_path / "s.ckpt")
    assert str(err.value) == msg
    assert not (tmp_path / "s.ckpt").exists()


def _moment_ckpt(path: Path) -> Path:
    """What ``vr train`` writes for a moment head: the head under ``model.``, the loss's buffers
    under ``criterion.``, training state."""
    torch.save(
        {
            "moment_meta": {
                "model_kwargs": {"hidden_dim": 8},
                "encoder_source": {"kind": "retrieval_checkpoint", "path": "/abs/enc.ckpt"},
                "encoder_fingerprint": "fp-original",
                "clip_len": 2.0,
            },
            "state_dict": {
                "model.query_embed.weight": torch.ones(2, 8),
                "model.span_embed.bias": torch.zeros(2, dtype=torch.float64),
                "criterion.empty_weight": torch.ones(3),
                "modelx.stray": torch.ones(1),  # a prefix that only starts like "model."
            },
            "optimizer_states": [{"state": {}}],
            "epoch": 7,
            "hyper_parameters": {"hidden_dim": 8},
        },
        path,
    )
    return path


def test_slim_moment_keeps_meta_and_the_head_weights(tmp_path):
    src = _moment_ckpt(tmp_path / "m.ckpt")
    dst = tmp_path / "slim" / "head.ckpt"
    info = slim_moment_checkpoint(src, dst)
    assert info == {"path": str(dst), "bytes": dst.stat().st_size, "tensors": 2}
    got = _load(dst)
    assert set(got) == {"moment_meta", "state_dict"}
    assert got["moment_meta"] == _load(src)["moment_meta"]  # unchanged without an encoder
    sd = got["state_dict"]
    assert set(sd) == {"model.query_embed.weight", "model.span_embed.bias"}
    # weights are copied as they are (no fp16 cast for the head)
    assert sd["model.span_embed.bias"].dtype == torch.float64
    assert torch.equal(sd["model.query_embed.weight"], torch.ones(2, 8))


class _FakeEncoder:
    def __init__(self, path):
        self.path = Path(path)

    def fingerprint(self) -> str:
        return f"fp-of-{self.path.name}"


def test_slim_moment_repoints_the_head_at_an_encoder_relative_to_it(tmp_path, monkeypatch):
    """With ``encoder``: the head records that file's path relative to its own folder (so the
    pair can move together) and that encoder's fingerprint. The encoder is not built here: its
    loader is replaced by one that records what it was asked to open."""
    opened = []

    def fake_load(path, *a, **kw):
        opened.append(Path(path))
        return _FakeEncoder(path), object(), {"path": str(path)}

    monkeypatch.setattr(checkpoints, "load_retrieval_model", fake_load)
    src = _moment_ckpt(tmp_path / "m.ckpt")
    (tmp_path / "assets" / "heads").mkdir(parents=True)
    enc = tmp_path / "assets" / "clips.ckpt"
    enc.write_bytes(b"")  # never read: the loader is faked
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative to the head's folder, not to the working directory
    dst = tmp_path / "assets" / "heads" / "head.ckpt"
    info = slim_moment_checkpoint(src, dst, encoder=enc)
    assert opened == [enc]
    assert info["tensors"] == 2
    meta = _load(dst)["moment_meta"]
    assert meta["encoder_source"] == {
        "kind": "retrieval_checkpoint",
        "path": "../clips.ckpt",
        "relative": True,
    }
    assert meta["encoder_fingerprint"] == "fp-of-clips.ckpt"
    # the other settings are kept as they were
    assert meta["model_kwargs"] == {"hidden_dim": 8} and meta["clip_len"] == 2.0
    # the source checkpoint is not modified
    assert _load(src)["moment_meta"]["encoder_fingerprint"] == "fp-original"


def test_slim_moment_refuses_a_retrieval_checkpoint(tmp_path):
    src = _retrieval_ckpt(tmp_path / "full.ckpt")
    with pytest.raises(UserError, match="not a moment checkpoint"):
        slim_moment_checkpoint(src, tmp_path / "h.ckpt")
    assert not (tmp_path / "h.ckpt").exists()
