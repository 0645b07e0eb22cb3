"""The wheel installs exactly one top-level package; library folders map under it."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(ROOT)],
        check=True,
    )  # fmt: skip
    (path,) = out.glob("video_retrieval-*.whl")
    return path


@pytest.fixture(scope="module")
def wheel_files(wheel) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        return zf.namelist()


def test_library_folders_install_under_video_retrieval(wheel_files):
    for pkg in ("video_retrieval", "encoders", "temporal", "datasets"):
        src = ROOT / (pkg if pkg == "video_retrieval" else pkg)
        prefix = "video_retrieval/" if pkg == "video_retrieval" else f"video_retrieval/{pkg}/"
        for module in src.glob("*.py"):
            assert f"{prefix}{module.name}" in wheel_files, f"{module} missing from the wheel"


def test_no_shadowing_top_level_modules(wheel_files):
    top = {
        name.split("/")[0] for name in wheel_files if not name.split("/")[0].endswith(".dist-info")
    }
    assert top == {"video_retrieval"}, top


def test_console_script_declared(wheel, wheel_files):
    entry = next(n for n in wheel_files if n.endswith("entry_points.txt"))
    with zipfile.ZipFile(wheel) as zf:
        text = zf.read(entry).decode()
    assert "vr = video_retrieval.cli:main" in text


def test_model_configs_shipped(wheel_files):
    for cfg in (ROOT / "encoders" / "model_configs").glob("*.json"):
        assert f"video_retrieval/encoders/model_configs/{cfg.name}" in wheel_files


def test_vr_help_lists_subcommands():
    out = subprocess.run(
        [sys.executable, "-m", "video_retrieval.cli", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0
    for cmd in ("train", "index", "search", "localize", "eval", "synth", "demo"):
        assert cmd in out.stdout
    ver = subprocess.run(
        [sys.executable, "-m", "video_retrieval.cli", "--version"], capture_output=True, text=True
    )
    assert ver.stdout.strip() == "vr 0.1.0"
