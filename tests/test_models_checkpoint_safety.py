"""No file given to the project runs code when it is loaded.

A malicious pickle (its ``__reduce__`` writes a marker file) is handed to every option and
function that loads a model file. Each must refuse it in one line (exit 2 through the CLI, a
``UserError`` through Python) and the marker must never appear: loading is
``torch.load(weights_only=True)`` (or safetensors) everywhere, and a checkpoint's class paths
are checked before anything imports them (``test_models_compat``).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from _cli_util import box_video, one_line_error, run_cli, tiny_index

from video_retrieval.errors import UserError
from video_retrieval.models.assets import DEMO_RETRIEVAL


class _WritesMarker:
    """Unpickling this writes ``marker``: proof that a loader ran code from a file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "code ran"))


def _evil(path: Path, marker: Path, zip_format: bool = True) -> Path:
    payload = {"state_dict": {"w": _WritesMarker(marker)}, "hyper_parameters": {}}
    if zip_format:
        torch.save(payload, path)  # the format torch.save writes today
    else:
        with open(path, "wb") as f:  # a legacy (pre-zip) pickle
            pickle.dump(payload, f, protocol=2)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("safety")
    vids = root / "vids"
    for i in range(3):
        box_video(vids / f"v{i}.mp4", i)
    return {"vids": vids, "index": tiny_index(vids, root / "idx")}


@pytest.fixture(params=["zip", "legacy"])
def evil(request, tmp_path):
    marker = tmp_path / "MARKER"
    path = _evil(tmp_path / "evil.ckpt", marker, zip_format=request.param == "zip")
    yield path
    assert not marker.exists(), "a loader unpickled an arbitrary object"


def _cli_cases(world, evil, tmp_path):
    vids, index = world["vids"], world["index"]
    video = vids / "v0.mp4"
    return {
        "index --checkpoint": ["index", vids, "--index", tmp_path / "i1", "--checkpoint", evil],
        "index --pretrained": ["index", vids, "--index", tmp_path / "i2", "--model", "vr-tiny",
                               "--pretrained", evil],
        "cache --checkpoint": ["cache", "--videos", vids, "--out", tmp_path / "c",
                               "--checkpoint", evil],
        "localize --checkpoint": ["localize", video, "a box", "--checkpoint", evil],
        "localize --clip-encoder": ["localize", video, "a box", "--clip-encoder", evil],
        "search --rerank-model": ["search", "a box", "--index", index, "--rerank-model", evil],
        "eval retrieval --rerank-model": ["eval", "retrieval", "--index", index, "--captions",
                                          _captions(vids, tmp_path), "--rerank-model", evil],
        "serve --localize-checkpoint": ["serve", "--index", index, "--localize-checkpoint", evil,
                                        "--port", "0"],
        "train fit --ckpt_path": ["train", "fit", "--config", "configs/synth_mean.yaml",
                                  f"--ckpt_path={evil}"],
        "train fit init_from": ["train", "fit", "--config", "configs/synth_mean.yaml",
                                f"--model.init_args.init_from={evil}", "--trainer.max_steps=1",
                                f"--data.init_args.root={tmp_path}"],
        "model slim": ["model", "slim", evil, tmp_path / "slim.ckpt"],
        "model slim-moments": ["model", "slim-moments", evil, tmp_path / "slim2.ckpt"],
    }  # fmt: skip


def _captions(vids: Path, tmp_path: Path) -> Path:
    p = tmp_path / "captions.jsonl"
    p.write_text("".join(json.dumps({"video": str(v), "caption": "a box"}) + "\n"
                         for v in sorted(vids.glob("*.mp4"))))  # fmt: skip
    return p


CASES = [
    "index --checkpoint", "index --pretrained", "cache --checkpoint", "localize --checkpoint",
    "localize --clip-encoder", "search --rerank-model", "eval retrieval --rerank-model",
    "serve --localize-checkpoint", "train fit --ckpt_path", "train fit init_from", "model slim",
    "model slim-moments",
]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_every_cli_option_that_loads_a_file_refuses_a_pickle(case, world, evil, tmp_path, capsys):
    argv = _cli_cases(world, evil, tmp_path)[case]
    rc, _, err = run_cli(capsys, *argv)
    assert rc == 2, (case, err)
    one_line_error(err, str(evil.name))


def test_python_loaders_refuse_a_pickle(evil, tmp_path):
    from video_retrieval.encoders import create_encoder, load_encoder

    from video_retrieval.models.checkpoints import (
        load_retrieval_model,
        read_checkpoint,
        slim_checkpoint,
        slim_moment_checkpoint,
    )
    from video_retrieval.moments.predictor import MomentPredictor
    from video_retrieval.train.moment_module import load_module

    loaders = {
        "read_checkpoint": lambda: read_checkpoint(evil),
        "load_retrieval_model": lambda: load_retrieval_model(evil),
        "slim_checkpoint": lambda: slim_checkpoint(evil, tmp_path / "s.ckpt"),
        "slim_moment_checkpoint": lambda: slim_moment_checkpoint(evil, tmp_path / "m.ckpt"),
        "MomentPredictor.from_checkpoint": lambda: MomentPredictor.from_checkpoint(evil),
        "load_module": lambda: load_module(evil),
        "create_encoder(checkpoint=)": lambda: create_encoder("vr-tiny", checkpoint=evil),
        "create_encoder(pretrained=FILE)": lambda: create_encoder("vr-tiny", pretrained=str(evil)),
        "load_encoder": lambda: load_encoder(evil),
    }
    for name, load in loaders.items():
        with pytest.raises(UserError) as info:
            load()
        assert "\n" not in str(info.value) and evil.name in str(info.value), name


def test_a_crafted_index_runs_no_code(world, tmp_path, capsys):
    """An index folder is data: a manifest naming a pickle as its model, or a pickled array in
    place of the pooled vectors, is refused in one line when searched."""
    import shutil

    from video_retrieval import Index
    from video_retrieval.index.files import manifest_files, read_manifest

    marker = tmp_path / "MARKER"
    d = tmp_path / "crafted"
    shutil.copytree(world["index"], d)
    manifest = read_manifest(d)
    manifest["model"] = {"checkpoint": str(_evil(tmp_path / "model.ckpt", marker))}
    (d / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError):
        Index.open(d).search("a box")
    rc, _, err = run_cli(capsys, "search", "a box", "--index", d)
    assert rc == 2
    one_line_error(err, "model.ckpt")

    d2 = tmp_path / "crafted2"
    shutil.copytree(world["index"], d2)
    pooled = d2 / manifest_files(read_manifest(d2))["pooled"]
    np.save(pooled, np.array([_WritesMarker(marker)], dtype=object), allow_pickle=True)
    rc, _, err = run_cli(capsys, "search", "a box", "--index", d2)
    assert rc == 2
    one_line_error(err, pooled.name)
    assert not marker.exists()


def test_the_bundled_model_still_loads():
    from video_retrieval.models.checkpoints import load_retrieval_model

    enc, agg, meta = load_retrieval_model(DEMO_RETRIEVAL)
    assert meta["aggregator"] == "seq_transformer" and enc.embed_dim == agg.embed_dim
