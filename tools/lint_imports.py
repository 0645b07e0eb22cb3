"""Run import-linter (the contracts in pyproject.toml) on the package as it is installed.

setuptools' package-dir mapping installs the top-level folders ``encoders/``, ``temporal/`` and
``datasets/`` as ``video_retrieval.encoders`` / ``.temporal`` / ``.datasets``. import-linter
(grimp) finds a package by walking its folder, so in the working tree it would not see those
three. This copies the Python sources into a temporary folder in the installed layout and runs
``lint-imports`` there, with that folder first on the path. Exit status: lint-imports'.

    python tools/lint_imports.py [lint-imports options, e.g. --verbose]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAPPED = ("encoders", "temporal", "datasets")


def installed_layout(dst: Path) -> Path:
    """Copy the ``*.py`` files of the package into ``dst`` as they are installed."""

    def copy(src: Path, out: Path) -> None:
        for p in src.rglob("*.py"):
            rel = p.relative_to(src)
            if rel.parts[0] in MAPPED and src.name == "video_retrieval":
                continue
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, out / rel)

    pkg = dst / "video_retrieval"
    copy(ROOT / "video_retrieval", pkg)
    for name in MAPPED:
        copy(ROOT / name, pkg / name)
    shutil.copy2(ROOT / "pyproject.toml", dst / "pyproject.toml")
    return dst


def main(argv: list[str]) -> int:
    exe = Path(sys.executable).with_name("lint-imports")
    cmd = [str(exe) if exe.exists() else "lint-imports", "--no-cache", *argv]
    with tempfile.TemporaryDirectory(prefix="vr-layers-") as tmp:
        installed_layout(Path(tmp))
        env = {**os.environ, "PYTHONPATH": tmp + os.pathsep + os.environ.get("PYTHONPATH", "")}
        return subprocess.run(cmd, cwd=tmp, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
