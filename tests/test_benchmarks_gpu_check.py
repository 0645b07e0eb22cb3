"""benchmarks/gpu_check.py runs end to end (smoke sizes on the CPU), so the GPU check is ready for
a CUDA machine; the tests marked ``cuda`` run only where one is present."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_smoke_on_cpu(tmp_path):
    out = tmp_path / "gc.json"
    res = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--smoke", "--device", "cpu",
         "--work", str(tmp_path / "w"), "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    r = json.loads(out.read_text())
    assert {row["dtype"] for row in r["encode"]} == {"fp16", "bf16"}
    assert all(row["images_per_s"] > 0 for row in r["encode"])
    assert r["index"]["videos"] == 2 and r["index"]["frames"] == 6  # 3 s at 1 fps each
    # both fits ran (their times); the per-step figure is their difference, None when start-up
    # noise on a busy CPU exceeds it (a figure, not a timing assertion)
    assert all(t > 0 for t in r["train"]["fit_seconds"])
    assert r["train"]["seconds_per_step"] is None or r["train"]["seconds_per_step"] > 0
    assert {(row["kind"], row["n"]) for row in r["search"]} == {("flat", 2000), ("ivf", 2000)}


def test_gpu_check_refuses_without_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    res = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cuda"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 2 and "no CUDA device" in res.stderr


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_encoder_matches_cpu_within_autocast_tolerance():
    from video_retrieval.encoders.factory import create_encoder

    frames = np.random.default_rng(0).integers(0, 255, (4, 64, 64, 3), dtype=np.uint8)
    cpu = create_encoder("vr-tiny", precision="fp32")
    gpu = create_encoder("vr-tiny", precision="bf16", device="cuda")
    a, _ = cpu.encode_frames(frames)
    b, _ = gpu.encode_frames(frames)
    cos = torch.nn.functional.cosine_similarity(a, b.cpu(), dim=-1)
    assert bool((cos > 0.99).all()), cos


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_index_equals_cpu_index(tmp_path):
    from video_retrieval.index.api import Index
    from video_retrieval.media.write import write_test_pattern

    v = write_test_pattern(tmp_path / "v" / "a.mp4", seconds=3.0, width=160, height=120)
    kw = dict(model="vr-tiny", random_weights=True, fps=1.0, progress=False, precision="fp32")
    a = Index.build([v.parent], tmp_path / "cpu", **kw)
    b = Index.build([v.parent], tmp_path / "gpu", device="cuda", **kw)
    np.testing.assert_allclose(a.frames(0)[0], b.frames(0)[0], atol=2e-3)
